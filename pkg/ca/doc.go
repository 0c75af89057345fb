// Package ca is the mesh certificate authority that runs inside istiod-lite.
//
// It holds the CA keys (Istio's plug-in Secret `cacerts`, or a self-signed
// root generated once by the leader and stored in the Secret
// `istio-ca-secret`), signs workload leaf certificates (ECDSA P-256, one URI
// SAN `spiffe://<td>/ns/<ns>/sa/<sa>`), serves Istio's
// `istio.v1.auth.IstioCertificateService/CreateCertificate` over gRPC with
// TokenReview authentication and ztunnel's node-impersonation rules, and
// publishes the root bundle in the ConfigMap `istio-ca-root-cert` of every
// namespace.
//
// Only istiod-lite (cmd/istiod-lite and the control-plane packages) imports
// it; the data plane uses package certmanager instead.
//
// The pieces the integrator wires:
//
//	keys, _ := ca.EnsureSelfSignedRoot(ctx, cs, ns, ca.RootOptions{...}) // leader only
//	keys, _ := ca.WaitForKeys(ctx, cs, ns, interval)                     // every replica
//	authority, _ := ca.New(keys, ca.Options{...})
//	srv, _ := ca.NewServer(authority, ca.ServerOptions{...})
//	srv.Register(grpcServer)
//	mgr.Add(&ca.Reloader{...})                 // follows Secret changes (rotation)
//	(&ca.RootCertReconciler{...}).SetupWithManager(mgr)
package ca
