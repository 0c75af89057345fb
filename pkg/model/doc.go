// Package model translates a snapshot of Kubernetes objects into the
// resources istiod-lite serves to ztunnels over delta xDS: the
// istio.workload.Address resources (one per Workload, one per Service) and the
// istio.security.Authorization resources derived from AuthorizationPolicy and
// PeerAuthentication.
//
// Everything here is a pure function of a [Snapshot]: no clients, no caches,
// no clocks. The same snapshot always produces the same [Resources], keyed by
// xDS resource name, so the xDS server can diff two results and push only what
// changed. Istio's naming and field conventions are matched exactly (see
// shared/reference/istio-ambient-facts.md §3 and §6); upstream istiod code was
// read for facts only.
//
// Imported by the istiod-lite controller (which fills the snapshot from its
// informers) and by tests and benchmarks that build snapshots by hand.
package model
