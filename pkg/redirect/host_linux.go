package redirect

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Host-side sets of captured pod IPs, one per family.
const (
	probeSetV4 = "probe-pods-v4"
	probeSetV6 = "probe-pods-v6"
	// Set IDs name the sets within a batch; fixed, so batches built
	// concurrently share no counter.
	probeSetV4ID = 1
	probeSetV6ID = 2
)

// hostSNATPriority runs our SNAT just before the usual srcnat chains
// (kube-proxy's masquerade), as Istio inserts its rule first in POSTROUTING.
var hostSNATPriority = nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource - 1)

// Install replaces the host table in ns, atomically, with one whose sets hold
// exactly pods. Use it at agent start (level-based), then AddPods/RemovePods.
func (h *HostRules) Install(ns netns.NsHandle, pods []netip.Addr) error {
	conn, err := nftConn(ns)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: HostTable, Family: nftables.TableFamilyINet}
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	v4, v6 := hostSets(t)
	e4, e6 := elements(pods)
	if err := conn.AddSet(v4, e4); err != nil {
		return fmt.Errorf("redirect: nftables add set %s: %w", v4.Name, err)
	}
	if err := conn.AddSet(v6, e6); err != nil {
		return fmt.Errorf("redirect: nftables add set %s: %w", v6.Name, err)
	}
	c := conn.AddChain(&nftables.Chain{
		Name: "nat-postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: hostSNATPriority,
	})
	conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: rule(
		l4proto(unix.IPPROTO_TCP), ipAddrInSet(daddr, false, v4.Name, v4.ID), hasSocket(), snatTo(ProbeSNATIPv4))})
	conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: rule(
		l4proto(unix.IPPROTO_TCP), ipAddrInSet(daddr, true, v6.Name, v6.ID), hasSocket(), snatTo(ProbeSNATIPv6))})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("redirect: nftables batch installing table inet %s: %w", HostTable, err)
	}
	h.log.Debug("host probe rules installed", zap.Int("pods", len(pods)))
	return nil
}

// AddPods adds pod IPs to the probe sets; IPs already there are not an error.
// The table must be installed.
func (h *HostRules) AddPods(ns netns.NsHandle, pods ...netip.Addr) error {
	return h.update(ns, pods, false)
}

// RemovePods removes pod IPs from the probe sets; IPs not there are not an
// error. The table must be installed.
func (h *HostRules) RemovePods(ns netns.NsHandle, pods ...netip.Addr) error {
	return h.update(ns, pods, true)
}

func (h *HostRules) update(ns netns.NsHandle, pods []netip.Addr, remove bool) error {
	conn, err := nftConn(ns)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: HostTable, Family: nftables.TableFamilyINet}
	v4, v6 := hostSets(t)
	e4, e6 := elements(pods)
	for _, s := range []struct {
		set *nftables.Set
		els []nftables.SetElement
	}{{v4, e4}, {v6, e6}} {
		if len(s.els) == 0 {
			continue
		}
		// Adding is idempotent; deleting an absent element is ENOENT, so
		// add first in the same transaction, then delete.
		if err := conn.SetAddElements(s.set, s.els); err != nil {
			return fmt.Errorf("redirect: nftables add elements to %s: %w", s.set.Name, err)
		}
		if remove {
			if err := conn.SetDeleteElements(s.set, s.els); err != nil {
				return fmt.Errorf("redirect: nftables delete elements from %s: %w", s.set.Name, err)
			}
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("redirect: nftables batch updating sets of table inet %s: %w", HostTable, err)
	}
	h.log.Debug("host probe set updated", zap.Int("pods", len(pods)), zap.Bool("remove", remove))
	return nil
}

// Remove deletes the host table from ns; a missing table is not an error.
func (h *HostRules) Remove(ns netns.NsHandle) error {
	conn, err := nftConn(ns)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: HostTable, Family: nftables.TableFamilyINet}
	conn.AddTable(t)
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("redirect: nftables batch deleting table inet %s: %w", HostTable, err)
	}
	h.log.Debug("host probe rules removed")
	return nil
}

func hostSets(t *nftables.Table) (v4, v6 *nftables.Set) {
	return &nftables.Set{Table: t, Name: probeSetV4, ID: probeSetV4ID, KeyType: nftables.TypeIPAddr},
		&nftables.Set{Table: t, Name: probeSetV6, ID: probeSetV6ID, KeyType: nftables.TypeIP6Addr}
}

func elements(pods []netip.Addr) (v4, v6 []nftables.SetElement) {
	for _, a := range pods {
		a = a.Unmap()
		if a.Is4() {
			v4 = append(v4, nftables.SetElement{Key: a.AsSlice()})
		} else {
			v6 = append(v6, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	return v4, v6
}

// nftConn opens an nftables connection in ns, or in the current netns when
// ns is not open.
func nftConn(ns netns.NsHandle) (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(ns)))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("redirect: nftables netlink socket: %w", err)
	}
	return conn, nil
}
