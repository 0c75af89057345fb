package istiod

import (
	"flag"
	"io"
	"net/http"
	"testing"
)

func newFlagSet(t *testing.T) *flag.FlagSet {
	t.Helper()
	return flag.NewFlagSet(t.Name(), flag.ContinueOnError)
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
