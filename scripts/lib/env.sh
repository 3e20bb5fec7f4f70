# Shared by scripts/setup.sh and scripts/test.sh: install what qingluan needs from Debian's
# packages and bring up OVS and dockerd when they are not running. Source it; functions only.
# Every start_* function sets QL_STARTED_<X>=1 when it started something, so callers can stop
# exactly what they started (by pidfile), never anything else.

QL_PACKAGES="openvswitch-switch docker.io busybox-static nftables iptables ethtool iproute2 tcpdump curl jq procps python3 build-essential pkg-config etcd-server protobuf-compiler iputils-ping iperf3 prometheus tmux pmacct nfdump"
OVS_RUN=/run/openvswitch
OVS_SCHEMA=/usr/share/openvswitch/vswitch.ovsschema

ql_log() { echo "[qingluan] $*" >&2; }

ql_systemd() { [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; }

ql_install_packages() {
  local missing=() p
  for p in $QL_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    ql_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || { ql_log "cargo not found: install Rust (https://rustup.rs) first"; return 1; }
}

ql_ovs_up() { ovs-vsctl --timeout=3 show >/dev/null 2>&1 && ovs-appctl -t ovs-vswitchd version >/dev/null 2>&1; }

ql_start_ovs() {
  ql_ovs_up && return 0
  if ql_systemd; then
    systemctl start openvswitch-switch
    if [ "$(ovs-vsctl --timeout=5 get Open_vSwitch . other_config:userspace-tso-enable 2>/dev/null)" != '"true"' ]; then
      ovs-vsctl --timeout=5 set Open_vSwitch . other_config:userspace-tso-enable=true
      systemctl restart ovs-vswitchd
    fi
    QL_STARTED_OVS=1
    return 0
  fi
  mkdir -p "$OVS_RUN" /var/log/openvswitch /etc/openvswitch
  [ -f /etc/openvswitch/conf.db ] || ovsdb-tool create /etc/openvswitch/conf.db "$OVS_SCHEMA"
  if ! ovs-vsctl --timeout=3 show >/dev/null 2>&1; then
    ovsdb-server /etc/openvswitch/conf.db --remote=punix:$OVS_RUN/db.sock \
      --remote=db:Open_vSwitch,Open_vSwitch,manager_options --pidfile=$OVS_RUN/ovsdb-server.pid \
      --log-file=/var/log/openvswitch/ovsdb-server.log -vconsole:off --no-chdir --detach
    QL_STARTED_OVS=1
  fi
  ovs-vsctl --timeout=10 --no-wait init
  # Userspace TSO must be set before ovs-vswitchd starts: 5-10x throughput on the netdev datapath.
  ovs-vsctl --timeout=10 --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true
  if ! ovs-appctl -t ovs-vswitchd version >/dev/null 2>&1; then
    ovs-vswitchd unix:$OVS_RUN/db.sock --pidfile=$OVS_RUN/ovs-vswitchd.pid \
      --log-file=/var/log/openvswitch/ovs-vswitchd.log -vconsole:off --no-chdir --detach
    QL_STARTED_OVS=1
  fi
  ql_ovs_up || { ql_log "OVS did not come up (see /var/log/openvswitch/)"; return 1; }
}

ql_stop_ovs() {
  local f pid
  for f in ovs-vswitchd ovsdb-server; do
    pid=$(cat "$OVS_RUN/$f.pid" 2>/dev/null) || continue
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
}

ql_docker_up() { docker version >/dev/null 2>&1; }

ql_start_dockerd() {
  ql_docker_up && return 0
  if ql_systemd; then
    systemctl start docker
  else
    setsid dockerd --pidfile /run/docker.pid >>/var/log/qingluan-dockerd.log 2>&1 </dev/null &
  fi
  QL_STARTED_DOCKERD=1
  for _ in $(seq 120); do ql_docker_up && return 0; sleep 0.5; done
  ql_log "dockerd did not come up (see /var/log/qingluan-dockerd.log)"
  return 1
}

ql_stop_dockerd() {
  if ql_systemd; then systemctl stop docker docker.socket 2>/dev/null || true; return 0; fi
  local pid
  pid=$(cat /run/docker.pid 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  ql_log "dockerd $pid did not stop within 30 s"
}

# The test image: busybox-static with every applet linked (but busybox itself), imported.
build_test_image() {
  docker image inspect qlbusybox:latest >/dev/null 2>&1 || {
    local root
    root=$(mktemp -d /tmp/qlt-rootfs.XXXXXX)
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/www"
    cp /bin/busybox "$root/bin/busybox"
    for a in $("$root/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - qlbusybox:latest >/dev/null
    rm -rf "$root"
  }
  docker image inspect busybox:latest >/dev/null 2>&1 || docker tag qlbusybox:latest busybox:latest
}
