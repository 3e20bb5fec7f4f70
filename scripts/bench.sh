#!/usr/bin/env bash
# Benchmarks: container start time on a qingluan nat network against a user-defined docker
# bridge network and --net none, measured interleaved in one run, plus the plugin's own
# handling time per call (p50/p99) from `qingluan status --json`; the CPU an idle daemon
# and ovs-vswitchd use with 1, 10 and 100 networks (QL_BENCH_IDLE_SECS seconds each,
# default 60; 0 skips it) and how many processes the host forked meanwhile; the monitoring
# costs with QL_BENCH_ENDPOINTS endpoints (default 1000; scripts/lib/bench_monitoring.py:
# /metrics size and scrape time, daemon CPU per scrape, throughput with sFlow, IPFIX and
# scrapes on against off; QL_BENCH_MONITORING=0 skips it); QoS (scripts/lib/bench_qos.py:
# an unlimited container's throughput with QoS on its network off and on, the accuracy of
# limits from 1 Mbit/s to 1 Gbit/s, the time until a changed limit holds; QL_BENCH_QOS=0
# skips it); ACLs (scripts/lib/bench_acl.py: throughput and connection rate between two
# containers with 0, 100 and 1,000 rules on their network, three networks measured in
# interleaved rounds, the time `acl add` takes;
# QL_BENCH_ACL=0 skips it); mirrors (scripts/lib/bench_mirror.py: throughput of a mirrored
# network against the same unmirrored; QL_BENCH_MIRROR=0 skips it); the intrusion
# detector's throughput with 0, 100 and 10,000 rules, by itself and in the daemon on a
# watched network (scripts/lib/bench_ids.py: the network's throughput watched against not,
# what the detector inspected and dropped, alert latency; QL_BENCH_IDS=0 skips it); then, when etcd is
# installed, address allocations on a cluster network through etcd from one and from three
# hosts at once against the embedded store (benches/cluster_ipam.rs), how long an ACL rule
# added on one of three bed hosts takes to hold on the others (benches/acl_cluster.rs), and with iperf3 the
# vxlan overlay against the plain underlay between two bed hosts (benches/overlay.rs);
# QL_BENCH_CLUSTER=0 skips those three; with QL_BENCH_CLUSTER_SCALE=1 also one vxlan network
# over three bed hosts with 300 endpoints each (benches/cluster_scale.rs, ~8 min).
# The embedded store's write by how many keys it holds, against one page fdatasynced
# (crates/qingluan-store/examples/store_bench.rs).
# Scale (scripts/lib/bench_scale.py, a private daemon of its own driver name): 100 containers started 10 at a time and stopped in one batch on
# qingluan against Docker bridge networks, with 0 and 300 endpoints already up
# (QL_BENCH_SCALE_LEVELS), CreateEndpoint/Join/DeleteEndpoint p50/p99 each beside its floor
# measured meanwhile (a disk flush, an OVSDB change applied by ovs-vswitchd), idle CPU, RSS, flows
# per bridge and a kill -9 under a ping; QL_BENCH_SCALE=0 skips it.
#
# Usage: scripts/bench.sh [RUNS]   (default 25; needs OVS + dockerd up: scripts/setup.sh)
# Uses the running qingluan daemon if one serves /run/docker/plugins/qingluan.sock,
# otherwise starts a private one from target/release for the duration of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-25}
IMAGE=qlbusybox:latest
BIN=${QINGLUAN_BIN:-target/release/qingluan}
tmp=$(mktemp -d /tmp/qlt-bench.XXXXXX)
daemon_pid=""
cleanup() {
  docker network rm qlt-bench-ql qlt-bench-br >/dev/null 2>&1 || true
  docker network ls -q --filter name=qlt-bench-idle | xargs -r docker network rm >/dev/null 2>&1 || true
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

. scripts/lib/env.sh
build_test_image >/dev/null
# Always build: a release binary left from an older checkout would measure old code.
[ -n "${QINGLUAN_BIN:-}" ] || cargo build --release -q --features etcd
CLI=("$BIN")
if ! "$BIN" status >/dev/null 2>&1; then
  cat > "$tmp/config.toml" <<CFG
[daemon]
api_socket = "$tmp/api.sock"
[store]
path = "$tmp/state.redb"
[ids]
eve_log = "$tmp/eve.json"
CFG
  "$BIN" --config "$tmp/config.toml" daemon >"$tmp/daemon.log" 2>&1 &
  daemon_pid=$!
  CLI=("$BIN" --config "$tmp/config.toml")
  for _ in $(seq 50); do "${CLI[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
fi
docker network create --driver qingluan --ipam-driver qingluanIpam --opt model=nat --ipam-opt pool=nat qlt-bench-ql >/dev/null
docker network create --driver bridge qlt-bench-br >/dev/null

ms() { local t0 t1; t0=$(date +%s%N); docker run --rm --net "$1" "$IMAGE" sh -c : >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
for net in qlt-bench-ql qlt-bench-br none; do ms "$net" >/dev/null; done   # warm-up
: >"$tmp/ql"; : >"$tmp/br"; : >"$tmp/none"
for _ in $(seq "$RUNS"); do
  ms qlt-bench-ql >>"$tmp/ql"; ms qlt-bench-br >>"$tmp/br"; ms none >>"$tmp/none"
done
q=$(median <"$tmp/ql"); b=$(median <"$tmp/br"); n=$(median <"$tmp/none")
echo "docker run --rm ... sh -c :   median of $RUNS interleaved runs"
printf '  %-28s %8s ms\n' "qingluan nat network" "$q" "docker bridge network" "$b" "--net none" "$n"
awk -v q="$q" -v b="$b" 'BEGIN { printf "  ratio qingluan/bridge        %8.2f\n", q / b }'
echo "plugin handling time per call (ms):"
"${CLI[@]}" status --json | python3 -c '
import json, sys
for c in json.load(sys.stdin)["calls"]:
    print("  %-45s n=%-5d p50=%7.2f p99=%7.2f" % (c["method"], c["count"], c["p50_ms"], c["p99_ms"]))'

echo
cargo run -q --release -p qingluan-store --example store_bench

if [ "${QL_BENCH_SCALE:-1}" != 0 ]; then
  echo
  python3 scripts/lib/bench_scale.py "$BIN"
fi

IDLE_SECS=${QL_BENCH_IDLE_SECS:-60}
if [ "$IDLE_SECS" -gt 0 ]; then
  pid=${daemon_pid:-$(ss -xlpn | awk '/qingluan.sock/ && match($0, /pid=[0-9]+/) { print substr($0, RSTART + 4, RLENGTH - 4); exit }')}
  vswitchd=$(cat "${OVS_RUNDIR:-/var/run/openvswitch}/ovs-vswitchd.pid")
  hz=$(getconf CLK_TCK)
  ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"; }   # own + reaped children
  kids() { awk '{ print $16 + $17 }' "/proc/$1/stat"; }
  forks() { awk '/^processes/ { print $2 }' /proc/stat; }
  echo
  echo "idle CPU over $IDLE_SECS s (% of one core; the daemon's figure includes its children's;"
  echo "forks are host-wide, so only meaningful on a quiet machine)"
  have=1   # qlt-bench-ql
  for n in 1 10 100; do
    while [ "$have" -lt "$n" ]; do
      docker network create --driver qingluan --ipam-driver qingluanIpam --opt model=nat \
        --ipam-opt pool=nat "qlt-bench-idle$have" >/dev/null
      have=$((have + 1))
    done
    sleep 5
    d0=$(ticks "$pid"); c0=$(kids "$pid"); v0=$(ticks "$vswitchd"); f0=$(forks)
    sleep "$IDLE_SECS"
    d1=$(ticks "$pid"); c1=$(kids "$pid"); v1=$(ticks "$vswitchd"); f1=$(forks)
    awk -v n="$n" -v d=$((d1 - d0)) -v c=$((c1 - c0)) -v v=$((v1 - v0)) -v f=$((f1 - f0)) \
      -v s="$IDLE_SECS" -v hz="$hz" 'BEGIN {
        printf "  %3d networks: qingluan %6.2f %% (children %6.2f %%)  ovs-vswitchd %6.2f %%  forks %d\n",
          n, 100 * d / hz / s, 100 * c / hz / s, 100 * v / hz / s, f }'
  done
fi
if [ "${QL_BENCH_MONITORING:-1}" != 0 ]; then
  echo
  python3 scripts/lib/bench_monitoring.py "$BIN" "${QL_BENCH_ENDPOINTS:-1000}"
fi
if [ "${QL_BENCH_QOS:-1}" != 0 ]; then
  echo
  python3 scripts/lib/bench_qos.py "${CLI[@]}"
fi
if [ "${QL_BENCH_ACL:-1}" != 0 ]; then
  echo
  python3 scripts/lib/bench_acl.py "${CLI[@]}"
fi
if [ "${QL_BENCH_MIRROR:-1}" != 0 ]; then
  echo
  python3 scripts/lib/bench_mirror.py "${CLI[@]}"
fi
if [ "${QL_BENCH_IDS:-1}" != 0 ]; then
  echo
  echo "ids: the detector's throughput by rule count (crates/qingluan-ids/examples/ids_bench.rs)"
  cargo run -q --release -p qingluan-ids --example ids_bench
  echo
  python3 scripts/lib/bench_ids.py "${CLI[@]}"
fi
if [ "${QL_BENCH_CLUSTER:-1}" != 0 ] && command -v etcd >/dev/null; then
  echo
  cargo bench -q -p qingluan --features etcd --bench cluster_ipam -- "${QL_BENCH_ALLOCS:-300}"
  echo
  QL_E2E=1 cargo bench -q -p qingluan --features etcd --bench acl_cluster
  if command -v iperf3 >/dev/null; then
    echo
    QL_E2E=1 cargo bench -q -p qingluan --features etcd --bench overlay
  fi
  if [ "${QL_BENCH_CLUSTER_SCALE:-0}" != 0 ]; then
    echo
    QL_E2E=1 cargo bench -q -p qingluan --features etcd --bench cluster_scale
  fi
fi
