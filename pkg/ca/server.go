package ca

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// ImpersonatedIdentityKey is the request metadata field ztunnel sets to ask
// for another workload's certificate.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// ServerOptions configure the CreateCertificate service.
type ServerOptions struct {
	// Authenticator checks the caller's bearer token (required; in istiod-lite
	// a *TokenReviewAuthenticator).
	Authenticator Authenticator
	// Pods backs the impersonation rule (required).
	Pods Pods
	// TrustedNodeAccounts ("ns/sa") may impersonate identities of pods on
	// their own node. Default: SystemNamespace + "/ztunnel".
	TrustedNodeAccounts []string
	// SystemNamespace is istiod-lite's namespace; default istio-system.
	SystemNamespace string
	Logger          *zap.Logger
}

// Server implements istio.v1.auth.IstioCertificateService. It holds no
// per-request state; every call may run concurrently.
type Server struct {
	pb.UnimplementedIstioCertificateServiceServer

	ca      *CA
	authn   Authenticator
	pods    Pods
	trusted []string
	log     *zap.Logger
}

// NewServer builds the service for ca.
func NewServer(ca *CA, opts ServerOptions) (*Server, error) {
	if opts.Authenticator == nil || opts.Pods == nil {
		return nil, errors.New("ca: server needs an Authenticator and Pods")
	}
	if opts.SystemNamespace == "" {
		opts.SystemNamespace = "istio-system"
	}
	if opts.TrustedNodeAccounts == nil {
		opts.TrustedNodeAccounts = []string{opts.SystemNamespace + "/ztunnel"}
	}
	for _, a := range opts.TrustedNodeAccounts {
		if ns, sa, ok := strings.Cut(a, "/"); !ok || ns == "" || sa == "" {
			return nil, fmt.Errorf("ca: trusted node account %q is not ns/sa", a)
		}
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Server{ca: ca, authn: opts.Authenticator, pods: opts.Pods, trusted: opts.TrustedNodeAccounts, log: log.Named("ca")}, nil
}

// Register adds the service to g.
func (s *Server) Register(g *grpc.Server) { pb.RegisterIstioCertificateServiceServer(g, s) }

// CreateCertificate authenticates the caller, decides which identity it may
// get, validates the CSR and signs it. A refusal's status message starts with
// the rule that failed (authn.*, impersonation.*, csr.*, ttl).
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	start := time.Now()
	caller, id, err := s.authorize(ctx, req)
	var issued *Issued
	if err == nil {
		issued, err = s.ca.Sign([]byte(req.GetCsr()), id, time.Duration(req.GetValidityDuration())*time.Second)
	}
	if err != nil {
		var re *RuleError
		if !errors.As(err, &re) {
			re = refuse(codes.Internal, "sign", "%v", err)
		}
		fields := []zap.Field{zap.String("rule", re.Rule), zap.String("code", re.Code.String()), zap.String("reason", re.Msg)}
		if caller != nil {
			fields = append(fields, zap.Stringer("caller", caller))
		}
		if id != (spiffeid.ID{}) {
			fields = append(fields, zap.Stringer("identity", id))
		}
		s.log.Info("certificate request refused", fields...)
		return nil, status.Error(re.Code, re.Error())
	}
	s.log.Info("certificate issued",
		zap.Stringer("identity", id),
		zap.String("serial", issued.Leaf.SerialNumber.Text(16)),
		zap.Time("expiry", issued.Leaf.NotAfter),
		zap.Stringer("caller", caller),
		zap.Duration("took", time.Since(start)))
	return &pb.IstioCertificateResponse{CertChain: issued.Chain}, nil
}

func (s *Server) authorize(ctx context.Context, req *pb.IstioCertificateRequest) (*Caller, spiffeid.ID, error) {
	token, err := bearer(ctx)
	if err != nil {
		return nil, spiffeid.ID{}, err
	}
	caller, err := s.authn.Authenticate(ctx, token)
	if err != nil {
		return nil, spiffeid.ID{}, err
	}
	own, err := spiffeid.FromSegments(s.ca.TrustDomain(), "ns", caller.Namespace, "sa", caller.ServiceAccount)
	if err != nil {
		return caller, spiffeid.ID{}, refuse(codes.InvalidArgument, "authn.identity", "caller %s has no valid SPIFFE identity: %v", caller, err)
	}
	imp := req.GetMetadata().GetFields()[ImpersonatedIdentityKey].GetStringValue()
	if imp == "" || imp == own.String() {
		return caller, own, nil
	}
	id, ns, sa, err := s.parseIdentity(imp)
	if err != nil {
		return caller, spiffeid.ID{}, err
	}
	if !slices.Contains(s.trusted, caller.String()) {
		return caller, id, refuse(codes.PermissionDenied, "impersonation.trusted", "caller %s is not a trusted node account %v", caller, s.trusted)
	}
	if caller.PodName == "" || caller.PodUID == "" {
		return caller, id, refuse(codes.PermissionDenied, "impersonation.bound-pod", "caller %s token is not bound to a pod", caller)
	}
	pod, err := s.pods.Pod(ctx, caller.Namespace, caller.PodName)
	if err != nil {
		return caller, id, refuse(codes.Unavailable, "impersonation.lookup", "%v", err)
	}
	if pod == nil || pod.UID != caller.PodUID || podServiceAccount(pod) != caller.ServiceAccount {
		return caller, id, refuse(codes.PermissionDenied, "impersonation.bound-pod", "caller pod %s/%s (uid %s, sa %s) does not exist", caller.Namespace, caller.PodName, caller.PodUID, caller.ServiceAccount)
	}
	node := pod.Spec.NodeName
	if node == "" {
		return caller, id, refuse(codes.PermissionDenied, "impersonation.node", "caller pod %s/%s is not on a node", caller.Namespace, caller.PodName)
	}
	ok, err := s.pods.OnNode(ctx, node, ns, sa)
	if err != nil {
		return caller, id, refuse(codes.Unavailable, "impersonation.lookup", "%v", err)
	}
	if !ok {
		return caller, id, refuse(codes.PermissionDenied, "impersonation.node", "no pod of service account %s/%s runs on the caller's node %q", ns, sa, node)
	}
	return caller, id, nil
}

func (s *Server) parseIdentity(v string) (spiffeid.ID, string, string, error) {
	id, err := spiffeid.FromString(v)
	if err != nil {
		return spiffeid.ID{}, "", "", refuse(codes.InvalidArgument, "impersonation.identity", "%s %q is not a SPIFFE ID: %v", ImpersonatedIdentityKey, v, err)
	}
	if id.TrustDomain() != s.ca.TrustDomain() {
		return spiffeid.ID{}, "", "", refuse(codes.PermissionDenied, "impersonation.identity", "%s %q is outside trust domain %s", ImpersonatedIdentityKey, v, s.ca.TrustDomain())
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" || seg[1] == "" || seg[3] == "" {
		return spiffeid.ID{}, "", "", refuse(codes.InvalidArgument, "impersonation.identity", "%s %q is not spiffe://<td>/ns/<ns>/sa/<sa>", ImpersonatedIdentityKey, v)
	}
	return id, seg[1], seg[3], nil
}

func bearer(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok && tok != "" {
			return tok, nil
		}
	}
	return "", refuse(codes.Unauthenticated, "authn.bearer", "no Bearer token in the authorization metadata")
}
