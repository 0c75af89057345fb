# Ambient mesh: ztunnel, waypoint, istiod-lite. `make help` lists the targets.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help
export CGO_ENABLED ?= 0
GO ?= go

##@ General
.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_.-]+:.*##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

# Each area adds its own targets (benchmarks, generators) in hack/make/*.mk.
-include hack/make/*.mk
