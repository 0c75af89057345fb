package proxyadmin

import "testing"

// rssFileKiB is the resident file-backed pages of this process.
func rssFileKiB(t *testing.T) int64 {
	t.Helper()
	v := statusKiB("RssFile:")
	if v < 0 {
		t.Fatal("no RssFile in /proc/self/status")
	}
	return v
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
