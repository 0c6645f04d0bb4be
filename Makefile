# The one entry point: `make help` lists the targets.
SHELL := /bin/bash
export GOTOOLCHAIN := local

GO      ?= go
BIN     := bin
SQLC    := $(BIN)/sqlc
LINT    := $(BIN)/golangci-lint
TESTFLAGS ?=
BENCHFLAGS ?=
CHAOSFLAGS ?=
MUTANTSFLAGS ?=

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

.PHONY: chaos
chaos: build ## Run the fault suite against bin/sweeper on both sweep paths (~10 min; CHAOSFLAGS='-run 5' for one scenario)
	$(GO) run ./chaos -sweeper $(BIN)/sweeper $(CHAOSFLAGS)

.PHONY: chaos-short
chaos-short: build ## Run the fault suite's CI subset (under 3 min)
	$(GO) run ./chaos -short -sweeper $(BIN)/sweeper $(CHAOSFLAGS)

.PHONY: vet
vet: ## go vet
	$(GO) vet ./...

.PHONY: lint
lint: $(LINT) ## golangci-lint
	$(LINT) run ./...

.PHONY: test
test: ## Run every test with -race (starts a throwaway PostgreSQL unless TEST_DATABASE_URL is set)
	$(GO) test -race -count=1 $(TESTFLAGS) ./...

.PHONY: mutants
mutants: ## Mutation test of the SQL (db/queries/mutants.txt): every mutant must fail a test (~12 min on 2 cores; MUTANTSFLAGS='-run Claim' for some, '-check' to only check the list)
	$(GO) run ./internal/mutants $(MUTANTSFLAGS)

.PHONY: ci
ci: check-generated vet lint test ## Everything CI checks

.PHONY: clean
clean: ## Remove built binaries and tools
	rm -rf $(BIN)
