##@ HBONE (pkg/hbone)
.PHONY: test-hbone bench-hbone
test-hbone: ## Run the HBONE tests: h2/h3 client and server, bad input, 1 GiB interop with Istio's pkg/hbone (~45 s).
	$(GO) test -count=1 ./pkg/hbone/...

bench-hbone: ## Benchmark pkg/hbone vs TCP, TLS 1.3 and Istio's pkg/hbone on loopback -> _output/bench/hbone.json (< 2 min).
	@mkdir -p _output/bin _output/bench
	$(GO) build -o _output/bin/bench-hbone ./hack/bench/hbone
	timeout 170 _output/bin/bench-hbone -out _output/bench/hbone.json -timeout 160s

BENCH_TARGETS += bench-hbone
