package xds_test

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ambient-mesh/mesh/pkg/model"
	"github.com/ambient-mesh/mesh/pkg/xds/xdsclient"
)

// BenchmarkScale pushes 11,000 Addresses to 100 wildcard clients, then one
// pod change at a time, and reports the time to the first full push and the
// p99 time for a change to reach every client (debounce excluded: 1ms).
func BenchmarkScale(b *testing.B) {
	clients, pods, changes := scaleClients, 10000, 20
	for b.Loop() {
		runScale(b, clients, pods, changes)
	}
}

func runScale(b *testing.B, clients, pods, changes int) {
	e := startServer(b, time.Millisecond)
	r := resources()
	for i := range pods {
		a := workload(fmt.Sprintf("p%d", i), netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String(), true)
		r.Addresses[model.ResourceName(a)] = a
	}
	for i := range pods / 10 {
		a := workload(fmt.Sprintf("s%d", i), netip.AddrFrom4([4]byte{11, 0, byte(i >> 8), byte(i)}).String(), true)
		r.Addresses[model.ResourceName(a)] = a
	}
	var mu sync.Mutex
	seen := map[string]int{} // resource name -> clients that received it after the full push; guarded by mu
	reached := make(chan string, changes)
	full := make(chan struct{}, clients)
	total := len(r.Addresses)
	start := time.Now()
	e.srv.Update(r)
	var counts sync.Map
	for i := range clients {
		c, err := xdsclient.New(xdsclient.Config{
			Conn: dial(b, e.addr, goodToken), Subscriptions: []xdsclient.Subscription{{TypeURL: model.AddressTypeURL}},
			Handler: func(d xdsclient.Delta) error {
				v, _ := counts.LoadOrStore(i, new(int))
				n := v.(*int)
				before := *n
				*n += len(d.Updated)
				if before < total && *n >= total {
					full <- struct{}{}
				}
				if before >= total {
					mu.Lock()
					for _, u := range d.Updated {
						seen[u.Name]++
						if seen[u.Name] == clients {
							reached <- u.Name
						}
					}
					mu.Unlock()
				}
				return nil
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		runClient(b, b.Context(), c)
	}
	for range clients {
		<-full
	}
	b.ReportMetric(time.Since(start).Seconds(), "full_push_s")

	var lat []time.Duration
	for i := range changes {
		name := fmt.Sprintf("p%d", i)
		a := workload(name, "10.200.0.1", i%2 == 0)
		r2 := resources()
		for k, v := range r.Addresses {
			r2.Addresses[k] = v
		}
		r2.Addresses[model.ResourceName(a)] = a
		r = r2
		t0 := time.Now()
		e.srv.Update(r2)
		key := model.ResourceName(a)
		if got := <-reached; got != key {
			b.Fatalf("change %s reached all clients, want %s", got, key)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "change_p99_ms")
}

var scaleClients = func() int {
	if v, err := strconv.Atoi(os.Getenv("XDS_SCALE_CLIENTS")); err == nil {
		return v
	}
	return 100
}()
