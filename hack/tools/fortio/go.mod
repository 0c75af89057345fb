// Tools module: fortio (fortio.org/fortio), the load generator Istio
// benchmarks with, built by hack/images.sh into the meshtest image for
// `make bench-ztunnel`. Kept apart from hack/tools/apps so pinning it never
// rebuilds CoreDNS or Istio's echo app.
module github.com/ambient-mesh/mesh/hack/tools/fortio

go 1.26.0

require fortio.org/fortio v1.65.0

require (
	fortio.org/cli v1.6.0 // indirect
	fortio.org/dflag v1.7.2 // indirect
	fortio.org/log v1.12.2 // indirect
	fortio.org/scli v1.15.0 // indirect
	fortio.org/sets v1.1.1 // indirect
	fortio.org/struct2env v0.4.1 // indirect
	fortio.org/version v1.0.4 // indirect
	github.com/fsnotify/fsnotify v1.7.0 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/google/uuid v1.6.0 // indirect
	golang.org/x/crypto/x509roots/fallback v0.0.0-20240604170348-d4e7c9cb6cb8 // indirect
	golang.org/x/exp v0.0.0-20240613232115-7f521ea00fb8 // indirect
	golang.org/x/net v0.26.0 // indirect
	golang.org/x/sys v0.21.0 // indirect
	golang.org/x/text v0.16.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20240617180043-68d350f18fd4 // indirect
	google.golang.org/grpc v1.64.0 // indirect
	google.golang.org/protobuf v1.34.2 // indirect
)
