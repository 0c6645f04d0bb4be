# The one entry point: `make help` lists the targets.
SHELL := /bin/bash
export GOTOOLCHAIN := local

GO      ?= go
BIN     := bin
SQLC    := $(BIN)/sqlc
LINT    := $(BIN)/golangci-lint
TESTFLAGS ?=
BENCHFLAGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

# Tool versions are pinned once, in tools/go.mod.
$(SQLC): tools/go.mod tools/go.sum
	cd tools && $(GO) build -o ../$(SQLC) github.com/sqlc-dev/sqlc/cmd/sqlc

$(LINT): tools/go.mod tools/go.sum
	cd tools && $(GO) build -o ../$(LINT) github.com/golangci/golangci-lint/v2/cmd/golangci-lint

.PHONY: tools
tools: $(SQLC) $(LINT) ## Build the pinned tools (sqlc, golangci-lint) into bin/

.PHONY: generate
generate: $(SQLC) ## Render the query templates (db/queries/templates), then regenerate the sqlc code (db/internal/dbsqlc, internal/demo/demosqlc)
	$(GO) run ./internal/sqltemplate -dir db/queries
	$(SQLC) generate

.PHONY: check-generated
check-generated: $(SQLC) ## Fail if the rendered queries or the generated sqlc code are out of date
	$(GO) run ./internal/sqltemplate -dir db/queries -check
	$(SQLC) diff

.PHONY: build
build: ## Build the sweeper binary into bin/
	$(GO) build -o $(BIN)/sweeper ./cmd/sweeper

.PHONY: demo
demo: build ## Run the sweeper against a throwaway PostgreSQL with demo data
	$(BIN)/sweeper demo

.PHONY: bench
bench: ## Run the benchmarks (own durable PostgreSQL under /var/tmp; ~15 min; BENCHFLAGS='-scale 0.01' for a smoke run)
	$(GO) run ./bench $(BENCHFLAGS)

.PHONY: vet
vet: ## go vet
	$(GO) vet ./...

.PHONY: lint
lint: $(LINT) ## golangci-lint
	$(LINT) run ./...

.PHONY: test
test: ## Run every test with -race (starts a throwaway PostgreSQL unless TEST_DATABASE_URL is set)
	$(GO) test -race -count=1 $(TESTFLAGS) ./...

.PHONY: ci
ci: check-generated vet lint test ## Everything CI checks

.PHONY: image
image: ## Build the container image: the static binary on scratch (podman, or a running docker; deploy/build-image.sh)
	deploy/build-image.sh

.PHONY: image-test
image-test: ## Build the image and run it against a throwaway PostgreSQL: version, migrate, once, run + probes (deploy/image-test.sh)
	deploy/image-test.sh

.PHONY: deploy-test
deploy-test: ## Test deploy/: manifests decode into Kubernetes types, flags and env vars exist, PromQL parses (separate Go module)
	cd deploy && $(GO) test -count=1 $(TESTFLAGS) ./...

.PHONY: promtool-test
promtool-test: ## promtool check rules + test rules on the alerting rules (apt-get install prometheus)
	promtool check rules deploy/prometheus/alerts.yaml
	promtool test rules deploy/prometheus/alerts_test.yaml

.PHONY: clean
clean: ## Remove built binaries and tools
	rm -rf $(BIN)
