package hbone

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ALPN protocol identifiers.
const (
	ALPNH2 = "h2"
	ALPNH3 = "h3"
)

// curves matches ztunnel's default key exchange (no PQC unless asked).
var curves = []tls.CurveID{tls.X25519, tls.CurveP256}

// ServerTLSConfig is the server side of HBONE's mTLS: present svid (the
// destination workload's certificate), require a client certificate that
// chains to bundle and whose SPIFFE ID is in trust domain td, TLS 1.3 only,
// ALPN alpn. SNI is ignored: the certificate does not depend on it.
func ServerTLSConfig(svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain, alpn string) *tls.Config {
	c := tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(td))
	harden(c, alpn)
	return c
}

// ClientTLSConfig is the client side: present svid (the source workload's
// certificate), require a server chain to bundle whose URI SAN is one of
// dst, TLS 1.3 only, ALPN alpn, no SNI.
//
// go-spiffe accepts only SVIDs with exactly one URI SAN (the SPIFFE X.509-SVID
// rule, and what istiod issues); the check passes when that SAN is any of dst.
func ClientTLSConfig(svid x509svid.Source, bundle x509bundle.Source, dst []spiffeid.ID, alpn string) *tls.Config {
	c := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeOneOf(dst...))
	harden(c, alpn)
	c.ServerName = "" // no SNI, as ztunnel
	c.ClientSessionCache = nil
	return c
}

func harden(c *tls.Config, alpn string) {
	c.MinVersion = tls.VersionTLS13
	c.MaxVersion = tls.VersionTLS13
	c.NextProtos = []string{alpn}
	c.CurvePreferences = curves
	c.SessionTicketsDisabled = true
}
