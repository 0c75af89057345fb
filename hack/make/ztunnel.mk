##@ ztunnel (pkg/ztunnel, cmd/ztunnel)
.PHONY: bench-ztunnel
bench-ztunnel: ## ztunnel on the local cluster (root): fortio 1 KB HTTP at 1000 qps x 4 conns for BENCH_DURATION (60s) with and without the mesh, one TCP stream each -> _output/bench/ztunnel.json (< 8 min).
	@mkdir -p _output/bin _output/bench
	hack/cluster/up.sh
	hack/images.sh import
	$(GO) build -o _output/bin/bench-ztunnel ./hack/bench/ztunnel
	source hack/lib.sh && timeout 470 _output/bin/bench-ztunnel -kubectl "$$K8S_BIN/kubectl" -kubeconfig "$$KUBECONFIG_ADMIN" -out _output/bench/ztunnel.json -timeout 380s

BENCH_TARGETS += bench-ztunnel
