##@ Mesh CA (pkg/ca, pkg/certmanager)
.PHONY: test-ca bench-ca
test-ca: ## Run the CA and certificate-manager tests (envtest: real kube-apiserver + etcd).
	$(GO) test -count=1 ./pkg/ca/... ./pkg/certmanager/...

bench-ca: ## Benchmark CreateCertificate with 50 callers on envtest -> _output/bench/ca.json (< 2 min).
	@mkdir -p _output/bin _output/bench
	$(GO) build -o _output/bin/bench-ca ./hack/bench/ca
	timeout 120 _output/bin/bench-ca -out _output/bench/ca.json -callers 50 -duration 20s -timeout 110s
BENCH_TARGETS += bench-ca
