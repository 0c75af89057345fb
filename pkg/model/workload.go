package model

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
)

// PodUID is istiod's Workload uid for a pod: "<cluster>//Pod/<ns>/<name>".
func PodUID(clusterID, namespace, name string) string {
	return clusterID + "//Pod/" + namespace + "/" + name
}

// EndpointSliceUID is istiod's Workload uid for an endpoint of a selector-less
// Service: "<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>".
func EndpointSliceUID(clusterID, namespace, slice, ip string) string {
	return clusterID + "/discovery.k8s.io/EndpointSlice/" + namespace + "/" + slice + "/" + ip
}

// AmbientEnabled reports whether a pod is selected for ambient capture by the
// dataplane-mode labels (istio-cni's enablement selectors): the pod is labelled
// ambient, or its namespace is and the pod is not labelled none. Host-network
// pods are never captured. The Workload's tunnel protocol does not follow this
// but the redirection annotation, which the node agent sets once capture is in
// place.
func AmbientEnabled(ns *corev1.Namespace, pod *corev1.Pod) bool {
	if pod.Spec.HostNetwork {
		return false
	}
	switch pod.Labels[LabelDataplaneMode] {
	case DataplaneModeAmbient:
		return true
	case DataplaneModeNone:
		return false
	}
	return ns != nil && ns.Labels[LabelDataplaneMode] == DataplaneModeAmbient
}

func translateWorkloads(s Snapshot, idx *index, svcs []*serviceInfo, auths []*authzInfo) ([]*workloadapi.Workload, []Diagnostic) {
	var out []*workloadapi.Workload
	var diags []Diagnostic

	byKey := map[string]*serviceInfo{}
	byNamespace := map[string][]*serviceInfo{}
	for _, si := range svcs {
		byKey[si.source.Namespace+"/"+si.source.Name] = si
		byNamespace[si.source.Namespace] = append(byNamespace[si.source.Namespace], si)
	}
	// Selector-less Services reach pods through EndpointSlice targetRefs.
	podSlices := map[string][]*serviceInfo{} // "ns/pod" -> services
	for _, es := range s.EndpointSlices {
		si := byKey[es.Namespace+"/"+es.Labels[discoveryv1.LabelServiceName]]
		if si == nil || len(si.selector) > 0 {
			continue
		}
		for _, ep := range es.Endpoints {
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
				k := es.Namespace + "/" + ep.TargetRef.Name
				if !slices.Contains(podSlices[k], si) {
					podSlices[k] = append(podSlices[k], si)
				}
			}
		}
	}
	trustDomain := s.Mesh.TrustDomain
	if trustDomain == "cluster.local" {
		trustDomain = ""
	}

	for _, p := range s.Pods {
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			continue
		}
		podIPs := p.Status.PodIPs
		if len(podIPs) == 0 && p.Status.PodIP != "" {
			podIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
		}
		if len(podIPs) == 0 {
			continue // not scheduled or no sandbox yet
		}
		var addrs [][]byte
		bad := false
		for i, ip := range podIPs {
			a, err := netip.ParseAddr(ip.IP)
			if err != nil {
				diags = append(diags, Diagnostic{Kind: "Pod", Namespace: p.Namespace, Name: p.Name,
					Field: "status.podIPs[" + itoa(i) + "]", Reason: "InvalidAddress", Message: err.Error()})
				bad = true
				break
			}
			addrs = append(addrs, a.AsSlice())
		}
		if bad {
			continue
		}
		w := &workloadapi.Workload{
			Uid:            PodUID(s.Mesh.ClusterID, p.Namespace, p.Name),
			Name:           p.Name,
			Namespace:      p.Namespace,
			Addresses:      addrs,
			Network:        s.Mesh.Network,
			ServiceAccount: p.Spec.ServiceAccountName,
			Node:           p.Spec.NodeName,
			ClusterId:      s.Mesh.ClusterID,
			TrustDomain:    trustDomain,
			WorkloadType:   workloadapi.WorkloadType_POD,
			WorkloadName:   workloadName(p),
			Status:         workloadapi.WorkloadStatus_HEALTHY,
		}
		if l := idx.localities[p.Spec.NodeName]; l != nil {
			w.Locality = proto.Clone(l).(*workloadapi.Locality)
		}
		if !podReady(p) || p.DeletionTimestamp != nil {
			w.Status = workloadapi.WorkloadStatus_UNHEALTHY
		}
		if p.Spec.HostNetwork {
			w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
		}
		w.CanonicalName, w.CanonicalRevision = canonicalService(p.Labels, w.WorkloadName)
		if p.Annotations[AnnotationRedirection] == RedirectionEnabled {
			w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
		}

		var matched []*serviceInfo
		for _, si := range byNamespace[p.Namespace] {
			if len(si.selector) > 0 && selects(si.selector, p.Labels) {
				matched = append(matched, si)
			}
		}
		matched = append(matched, podSlices[p.Namespace+"/"+p.Name]...)
		if len(matched) > 0 {
			w.Services = map[string]*workloadapi.PortList{}
		}
		for _, si := range matched {
			pl := &workloadapi.PortList{}
			for _, port := range si.svc.Ports {
				target := port.TargetPort
				if name, ok := si.targetPortNames[port.ServicePort]; ok {
					tp, found := findPortName(p, name)
					if !found {
						continue // this pod does not serve the port
					}
					target = tp
				}
				pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: port.ServicePort, TargetPort: target})
			}
			w.Services[ServiceResourceName(si.svc)] = pl
		}

		// A waypoint's own pods never have a waypoint.
		if gw, ok := p.Labels[LabelGatewayName]; !ok || idx.waypoints[p.Namespace+"/"+gw] == nil {
			addr, d := idx.waypointFor("Pod", p.ObjectMeta, false)
			w.Waypoint = addr
			if d != nil {
				diags = append(diags, *d)
			}
		}
		w.AuthorizationPolicies = workloadPolicies(s, auths, p.Namespace, p.Labels)
		out = append(out, w)
	}

	for _, es := range s.EndpointSlices {
		out = append(out, endpointSliceWorkloads(s, es, byKey, trustDomain)...)
	}
	return out, diags
}

// endpointSliceWorkloads makes one Workload per endpoint that is not a pod,
// e.g. the manual endpoints of a selector-less Service.
func endpointSliceWorkloads(s Snapshot, es *discoveryv1.EndpointSlice, byKey map[string]*serviceInfo, trustDomain string) []*workloadapi.Workload {
	svcName, ok := es.Labels[discoveryv1.LabelServiceName]
	if !ok || es.AddressType == discoveryv1.AddressTypeFQDN {
		return nil
	}
	si := byKey[es.Namespace+"/"+svcName]
	if si == nil {
		return nil
	}
	pl := &workloadapi.PortList{}
	for _, p := range es.Ports {
		if p.Name == nil || p.Port == nil || p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		for _, sp := range si.svc.Ports {
			if si.portNames[sp.ServicePort] == *p.Name {
				pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: sp.ServicePort, TargetPort: uint32(*p.Port)})
				break
			}
		}
	}
	var out []*workloadapi.Workload
	seen := map[string]bool{}
	for _, ep := range es.Endpoints {
		if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
			continue // the pod's own Workload carries it
		}
		if len(ep.Addresses) == 0 || seen[ep.Addresses[0]] {
			continue
		}
		key := ep.Addresses[0]
		seen[key] = true
		var addrs [][]byte
		for _, a := range ep.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				addrs = nil
				break
			}
			addrs = append(addrs, ip.AsSlice())
		}
		if addrs == nil {
			continue
		}
		status := workloadapi.WorkloadStatus_UNHEALTHY
		if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
			status = workloadapi.WorkloadStatus_HEALTHY
		}
		out = append(out, &workloadapi.Workload{
			Uid:         EndpointSliceUID(s.Mesh.ClusterID, es.Namespace, es.Name, key),
			Name:        es.Name,
			Namespace:   es.Namespace,
			Addresses:   addrs,
			Network:     s.Mesh.Network,
			TrustDomain: trustDomain,
			ClusterId:   s.Mesh.ClusterID,
			Status:      status,
			// Opaque endpoints may overlap other IPs: treat as shared addresses.
			NetworkMode: workloadapi.NetworkMode_HOST_NETWORK,
			Services:    map[string]*workloadapi.PortList{ServiceResourceName(si.svc): pl},
		})
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func findPortName(p *corev1.Pod, name string) (uint32, bool) {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == name && (port.Protocol == "" || port.Protocol == corev1.ProtocolTCP) {
				return uint32(port.ContainerPort), true
			}
		}
	}
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			continue
		}
		for _, port := range c.Ports {
			if port.Name == name && (port.Protocol == "" || port.Protocol == corev1.ProtocolTCP) {
				return uint32(port.ContainerPort), true
			}
		}
	}
	return 0, false
}

var cronJobName = regexp.MustCompile(`(.+)-\d{8,10}$`)

// workloadName derives the controller name from a pod, as istiod's
// GetWorkloadMetaFromPod does: a ReplicaSet's Deployment, a Job's CronJob.
func workloadName(p *corev1.Pod) string {
	if wn, ok := p.Labels[LabelServiceWorkloadName]; ok {
		return wn
	}
	name := p.Name
	if p.GenerateName == "" {
		return name
	}
	for _, ref := range p.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		name = ref.Name
		switch {
		case ref.Kind == "ReplicaSet" && p.Labels["pod-template-hash"] != "" && strings.HasSuffix(ref.Name, p.Labels["pod-template-hash"]):
			name = strings.TrimSuffix(ref.Name, "-"+p.Labels["pod-template-hash"])
		case ref.Kind == "Job":
			if m := cronJobName.FindStringSubmatch(ref.Name); len(m) == 2 {
				name = m[1]
			}
		}
		break
	}
	if name == "" {
		return p.Name
	}
	return name
}

// canonicalService returns the canonical service name and revision from the
// usual labels, in istio's order, defaulting to the workload name and "latest".
func canonicalService(l map[string]string, workload string) (string, string) {
	name, rev := workload, "latest"
	for _, k := range []string{"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"} {
		if v, ok := l[k]; ok {
			name = v
			break
		}
	}
	for _, k := range []string{"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"} {
		if v, ok := l[k]; ok {
			rev = v
			break
		}
	}
	return name, rev
}

// selects reports whether every label of sel is in l (a matchLabels selector).
func selects(sel, l map[string]string) bool {
	for k, v := range sel {
		if lv, ok := l[k]; !ok || lv != v {
			return false
		}
	}
	return true
}
