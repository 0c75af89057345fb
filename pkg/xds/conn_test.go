package xds

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
)

type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// One write through coalescingCreds is one write on the socket, however
// many TLS records it takes, and the peer reads the same bytes.
func TestCoalescingCredsOneWritePerWrite(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"x"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	creds := coalescingCreds{credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 100_000/16) // 7 records
	type result struct {
		writes int64
		err    error
	}
	done := make(chan result, 1)
	go func() {
		raw, err := lis.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		counted := &countingConn{Conn: raw}
		conn, _, err := creds.ServerHandshake(counted)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		before := counted.writes.Load()
		if _, err := conn.Write(payload); err != nil {
			done <- result{err: err}
			return
		}
		done <- result{writes: counted.writes.Load() - before}
	}()
	c, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "x", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, len(payload))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("peer read other bytes")
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.writes != 1 {
			t.Errorf("%d socket writes for one write of %d bytes, want 1", r.writes, len(payload))
		}
	case <-ctx.Done():
		t.Fatal("server did not finish")
	}
}
