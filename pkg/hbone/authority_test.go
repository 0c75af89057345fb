package hbone

import "testing"

func TestParseAuthority(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		host     string
		port     uint16
		ok       bool
	}{
		{"ipv4", "10.0.0.1:8080", "10.0.0.1", 8080, true},
		{"ipv6", "[fd00::1]:443", "fd00::1", 443, true},
		{"service hostname", "reviews.bookinfo.svc.cluster.local:9080", "reviews.bookinfo.svc.cluster.local", 9080, true},
		{"no port", "10.0.0.1", "", 0, false},
		{"port zero", "10.0.0.1:0", "", 0, false},
		{"port overflow", "10.0.0.1:65536", "", 0, false},
		{"named port", "svc:http", "", 0, false},
		{"empty host", ":80", "", 0, false},
		{"zoned ipv6", "[fe80::1%eth0]:80", "", 0, false},
		{"bad label", "-svc.ns:80", "", 0, false},
		{"space", "a b:80", "", 0, false},
		{"path", "10.0.0.1:80/x", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, port, err := parseAuthority(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("parseAuthority(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if host != tc.host || port != tc.port {
				t.Errorf("parseAuthority(%q) = %q, %d; want %q, %d", tc.in, host, port, tc.host, tc.port)
			}
		})
	}
}
