package xds_test

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/ambient-mesh/mesh/pkg/xds"
)

func TestBearerAuthenticator(t *testing.T) {
	review := func(_ context.Context, tok string) (xds.Identity, error) {
		if tok != "valid" {
			return xds.Identity{}, errors.New("token rejected by review")
		}
		return xds.Identity{Namespace: "istio-system", ServiceAccount: "ztunnel"}, nil
	}
	auth := xds.BearerAuthenticator(review)
	tests := []struct {
		name    string
		md      metadata.MD
		wantErr bool
	}{
		{"valid", metadata.Pairs("authorization", "Bearer valid"), false},
		{"rejected", metadata.Pairs("authorization", "Bearer other"), true},
		{"not bearer", metadata.Pairs("authorization", "Basic dXNlcg=="), true},
		{"missing", metadata.MD{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := auth.Authenticate(metadata.NewIncomingContext(t.Context(), tc.md))
			if (err != nil) != tc.wantErr {
				t.Fatalf("Authenticate() = %+v, %v; want error %v", id, err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, xds.ErrUnauthenticated) {
				t.Errorf("error %v does not wrap ErrUnauthenticated", err)
			}
			if err == nil && id.ServiceAccount != "ztunnel" {
				t.Errorf("identity = %+v", id)
			}
		})
	}
}
