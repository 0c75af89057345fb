##@ HBONE

.PHONY: bench-hbone
bench-hbone: ## Benchmark pkg/hbone vs TCP, TLS 1.3 and Istio's pkg/hbone on loopback; writes _output/bench/hbone.json.
	@mkdir -p _output/bench
	@timeout 170 $(GO) run ./hack/bench/hbone -out _output/bench/hbone.json
