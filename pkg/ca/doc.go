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
//	mgr.Add(&ca.RootRotator{...})             // leader only: staged root rotation, pruning
//	keys, _ := ca.WaitForKeys(ctx, cs, ns, interval)                     // every replica
//	authority, _ := ca.New(keys, ca.Options{...})
//	srv, _ := ca.NewServer(authority, ca.ServerOptions{
//		Authenticator: &ca.CachingAuthenticator{Next: &ca.TokenReviewAuthenticator{Client: cs}},
//		Pods:          ca.ClientPods{Reader: mgr.GetClient()},
//	})
//	srv.Register(grpcServer) // grpcServer uses authority.ServerTLSConfig("istiod.<ns>.svc")
//	mgr.Add(&ca.Reloader{...})               // every replica: follows the Secret
//	(&ca.RootCertReconciler{...}).SetupWithManager(mgr, ca.RootsChangedChannel(authority))
//
// Refusals are gRPC statuses whose message starts with the rule that failed:
// authn.bearer, authn.token, authn.audience, authn.serviceaccount
// (Unauthenticated); impersonation.trusted, impersonation.bound-pod,
// impersonation.node, csr.identity (PermissionDenied); csr.parse,
// csr.signature, csr.key, csr.san, ttl, impersonation.identity
// (InvalidArgument, or PermissionDenied for a foreign trust domain);
// authn.tokenreview, impersonation.lookup (Unavailable).
package ca
