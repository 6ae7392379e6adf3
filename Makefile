# ImageGuard developer targets. `make help` lists them.

# Trivy v0.74 (imported by the scanner) uses encoding/json/v2, an experiment on Go 1.26.
export GOEXPERIMENT := jsonv2
export GOWORK := off

# Tools are pinned and installed into bin/ from the Go module proxy.
LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
HELM_VERSION ?= v4.3.1
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
HELM ?= $(LOCALBIN)/helm-$(HELM_VERSION)

# The test control plane: etcd and kube-apiserver built from the Go module proxy, cached per user.
CONTROL_PLANE ?= hack/control-plane.sh
TEST_TIMEOUT ?= 30m
TEST_FLAGS ?=

.PHONY: all
all: build

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC from the markers in api/ and controllers/.
	$(CONTROLLER_GEN) crd paths=./api/v1alpha1/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) crd paths=./api/wgpolicyk8s/... output:crd:artifacts:config=config/crd/policyreport
	@# OpenReports' own CRDs, from the pinned module (go.mod), never edited here; downloaded when the
	@# module cache lacks it (go list -m would print an empty directory).
	mkdir -p config/crd/openreports && for f in "$$(go mod download -json github.com/openreports/reports-api | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"/config/crd/openreports.io_*.yaml; do \
		install -m 0644 "$$f" config/crd/openreports/; done
	$(CONTROLLER_GEN) rbac:roleName=imageguard-manager paths=./controllers/... paths=./internal/... paths=./cmd/... output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) webhook paths=./internal/admission/... output:webhook:artifacts:config=config/webhook

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: chart-crds
chart-crds: manifests ## Copy the CRDs and the generated RBAC into the Helm chart (never edit the chart's copies by hand).
	hack/chart-crds.sh config/crd/bases charts/imageguard/templates/crds
	hack/chart-crds.sh config/crd/policyreport charts/imageguard/templates/policyreport-crds policyReportCRDs.install
	hack/chart-crds.sh config/crd/openreports charts/imageguard/templates/openreports-crds openReportsCRDs.install
	hack/chart-rbac.sh config/rbac/role.yaml charts/imageguard/templates/rbac/clusterrole.yaml

.PHONY: fmt
fmt: ## Run gofmt on the tree.
	git ls-files --cached --others --exclude-standard '*.go' | while read -r f; do [ ! -f "$$f" ] || echo "$$f"; done | xargs gofmt -s -w

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...

.PHONY: control-plane
control-plane: ## Build (once) the test etcd, kube-apiserver and kubectl; prints their folder.
	$(CONTROL_PLANE)

.PHONY: test
test: manifests generate $(HELM) ## Run every test against a real control plane.
	@rm -f $(LOCALBIN)/fault-table.txt
	KUBEBUILDER_ASSETS="$$($(CONTROL_PLANE))" HELM=$(HELM) FAULT_TABLE=$(LOCALBIN)/fault-table.txt \
		go test ./... -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS); status=$$?; \
		echo "== fault suite (test/faults)"; cat $(LOCALBIN)/fault-table.txt 2>/dev/null || echo "(the fault suite did not run)"; \
		exit $$status

.PHONY: verify
verify: manifests generate chart-crds fmt vet ## Fail when generated files are stale, code is unformatted or vet complains.
	@if [ -n "$$(git status --porcelain)" ]; then \
		echo "verify: the tree differs from the commit after regeneration and gofmt:"; \
		git status --porcelain; git --no-pager diff --stat; \
		echo "run 'make manifests generate chart-crds fmt' and commit the result"; \
		exit 1; \
	fi

##@ Build

.PHONY: build
build: ## Build bin/imageguard.
	go build -o $(LOCALBIN)/imageguard ./cmd/imageguard

IMG ?= imageguard:dev

.PHONY: docker-build
docker-build: ## Build the container image (needs a Docker engine; IMG=name:tag).
	docker build -t $(IMG) .

.PHONY: run
run: manifests generate ## Run the controller against the cluster of the current kubeconfig (admission off: the API server cannot reach it).
	go run ./cmd/imageguard controller --webhook-port=0

##@ Tools

$(LOCALBIN):
	mkdir -p $(LOCALBIN)

$(CONTROLLER_GEN): | $(LOCALBIN)
	$(call go-install-tool,$(CONTROLLER_GEN),sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_TOOLS_VERSION))

.PHONY: helm
helm: $(HELM) ## Install the pinned helm into bin/.

$(HELM): | $(LOCALBIN)
	$(call go-install-tool,$(HELM),helm.sh/helm/v4/cmd/helm,$(HELM_VERSION))

$(GOLANGCI_LINT): | $(LOCALBIN)
	$(call go-install-tool,$(GOLANGCI_LINT),github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))

# go-install-tool installs package $(2) at version $(3) as $(1), a versioned file name, so a
# version bump installs afresh.
define go-install-tool
@set -e; \
echo "installing $(2)@$(3)"; \
tmp=$$(mktemp -d); \
GOBIN=$$tmp GOEXPERIMENT= go install $(2)@$(3); \
mv $$tmp/$$(basename $(2)) $(1); \
rm -rf $$tmp
endef

##@ Demo

.PHONY: demo
demo: build ## Run ImageGuard on a local control plane with sample policies (stays up; see demo-down).
	hack/demo.sh

.PHONY: demo-down
demo-down: ## Stop what make demo started.
	hack/demo.sh down
