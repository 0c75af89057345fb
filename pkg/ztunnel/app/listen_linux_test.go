package app

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/pkg/proxyadmin"
)

// Two ztunnels on the node's network (a surge rollout) both serve the same
// HTTP port: the second bind does not fail, and after the first stops the
// second keeps answering.
func TestServeHTTPBesideAnother(t *testing.T) {
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()
	serve := func(name string) (stop func()) {
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, name) })
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- proxyadmin.Serve(addr, mux, listenReusePort)(ctx) }()
		return func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
	get := func() (string, error) {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got, err := get()
			if err == nil && (want == "" || got == want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %q, %v; want %q", addr, got, err, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	stopOld := serve("old")
	waitFor("old")
	stopNew := serve("new")
	defer stopNew()
	// Both bound: the kernel spreads connections over the two.
	seen := map[string]bool{}
	for deadline := time.Now().Add(5 * time.Second); len(seen) < 2 && time.Now().Before(deadline); {
		if got, err := get(); err == nil {
			seen[got] = true
		}
	}
	if !seen["new"] {
		t.Errorf("the second server never answered beside the first: %v", seen)
	}
	stopOld()
	for range 20 {
		if got, err := get(); err != nil || got != "new" {
			t.Fatalf("after the old one stopped: %q, %v; want new", got, err)
		}
	}
}
