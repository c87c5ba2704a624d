#!/usr/bin/env bash
# Runs the mesh on this machine and narrates what happens:
#   a dev Consul, the Trellis xDS server, three echo servers that register
#   themselves in Consul, and an echo client that dials xds:///echo. Calls
#   spread across the three; then echo-2 is stopped and the calls move off it;
#   then a policy sends every call to version v2. Last, SPIRE hands out SPIFFE
#   identities: two secure-echo servers serve mTLS configured by trellis, a
#   client called web reaches them, and batch is refused by a Consul intention.
#
# Usage: scripts/demo.sh        (`make demo` builds what it needs first)
#
# Everything listens on 127.0.0.1 and lives in a temporary folder. Everything
# the script starts is stopped when it exits, including on Ctrl-C.
#
# Environment:
#   DEMO_CONSUL_PORT    Consul HTTP port; the next three serve Serf and RPC (default 18500)
#   DEMO_XDS_PORT       trellis xDS port (default 18000)
#   DEMO_ADMIN_PORT     trellis admin port (default 18001)
#   DEMO_ECHO_PORT      first of the three echo servers' ports (default 18101)
#   DEMO_SPIRE_PORT     SPIRE server port (default 18081)
#   TRELLIS_CONSUL_BIN  Consul binary (default ~/.cache/trellis/tools/consul-v1.16.1)
#   TRELLIS_SPIRE_SERVER_BIN, TRELLIS_SPIRE_AGENT_BIN  SPIRE binaries (default ~/.cache/trellis/tools/spire-*-v1.13.3)
#   TRELLIS_BIN_DIR     folder holding trellis, echo-server, echo-client (default bin/)
#   DEMO_KEEP=1         keep the mesh running at the end until Ctrl-C
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
consul_bin=${TRELLIS_CONSUL_BIN:-$HOME/.cache/trellis/tools/consul-v1.16.1}
spire_server_bin=${TRELLIS_SPIRE_SERVER_BIN:-$HOME/.cache/trellis/tools/spire-server-v1.13.3}
spire_agent_bin=${TRELLIS_SPIRE_AGENT_BIN:-$HOME/.cache/trellis/tools/spire-agent-v1.13.3}
spire_port=${DEMO_SPIRE_PORT:-18081}
trust_domain=trellis.demo
bin_dir=${TRELLIS_BIN_DIR:-$root/bin}

consul_port=${DEMO_CONSUL_PORT:-18500}
consul_http=127.0.0.1:$consul_port
consul_serf_lan=$((consul_port + 1))
consul_serf_wan=$((consul_port + 2))
consul_server=$((consul_port + 3))
xds_addr=127.0.0.1:${DEMO_XDS_PORT:-18000}
admin_addr=127.0.0.1:${DEMO_ADMIN_PORT:-18001}
echo_port=${DEMO_ECHO_PORT:-18101}
echo_ports=("$echo_port" $((echo_port + 1)) $((echo_port + 2)))
# The mTLS part: two secure-echo servers, each with a plaintext health port.
secure_ports=($((echo_port + 10)) $((echo_port + 11)))
health_ports=($((echo_port + 20)) $((echo_port + 21)))

# ---- helpers ----------------------------------------------------------------

say() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }

# fail MESSAGE [LOG]: report, show the end of LOG, and exit (the trap cleans up).
fail() {
	printf '\ndemo: %s\n' "$1" >&2
	if [ $# -ge 2 ] && [ -f "$2" ]; then
		printf -- '--- last lines of %s:\n' "$2" >&2
		tail -n 30 "$2" >&2
	fi
	exit 1
}

# port_in_use PORT: true when something on 127.0.0.1 accepts connections on PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for DESCRIPTION TIMEOUT_SECONDS LOG COMMAND...: poll COMMAND until it succeeds.
wait_for() {
	local what=$1 timeout=$2 log=$3
	shift 3
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if [ $SECONDS -ge $deadline ]; then
			fail "timed out after ${timeout}s waiting for $what" "$log"
		fi
		sleep 0.2
	done
}

# passing_echo_instances: how many echo instances pass their checks in Consul.
passing_echo_instances() {
	curl -sf "http://$consul_http/v1/health/checks/echo?filter=Status%20%3D%3D%20passing" |
		grep -o '"CheckID"' | wc -l
}
echo_instances_passing_eq() { [ "$(passing_echo_instances)" -eq "$1" ]; }

# ---- process bookkeeping ----------------------------------------------------

tmp=""    # the demo's folder, made once the preflight checks pass
pids=()   # everything started, in start order
names=()

# start NAME LOG COMMAND...: run COMMAND in the background, logging to LOG.
start() {
	local name=$1 log=$2
	shift 2
	"$@" >"$log" 2>&1 &
	pids+=("$!")
	names+=("$name")
}

# stop_pid PID: SIGTERM, then SIGKILL if it is still there after 10 s.
stop_pid() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	local i
	if [ ${#pids[@]} -gt 0 ]; then
		printf '\n== cleaning up: stopping %s\n' "${names[*]}"
		# Reverse order: clients and workloads first, Consul last.
		for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
			stop_pid "${pids[i]}"
		done
	fi
	if [ -n "$tmp" ]; then
		case $status in
		0 | 130 | 143) rm -rf "$tmp" ;; # success or interrupted
		*) printf 'demo: logs kept in %s\n' "$tmp" >&2 ;;
		esac
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- preflight ----------------------------------------------------------------

for b in trellis echo-server echo-client; do
	[ -x "$bin_dir/$b" ] || fail "$bin_dir/$b is missing: run \`make demo\` (or \`make build\`)"
done
[ -x "$consul_bin" ] || fail "$consul_bin is missing: run \`make tools\`"
[ -x "$spire_server_bin" ] || fail "$spire_server_bin is missing: run \`make tools\`"
[ -x "$spire_agent_bin" ] || fail "$spire_agent_bin is missing: run \`make tools\`"
command -v curl >/dev/null || fail "curl is needed to poll Consul and the admin endpoint"
for p in "${consul_http##*:}" "$consul_serf_lan" "$consul_serf_wan" "$consul_server" \
	"${xds_addr##*:}" "${admin_addr##*:}" "${echo_ports[@]}" "$spire_port" "${secure_ports[@]}" "${health_ports[@]}"; do
	if port_in_use "$p"; then
		fail "port 127.0.0.1:$p is already in use (another demo still running? the DEMO_*_PORT variables move the demo)"
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/trellis-demo.XXXXXX")

# ---- the demo -------------------------------------------------------------------

say "step 1: starting a dev Consul agent (HTTP on $consul_http)"
start consul "$tmp/consul.log" "$consul_bin" agent -dev \
	-bind 127.0.0.1 -client 127.0.0.1 -data-dir "$tmp/consul-data" \
	-http-port "${consul_http##*:}" -grpc-port -1 -grpc-tls-port -1 -dns-port -1 \
	-serf-lan-port "$consul_serf_lan" -serf-wan-port "$consul_serf_wan" -server-port "$consul_server"
wait_for "Consul to elect itself leader" 60 "$tmp/consul.log" \
	bash -c "curl -sf http://$consul_http/v1/status/leader | grep -q :"
note "Consul is up"

say "step 2: starting the Trellis xDS server (xDS on $xds_addr, admin on $admin_addr)"
export CONSUL_HTTP_ADDR=$consul_http
# The policy API (step 7) takes a bearer token; it is off without one.
export TRELLIS_API_TOKEN=demo-$RANDOM$RANDOM
export TRELLIS_SERVER=$admin_addr
start trellis "$tmp/trellis.log" "$bin_dir/trellis" server --xds-listen "$xds_addr" --admin-listen "$admin_addr" \
	--trust-domain "$trust_domain"
wait_for "trellis to become ready (http://$admin_addr/readyz)" 60 "$tmp/trellis.log" \
	curl -sf "http://$admin_addr/readyz"
note "trellis is ready: it has synced the Consul catalog"

say "step 3: writing the gRPC xDS bootstrap for the client"
"$bin_dir/trellis" bootstrap --xds-server "$xds_addr" --node-id demo-client -o "$tmp/bootstrap.json" ||
	fail "trellis bootstrap failed"
note "GRPC_XDS_BOOTSTRAP=$tmp/bootstrap.json"
awk '{ print "     " $0 }' "$tmp/bootstrap.json"

say "step 4: starting three echo servers; each registers in Consul with a gRPC health check"
echo_pids=()
versions=(v1 v1 v2)
for i in 1 2 3; do
	port=${echo_ports[i - 1]}
	start "echo-$i" "$tmp/echo-$i.log" "$bin_dir/echo-server" \
		--listen "127.0.0.1:$port" --instance-id "echo-$i" --service echo \
		--meta "version=${versions[i - 1]}" --consul-addr "$consul_http" --check-interval 1s
	echo_pids+=("${pids[-1]}")
	note "echo-$i on 127.0.0.1:$port (version=${versions[i - 1]})"
done
wait_for "three passing echo instances in Consul" 60 "$tmp/echo-1.log" echo_instances_passing_eq 3
note "Consul reports 3 passing instances of service echo"
sleep 1 # the catalog change reaches trellis within a blocking query round trip

say "step 5: the client dials xds:///echo and calls 10 times a second for 8 s"
note "its endpoints come from trellis, not from DNS or a proxy"
export GRPC_XDS_BOOTSTRAP=$tmp/bootstrap.json
"$bin_dir/echo-client" --target xds:///echo --rate 10 --duration 8s 2>"$tmp/client-1.log" |
	tee "$tmp/phase1.out" | sed -u 's/^/   /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "the echo client failed" "$tmp/client-1.log"
total=$(grep '^total:' "$tmp/phase1.out")
for i in 1 2 3; do
	grep -q " echo-$i=" <<<"$total" || fail "echo-$i answered no call in step 5" "$tmp/trellis.log"
done
note "all three instances answered"

say "step 6: stopping echo-2 with SIGTERM while the client keeps calling (6 s)"
note "echo-2 deregisters from Consul, trellis drops it from the endpoints, and the client's"
note "balancer moves its calls to echo-1 and echo-3; echo-2 then drains and exits"
: >"$tmp/phase2.out" # exists before the follower below opens it
"$bin_dir/echo-client" --target xds:///echo --rate 10 --duration 6s 2>"$tmp/client-2.log" \
	>"$tmp/phase2.out" &
client_pid=$!
pids+=("$client_pid")
names+=(echo-client)
tail -n +1 -s 0.1 -f --pid "$client_pid" "$tmp/phase2.out" 2>/dev/null | sed -u 's/^/   /' &
tail_pid=$!
pids+=("$tail_pid")
names+=(output-follower)
sleep 2.5
note ">>> SIGTERM echo-2"
stop_pid "${echo_pids[1]}"
client_status=0
wait "$client_pid" || client_status=$?
wait "$tail_pid" 2>/dev/null || true
[ "$client_status" -eq 0 ] || fail "the echo client failed" "$tmp/client-2.log"
grep -q 'deregistered from consul' "$tmp/echo-2.log" || fail "echo-2 did not deregister" "$tmp/echo-2.log"
# The last two per-second lines must not show echo-2 any more.
if grep '^t=' "$tmp/phase2.out" | tail -n 2 | grep -q ' echo-2='; then
	fail "echo-2 still received calls at the end of step 6" "$tmp/trellis.log"
fi
note "echo-2 left the mesh; its calls moved to echo-1 and echo-3"

say "step 7: a policy through the policy API: every call to echo goes to version v2"
cat >"$tmp/policy.yaml" <<'POLICY'
service: echo
subsets:
- {name: v1, meta: {version: v1}}
- {name: v2, meta: {version: v2}}
routes:
- destination: {subset: v2}
  settings:
    retry: {retry_on: [UNAVAILABLE], num_retries: 2}
POLICY
awk '{ print "     " $0 }' "$tmp/policy.yaml"
"$bin_dir/trellis" policy apply -f "$tmp/policy.yaml" 2>&1 | sed 's/^/   /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "trellis policy apply failed" "$tmp/trellis.log"
note "trellis stores it in Consul and pushes the new routes to every client of echo"
sleep 1
"$bin_dir/echo-client" --target xds:///echo --rate 10 --duration 3s 2>"$tmp/client-3.log" |
	tee "$tmp/phase3.out" | sed -u 's/^/   /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "the echo client failed" "$tmp/client-3.log"
if grep '^total:' "$tmp/phase3.out" | grep -q ' echo-1='; then
	fail "echo-1 (v1) still received calls after the policy sent everything to v2" "$tmp/trellis.log"
fi
note "all calls now reach echo-3, the only v2 instance"

failed=0
while read -r n; do
	failed=$((failed + n))
done < <(grep -h '^total:' "$tmp/phase1.out" "$tmp/phase2.out" "$tmp/phase3.out" | sed -n 's/.* failed=\([0-9]*\).*/\1/p')
note "failed calls in steps 5 to 7: $failed"

say "step 8: starting SPIRE: a server and an agent that hand out SPIFFE identities (trust domain $trust_domain)"
mkdir -p "$tmp/spire/server" "$tmp/spire/agent"
spire_server_sock=$tmp/spire/server.sock
spire_agent_sock=$tmp/spire/agent.sock
cat >"$tmp/spire/server.conf" <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "$spire_port"
  socket_path = "$spire_server_sock"
  trust_domain = "$trust_domain"
  data_dir = "$tmp/spire/server"
  log_level = "INFO"
  default_x509_svid_ttl = "1h"
  experimental {
    cache_reload_interval = "1s"
  }
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "$tmp/spire/server/datastore.sqlite3"
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
CONF
cat >"$tmp/spire/agent.conf" <<CONF
agent {
  data_dir = "$tmp/spire/agent"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "$spire_port"
  socket_path = "$spire_agent_sock"
  trust_domain = "$trust_domain"
  insecure_bootstrap = true
  experimental {
    sync_interval = "1s"
  }
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
}
CONF
start spire-server "$tmp/spire-server.log" "$spire_server_bin" run -config "$tmp/spire/server.conf"
wait_for "the SPIRE server" 60 "$tmp/spire-server.log" "$spire_server_bin" healthcheck -socketPath "$spire_server_sock"
node_id=spiffe://$trust_domain/demo-node
join_token=$("$spire_server_bin" token generate -socketPath "$spire_server_sock" -spiffeID "$node_id" | awk '{print $2}')
start spire-agent "$tmp/spire-agent.log" "$spire_agent_bin" run -config "$tmp/spire/agent.conf" -joinToken "$join_token"
wait_for "the SPIRE agent" 60 "$tmp/spire-agent.log" "$spire_agent_bin" healthcheck -socketPath "$spire_agent_sock"
# Workloads are told apart by their binary: the batch client is a copy of
# the echo client at another path, so it gets another identity.
cp "$bin_dir/echo-client" "$tmp/batch-client"
svc_id() { echo "spiffe://$trust_domain/ns/default/dc/dc1/svc/$1"; }
register() {
	"$spire_server_bin" entry create -socketPath "$spire_server_sock" -parentID "$node_id" \
		-spiffeID "$(svc_id "$1")" -selector "unix:path:$2" >/dev/null ||
		fail "registering $1 in SPIRE failed" "$tmp/spire-server.log"
	note "$(svc_id "$1")  <- $2"
}
register secure-echo "$bin_dir/echo-server"
register web "$bin_dir/echo-client"
register batch "$tmp/batch-client"

say "step 9: two echo servers for service secure-echo with mTLS (Consul meta trellis-mtls=true)"
note "they run xds.NewGRPCServer: trellis sends them a server listener that requires a client"
note "certificate and an RBAC filter built from Consul intentions; the SVID comes from SPIRE in process"
"$bin_dir/trellis" bootstrap --xds-server "$xds_addr" --node-id secure-echo --spiffe \
	--workload-api-addr "unix://$spire_agent_sock" -o "$tmp/bootstrap-spiffe.json" ||
	fail "trellis bootstrap --spiffe failed"
for i in 1 2; do
	start "secure-echo-$i" "$tmp/secure-echo-$i.log" \
		env GRPC_XDS_BOOTSTRAP="$tmp/bootstrap-spiffe.json" "$bin_dir/echo-server" --xds --listen "127.0.0.1:${secure_ports[i - 1]}" \
		--health-listen "127.0.0.1:${health_ports[i - 1]}" --instance-id "secure-echo-$i" \
		--service secure-echo --meta trellis-mtls=true --consul-addr "$consul_http" --check-interval 1s
	note "secure-echo-$i on 127.0.0.1:${secure_ports[i - 1]} (Consul checks its health on :${health_ports[i - 1]})"
done
cat >"$tmp/intentions.hcl" <<'HCL'
Kind = "service-intentions"
Name = "secure-echo"
Sources = [
  { Name = "web", Action = "allow" },
  { Name = "batch", Action = "deny" },
]
HCL
"$consul_bin" config write -http-addr="$consul_http" "$tmp/intentions.hcl" >/dev/null ||
	fail "writing the intentions to Consul failed" "$tmp/consul.log"
note "Consul intentions: web -> secure-echo allow, batch -> secure-echo deny"
secure_passing() {
	[ "$(curl -sf "http://$consul_http/v1/health/checks/secure-echo?filter=Status%20%3D%3D%20passing" | grep -o '"CheckID"' | wc -l)" -eq 2 ]
}
wait_for "two passing secure-echo instances" 60 "$tmp/secure-echo-1.log" secure_passing
wait_for "secure-echo-1 to serve its mTLS listener" 60 "$tmp/secure-echo-1.log" grep -q 'mode=SERVING' "$tmp/secure-echo-1.log"
wait_for "secure-echo-2 to serve its mTLS listener" 60 "$tmp/secure-echo-2.log" grep -q 'mode=SERVING' "$tmp/secure-echo-2.log"

say "step 10: web calls xds:///secure-echo over mTLS (xDS credentials, its SVID from SPIRE)"
# The SPIRE agent hands a workload its SVID once it has synced the workload's
# entry (every few seconds): wait until web's first call gets through.
web_has_svid() {
	GRPC_XDS_BOOTSTRAP=$tmp/bootstrap-spiffe.json "$bin_dir/echo-client" --xds-creds --target xds:///secure-echo \
		--rate 5 --count 1 --each --timeout 5s 2>/dev/null | grep -q "seen-as=$(svc_id web)"
}
wait_for "web's SVID from the SPIRE agent" 60 "$tmp/spire-agent.log" web_has_svid
GRPC_XDS_BOOTSTRAP=$tmp/bootstrap-spiffe.json "$bin_dir/echo-client" --xds-creds --target xds:///secure-echo \
	--rate 5 --count 6 --each --timeout 5s 2>"$tmp/web.log" | tee "$tmp/phase4.out" | sed -u 's/^/   /'
grep -q "seen-as=$(svc_id web)" "$tmp/phase4.out" || fail "web's calls did not arrive as $(svc_id web)" "$tmp/trellis.log"
grep -q 'error:' "$tmp/phase4.out" && fail "some of web's calls failed" "$tmp/web.log"
note "each server saw the caller as $(svc_id web)"

say "step 11: batch calls secure-echo too; the deny intention refuses it"
GRPC_XDS_BOOTSTRAP=$tmp/bootstrap-spiffe.json "$tmp/batch-client" --xds-creds --target xds:///secure-echo \
	--rate 5 --count 3 --each --timeout 5s 2>"$tmp/batch.log" | tee "$tmp/phase5.out" | sed -u 's/^/   /'
grep -q 'PermissionDenied' "$tmp/phase5.out" || fail "batch was not denied" "$tmp/trellis.log"
grep -q 'instance=' "$tmp/phase5.out" && fail "a call from batch got through" "$tmp/trellis.log"
note "denied by the server's RBAC filter, built by trellis from the Consul intention"

if [ "${DEMO_KEEP:-}" = 1 ]; then
	say "DEMO_KEEP=1: the mesh keeps running (Consul, SPIRE, trellis, echo-1, echo-3, secure-echo-1/2); Ctrl-C stops it"
	note "export CONSUL_HTTP_ADDR=$consul_http GRPC_XDS_BOOTSTRAP=$tmp/bootstrap.json"
	note "$bin_dir/echo-client --target xds:///echo          # call the mesh"
	note "$bin_dir/echo-server --listen 127.0.0.1:$((echo_port + 3)) --instance-id echo-4 --consul-addr $consul_http"
	note "curl http://$admin_addr/debug/xds/streams              # what trellis sent"
	note "logs: $tmp"
	while :; do sleep 1; done
fi

say "done: every step behaved as described"
