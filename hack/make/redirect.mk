##@ Capture (pkg/redirect, pkg/enroll)
.PHONY: test-redirect
test-redirect: ## Run the capture tests: rules, netns sockets, enrollment (netns tests need root).
	$(GO) test -count=1 ./pkg/redirect/... ./pkg/enroll/...
