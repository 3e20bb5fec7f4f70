#!/usr/bin/env bash
# The README's first command: on Debian 12 as root, install OVS, the Docker engine and the
# build tools, build and install qingluan, start OVS (userspace TSO on), dockerd and the
# qingluan daemon. Idempotent: re-running only starts what is not running.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/env.sh
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

ql_install_packages
ql_start_ovs
ql_log "building qingluan"
cargo build --release --locked --features etcd
install -m 0755 target/release/qingluan /usr/local/bin/qingluan
mkdir -p /etc/qingluan /var/lib/qingluan
[ -f /etc/qingluan/config.toml ] || install -m 0644 packaging/config.toml /etc/qingluan/config.toml

# qingluan before dockerd (protocol doc pitfall 11): dockerd waits ~15 s per missing plugin.
if ql_systemd; then
  install -m 0644 packaging/qingluan.service /etc/systemd/system/qingluan.service
  systemctl daemon-reload
  systemctl enable --now qingluan
elif ! qingluan status >/dev/null 2>&1; then
  mkdir -p /run/qingluan
  setsid /usr/local/bin/qingluan daemon >>/var/log/qingluan.log 2>&1 </dev/null &
  echo $! >/run/qingluan/qingluan.pid
fi
for _ in $(seq 50); do qingluan status >/dev/null 2>&1 && break; sleep 0.2; done
ql_start_dockerd
build_test_image

qingluan status
ql_log "ready: docker network create --driver qingluan --ipam-driver qingluanIpam --opt model=nat --ipam-opt pool=nat nat1"
