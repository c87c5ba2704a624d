#!/usr/bin/env bash
# Builds the pinned external tools that tests and the demo run, into a cache
# outside the checkout so that every clone reuses them:
#   consul        Consul v1.16.1 (tools/consul)
#   spire         spire-server and spire-agent v1.13.3 (tools/spire)
# Usage: scripts/tools.sh [consul] [spire] ...   (no argument: all)
# The cache folder is $TRELLIS_TOOLS_DIR, default ~/.cache/trellis/tools.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools_dir=${TRELLIS_TOOLS_DIR:-$HOME/.cache/trellis/tools}
mkdir -p "$tools_dir"

CONSUL_VERSION=v1.16.1
SPIRE_VERSION=v1.13.3

# build_tool NAME MODULE_DIR PACKAGE OUTPUT: go build PACKAGE from the tools
# module in MODULE_DIR into OUTPUT unless OUTPUT already exists.
build_tool() {
	local name=$1 module_dir=$2 pkg=$3 out=$4
	if [ -x "$out" ]; then
		return 0
	fi
	echo "tools: building $name into $out (first time only; this takes several minutes)" >&2
	(cd "$root/$module_dir" && go build -trimpath -o "$out.tmp.$$" "$pkg")
	mv "$out.tmp.$$" "$out"
}

build_consul() {
	build_tool "consul $CONSUL_VERSION" tools/consul github.com/hashicorp/consul "$tools_dir/consul-$CONSUL_VERSION"
}

build_spire() {
	build_tool "spire-server $SPIRE_VERSION" tools/spire github.com/spiffe/spire/cmd/spire-server "$tools_dir/spire-server-$SPIRE_VERSION"
	build_tool "spire-agent $SPIRE_VERSION" tools/spire github.com/spiffe/spire/cmd/spire-agent "$tools_dir/spire-agent-$SPIRE_VERSION"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(consul spire)
for t in "${targets[@]}"; do
	case "$t" in
	consul) build_consul ;;
	spire) build_spire ;;
	*) echo "tools: unknown tool $t" >&2; exit 2 ;;
	esac
done
