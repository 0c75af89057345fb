##@ Capture: CNI plugin, node agent, ZDS (cmd/ambient-cni, pkg/cni, pkg/nodeagent, pkg/zds)
.PHONY: test-capture bench-capture
test-capture: ## Run the CNI, ZDS and capture end-to-end tests (root; the e2e part needs `make cluster-up`).
	$(GO) test -count=1 ./pkg/zds/... ./pkg/cni/... ./pkg/nodeagent/... ./cmd/ambient-cni/...
	$(GO) test -count=1 -run Capture ./test/e2e/

bench-capture: ## Label 50 running pods ambient, and time pod start with/without capture -> _output/bench/capture.json (< 5 min; root, local cluster).
	@mkdir -p _output/bin _output/bench
	$(GO) build -o _output/bin/bench-capture ./hack/bench/capture
	timeout 300 _output/bin/bench-capture -out _output/bench/capture.json -pods 50 -samples 8 -timeout 280s

BENCH_TARGETS += bench-capture
