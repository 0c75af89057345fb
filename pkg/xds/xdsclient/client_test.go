package xdsclient

import (
	"strings"
	"testing"

	"google.golang.org/grpc"
)

func TestConfigValidate(t *testing.T) {
	conn := grpc.ClientConnInterface(nil)
	ok := func(Delta) error { return nil }
	var fakeConn struct{ grpc.ClientConnInterface }
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"complete", Config{Conn: fakeConn, Handler: ok, Subscriptions: []Subscription{{TypeURL: "t"}}}, ""},
		{"no handler", Config{Conn: fakeConn, Subscriptions: []Subscription{{TypeURL: "t"}}}, "Handler"},
		{"no conn", Config{Conn: conn, Handler: ok, Subscriptions: []Subscription{{TypeURL: "t"}}}, "Conn"},
		{"no subscriptions", Config{Conn: fakeConn, Handler: ok}, "Subscriptions is empty"},
		{"empty type", Config{Conn: fakeConn, Handler: ok, Subscriptions: []Subscription{{}}}, "TypeURL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("New() error = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("New() error = %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}
