##@ telemetry (pkg/otel, OTLP export of the proxies)
.PHONY: bench-telemetry
bench-telemetry: ## waypoint on the local cluster (root) with the sample OpenTelemetry Collector: max RPS and p99 at 300 qps with tracing off, at 1 % and at 100 % (Telemetry resource, same waypoint pod), best of 3 interleaved rounds -> _output/bench/telemetry.json (< 10 min).
	@mkdir -p _output/bin _output/bench
	hack/install-deps.sh
	hack/cluster/up.sh
	hack/images.sh import
	$(GO) build -o _output/bin/bench-telemetry ./hack/bench/telemetry
	source hack/lib.sh && timeout 590 _output/bin/bench-telemetry -kubectl "$$K8S_BIN/kubectl" -kubeconfig "$$KUBECONFIG_ADMIN" -out _output/bench/telemetry.json -timeout 540s

BENCH_TARGETS += bench-telemetry

.PHONY: bench-telemetry-soak
bench-telemetry-soak: ## bench-telemetry, then 10 minutes at 300 qps with 100 % tracing and the collector stopped: the waypoint keeps serving, its export queue stays bounded and its memory flat -> _output/bench/telemetry-soak.json (< 22 min).
	@mkdir -p _output/bin _output/bench
	hack/install-deps.sh
	hack/cluster/up.sh
	hack/images.sh import
	$(GO) build -o _output/bin/bench-telemetry ./hack/bench/telemetry
	source hack/lib.sh && timeout 1290 _output/bin/bench-telemetry -kubectl "$$K8S_BIN/kubectl" -kubeconfig "$$KUBECONFIG_ADMIN" -out _output/bench/telemetry-soak.json -rounds 1 -collector-down 10m -timeout 540s
