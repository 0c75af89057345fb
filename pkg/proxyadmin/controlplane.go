package proxyadmin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ambient-mesh/mesh/pkg/certmanager"
)

// ControlPlane names istiod-lite and the proxy's credentials for it, as the
// proxies' flags give them.
type ControlPlane struct {
	XDSAddress   string
	CAAddress    string // empty: XDSAddress
	ServerName   string // empty: the address host
	RootCertFile string
	TokenFile    string
	ClusterID    string
}

// ControlPlaneConns are the proxy's connections to istiod-lite: the CA and
// xDS, both over TLS to the mesh root, authenticated by the service-account
// token (re-read on every call).
type ControlPlaneConns struct {
	Roots  []*x509.Certificate
	Tokens certmanager.TokenSource
	CA     *grpc.ClientConn
	XDS    *grpc.ClientConn
}

// DialControlPlane reads the mesh root and makes the CA and xDS client
// connections (gRPC dials lazily: nothing is sent yet).
func DialControlPlane(cp ControlPlane) (*ControlPlaneConns, error) {
	pem, err := os.ReadFile(cp.RootCertFile)
	if err != nil {
		return nil, fmt.Errorf("read root certificate: %w", err)
	}
	roots, err := certmanager.ParseCertificates(pem)
	if err != nil || len(roots) == 0 {
		return nil, fmt.Errorf("parse root certificate %s: %d certificates, %v", cp.RootCertFile, len(roots), err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	caAddr := cp.CAAddress
	if caAddr == "" {
		caAddr = cp.XDSAddress
	}
	tokens := certmanager.FileToken(cp.TokenFile)
	caConn, err := certmanager.DialCA(caAddr, pool, ServerName(cp.ServerName, caAddr))
	if err != nil {
		return nil, err
	}
	xdsConn, err := grpc.NewClient(cp.XDSAddress,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: ServerName(cp.ServerName, cp.XDSAddress)})),
		grpc.WithPerRPCCredentials(bearer{tokens: tokens, clusterID: cp.ClusterID}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(200<<20)))
	if err != nil {
		_ = caConn.Close()
		return nil, fmt.Errorf("dial xds %s: %w", cp.XDSAddress, err)
	}
	return &ControlPlaneConns{Roots: roots, Tokens: tokens, CA: caConn, XDS: xdsConn}, nil
}

// ServerName is the name expected in istiod-lite's certificate: explicit,
// else the host of addr.
func ServerName(explicit, addr string) string {
	if explicit != "" {
		return explicit
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// bearer puts the projected token (re-read on every call) and the cluster
// id on each xDS RPC.
type bearer struct {
	tokens    certmanager.TokenSource
	clusterID string
}

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := b.tokens(ctx)
	if err != nil {
		return nil, err
	}
	md := map[string]string{"authorization": "Bearer " + tok}
	if b.clusterID != "" {
		md["clusterid"] = b.clusterID
	}
	return md, nil
}

func (bearer) RequireTransportSecurity() bool { return true }
