##@ istiod-lite xDS (pkg/xds, pkg/istiod)
.PHONY: bench-xds
bench-xds: ## Scale benchmark of istiod-lite on envtest: 10,000 pods, 1,000 services, 100 xDS clients -> _output/bench/xds.json (< 5 min).
	@mkdir -p _output/bin _output/bench
	$(GO) build -o _output/bin/istiod-lite ./cmd/istiod-lite
	$(GO) build -o _output/bin/bench-xds ./hack/bench/xds
	timeout 290 _output/bin/bench-xds -istiod _output/bin/istiod-lite -out _output/bench/xds.json -timeout 280s

BENCH_TARGETS += bench-xds
