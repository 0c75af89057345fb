package proxyadmin

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// rssFileKiB reads RssFile (resident file-backed pages) from /proc/self/status.
func rssFileKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "RssFile:" {
			v, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

func TestReleaseExecutablePages(t *testing.T) {
	before := rssFileKiB(t)
	span, err := ReleaseExecutablePages()
	if err != nil {
		t.Fatal(err)
	}
	if span <= 0 {
		t.Fatalf("released %d bytes: no read-only mapping of the executable found", span)
	}
	after := rssFileKiB(t)
	t.Logf("RssFile %d KiB -> %d KiB (read-only mappings span %d KiB)", before, after, span>>10)
	// The test binary's start-up left several MB of its file resident;
	// what the test itself touches since is far less.
	if after >= before || before-after < 1024 {
		t.Errorf("RssFile %d KiB -> %d KiB: want at least 1 MiB released", before, after)
	}
}
