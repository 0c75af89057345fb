package waypoint

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// BenchmarkWaypoint measures sequential 1 KB HTTP/1.1 GETs through the
// waypoint (client -> HBONE -> waypoint -> HBONE -> pod -> app) against
// the same requests sent straight to the app over TCP, in the same run.
// It reports ns/op and allocs/op of the waypoint path (allocations of the
// whole process: client, waypoint, tunnels and app) and
// direct_ns/op and ratio_vs_direct. The full fortio benchmark is
// make bench-waypoint; this is the in-process hook for it:
//
//	go test -run '^$' -bench Waypoint -benchmem ./pkg/waypoint/
func BenchmarkWaypoint(b *testing.B) {
	for _, proto := range []struct {
		name string
		p    waypointv1alpha1.Protocol
		h2   bool
	}{{"http1", waypointv1alpha1.Protocol_HTTP, false}, {"h2c", waypointv1alpha1.Protocol_HTTP2, true}} {
		b.Run(proto.name, func(b *testing.B) {
			m := newMesh(b, meshOptions{})
			m.addService(reviews, "10.0.0.1")
			payload := bytes.Repeat([]byte("x"), 1024)
			pod := m.addPod("reviews-a", reviews, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(payload) }))
			m.setRoutes(serviceConfig(reviews, proto.p, defaultRoute(reviews)))
			through := m.httpClient(proto.h2)
			direct := directClient(b, proto.h2)
			directURL := "http://" + net.JoinHostPort(pod.ip.String(), itoa(int(pod.appPort))) + "/"
			do := func(c *http.Client, url string) {
				resp, err := c.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || n != 1024 {
					b.Fatalf("GET %s: %d, %d bytes", url, resp.StatusCode, n)
				}
			}
			for range 100 { // warm the pools
				do(through, "http://10.0.0.1/")
				do(direct, directURL)
			}
			start, cpu := time.Now(), processCPU()
			for range b.N {
				do(direct, directURL)
			}
			directNS := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			directCPU := float64(processCPU()-cpu) / float64(b.N)
			b.ReportAllocs()
			b.ResetTimer()
			start, cpu = time.Now(), processCPU()
			for range b.N {
				do(through, "http://10.0.0.1/")
			}
			b.StopTimer()
			wpNS := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			wpCPU := float64(processCPU()-cpu) / float64(b.N)
			b.ReportMetric(directNS, "direct_ns/op")
			b.ReportMetric(wpNS/directNS, "ratio_vs_direct")
			// CPU time of the whole process (user+system) per request: on a
			// shared machine it varies less than the wall time.
			b.ReportMetric(wpCPU, "cpu_ns/op")
			b.ReportMetric(directCPU, "direct_cpu_ns/op")
		})
	}
}

// processCPU is the process's user+system CPU time so far, in ns.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func directClient(b *testing.B, h2 bool) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	if h2 {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	b.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}
