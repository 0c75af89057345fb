##@ waypoint (pkg/waypoint, cmd/waypoint)
.PHONY: bench-waypoint
bench-waypoint: ## waypoint on the local cluster (root): fortio 1 KB HTTP at 1000 qps x 4 conns for BENCH_DURATION (60s) direct, ztunnel only, through the waypoint, through HAProxy in plaintext and through HAProxy with mutual TLS on both sides (the waypoint's hop); max RPS per core vs both HAProxy peers (each held to 0.25 cores and saturated over 16 to 256 connections, doubling, its best count counting; 3 alternating rounds), user/system CPU per request -> _output/bench/waypoint.json (< 18 min).
	@mkdir -p _output/bin _output/bench
	hack/install-deps.sh
	hack/cluster/up.sh
	hack/images.sh import
	$(GO) build -o _output/bin/bench-waypoint ./hack/bench/waypoint
	source hack/lib.sh && timeout 1620 _output/bin/bench-waypoint -kubectl "$$K8S_BIN/kubectl" -kubeconfig "$$KUBECONFIG_ADMIN" -out _output/bench/waypoint.json -timeout 1500s

BENCH_TARGETS += bench-waypoint
