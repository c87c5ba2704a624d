# Trellis: a proxyless gRPC service mesh control plane fed by Consul.
SHELL := /usr/bin/env bash
GO ?= go
TRELLIS_TOOLS_DIR ?= $(HOME)/.cache/trellis/tools
export TRELLIS_TOOLS_DIR
export TRELLIS_CONSUL_BIN ?= $(TRELLIS_TOOLS_DIR)/consul-v1.16.1
export TRELLIS_SPIRE_SERVER_BIN ?= $(TRELLIS_TOOLS_DIR)/spire-server-v1.13.3
export TRELLIS_SPIRE_AGENT_BIN ?= $(TRELLIS_TOOLS_DIR)/spire-agent-v1.13.3

TEST_TIMEOUT ?= 40m

.PHONY: all build tools test unit bench demo generate check-generated vet clean

all: build

## build: compile bin/trellis and the example services.
build:
	$(GO) build -o bin/trellis ./cmd/trellis
	$(GO) build -o bin/echo-server ./examples/echo/server
	$(GO) build -o bin/echo-client ./examples/echo/client

## tools: build the pinned Consul and SPIRE into $(TRELLIS_TOOLS_DIR) (cached).
tools:
	scripts/tools.sh consul spire

## test: the whole suite, unit and integration, against real Consul and SPIRE.
test: tools build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

## unit: the tests that need no external process.
unit:
	$(GO) test -count=1 -short ./...

## bench: benchmarks, reported as ratios against a baseline in the same run.
bench: tools
	$(GO) test -run '^$$' -bench . -benchmem ./...

## demo: run the mesh locally: Consul, the xDS server, three echo servers and a client.
demo: tools build
	scripts/demo.sh

clean:
	rm -rf bin
