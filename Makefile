# Ambient mesh: ztunnel, waypoint, istiod-lite. `make help` lists the targets.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help
export CGO_ENABLED ?= 0
GO ?= go
OUT := _output

##@ General
.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_.-]+:.*##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Main job and tests (the README's two commands)
.PHONY: demo test
demo: ## Bring up the local cluster with the mesh and the demo app, and show it working.
	hack/demo.sh

test: ## Run the whole suite: unit, integration, netns, envtest and end-to-end on the local cluster.
	hack/test.sh

##@ Build
.PHONY: build images build-k8s build-otelcol verify
build: ## Build every binary under cmd/ into _output/bin.
	$(GO) build -trimpath -o $(OUT)/bin/ ./cmd/...

images: ## Build every image as a tarball in _output/images (no Docker needed).
	hack/images.sh

build-k8s: ## Build the pinned Kubernetes components into the cache (once per pin).
	hack/build-k8s.sh

build-otelcol: ## Build the OpenTelemetry Collector (hack/tools/otelcol) into the cache.
	hack/build-otelcol.sh

verify: ## Check formatting, vet, go.mod tidiness and generated code.
	hack/verify.sh

##@ Local cluster
.PHONY: cluster-up cluster-down cluster-status
cluster-up: ## Start the one-node Kubernetes cluster (idempotent; root).
	hack/cluster/up.sh

cluster-down: ## Stop the cluster and remove everything it made (root).
	hack/cluster/down.sh

cluster-status: ## Report each component of the cluster.
	hack/cluster/status.sh

##@ Benchmarks
.PHONY: bench
bench: ## Run every benchmark; figures land in _output/bench/*.json.
	@set -e; for t in $(BENCH_TARGETS); do $(MAKE) --no-print-directory $$t; done

# Each area adds its own targets (benchmarks, generators) in hack/make/*.mk and
# appends its benchmark target to BENCH_TARGETS.
BENCH_TARGETS :=
-include hack/make/*.mk
