#!/usr/bin/env bash
# The README's second command: the whole test suite. Installs what is missing, starts OVS
# and dockerd if they are not running (and stops exactly those again at the end), then runs
# fmt, clippy and every test — unit, adapter (private OVS instances) and end-to-end against
# the real dockerd (QL_E2E=1). Leaves no processes, namespaces, bridges or containers behind.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/env.sh
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
QL_STARTED_OVS=0 QL_STARTED_DOCKERD=0
had_docker0=0
ip link show docker0 >/dev/null 2>&1 && had_docker0=1
# The tests' daemons raise the host's default socket receive buffer (the userspace
# datapath needs it, docs/configuration.md); put back what the machine had.
rmem_default=$(cat /proc/sys/net/core/rmem_default)

cleanup() {
  bash scripts/cleanup.sh >/dev/null 2>&1 || true
  if [ "$QL_STARTED_DOCKERD" = 1 ]; then
    ql_stop_dockerd
    # dockerd leaves its docker0 bridge behind; remove it when it was not there before us.
    [ "$had_docker0" = 1 ] || ip link del docker0 2>/dev/null
  fi
  [ "$QL_STARTED_OVS" = 1 ] && ql_stop_ovs
  echo "$rmem_default" >/proc/sys/net/core/rmem_default
  true
}
trap cleanup EXIT

ql_install_packages || exit 1
ql_start_ovs || exit 1
ql_start_dockerd || exit 1
build_test_image
export QL_E2E=1 QL_OWN_OVS=$QL_STARTED_OVS QL_OWN_DOCKERD=$QL_STARTED_DOCKERD
# A qingluan daemon already serving the default name (scripts/setup.sh): tests use their own.
if [ -S /run/docker/plugins/qingluan.sock ] && command -v qingluan >/dev/null && qingluan status >/dev/null 2>&1; then
  export QL_SYSTEM_DAEMON=1
fi
bash scripts/cleanup.sh >/dev/null 2>&1

status=0
cargo fmt --all -- --check || status=1
cargo clippy --all-targets --all-features --locked -- -D warnings || status=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --no-fail-fast || status=1
else
  cargo test --workspace --all-features --locked --no-fail-fast -- --test-threads=1 || status=1
fi
exit $status
