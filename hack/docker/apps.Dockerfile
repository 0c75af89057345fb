# Builds the test and cluster apps with Docker, from the tools module
# hack/tools/apps (the same pins hack/build-apps.sh uses):
#   docker build -f hack/docker/apps.Dockerfile --target echo -t ambient-mesh/echo:dev .
#   docker build -f hack/docker/apps.Dockerfile --target coredns -t ambient-mesh/coredns:dev .
FROM golang:1.26 AS build
WORKDIR /src/hack/tools/apps
COPY hack/tools/apps/go.mod hack/tools/apps/go.sum ./
RUN go mod download
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/coredns github.com/coredns/coredns && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/server istio.io/istio/pkg/test/echo/cmd/server && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/client istio.io/istio/pkg/test/echo/cmd/client

FROM scratch AS echo
COPY --from=build /out/server /out/client /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/server"]

FROM scratch AS coredns
COPY --from=build /out/coredns /coredns
ENTRYPOINT ["/coredns"]
