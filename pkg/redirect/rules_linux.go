package redirect

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// errHostNetns refuses a handle that is not an open netns: -1 (a closed
// file's Fd, or netns.None()) makes netlink act on the caller's own netns,
// which for the node agent is the node's.
var errHostNetns = errors.New("redirect: invalid pod netns handle (closed or none): refusing to touch the current (host) network namespace")

func podNetns(ns netns.NsHandle) error {
	if int(ns) < 0 {
		return errHostNetns
	}
	return nil
}

// Install puts the capture rules into the netns ns (see [PodRules]). The
// netns' loopback must be up (the CNI loopback plugin does that). If it fails
// on a pod that was not captured, nothing of ours is left behind; on a pod
// that was, the previous rules stay as they were.
func (r *PodRules) Install(ns netns.NsHandle) error {
	if err := podNetns(ns); err != nil {
		return err
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("redirect: nftables netlink socket: %w", err)
	}
	was, err := tableExists(conn)
	if err != nil {
		return err
	}
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("redirect: netlink socket in pod netns: %w", err)
	}
	defer nl.Close()
	rollback := func(err error) error {
		if was {
			return err // the old table still needs its routes
		}
		return errors.Join(err, delPolicyRouting(nl))
	}
	v6, err := hasIPv6(ns)
	if err != nil {
		return err
	}
	if err := addPolicyRouting(nl, v6); err != nil {
		return rollback(err)
	}
	replacePodTable(conn, r.cfg)
	if err := conn.Flush(); err != nil {
		return rollback(fmt.Errorf("redirect: nftables batch installing table inet %s: %w", PodTable, err))
	}
	// ztunnel hands a pod's listeners over during a rolling restart with
	// SO_REUSEPORT: when the old ztunnel closes its listeners, connections
	// the kernel queued on them move to the new ztunnel's instead of being
	// reset. Best effort: without it (kernels before 5.14) a handover can
	// reset a connection that arrives at the moment of the close.
	if err := enableListenerMigration(ns); err != nil {
		r.log.Warn("sysctl net.ipv4.tcp_migrate_req not set in the pod; a ztunnel restart may reset connections arriving as it hands over", zap.Stringer("netns", ns), zap.Error(err))
	}
	r.log.Debug("capture rules installed", zap.Stringer("netns", ns), zap.Bool("dns", r.cfg.DNSCapture),
		zap.Bool("ipv6", v6), zap.Bool("replaced", was))
	return nil
}

// enableListenerMigration sets net.ipv4.tcp_migrate_req=1 inside ns (it
// applies to IPv4 and IPv6 listeners alike).
func enableListenerMigration(ns netns.NsHandle) error {
	return Do(ns, func() error {
		const path = "/proc/sys/net/ipv4/tcp_migrate_req"
		if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		return nil
	})
}

// Remove deletes the capture rules from ns; rules that are not there are not
// an error.
func (r *PodRules) Remove(ns netns.NsHandle) error {
	if err := podNetns(ns); err != nil {
		return err
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("redirect: nftables netlink socket: %w", err)
	}
	t := &nftables.Table{Name: PodTable, Family: nftables.TableFamilyINet}
	// "add" (a no-op when it exists) then "delete": no ENOENT when absent.
	conn.AddTable(t)
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("redirect: nftables batch deleting table inet %s: %w", PodTable, err)
	}
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("redirect: netlink socket in pod netns: %w", err)
	}
	defer nl.Close()
	if err := delPolicyRouting(nl); err != nil {
		return err
	}
	r.log.Debug("capture rules removed", zap.Stringer("netns", ns))
	return nil
}

// Installed reports whether ns holds our table.
func Installed(ns netns.NsHandle) (bool, error) {
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return false, fmt.Errorf("redirect: nftables netlink socket: %w", err)
	}
	return tableExists(conn)
}

func tableExists(conn *nftables.Conn) (bool, error) {
	_, err := conn.ListTableOfFamily(PodTable, nftables.TableFamilyINet)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("redirect: nftables get table inet %s: %w", PodTable, err)
	}
	return true, nil
}

// replacePodTable queues, on conn, one transaction that deletes our table if
// it exists and creates it afresh with the rules for cfg.
func replacePodTable(conn *nftables.Conn, cfg PodConfig) {
	t := &nftables.Table{Name: PodTable, Family: nftables.TableFamilyINet}
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)

	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return conn.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio})
	}
	add := func(c *nftables.Chain, exprs ...[]expr.Any) {
		conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: rule(exprs...)})
	}
	const tcp, udp = unix.IPPROTO_TCP, unix.IPPROTO_UDP

	if cfg.DNSCapture {
		// ztunnel forwards captured DNS upstream from inside the pod; a
		// separate conntrack zone keeps its flow apart from the app's
		// (redirected) flow with the same tuple.
		c := chain("raw-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)
		add(c, markMasked(expr.CmpOpNeq, ZtunnelMark, ZtunnelMask), sport(udp, expr.CmpOpEq, 53), setCtZone(DNSConntrackZone))
		c = chain("raw-output", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityRaw)
		add(c, markMasked(expr.CmpOpEq, ZtunnelMark, ZtunnelMask), dport(udp, expr.CmpOpEq, 53), setCtZone(DNSConntrackZone))
	}

	// ztunnel's connections into the pod's app carry its mark; remember that
	// on the connection and put ConnMark on the app's replies, so that policy
	// routing (table 100) delivers them to ztunnel's transparent socket.
	c := chain("mangle-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityMangle)
	add(c, markMasked(expr.CmpOpEq, ZtunnelMark, ZtunnelMask), setCtMarkBits(ConnMark, ConnMask))
	c = chain("mangle-output", nftables.ChainTypeRoute, nftables.ChainHookOutput, nftables.ChainPriorityMangle)
	add(c, ctMarkMasked(ConnMark, ConnMask), restoreMark())

	// Inbound: everything TCP but HBONE goes to 15006.
	c = chain("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	add(c, ipAddr(saddr, ProbeSNATIPv4), l4proto(tcp), accept())
	add(c, ipAddr(saddr, ProbeSNATIPv6), l4proto(tcp), accept())
	add(c, markMasked(expr.CmpOpEq, ZtunnelMark, ZtunnelMask), accept())
	add(c, ifname(false, "lo"), accept())
	add(c, dport(tcp, expr.CmpOpNeq, InboundHBONEPort), redirectTo(InboundPlaintextPort))

	// Outbound: DNS to 15053 (optional), other TCP to 15001.
	c = chain("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	add(c, ipAddr(daddr, ProbeSNATIPv4), l4proto(tcp), accept())
	add(c, ipAddr(daddr, ProbeSNATIPv6), l4proto(tcp), accept())
	add(c, markMasked(expr.CmpOpEq, ZtunnelMark, ZtunnelMask), accept())
	add(c, ifname(true, "lo"), accept())
	if cfg.DNSCapture {
		add(c, dport(udp, expr.CmpOpEq, 53), redirectTo(DNSPort))
		add(c, dport(tcp, expr.CmpOpEq, 53), redirectTo(DNSPort))
	}
	add(c, markMasked(expr.CmpOpEq, ConnMark, ConnMask), l4proto(tcp), accept())
	add(c, l4proto(tcp), redirectTo(OutboundPort))
}

// policyRoutes returns the rule and route of each family Install adds.
func policyRoutes(lo int, v6 bool) ([]*netlink.Rule, []*netlink.Route) {
	mask := uint32(ConnMask)
	var rules []*netlink.Rule
	var routes []*netlink.Route
	fams := []int{unix.AF_INET}
	if v6 {
		fams = append(fams, unix.AF_INET6)
	}
	for _, fam := range fams {
		ru := netlink.NewRule()
		ru.Family = fam
		ru.Priority = RulePriority
		ru.Mark = ConnMark
		ru.Mask = &mask
		ru.Table = RouteTable
		rules = append(rules, ru)
		dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if fam == unix.AF_INET6 {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		routes = append(routes, &netlink.Route{
			Family: fam, Dst: dst, LinkIndex: lo, Table: RouteTable,
			Type: unix.RTN_LOCAL, Scope: unix.RT_SCOPE_HOST,
		})
	}
	return rules, routes
}

func addPolicyRouting(nl *netlink.Handle, v6 bool) error {
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("redirect: netlink get link lo: %w", err)
	}
	rules, routes := policyRoutes(lo.Attrs().Index, v6)
	for _, rt := range routes {
		if err := nl.RouteReplace(rt); err != nil {
			return fmt.Errorf("redirect: netlink route replace local %s dev lo table %d: %w", rt.Dst, RouteTable, err)
		}
	}
	for _, ru := range rules {
		if err := nl.RuleAdd(ru); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("redirect: netlink rule add fwmark %#x/%#x lookup %d: %w", ConnMark, ConnMask, RouteTable, err)
		}
	}
	return nil
}

// delPolicyRouting removes what addPolicyRouting adds, in both families,
// ignoring what is not there.
func delPolicyRouting(nl *netlink.Handle) error {
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("redirect: netlink get link lo: %w", err)
	}
	rules, routes := policyRoutes(lo.Attrs().Index, true)
	var errs []error
	for _, ru := range rules {
		// RuleDel removes one matching rule per call; a rule added twice
		// by hand would need two. Bounded: at most a few.
		for range 8 {
			err := nl.RuleDel(ru)
			if isAbsent(err) {
				break
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("redirect: netlink rule del fwmark %#x/%#x lookup %d: %w", ConnMark, ConnMask, RouteTable, err))
				break
			}
		}
	}
	for _, rt := range routes {
		if err := nl.RouteDel(rt); err != nil && !isAbsent(err) {
			errs = append(errs, fmt.Errorf("redirect: netlink route del local %s table %d: %w", rt.Dst, RouteTable, err))
		}
	}
	return errors.Join(errs...)
}

// isAbsent reports the errors netlink gives for deleting what is not there
// (or, for IPv6 objects, a family the netns does not have).
func isAbsent(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) ||
		errors.Is(err, unix.EAFNOSUPPORT)
}

// hasIPv6 reports whether ns has IPv6 enabled (sysctl
// net.ipv6.conf.all.disable_ipv6, read from inside ns).
func hasIPv6(ns netns.NsHandle) (bool, error) {
	var v6 bool
	err := Do(ns, func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
		if errors.Is(err, os.ErrNotExist) {
			return nil // no IPv6 in this kernel
		}
		if err != nil {
			return fmt.Errorf("redirect: read sysctl net.ipv6.conf.all.disable_ipv6: %w", err)
		}
		v6 = strings.TrimSpace(string(b)) == "0"
		return nil
	})
	return v6, err
}
