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

# The release version stamped into the binary (`sweeper version`, the
# build_info metric): the nearest tag, else the commit, "-dirty" when the
# tree has uncommitted changes.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
# The commit too: the toolchain's own VCS stamp is missing in a git worktree.
REVISION      ?= $(shell git rev-parse HEAD 2>/dev/null)
REVISION_TIME ?= $(shell git log -1 --format=%cI 2>/dev/null)
MODIFIED      ?= $(shell test -n "$$(git status --porcelain 2>/dev/null)" && echo true)
BUILDINFO := github.com/tasker-sweeper/retrysweeper/internal/buildinfo
LDFLAGS := -s -w -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).revision=$(REVISION) \
	-X $(BUILDINFO).revisionTime=$(REVISION_TIME) -X $(BUILDINFO).modified=$(MODIFIED)
# Static, reproducible builds: no cgo (pure-Go DNS and users), no local paths.
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'
DIST    := dist
PLATFORMS := linux/amd64 linux/arm64 darwin/arm64

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
build: ## Build the static sweeper binary into bin/ (CGO_ENABLED=0, -trimpath, VERSION from git describe)
	$(GOBUILD) -o $(BIN)/sweeper ./cmd/sweeper

.PHONY: release
release: ## Cross-build linux/amd64, linux/arm64, darwin/arm64 into dist/ as .tar.gz archives with SHA256SUMS
	rm -rf $(DIST) && mkdir -p $(DIST)
	set -euo pipefail; for platform in $(PLATFORMS); do \
		os=$${platform%/*}; arch=$${platform#*/}; \
		name=sweeper_$(VERSION)_$${os}_$${arch}; \
		mkdir -p $(DIST)/$$name; \
		GOOS=$$os GOARCH=$$arch $(GOBUILD) -o $(DIST)/$$name/sweeper ./cmd/sweeper; \
		cp README.md $(DIST)/$$name/; \
		tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='@0' -C $(DIST) -cf - $$name \
			| gzip -n > $(DIST)/$$name.tar.gz; \
		rm -rf $(DIST)/$$name; \
	done
	cd $(DIST) && sha256sum *.tar.gz > SHA256SUMS
	@cat $(DIST)/SHA256SUMS

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

# The browser test is behind a build tag: it needs Chromium (Debian:
# apt-get install chromium; or CHROMIUM=/path/to/it), and fails without one.
# UI_SCREENSHOT=path saves the page's screenshot there (default: the test's
# temporary directory).
.PHONY: ui-test
ui-test: ## Run the web page's browser test: headless Chromium against the daemon and a throwaway PostgreSQL
	$(GO) vet -tags browser ./internal/cli/
	$(GO) test -race -count=1 -tags browser -run '^TestBrowser' -v $(TESTFLAGS) ./internal/cli/

.PHONY: mutants
mutants: ## Mutation test of the SQL (db/queries/mutants.txt): every mutant must fail a test (~12 min on 2 cores; MUTANTSFLAGS='-run Claim' for some, '-check' to only check the list)
	$(GO) run ./internal/mutants $(MUTANTSFLAGS)

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
clean: ## Remove built binaries, tools and release archives
	rm -rf $(BIN) $(DIST)
