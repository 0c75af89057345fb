package certmanager

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// ImpersonatedIdentityKey is the request metadata field that asks the CA for
// another workload's certificate (ztunnel in shared mode).
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// TokenSource returns the bearer token for the next CA call (ztunnel's
// projected service-account token with audience istio-ca).
type TokenSource func(ctx context.Context) (string, error)

// FileToken reads the token from path on every call, so a kubelet-rotated
// projected token is picked up.
func FileToken(path string) TokenSource {
	return func(context.Context) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("read token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
}

// CAClientOptions tune a CAClient.
type CAClientOptions struct {
	// Impersonate sets ImpersonatedIdentity to the requested identity (the
	// caller is a trusted node account, i.e. ztunnel).
	Impersonate bool
	// ClusterID is sent as the clusterid metadata when set.
	ClusterID string
}

// CAClient calls istio.v1.auth.IstioCertificateService/CreateCertificate. It
// is safe for concurrent use.
type CAClient struct {
	client pb.IstioCertificateServiceClient
	tokens TokenSource
	opts   CAClientOptions
}

// NewCAClient wraps a gRPC connection to the CA (see DialCA).
func NewCAClient(conn grpc.ClientConnInterface, tokens TokenSource, opts CAClientOptions) *CAClient {
	return &CAClient{client: pb.NewIstioCertificateServiceClient(conn), tokens: tokens, opts: opts}
}

// DialCA makes a gRPC client connection to the CA at addr (istiod:15012),
// verifying its serving certificate against roots for serverName.
func DialCA(addr string, roots *x509.CertPool, serverName string) (*grpc.ClientConn, error) {
	creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: serverName})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("dial ca %s: %w", addr, err)
	}
	return conn, nil
}

// Fetch implements Fetcher.
func (c *CAClient) Fetch(ctx context.Context, id spiffeid.ID, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	tok, err := c.tokens(ctx)
	if err != nil {
		return nil, err
	}
	md := metadata.Pairs("authorization", "Bearer "+tok)
	if c.opts.ClusterID != "" {
		md.Append("clusterid", c.opts.ClusterID)
	}
	req := &pb.IstioCertificateRequest{Csr: string(csrPEM), ValidityDuration: int64(ttl / time.Second)}
	if c.opts.Impersonate {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			ImpersonatedIdentityKey: structpb.NewStringValue(id.String()),
		}}
	}
	resp, err := c.client.CreateCertificate(metadata.NewOutgoingContext(ctx, md), req)
	if err != nil {
		return nil, fmt.Errorf("CreateCertificate: %w", err)
	}
	var chain []*x509.Certificate
	for i, p := range resp.GetCertChain() {
		certs, err := ParseCertificates([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("CreateCertificate: cert_chain[%d]: %w", i, err)
		}
		chain = append(chain, certs...)
	}
	if len(chain) == 0 {
		return nil, errors.New("CreateCertificate: empty cert_chain")
	}
	return chain, nil
}
