# Trellis: a proxyless gRPC service mesh control plane fed by Consul.
SHELL := /usr/bin/env bash
GO ?= go
TRELLIS_TOOLS_DIR ?= $(HOME)/.cache/trellis/tools
export TRELLIS_TOOLS_DIR
export TRELLIS_CONSUL_BIN ?= $(TRELLIS_TOOLS_DIR)/consul-v1.16.1
export TRELLIS_SPIRE_SERVER_BIN ?= $(TRELLIS_TOOLS_DIR)/spire-server-v1.13.3
export TRELLIS_SPIRE_AGENT_BIN ?= $(TRELLIS_TOOLS_DIR)/spire-agent-v1.13.3

TEST_TIMEOUT ?= 40m
# Packages quick enough to run again under the race detector in make test.
RACE_PKGS ?= ./internal/consulwatch/ ./internal/catalog/ ./internal/pipeline/ ./internal/model/ ./internal/policy/ ./xdsserver/xdscache/ ./xdsserver/lrs/ ./internal/consulconfig/

.PHONY: all build tools test test-deps bench bench-quick bench-controlplane fuzz demo generate check-generated vet clean

all: build

## build: compile bin/trellis and the example services.
# What trellis version reports, from git when available.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
TRELLIS_LDFLAGS = -X main.version=$(VERSION) -X main.commit=$(COMMIT)

build:
	$(GO) build -ldflags "$(TRELLIS_LDFLAGS)" -o bin/trellis ./cmd/trellis
	$(GO) build -o bin/echo-server ./examples/echo/server
	$(GO) build -o bin/echo-client ./examples/echo/client
	$(GO) build -o bin/trellis-bench ./cmd/trellis-bench

## tools: build the pinned Consul and SPIRE into $(TRELLIS_TOOLS_DIR) (cached).
tools:
	scripts/tools.sh consul spire

## test: the whole suite, unit and integration, against real Consul and SPIRE.
## The end-to-end tests in integration/ measure reaction times, so they run
## on their own after the rest.
test: tools build check-generated test-deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v /integration)
	$(GO) test -count=1 -race -timeout $(TEST_TIMEOUT) $(RACE_PKGS)
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./integration/...

## test-deps: what the integration tests need besides Go, Consul and SPIRE:
## the pinned Node peer (npm ci in integration/peers/node, from its committed
## package-lock.json) and Debian's python3-grpcio and python3-protobuf for the
## C-core peer (installed with apt-get when missing; needs root).
## Also Debian's systemd, whose systemd-analyze verifies the units in deploy/.
## And Debian's chromium, the headless browser of the dashboard test.
test-deps: integration/peers/node/node_modules/.package-lock.json
	@if ! /usr/bin/python3 -c 'import grpc, google.protobuf' 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-grpcio python3-protobuf; \
		else \
			echo "test-deps: the C-core peer needs Debian's python3-grpcio and python3-protobuf: run make test-deps as root, or sudo apt-get install python3-grpcio python3-protobuf" >&2; exit 1; \
		fi; \
	fi
	@# systemd-analyze, for the checks of the systemd units in deploy/.
	@if ! command -v systemd-analyze >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd; \
		else \
			echo "test-deps: the deploy/ tests need systemd-analyze: run make test-deps as root, or sudo apt-get install systemd" >&2; exit 1; \
		fi; \
	fi
	@# chromium, for the dashboard's browser test (integration/dashboard_test.go).
	@if ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
		else \
			echo "test-deps: the dashboard test needs a headless browser: run make test-deps as root, or sudo apt-get install chromium" >&2; exit 1; \
		fi; \
	fi

integration/peers/node/node_modules/.package-lock.json: integration/peers/node/package-lock.json integration/peers/node/package.json
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm; } || \
		{ echo "test-deps: the Node peer needs node and npm: install Debian's nodejs and npm" >&2; exit 1; }
	cd integration/peers/node && npm ci --no-audit --no-fund

## bench: benchmarks, reported as ratios against a baseline in the same run
## (about 20 minutes on a quiet 2-core machine): the Go benchmarks of the
## packages that have any (~2 minutes), the control-plane run with
## $(BENCH_CONTROLPLANE_FLAGS) (~12 minutes), the data-plane benchmark
## (3 rounds of 5 configurations, ~4.5 minutes), then BENCHMARKS.md with its
## plots, from bench/*.json and bench/analysis.md.
# Packages with Go benchmarks: listing them spares building the test
# binaries of every other package.
BENCH_PKGS ?= $(sort $(dir $(shell grep -rl --include='*_test.go' --exclude-dir=node_modules --exclude-dir=.git '^func Benchmark' .)))
# Fewer single changes, fan-out changes and shorter idle and churn windows
# than the control-plane run's defaults (20, 10, 10 s, 15 s), which take
# ~17 minutes here: the same steps (100 / 1,000 / 10,000), in ~12.
BENCH_CONTROLPLANE_FLAGS ?= -changes 10 -fanout-changes 6 -idle 6s -churn-duration 10s
bench: tools build
	$(GO) test -run '^$$' -bench . -benchmem $(BENCH_PKGS)
	$(MAKE) bench-controlplane CONTROLPLANE_FLAGS="$(BENCH_CONTROLPLANE_FLAGS)"
	bin/trellis-bench dataplane -o bench/dataplane.json -profile-dir bench/profiles
	bin/trellis-bench report

## bench-quick: a 2-minute data-plane subset (one round, 2 s loads), reported
## in bench/quick/ so that BENCHMARKS.md keeps the full run.
bench-quick: tools build
	bin/trellis-bench dataplane -o bench/quick/dataplane.json -rounds 1 -phase 2s -warmup 500ms
	bin/trellis-bench report -dataplane bench/quick/dataplane.json -o bench/quick/BENCHMARKS.md -plots bench/quick/plots -analysis /dev/null

## bench-controlplane: real ADS streams against the real trellis server and a
## stock Consul agent (100 / 1,000 / 10,000 services and streams, ~15 minutes),
## results in bench/controlplane.json. CONTROLPLANE_FLAGS=-quick for a short run.
bench-controlplane: tools
	@mkdir -p bench
	$(GO) build -o bin/trellis ./cmd/trellis
	$(GO) run ./cmd/trellis-bench controlplane -trellis bin/trellis -o bench/controlplane.json $(CONTROLPLANE_FLAGS)

## fuzz: run each fuzz target for $(FUZZTIME); their seed corpora
## (testdata/fuzz) also run in `make test`.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseValidateTranslate$$' -fuzztime $(FUZZTIME) ./internal/policy
	$(GO) test -run '^$$' -fuzz '^FuzzTranslate$$' -fuzztime $(FUZZTIME) ./xdsserver/translate
	$(GO) test -run '^$$' -fuzz '^FuzzGenerate$$' -fuzztime $(FUZZTIME) ./internal/bootstrap
	$(GO) test -run '^$$' -fuzz '^FuzzConvert$$' -fuzztime $(FUZZTIME) ./internal/consulconfig

## demo: run the mesh locally: Consul, the xDS server, three echo servers and a client.
demo: tools build
	scripts/demo.sh

# The pinned buf and protoc plugins (tools/proto), built into $(PROTO_TOOLS).
PROTO_TOOLS := bin/proto-tools
PROTO_BUILD = cd tools/proto && $(GO) build -o $(CURDIR)/$(PROTO_TOOLS)/ \
	github.com/bufbuild/buf/cmd/buf \
	google.golang.org/protobuf/cmd/protoc-gen-go \
	google.golang.org/grpc/cmd/protoc-gen-go-grpc
BUF = PATH="$(CURDIR)/$(PROTO_TOOLS):$$PATH" $(PROTO_TOOLS)/buf

## generate: regenerate the Go code next to the .proto files under proto/ (buf.gen.yaml).
generate:
	$(PROTO_BUILD)
	$(BUF) generate

## check-generated: fail when the committed generated code differs from a fresh generation.
check-generated:
	@$(PROTO_BUILD)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(BUF) generate -o "$$tmp" && \
	(cd proto && find . -name '*.pb.go' | sed 's|^\./||' | sort) >"$$tmp/committed.txt" && \
	(cd "$$tmp/proto" && find . -name '*.pb.go' | sed 's|^\./||' | sort) >"$$tmp/generated.txt" && \
	status=0 && \
	{ diff -u --label committed --label generated "$$tmp/committed.txt" "$$tmp/generated.txt" || status=1; } && \
	for f in $$(cat "$$tmp/generated.txt"); do \
		[ -f "proto/$$f" ] || continue; \
		diff -u --label "proto/$$f" --label "generated/$$f" "proto/$$f" "$$tmp/proto/$$f" || status=1; \
	done && \
	if [ $$status -ne 0 ]; then echo "check-generated: the generated code under proto/ is stale; run 'make generate'" >&2; exit 1; fi

clean:
	rm -rf bin
