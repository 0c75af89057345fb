package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ambient-mesh/mesh/pkg/cni"
	"github.com/ambient-mesh/mesh/pkg/enroll"
	"github.com/ambient-mesh/mesh/pkg/redirect"
	"github.com/ambient-mesh/mesh/pkg/zds"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"istio.io/istio/pkg/zdsapi"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Config is what the agent needs; cmd/ambient-cni fills it from flags.
type Config struct {
	// NodeName is this node; the agent reads only pods scheduled here.
	NodeName string
	// CNISocket is where the plugin reaches the agent (cni.DefaultAgentSocket).
	CNISocket string
	// ZDSSocket is where ztunnel connects (zds.DefaultSocketPath).
	ZDSSocket string
	// NetnsDir holds the runtime's pinned pod netns (/var/run/netns).
	NetnsDir string
	// HostNetns is the node's netns, where the probe SNAT rules go; empty
	// means the agent's own (it runs with hostNetwork). Tests set another.
	HostNetns string
	// DNSCapture redirects pods' DNS to ztunnel (Istio's default: on).
	DNSCapture bool
	// Workers reconcile pods in parallel (default 4).
	Workers int
	// Installer, if set, puts the plugin into the node's CNI chain once the
	// agent serves it, and takes it out when the agent stops.
	Installer *cni.Installer
	// ReinstallInterval is how often the installer re-checks (default 5 s).
	ReinstallInterval time.Duration
	// DaemonSetNamespace and DaemonSetName name the agent's own DaemonSet.
	// On exit the agent takes the plugin out of the chain only when that
	// DaemonSet is gone or being deleted (an uninstall). When it is still
	// there (an upgrade, a restart, an eviction) the plugin stays, and pods
	// created meanwhile wait, failing their ADD, for the next agent instead
	// of starting uncaptured. Empty DaemonSetName: always take it out.
	DaemonSetNamespace, DaemonSetName string
}

// Agent is the node agent. Its pods map is the set of pods it captured, by
// UID. Concurrency: mu guards pods; podLocks serialises all work on one pod
// (the CNI handler and the workers), so capture and release of one pod never
// overlap; the workqueue never hands one key to two workers at once.
type Agent struct {
	cfg    Config
	log    *zap.Logger
	client kubernetes.Interface
	rules  *redirect.PodRules
	host   *redirect.HostRules
	zds    *zds.Server
	index  *NetnsIndex
	hostNS netns.NsHandle // netns.None(): the current one

	pods       listersv1.PodLister
	namespaces listersv1.NamespaceLister
	queue      workqueue.TypedRateLimitingInterface[string]

	mu       sync.Mutex
	captured map[ktypes.UID]*podState
	podLocks keyedMutex
}

// podState is a pod the agent captured.
type podState struct {
	key   string // namespace/name
	path  string // netns path
	netns *os.File
	ips   []netip.Addr
}

// New returns an agent using client, which must be allowed to get, list and
// watch pods and namespaces and patch pods.
func New(cfg Config, client kubernetes.Interface, log *zap.Logger) *Agent {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.ReinstallInterval <= 0 {
		cfg.ReinstallInterval = 5 * time.Second
	}
	a := &Agent{
		cfg:      cfg,
		log:      log.Named("nodeagent"),
		client:   client,
		rules:    redirect.NewPodRules(redirect.PodConfig{DNSCapture: cfg.DNSCapture}, log),
		host:     redirect.NewHostRules(log),
		index:    &NetnsIndex{Dir: cfg.NetnsDir},
		hostNS:   netns.None(),
		captured: map[ktypes.UID]*podState{},
	}
	a.zds = zds.NewServer(cfg.ZDSSocket, zds.ServerOptions{Log: log, OnSynced: a.onZtunnelSynced})
	return a
}

// Start runs the agent until ctx is done: it watches, serves the plugin and
// ztunnel, and keeps the plugin installed. On ctx done it first takes the
// plugin out of the chain, then stops serving. Captured pods stay captured:
// their rules stay in place, so an agent restart (or upgrade) does not
// disturb them.
func (a *Agent) Start(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.cfg.HostNetns != "" {
		h, err := netns.GetFromPath(a.cfg.HostNetns)
		if err != nil {
			return fmt.Errorf("nodeagent: open host netns: %w", err)
		}
		defer h.Close()
		a.hostNS = h
	}
	factory := informers.NewSharedInformerFactoryWithOptions(a.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
		}))
	nsFactory := informers.NewSharedInformerFactory(a.client, 0)
	podInf := factory.Core().V1().Pods()
	nsInf := nsFactory.Core().V1().Namespaces()
	a.pods, a.namespaces = podInf.Lister(), nsInf.Lister()
	a.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 10*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods"})
	defer a.queue.ShutDown()

	podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { a.enqueuePod(o) },
		UpdateFunc: func(_, o any) { a.enqueuePod(o) },
		DeleteFunc: func(o any) { a.enqueuePod(o) },
	})
	nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) { a.enqueueNamespace(o) },
		UpdateFunc: func(old, o any) {
			if old.(*corev1.Namespace).Labels[enroll.LabelDataplaneMode] != o.(*corev1.Namespace).Labels[enroll.LabelDataplaneMode] {
				a.enqueueNamespace(o)
			}
		},
	})
	factory.Start(ctx.Done())
	nsFactory.Start(ctx.Done())
	defer factory.Shutdown()
	defer nsFactory.Shutdown()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("nodeagent: cache of %v did not sync", typ)
		}
	}
	for typ, ok := range nsFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("nodeagent: cache of %v did not sync", typ)
		}
	}
	if err := a.installHostRules(); err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	zdsCtx, stopZDS := context.WithCancel(context.WithoutCancel(ctx))
	defer stopZDS()
	zdsErr := make(chan error, 1)
	wg.Go(func() { zdsErr <- a.zds.Start(zdsCtx) })

	for range a.cfg.Workers {
		wg.Go(func() {
			for a.processNext(ctx) {
			}
		})
	}

	srv, ln, err := a.listenCNI()
	if err != nil {
		return err
	}
	wg.Go(func() { srv.Serve(ln) })
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()

	installDone := make(chan error, 1)
	if a.cfg.Installer != nil {
		// The installer outlives ctx only long enough to uninstall.
		wg.Go(func() { installDone <- a.cfg.Installer.Run(ctx, a.cfg.ReinstallInterval, nil, a.uninstalling) })
	} else {
		installDone <- nil
	}
	a.log.Info("node agent ready", zap.String("node", a.cfg.NodeName), zap.String("cni_socket", a.cfg.CNISocket), zap.String("zds_socket", a.cfg.ZDSSocket))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-zdsErr:
		if runErr == nil {
			runErr = errors.New("nodeagent: zds server stopped")
		}
		cancel() // a failed agent must not stay in the chain
	}
	// Stop order: out of the CNI chain first (the installer sees ctx), then
	// (deferred) stop serving the plugin, then ztunnel.
	uninstallErr := <-installDone
	a.queue.ShutDown()
	if uninstallErr != nil {
		runErr = errors.Join(runErr, fmt.Errorf("nodeagent: uninstall plugin: %w", uninstallErr))
	}
	return runErr
}

// uninstalling reports whether the agent's DaemonSet is gone or being
// deleted; when it cannot tell, it says yes (a plugin left without an agent
// would block every pod's start on the node).
func (a *Agent) uninstalling() bool {
	if a.cfg.DaemonSetName == "" {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ds, err := a.client.AppsV1().DaemonSets(a.cfg.DaemonSetNamespace).Get(ctx, a.cfg.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		if !apierrors.IsNotFound(err) {
			a.log.Warn("cannot tell an uninstall from a restart; uninstalling", zap.Error(err))
		}
		return true
	}
	return ds.DeletionTimestamp != nil
}

func (a *Agent) listenCNI() (*http.Server, net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(a.cfg.CNISocket), 0o755); err != nil {
		return nil, nil, fmt.Errorf("nodeagent: socket dir: %w", err)
	}
	if err := os.Remove(a.cfg.CNISocket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("nodeagent: remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", a.cfg.CNISocket)
	if err != nil {
		return nil, nil, fmt.Errorf("nodeagent: listen on %s: %w", a.cfg.CNISocket, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+cni.PathAdd, a.handleAdd)
	mux.HandleFunc("POST "+cni.PathDel, a.handleDel)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln, nil
}

// installHostRules writes the probe SNAT sets with the IPs of the pods that
// are annotated as captured (level-based: a restart rebuilds them).
func (a *Agent) installHostRules() error {
	pods, err := a.pods.List(labels.Everything())
	if err != nil {
		return err
	}
	var ips []netip.Addr
	for _, p := range pods {
		if enroll.CurrentState(p) != enroll.NotCaptured {
			ips = append(ips, podIPs(p)...)
		}
	}
	if err := a.host.Install(a.hostNS, ips); err != nil {
		return fmt.Errorf("nodeagent: install host probe rules: %w", err)
	}
	return nil
}

func (a *Agent) enqueuePod(o any) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	if p, ok := o.(*corev1.Pod); ok {
		a.queue.Add(p.Namespace + "/" + p.Name)
	}
}

func (a *Agent) enqueueNamespace(o any) {
	ns, ok := o.(*corev1.Namespace)
	if !ok {
		return
	}
	pods, err := a.pods.Pods(ns.Name).List(labels.Everything())
	if err != nil {
		return
	}
	for _, p := range pods {
		a.queue.Add(p.Namespace + "/" + p.Name)
	}
}

// onZtunnelSynced requeues the pods a ztunnel just acknowledged, so their
// annotation moves from pending to enabled.
func (a *Agent) onZtunnelSynced(uids []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, uid := range uids {
		if st, ok := a.captured[ktypes.UID(uid)]; ok && a.queue != nil {
			a.queue.Add(st.key)
		}
	}
}

func (a *Agent) processNext(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	if err := a.reconcile(ctx, key); err != nil {
		a.log.Warn("reconcile failed; retrying", zap.String("pod", key), zap.Error(err))
		a.queue.AddRateLimited(key)
		return true
	}
	a.queue.Forget(key)
	return true
}

// reconcile brings one pod to what enroll.Reconcile wants.
func (a *Agent) reconcile(ctx context.Context, key string) error {
	unlock := a.podLocks.lock(key)
	defer unlock()
	nsName, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := a.pods.Pods(nsName).Get(name)
	if apierrors.IsNotFound(err) {
		a.forgetKey(key)
		return nil
	}
	if err != nil {
		return err
	}
	ns, err := a.namespaces.Get(nsName)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if ns == nil || err != nil {
		ns = nil
	}
	action, _ := enroll.Reconcile(ns, pod)
	a.mu.Lock()
	st, known := a.captured[pod.UID]
	a.mu.Unlock()
	if action == enroll.None && enroll.CurrentState(pod) != enroll.NotCaptured && !known {
		action = enroll.Capture // captured before this agent started: take it over
	}
	switch action {
	case enroll.Capture:
		ips := podIPs(pod)
		if len(ips) == 0 {
			return nil // the CNI ADD, or the IP's arrival, brings it back
		}
		path := ""
		if known {
			path = st.path
		} else if path, err = a.index.Find(ips...); err != nil {
			return fmt.Errorf("find netns of %s: %w", key, err)
		}
		_, err := a.capture(ctx, pod, path, ips)
		return err
	case enroll.Release:
		return a.release(ctx, pod)
	case enroll.Forget:
		a.forget(pod.UID)
	}
	return nil
}

// capture installs the rules in the netns at path, adds the pod to the probe
// set and to ztunnel, and annotates it. It returns the annotation value.
func (a *Agent) capture(ctx context.Context, pod *corev1.Pod, path string, ips []netip.Addr) (string, error) {
	a.mu.Lock()
	st, known := a.captured[pod.UID]
	a.mu.Unlock()
	if !known || st.path != path {
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("open netns %s: %w", path, err)
		}
		st = &podState{key: pod.Namespace + "/" + pod.Name, path: path, netns: f, ips: ips}
	}
	if err := a.rules.Install(netns.NsHandle(st.netns.Fd())); err != nil {
		if !known {
			st.netns.Close()
		}
		return "", fmt.Errorf("install capture rules in %s: %w", path, err)
	}
	if err := a.host.AddPods(a.hostNS, ips...); err != nil {
		return "", fmt.Errorf("add pod to the probe set: %w", err)
	}
	a.mu.Lock()
	old, replaced := a.captured[pod.UID]
	a.captured[pod.UID] = st
	a.mu.Unlock()

	value := enroll.RedirectionEnabled
	err := a.zds.Add(zds.Workload{UID: string(pod.UID), Netns: st.netns, Info: &zdsapi.WorkloadInfo{
		Name: pod.Name, Namespace: pod.Namespace, ServiceAccount: pod.Spec.ServiceAccountName,
	}})
	if replaced && old != st {
		old.netns.Close() // only now: the zds set held it until Add replaced it
	}
	switch {
	case errors.Is(err, zds.ErrNotConnected):
		value = enroll.RedirectionPending
	case err != nil:
		return "", err
	}
	if pod.Annotations[enroll.AnnotationRedirection] != value {
		if err := a.annotate(ctx, pod, &value); err != nil {
			return "", err
		}
	}
	return value, nil
}

// release undoes capture for a pod that stays: ztunnel drops it, the rules go.
func (a *Agent) release(ctx context.Context, pod *corev1.Pod) error {
	if err := a.zds.Del(string(pod.UID)); err != nil {
		return err
	}
	a.mu.Lock()
	st, known := a.captured[pod.UID]
	a.mu.Unlock()
	ips := podIPs(pod)
	var f *os.File
	if known {
		f = st.netns
	} else if path, err := a.index.Find(ips...); err == nil {
		if f, err = os.Open(path); err != nil {
			return err
		}
		defer f.Close()
	}
	if f != nil {
		if err := a.rules.Remove(netns.NsHandle(f.Fd())); err != nil {
			return fmt.Errorf("remove capture rules: %w", err)
		}
	}
	if err := a.host.RemovePods(a.hostNS, ips...); err != nil {
		return fmt.Errorf("remove pod from the probe set: %w", err)
	}
	if err := a.annotate(ctx, pod, nil); err != nil {
		return err
	}
	a.forget(pod.UID)
	return nil
}

// forget drops a pod whose netns is going away: ztunnel and the probe set
// let it go, the rules go with the netns.
func (a *Agent) forget(uid ktypes.UID) {
	a.mu.Lock()
	st, ok := a.captured[uid]
	delete(a.captured, uid)
	a.mu.Unlock()
	if err := a.zds.Del(string(uid)); err != nil {
		a.log.Warn("ztunnel refused delete", zap.String("uid", string(uid)), zap.Error(err))
	}
	if ok {
		if err := a.host.RemovePods(a.hostNS, st.ips...); err != nil {
			a.log.Warn("remove pod from the probe set", zap.Error(err))
		}
		st.netns.Close()
	}
}

func (a *Agent) forgetKey(key string) {
	a.mu.Lock()
	var uids []ktypes.UID
	for uid, st := range a.captured {
		if st.key == key {
			uids = append(uids, uid)
		}
	}
	a.mu.Unlock()
	for _, uid := range uids {
		a.forget(uid)
	}
}

// annotate sets (value != nil) or removes the redirection annotation.
func (a *Agent) annotate(ctx context.Context, pod *corev1.Pod, value *string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{enroll.AnnotationRedirection: value}}})
	if err != nil {
		return err
	}
	_, err = a.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, ktypes.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("annotate pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// handleAdd serves the plugin's ADD: capture now, before the pod's
// containers start, or say why not.
func (a *Agent) handleAdd(w http.ResponseWriter, r *http.Request) {
	var ev cni.PodEvent
	if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
		reply(w, http.StatusBadRequest, cni.AddResponse{Error: "parse request: " + err.Error()})
		return
	}
	resp, err := a.cniAdd(r.Context(), ev)
	if err != nil {
		a.log.Error("capture at pod start failed", zap.String("pod", ev.Namespace+"/"+ev.Name), zap.Error(err))
		reply(w, http.StatusInternalServerError, cni.AddResponse{Error: err.Error()})
		return
	}
	reply(w, http.StatusOK, resp)
}

func (a *Agent) cniAdd(ctx context.Context, ev cni.PodEvent) (cni.AddResponse, error) {
	key := ev.Namespace + "/" + ev.Name
	unlock := a.podLocks.lock(key)
	defer unlock()
	pod, err := a.pods.Pods(ev.Namespace).Get(ev.Name)
	if err != nil || (ev.UID != "" && string(pod.UID) != ev.UID) {
		// The watch may lag the pod's creation: ask the API server.
		if pod, err = a.client.CoreV1().Pods(ev.Namespace).Get(ctx, ev.Name, metav1.GetOptions{}); err != nil {
			return cni.AddResponse{}, fmt.Errorf("get pod: %w", err)
		}
	}
	ns, err := a.namespaces.Get(ev.Namespace)
	if err != nil {
		if ns, err = a.client.CoreV1().Namespaces().Get(ctx, ev.Namespace, metav1.GetOptions{}); err != nil {
			return cni.AddResponse{}, fmt.Errorf("get namespace: %w", err)
		}
	}
	d := enroll.Select(ns, pod)
	if !d.Capture {
		return cni.AddResponse{Reason: string(d.Reason)}, nil
	}
	value, err := a.capture(ctx, pod, ev.Netns, ev.IPs)
	if err != nil {
		// No half-captured pod: undo what capture did, and fail the ADD.
		a.forget(pod.UID)
		if f, oerr := os.Open(ev.Netns); oerr == nil {
			a.rules.Remove(netns.NsHandle(f.Fd())) //nolint:errcheck // best effort on a failing ADD
			f.Close()
		}
		return cni.AddResponse{}, err
	}
	return cni.AddResponse{Captured: true, Reason: string(d.Reason), Redirection: value}, nil
}

// handleDel serves the plugin's DEL: the sandbox is going, so ztunnel and
// the probe set let the pod go.
func (a *Agent) handleDel(w http.ResponseWriter, r *http.Request) {
	var ev cni.PodEvent
	if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
		reply(w, http.StatusBadRequest, cni.AddResponse{Error: err.Error()})
		return
	}
	unlock := a.podLocks.lock(ev.Namespace + "/" + ev.Name)
	defer unlock()
	if ev.UID != "" {
		a.forget(ktypes.UID(ev.UID))
	} else {
		a.forgetKey(ev.Namespace + "/" + ev.Name)
	}
	reply(w, http.StatusOK, cni.AddResponse{})
}

func reply(w http.ResponseWriter, status int, v cni.AddResponse) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the plugin sees a short reply
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// keyedMutex is a mutex per key; entries are dropped when unused.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedEntry{}
	}
	e := k.locks[key]
	if e == nil {
		e = &keyedEntry{}
		k.locks[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
