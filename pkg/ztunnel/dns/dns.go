// Package dns is ztunnel's DNS proxy (port 15053 inside each captured pod,
// where the capture rules redirect the pod's DNS): it answers A and AAAA
// queries for mesh service hostnames from the xDS state, including the
// short ("svc") and namespace-qualified ("svc.ns", "svc.ns.svc") forms
// resolved against the querying pod's namespace, and forwards every other
// query to an upstream resolver.
//
// Lookup is a pure function of a state snapshot; Server wraps it in
// github.com/miekg/dns. The proxy (pkg/ztunnel) runs one Server per pod.
package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/zap"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-mesh/mesh/pkg/ztunnel/state"
)

// DefaultDomain is the cluster DNS domain.
const DefaultDomain = "cluster.local"

// DefaultTTL of answers from the mesh state, in seconds.
const DefaultTTL = 30

// Candidates are the hostnames a query name may mean for a pod in
// namespace ns, in order: the name itself, then the name under the pod's
// search path (<ns>.svc.<domain>, svc.<domain>, <domain>), as a resolver
// applying resolv.conf's search list would try them.
func Candidates(name, ns, domain string) []string {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" {
		return nil
	}
	out := []string{name}
	for _, suffix := range []string{ns + ".svc." + domain, "svc." + domain, domain} {
		if !strings.HasSuffix(name, "."+domain) {
			out = append(out, name+"."+suffix)
		}
	}
	return out
}

// Lookup resolves name for a pod in namespace ns on network: the addresses
// of the first candidate hostname that is a mesh service (its VIPs, or for
// a headless service its healthy endpoints' IPs), of the family qtype asks
// for (A or AAAA). found reports whether a mesh service matched at all; a
// match with no address of that family is an empty answer, not a miss.
func Lookup(snap *state.Snapshot, network, ns, domain, name string, qtype uint16) (ips []netip.Addr, host string, found bool) {
	for _, h := range Candidates(name, ns, domain) {
		svcs := snap.ServicesByHostname(h)
		if len(svcs) == 0 {
			continue
		}
		// Prefer the pod's own namespace when several declare the host.
		svc := svcs[0]
		for _, s := range svcs {
			if s.GetNamespace() == ns {
				svc = s
			}
		}
		var all []netip.Addr
		for _, na := range state.VIPs(svc) {
			if na.Network == network {
				all = append(all, na.IP)
			}
		}
		if len(all) == 0 {
			for _, w := range snap.Endpoints(state.ServiceKey(svc)) {
				if w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY && w.GetNetwork() == network {
					all = append(all, state.IPs(w)...)
				}
			}
		}
		for _, ip := range all {
			if (qtype == mdns.TypeA && ip.Is4()) || (qtype == mdns.TypeAAAA && ip.Is6()) {
				ips = append(ips, ip)
			}
		}
		return ips, h, true
	}
	return nil, "", false
}

// Forwarder sends a query to the upstream resolver over network ("udp" or
// "tcp") and returns its answer.
type Forwarder func(ctx context.Context, q *mdns.Msg, network string) (*mdns.Msg, error)

// Server answers one pod's queries.
type Server struct {
	Store     *state.Store
	Network   string
	Namespace string // the pod's namespace, for short names
	Domain    string // default DefaultDomain
	TTL       uint32 // default DefaultTTL
	Forward   Forwarder
	Logger    *zap.Logger
	// Timeout bounds one forwarded query; default 5 s.
	Timeout time.Duration
}

// ServeDNS implements miekg/dns's Handler.
func (s *Server) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	resp := s.answer(r, network)
	if resp == nil {
		resp = new(mdns.Msg)
		resp.SetRcode(r, mdns.RcodeServerFailure)
	}
	if network == "udp" {
		resp.Truncate(udpSize(r))
	}
	_ = w.WriteMsg(resp)
}

func udpSize(r *mdns.Msg) int {
	if o := r.IsEdns0(); o != nil {
		return int(o.UDPSize())
	}
	return mdns.MinMsgSize
}

func (s *Server) answer(r *mdns.Msg, network string) *mdns.Msg {
	if len(r.Question) == 1 {
		q := r.Question[0]
		if q.Qclass == mdns.ClassINET && (q.Qtype == mdns.TypeA || q.Qtype == mdns.TypeAAAA) {
			domain := s.Domain
			if domain == "" {
				domain = DefaultDomain
			}
			ips, _, found := Lookup(s.Store.Snapshot(), s.Network, s.Namespace, domain, q.Name, q.Qtype)
			if found {
				return s.reply(r, q, ips)
			}
		}
	}
	if s.Forward == nil {
		m := new(mdns.Msg)
		m.SetRcode(r, mdns.RcodeNameError)
		return m
	}
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := s.Forward(ctx, r, network)
	if err != nil {
		if s.Logger != nil {
			s.Logger.Debug("dns forward failed", zap.String("name", questionName(r)), zap.Error(err))
		}
		return nil
	}
	resp.Id = r.Id
	return resp
}

func questionName(r *mdns.Msg) string {
	if len(r.Question) == 0 {
		return ""
	}
	return r.Question[0].Name
}

func (s *Server) reply(r *mdns.Msg, q mdns.Question, ips []netip.Addr) *mdns.Msg {
	ttl := s.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = true
	hdr := mdns.RR_Header{Name: q.Name, Class: mdns.ClassINET, Ttl: ttl}
	for _, ip := range ips {
		if ip.Is4() {
			h := hdr
			h.Rrtype = mdns.TypeA
			m.Answer = append(m.Answer, &mdns.A{Hdr: h, A: ip.AsSlice()})
		} else {
			h := hdr
			h.Rrtype = mdns.TypeAAAA
			m.Answer = append(m.Answer, &mdns.AAAA{Hdr: h, AAAA: ip.AsSlice()})
		}
	}
	return m
}

// Serve answers on pc (UDP) and ln (TCP), either may be nil, until ctx
// ends; then it shuts both down (waiting for queries in flight, at most
// 2 s) and returns nil.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	var servers []*mdns.Server
	if pc != nil {
		servers = append(servers, &mdns.Server{PacketConn: pc, Handler: s})
	}
	if ln != nil {
		servers = append(servers, &mdns.Server{Listener: ln, Handler: s})
	}
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errc <- serve(ctx, srv) }()
	}
	var errs []error
	for range servers {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

func serve(ctx context.Context, srv *mdns.Server) error {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case <-started:
	case err := <-done:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.ShutdownContext(sctx)
	<-done
	return nil
}

// Exchange is a Forwarder body: it sends q over conn (already connected to
// the upstream) and reads the answer.
func Exchange(ctx context.Context, q *mdns.Msg, conn net.Conn, network string) (*mdns.Msg, error) {
	c := &mdns.Client{Net: network}
	resp, _, err := c.ExchangeWithConnContext(ctx, q, &mdns.Conn{Conn: conn})
	return resp, err
}
