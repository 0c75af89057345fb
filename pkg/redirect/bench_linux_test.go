package redirect

import (
	"testing"
)

// BenchmarkInstallRemove measures one capture of a pod (Install) and one
// release (Remove) in a netns of its own: the per-pod cost of the node agent
// and the CNI plugin. Run: go test -run '^$' -bench . ./pkg/redirect
func BenchmarkInstallRemove(b *testing.B) {
	for _, bc := range []struct {
		name string
		op   func(r *PodRules, ns testNS) error
	}{
		{"install", func(r *PodRules, ns testNS) error { return r.Install(ns.h) }},
		{"install+remove", func(r *PodRules, ns testNS) error {
			if err := r.Install(ns.h); err != nil {
				return err
			}
			return r.Remove(ns.h)
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ns := newNS(b, "bench")
			r := NewPodRules(PodConfig{DNSCapture: true}, nil)
			for b.Loop() {
				if err := bc.op(r, ns); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDo measures switching a thread into a netns and back, the fixed
// cost of every Listen and Dial in a pod netns.
func BenchmarkDo(b *testing.B) {
	ns := newNS(b, "bench")
	for b.Loop() {
		if err := Do(ns.h, func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
