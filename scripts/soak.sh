#!/usr/bin/env bash
# The soak (outside CI): random container starts, stops, connects and disconnects on every
# mode across three test-bed hosts with random faults, for SECONDS (default 1800), then the
# invariants (docs/testing.md). QL_SOAK_SEED=N replays a run. Needs what scripts/test.sh
# installs; starts nothing on the host itself (the bed brings its own OVS, dockerds, etcd).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/env.sh
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
ql_install_packages
export QL_E2E=1 QL_SOAK_SECS="${1:-1800}"
exec cargo nextest run --all-features --locked -p qingluan --test soak --run-ignored only --no-capture
