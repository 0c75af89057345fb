package certmanager

import (
	"crypto/tls"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// ALPN is HBONE's only application protocol.
const ALPN = "h2"

// ServerTLSConfig is the HBONE server (inbound, port 15008) config for the
// local workload id: it presents id's certificate (fetched at RealTime
// priority during the handshake if needed), requires a client certificate
// that chains to the mesh bundle, and authorizes any identity of the same
// trust domain (which identity may connect is AuthorizationPolicy's job).
// TLS 1.3 only, ALPN h2, no session tickets.
func (m *Manager) ServerTLSConfig(id spiffeid.ID) *tls.Config {
	return m.ServerTLSConfigWith(id, tlsconfig.AuthorizeMemberOf(m.td))
}

// ServerTLSConfigWith is ServerTLSConfig with another client authorizer.
func (m *Manager) ServerTLSConfigWith(id spiffeid.ID, authorize tlsconfig.Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		SessionTicketsDisabled: true,
		ClientAuth:             tls.RequireAnyClientCert,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := m.Fetch(hello.Context(), id)
			if err != nil {
				return nil, fmt.Errorf("hbone server certificate: %w", err)
			}
			return c.TLS, nil
		},
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(m, authorize),
	}
}

// ClientTLSConfig is the HBONE client (outbound) config for the local
// workload id: it presents id's certificate and accepts a server whose
// chain leads to the mesh bundle and whose SPIFFE ID passes authorize
// (normally AuthorizeServer with the destination workload's identity and
// the service's SANs). TLS 1.3 only, ALPN h2, no SNI, no resumption.
func (m *Manager) ClientTLSConfig(id spiffeid.ID, authorize tlsconfig.Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		// Hostname verification is replaced by the SPIFFE check below
		// (go-spiffe's pattern); the chain is still verified against the bundle.
		InsecureSkipVerify: true,
		GetClientCertificate: func(info *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := m.Fetch(info.Context(), id)
			if err != nil {
				return nil, fmt.Errorf("hbone client certificate: %w", err)
			}
			return c.TLS, nil
		},
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(m, authorize),
	}
}

// AuthorizeServer accepts a server presenting any of the expected
// identities (ztunnel's verify_full_san: the workload's ID plus the
// service's subject_alt_names).
func AuthorizeServer(expected ...spiffeid.ID) tlsconfig.Authorizer {
	return tlsconfig.AuthorizeOneOf(expected...)
}
