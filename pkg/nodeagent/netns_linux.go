package nodeagent

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetnsIndex finds a pod's network namespace by the pod's IP among the
// namespaces pinned in a directory (the runtime's /var/run/netns). It caches
// IP -> path and rescans the directory on a miss.
//
// Concurrency: mu guards byIP; a scan holds it, so concurrent misses scan once.
type NetnsIndex struct {
	Dir string

	mu   sync.Mutex
	byIP map[netip.Addr]string
}

// Find returns the path of the netns holding one of ips. It returns an error
// wrapping os.ErrNotExist when none does.
func (x *NetnsIndex) Find(ips ...netip.Addr) (string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for attempt := range 2 {
		for _, ip := range ips {
			// Check a cached entry still holds the IP: pod IPs are reused.
			if p, ok := x.byIP[ip.Unmap()]; ok && holds(p, ip.Unmap()) {
				return p, nil
			}
		}
		if attempt == 0 {
			if err := x.scan(); err != nil {
				return "", err
			}
		}
	}
	return "", fmt.Errorf("no netns in %s holds %v: %w", x.Dir, ips, os.ErrNotExist)
}

func (x *NetnsIndex) scan() error {
	ents, err := os.ReadDir(x.Dir)
	if err != nil {
		return fmt.Errorf("read netns dir: %w", err)
	}
	byIP := map[netip.Addr]string{}
	for _, e := range ents {
		p := filepath.Join(x.Dir, e.Name())
		addrs, err := NetnsAddrs(p)
		if err != nil {
			continue // a netns being torn down, or not a netns
		}
		for _, a := range addrs {
			byIP[a] = p
		}
	}
	x.byIP = byIP
	return nil
}

func holds(path string, ip netip.Addr) bool {
	addrs, err := NetnsAddrs(path)
	return err == nil && slices.Contains(addrs, ip)
}

// NetnsAddrs lists the global unicast addresses inside the netns at path.
func NetnsAddrs(path string) ([]netip.Addr, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer nl.Close()
	list, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses in %s: %w", path, err)
	}
	var out []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().IsGlobalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
