package model

import (
	"fmt"
	"testing"
)

// scaleSnapshot is the scale target: 50 ambient namespaces, 1,000
// services and 10,000 pods.
func scaleSnapshot() Snapshot {
	var s Snapshot
	for n := range 50 {
		ns := fmt.Sprintf("ns-%d", n)
		s.Namespaces = append(s.Namespaces, namespace(ns, ambientNS))
		for v := range 20 {
			app := fmt.Sprintf("app-%d", v)
			s.Services = append(s.Services, service(ns, app, fmt.Sprintf("10.96.%d.%d", n, v+1), map[string]string{"app": app}))
			for p := range 10 {
				s.Pods = append(s.Pods, pod(ns, app, fmt.Sprint(p), fmt.Sprintf("10.%d.%d.%d", n, v, p+1), map[string]string{"app": app}))
			}
		}
	}
	return s
}

func BenchmarkTranslate(b *testing.B) {
	s := scaleSnapshot()
	b.ReportAllocs()
	for b.Loop() {
		r := Translate(s)
		if len(r.Addresses) != 11000 {
			b.Fatalf("got %d addresses, want 11000", len(r.Addresses))
		}
	}
}
