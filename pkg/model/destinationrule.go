package model

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"
	typev1beta1 "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	waypointv1alpha1 "github.com/ambient-mesh/mesh/api/waypoint/v1alpha1"
)

// KindDestinationRule and KindVirtualService name Istio's networking kinds
// in diagnostics and statuses.
const (
	KindDestinationRule = "DestinationRule"
	KindVirtualService  = "VirtualService"
)

// Outlier detection defaults: Envoy's (outlier_detection.proto), which
// Istio keeps when the DestinationRule leaves a field unset
// (networking/v1alpha3/destination_rule.proto).
const (
	DefaultConsecutive5xxErrors = 5
	DefaultOutlierInterval      = 10 * time.Second
	DefaultBaseEjectionTime     = 30 * time.Second
	DefaultMaxEjectionPercent   = 10
	// DefaultMinHealthPercent is Istio's 0: outlier detection stays on
	// however few endpoints are healthy.
	DefaultMinHealthPercent = 0
)

// destinationRules holds the compiled DestinationRules, by backend
// Service ("<namespace>/<hostname>").
type destinationRules map[string]*waypointv1alpha1.BackendPolicy

// hasSubset reports whether the backend's DestinationRule defines subset.
func (d destinationRules) hasSubset(key, subset string) bool {
	bp := d[key]
	return bp != nil && slices.ContainsFunc(bp.Subsets, func(s *waypointv1alpha1.Subset) bool { return s.Name == subset })
}

// serviceByHost finds the Service a host of an Istio object in namespace ns
// names: a short name ("reviews") is a Service of ns, anything else must be
// a Service FQDN (name.namespace.svc.<domain suffix>).
func (c *routeCompiler) serviceByHost(host, ns string) *corev1.Service {
	if !strings.Contains(host, ".") {
		host = serviceHostname(host, ns, c.mesh.DomainSuffix)
	}
	name, rest, ok := strings.Cut(host, ".")
	if !ok {
		return nil
	}
	svcNS, suffix, ok := strings.Cut(rest, ".")
	if !ok || suffix != "svc."+c.mesh.DomainSuffix {
		return nil
	}
	svc := c.services[svcNS+"/"+name]
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	return svc
}

// compileDestinationRules resolves every DestinationRule to its Service and
// compiles its traffic policy and subsets. Several rules for one host are
// merged as Istio merges them: ordered by namespace (the Service's own
// first, then the root namespace), age and name, the first one's
// trafficPolicy applies and subsets are appended, a repeated subset name
// keeping the first. exportTo is ignored: the waypoint is the only client.
func (c *routeCompiler) compileDestinationRules(s Snapshot) destinationRules {
	out := destinationRules{}
	byHost := map[string][]*networkingv1.DestinationRule{}
	for _, dr := range s.DestinationRules {
		diag := func(field, reason, msg string) {
			c.diags = append(c.diags, Diagnostic{Kind: KindDestinationRule, Namespace: dr.Namespace, Name: dr.Name, Field: field, Reason: reason, Message: msg})
		}
		if dr.Spec.GetWorkloadSelector() != nil {
			diag("spec.workloadSelector", "UnsupportedValue", "a DestinationRule with a workloadSelector applies to sidecars only; ignored by waypoints")
			continue
		}
		svc := c.serviceByHost(dr.Spec.GetHost(), dr.Namespace)
		if svc == nil {
			diag("spec.host", "HostNotFound", fmt.Sprintf("host %q does not name a Service (a short name in namespace %s or name.namespace.svc.%s); ignored", dr.Spec.GetHost(), dr.Namespace, c.mesh.DomainSuffix))
			continue
		}
		if svc.Namespace != dr.Namespace && dr.Namespace != c.mesh.RootNamespace {
			diag("spec.host", "UnsupportedValue", fmt.Sprintf("Service %s/%s is in another namespace: a DestinationRule applies to Services of its own namespace (or from the root namespace %s); ignored", svc.Namespace, svc.Name, c.mesh.RootNamespace))
			continue
		}
		k := svc.Namespace + "/" + svc.Name
		byHost[k] = append(byHost[k], dr)
	}
	members := c.podsByService(s)
	for k, drs := range byHost {
		svc := c.services[k]
		rank := func(dr *networkingv1.DestinationRule) int {
			switch dr.Namespace {
			case svc.Namespace:
				return 0
			case c.mesh.RootNamespace:
				return 1
			}
			return 2
		}
		slices.SortFunc(drs, func(a, b *networkingv1.DestinationRule) int {
			return cmp.Or(cmp.Compare(rank(a), rank(b)), a.CreationTimestamp.Compare(b.CreationTimestamp.Time),
				cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
		bp := &waypointv1alpha1.BackendPolicy{Namespace: svc.Namespace, Hostname: serviceHostname(svc.Name, svc.Namespace, c.mesh.DomainSuffix)}
		var host *networking.TrafficPolicy
		for i, dr := range drs {
			dc := &drCompiler{c: c, dr: dr}
			if i == 0 {
				host = dr.Spec.GetTrafficPolicy()
				bp.Policy = dc.policy(host, nil, "spec.trafficPolicy")
			} else if dr.Spec.GetTrafficPolicy() != nil {
				dc.diag("spec.trafficPolicy", "Conflicted", fmt.Sprintf("DestinationRule %s/%s for the same host takes precedence (own namespace first, then oldest); this trafficPolicy is ignored, its subsets are merged", drs[0].Namespace, drs[0].Name))
			}
			for j, sub := range dr.Spec.GetSubsets() {
				f := "spec.subsets[" + itoa(j) + "]"
				switch {
				case sub.GetName() == "":
					dc.diag(f+".name", "InvalidValue", "a subset needs a name; ignored")
					continue
				case bp.Subsets != nil && slices.ContainsFunc(bp.Subsets, func(s *waypointv1alpha1.Subset) bool { return s.Name == sub.GetName() }):
					dc.diag(f+".name", "Conflicted", fmt.Sprintf("subset %q is already defined for this host; ignored", sub.GetName()))
					continue
				}
				if err := validSelector(&typev1beta1.WorkloadSelector{MatchLabels: sub.GetLabels()}); err != nil {
					dc.diag(f+".labels", "InvalidSelector", err.Error()+"; subset ignored")
					continue
				}
				tp := sub.GetTrafficPolicy()
				if tp == nil {
					tp = &networking.TrafficPolicy{} // nothing to merge over the host's
				}
				out := &waypointv1alpha1.Subset{Name: sub.GetName(), Policy: dc.policy(host, tp, f+".trafficPolicy")}
				for _, p := range members[k] {
					if selects(sub.GetLabels(), p.Labels) {
						out.WorkloadUids = append(out.WorkloadUids, PodUID(c.mesh.ClusterID, p.Namespace, p.Name))
					}
				}
				slices.Sort(out.WorkloadUids)
				bp.Subsets = append(bp.Subsets, out)
			}
		}
		out[ServiceKey(bp.Namespace, bp.Hostname)] = bp
	}
	return out
}

// ServiceKey is "<namespace>/<hostname>", the resource name of a Service's
// Address and ServiceConfig.
func ServiceKey(namespace, hostname string) string { return namespace + "/" + hostname }

// workloadPod reports whether a pod gets a Workload (translateWorkloads'
// filter), so that its uid names an Address.
func workloadPod(p *corev1.Pod) bool {
	if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
		return false
	}
	return p.Status.PodIP != "" || len(p.Status.PodIPs) > 0
}

// podsByService lists the pods of every Service ("ns/name"): selected by
// its selector, or named by its EndpointSlices when it has none.
func (c *routeCompiler) podsByService(s Snapshot) map[string][]*corev1.Pod {
	out := map[string][]*corev1.Pod{}
	bySlice := map[string][]string{} // "ns/pod" -> services
	for _, es := range s.EndpointSlices {
		k := es.Namespace + "/" + es.Labels[discoveryv1.LabelServiceName]
		if svc := c.services[k]; svc == nil || len(svc.Spec.Selector) > 0 {
			continue
		}
		for _, ep := range es.Endpoints {
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
				pk := es.Namespace + "/" + ep.TargetRef.Name
				if !slices.Contains(bySlice[pk], k) {
					bySlice[pk] = append(bySlice[pk], k)
				}
			}
		}
	}
	byNS := map[string][]*corev1.Service{}
	for _, svc := range c.services {
		if len(svc.Spec.Selector) > 0 {
			byNS[svc.Namespace] = append(byNS[svc.Namespace], svc)
		}
	}
	for _, p := range s.Pods {
		if !workloadPod(p) {
			continue
		}
		for _, svc := range byNS[p.Namespace] {
			if selects(svc.Spec.Selector, p.Labels) {
				k := svc.Namespace + "/" + svc.Name
				out[k] = append(out[k], p)
			}
		}
		for _, k := range bySlice[p.Namespace+"/"+p.Name] {
			out[k] = append(out[k], p)
		}
	}
	return out
}

// drCompiler compiles the traffic policies of one DestinationRule.
type drCompiler struct {
	c  *routeCompiler
	dr *networkingv1.DestinationRule
}

func (d *drCompiler) diag(field, reason, msg string) {
	d.c.diags = append(d.c.diags, Diagnostic{Kind: KindDestinationRule, Namespace: d.dr.Namespace, Name: d.dr.Name, Field: field, Reason: reason, Message: msg})
}

func (d *drCompiler) ignored(field, what string) {
	d.diag(field, "UnsupportedValue", what+" is not supported by the waypoint; ignored")
}

// policy compiles host, with the sections sub sets replacing the host's
// (Istio's MergeTrafficPolicy: loadBalancer, connectionPool and
// outlierDetection each replace the host's when set). sub is nil for the
// host policy itself, whose diagnostics are reported then only.
func (d *drCompiler) policy(host, sub *networking.TrafficPolicy, field string) *waypointv1alpha1.TrafficPolicy {
	out := &waypointv1alpha1.TrafficPolicy{}
	quiet := &drCompiler{c: &routeCompiler{mesh: d.c.mesh}, dr: d.dr} // host sections already reported
	hostField := "spec.trafficPolicy"
	// pick says where a section comes from: the subset when it sets it,
	// else the host policy (reported already when compiling a subset).
	pick := func(fromSub bool) (*drCompiler, string) {
		switch {
		case fromSub:
			return d, field
		case sub != nil:
			return quiet, hostField
		}
		return d, hostField
	}
	lb := host.GetLoadBalancer()
	if sub.GetLoadBalancer() != nil {
		lb = sub.GetLoadBalancer()
	}
	dc, f := pick(sub.GetLoadBalancer() != nil)
	out.LoadBalancer = dc.loadBalancer(lb, f+".loadBalancer")
	cp := host.GetConnectionPool()
	if sub.GetConnectionPool() != nil {
		cp = sub.GetConnectionPool()
	}
	dc, f = pick(sub.GetConnectionPool() != nil)
	out.ConnectionPool = dc.connectionPool(cp, f+".connectionPool")
	od := host.GetOutlierDetection()
	if sub.GetOutlierDetection() != nil {
		od = sub.GetOutlierDetection()
	}
	dc, f = pick(sub.GetOutlierDetection() != nil)
	out.OutlierDetection = dc.outlierDetection(od, f+".outlierDetection")
	tp, tf := host, hostField
	if sub != nil {
		tp, tf = sub, field
	}
	if tp != nil {
		if m := tp.GetTls().GetMode(); tp.GetTls() != nil && m != networking.ClientTLSSettings_ISTIO_MUTUAL && m != networking.ClientTLSSettings_DISABLE {
			d.ignored(tf+".tls", "client TLS mode "+m.String()+" (the mesh always tunnels over HBONE mTLS)")
		}
		if len(tp.GetPortLevelSettings()) > 0 {
			d.ignored(tf+".portLevelSettings", "portLevelSettings")
		}
		if tp.GetTunnel() != nil {
			d.ignored(tf+".tunnel", "tunnel")
		}
		if tp.GetProxyProtocol() != nil {
			d.ignored(tf+".proxyProtocol", "proxyProtocol")
		}
		if tp.GetRetryBudget() != nil {
			d.ignored(tf+".retryBudget", "retryBudget (connectionPool.http.maxRetries is)")
		}
	}
	return out
}

func (d *drCompiler) loadBalancer(lb *networking.LoadBalancerSettings, field string) waypointv1alpha1.TrafficPolicy_LoadBalancer {
	if lb == nil {
		return waypointv1alpha1.TrafficPolicy_ROUND_ROBIN
	}
	if lb.GetLocalityLbSetting() != nil {
		d.ignored(field+".localityLbSetting", "localityLbSetting")
	}
	if lb.GetZoneAwareLbSetting() != nil {
		d.ignored(field+".zoneAwareLbSetting", "zoneAwareLbSetting")
	}
	if lb.GetWarmupDurationSecs() != nil || lb.GetWarmup() != nil {
		d.ignored(field+".warmup", "warmup")
	}
	switch {
	case lb.GetConsistentHash() != nil:
		d.diag(field+".consistentHash", "UnsupportedValue", "consistent hashing is not supported by the waypoint; ROUND_ROBIN is used")
		return waypointv1alpha1.TrafficPolicy_ROUND_ROBIN
	case lb.GetBackendUtilization() != nil:
		d.diag(field+".backendUtilization", "UnsupportedValue", "backend utilization balancing is not supported by the waypoint; ROUND_ROBIN is used")
		return waypointv1alpha1.TrafficPolicy_ROUND_ROBIN
	}
	switch lb.GetSimple() {
	case networking.LoadBalancerSettings_UNSPECIFIED, networking.LoadBalancerSettings_ROUND_ROBIN:
		return waypointv1alpha1.TrafficPolicy_ROUND_ROBIN
	case networking.LoadBalancerSettings_LEAST_REQUEST, networking.LoadBalancerSettings_LEAST_CONN:
		return waypointv1alpha1.TrafficPolicy_LEAST_REQUEST
	case networking.LoadBalancerSettings_RANDOM:
		return waypointv1alpha1.TrafficPolicy_RANDOM
	}
	d.diag(field+".simple", "UnsupportedValue", "load balancer "+lb.GetSimple().String()+" is not supported by the waypoint; ROUND_ROBIN is used")
	return waypointv1alpha1.TrafficPolicy_ROUND_ROBIN
}

// limit converts an Istio limit, where 0 means Envoy's default (unlimited
// for the settings compiled here), as does 0 in the waypoint's type.
func (d *drCompiler) limit(v int32, field string) uint32 {
	if v < 0 {
		d.diag(field, "InvalidValue", fmt.Sprintf("%d is negative; treated as unset (unlimited)", v))
		return 0
	}
	return uint32(v)
}

func (d *drCompiler) connectionPool(cp *networking.ConnectionPoolSettings, field string) *waypointv1alpha1.ConnectionPool {
	if cp == nil {
		return nil
	}
	out := &waypointv1alpha1.ConnectionPool{}
	if t := cp.GetTcp(); t != nil {
		f := field + ".tcp"
		out.MaxConnections = d.limit(t.GetMaxConnections(), f+".maxConnections")
		for name, set := range map[string]bool{"connectTimeout": t.GetConnectTimeout() != nil, "tcpKeepalive": t.GetTcpKeepalive() != nil,
			"maxConnectionDuration": t.GetMaxConnectionDuration() != nil, "idleTimeout": t.GetIdleTimeout() != nil} {
			if set {
				d.ignored(f+"."+name, name)
			}
		}
	}
	if h := cp.GetHttp(); h != nil {
		f := field + ".http"
		out.Http1MaxPendingRequests = d.limit(h.GetHttp1MaxPendingRequests(), f+".http1MaxPendingRequests")
		out.Http2MaxRequests = d.limit(h.GetHttp2MaxRequests(), f+".http2MaxRequests")
		out.MaxRequestsPerConnection = d.limit(h.GetMaxRequestsPerConnection(), f+".maxRequestsPerConnection")
		out.MaxRetries = d.limit(h.GetMaxRetries(), f+".maxRetries")
		for name, set := range map[string]bool{"idleTimeout": h.GetIdleTimeout() != nil, "useClientProtocol": h.GetUseClientProtocol(),
			"maxConcurrentStreams": h.GetMaxConcurrentStreams() != 0, "http2KeepAlive": h.GetHttp2KeepAlive() != nil,
			"h2UpgradePolicy": h.GetH2UpgradePolicy() != networking.ConnectionPoolSettings_HTTPSettings_DEFAULT} {
			if set {
				d.ignored(f+"."+name, name)
			}
		}
	}
	return out
}

// positiveDuration returns d, or def when d is unset or not positive (with a
// diagnostic for the latter).
func (d *drCompiler) positiveDuration(v *durationpb.Duration, def time.Duration, field string) *durationpb.Duration {
	if v == nil {
		return durationpb.New(def)
	}
	if err := v.CheckValid(); err != nil || v.AsDuration() <= 0 {
		d.diag(field, "InvalidValue", fmt.Sprintf("must be a positive duration; %s is used", def))
		return durationpb.New(def)
	}
	return proto.Clone(v).(*durationpb.Duration)
}

// outlierDetection maps Istio's fields onto Envoy's semantics as istiod
// does: consecutive5xxErrors defaults to 5 (0 disables it), the deprecated
// consecutiveErrors counts gateway errors only, consecutiveGatewayErrors is
// off unless set, and unset times and percentages take Envoy's defaults.
func (d *drCompiler) outlierDetection(od *networking.OutlierDetection, field string) *waypointv1alpha1.OutlierDetection {
	if od == nil {
		return nil
	}
	out := &waypointv1alpha1.OutlierDetection{
		Consecutive_5XxErrors: DefaultConsecutive5xxErrors,
		Interval:              d.positiveDuration(od.GetInterval(), DefaultOutlierInterval, field+".interval"),
		BaseEjectionTime:      d.positiveDuration(od.GetBaseEjectionTime(), DefaultBaseEjectionTime, field+".baseEjectionTime"),
		MaxEjectionPercent:    DefaultMaxEjectionPercent,
		MinHealthPercent:      DefaultMinHealthPercent,
	}
	if v := od.GetConsecutiveErrors(); v > 0 {
		out.ConsecutiveGatewayErrors, out.Consecutive_5XxErrors = uint32(v), 0
	}
	if v := od.GetConsecutive_5XxErrors(); v != nil {
		out.Consecutive_5XxErrors = v.GetValue()
	}
	if v := od.GetConsecutiveGatewayErrors(); v != nil {
		out.ConsecutiveGatewayErrors = v.GetValue()
	}
	switch v := od.GetMaxEjectionPercent(); {
	case v > 100 || v < 0:
		d.diag(field+".maxEjectionPercent", "InvalidValue", fmt.Sprintf("%d is not a percentage; %d is used", v, DefaultMaxEjectionPercent))
	case v > 0:
		out.MaxEjectionPercent = uint32(v)
	}
	switch v := od.GetMinHealthPercent(); {
	case v > 100 || v < 0:
		d.diag(field+".minHealthPercent", "InvalidValue", fmt.Sprintf("%d is not a percentage; %d is used", v, DefaultMinHealthPercent))
	default:
		out.MinHealthPercent = uint32(v)
	}
	for name, set := range map[string]bool{"splitExternalLocalOriginErrors": od.GetSplitExternalLocalOriginErrors(),
		"consecutiveLocalOriginFailures": od.GetConsecutiveLocalOriginFailures() != nil,
		"outlierDetectionHttpErrorCodes": len(od.GetOutlierDetectionHttpErrorCodes()) > 0,
		"failurePercentageThreshold":     od.GetFailurePercentageThreshold() != nil} {
		if set {
			d.ignored(field+"."+name, name)
		}
	}
	return out
}

// backendPolicies lists the policies of the backends sc's routes reference
// (the Service itself included), sorted by Service.
func backendPolicies(sc *waypointv1alpha1.ServiceConfig, drs destinationRules) []*waypointv1alpha1.BackendPolicy {
	if len(drs) == 0 {
		return nil
	}
	seen := map[string]bool{}
	var out []*waypointv1alpha1.BackendPolicy
	add := func(b *waypointv1alpha1.Backend) {
		if b == nil || b.Invalid {
			return
		}
		k := ServiceKey(b.Namespace, b.Hostname)
		if seen[k] {
			return
		}
		seen[k] = true
		if bp := drs[k]; bp != nil {
			out = append(out, bp)
		}
	}
	addFilters := func(fs []*waypointv1alpha1.HTTPFilter) {
		for _, f := range fs {
			add(f.GetRequestMirror().GetBackend())
		}
	}
	add(&waypointv1alpha1.Backend{Namespace: sc.Namespace, Hostname: sc.Hostname})
	for _, p := range sc.Ports {
		for _, b := range p.GetTcpRoute().GetBackends() {
			add(b.Backend)
		}
		for _, r := range p.HttpRoutes {
			addFilters(r.Filters)
			for _, b := range r.Backends {
				add(b.Backend)
				addFilters(b.Filters)
			}
		}
	}
	slices.SortFunc(out, func(a, b *waypointv1alpha1.BackendPolicy) int {
		return cmp.Compare(ServiceKey(a.Namespace, a.Hostname), ServiceKey(b.Namespace, b.Hostname))
	})
	return out
}

// SubsetSelector tells which pods the DestinationRule subsets of a
// snapshot may select, for callers that retranslate only changed Pods
// (pkg/controller): a ServiceConfig lists the workload uids of its subsets,
// so a change to such a pod changes it.
type SubsetSelector struct {
	services []*corev1.Service // hosts of DestinationRules with subsets
}

// NewSubsetSelector indexes the DestinationRules of s (its Pods are not
// read).
func NewSubsetSelector(s Snapshot) *SubsetSelector {
	out := &SubsetSelector{}
	if len(s.DestinationRules) == 0 {
		return out
	}
	s.Mesh = s.Mesh.withDefaults()
	c := &routeCompiler{mesh: s.Mesh, services: map[string]*corev1.Service{}}
	for _, svc := range s.Services {
		c.services[svc.Namespace+"/"+svc.Name] = svc
	}
	for _, dr := range s.DestinationRules {
		if len(dr.Spec.GetSubsets()) == 0 {
			continue
		}
		if svc := c.serviceByHost(dr.Spec.GetHost(), dr.Namespace); svc != nil && !slices.Contains(out.services, svc) {
			out.services = append(out.services, svc)
		}
	}
	return out
}

// Selects reports whether p, as it is, may belong to a subset: it is a
// pod of a Service that has subsets (selected by its selector; any pod of
// the namespace for a Service without one).
func (s *SubsetSelector) Selects(p *corev1.Pod) bool {
	for _, svc := range s.services {
		if svc.Namespace == p.Namespace && (len(svc.Spec.Selector) == 0 || selects(svc.Spec.Selector, p.Labels)) {
			return true
		}
	}
	return false
}

// SubsetWorkloads returns the workload uids the subsets of configs list.
func SubsetWorkloads(configs map[string]*waypointv1alpha1.ServiceConfig) map[string]bool {
	out := map[string]bool{}
	for _, sc := range configs {
		for _, bp := range sc.GetBackendPolicies() {
			for _, sub := range bp.GetSubsets() {
				for _, uid := range sub.GetWorkloadUids() {
					out[uid] = true
				}
			}
		}
	}
	return out
}
