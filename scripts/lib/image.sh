# shellcheck shell=bash
# The test image, built without any registry: Debian's busybox-static in an otherwise empty
# rootfs, with a symlink for every applet (but `busybox` itself: that link would replace the
# binary), imported with `docker import`. Source this file; it defines functions only.
#
#   ql_build_image [NAME]      build NAME (default qlbusybox:latest) unless it exists; also
#                              tag it busybox:latest when no busybox image exists (README tour)
#   ql_make_rootfs DIR         only write the rootfs into DIR (for `docker import` elsewhere,
#                              e.g. a per-namespace dockerd)
#
# The image is the same one crates/qingluan/tests/common builds when it is missing.

QL_IMAGE=${QL_IMAGE:-qlbusybox:latest}
QL_BUSYBOX=${QL_BUSYBOX:-/bin/busybox}

ql_make_rootfs() {
  local root=$1 a
  if [ ! -x "$QL_BUSYBOX" ]; then
    echo "[qingluan] $QL_BUSYBOX missing: apt-get install busybox-static" >&2
    return 1
  fi
  # A dynamically linked busybox (package `busybox`) would not run in an empty rootfs.
  if ldd "$QL_BUSYBOX" >/dev/null 2>&1; then
    echo "[qingluan] $QL_BUSYBOX is dynamically linked: apt-get install busybox-static" >&2
    return 1
  fi
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/www" "$root/root" "$root/usr" || return 1
  chmod 1777 "$root/tmp"
  cp "$QL_BUSYBOX" "$root/bin/busybox" || return 1
  for a in $("$root/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
  done
  # Scripts and tests may use /sbin/ip, /usr/bin/env, ...: everything lives in /bin.
  ln -sfn bin "$root/sbin"
  ln -sfn ../bin "$root/usr/bin"
  ln -sfn ../bin "$root/usr/sbin"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
}

ql_build_image() {
  local name=${1:-$QL_IMAGE} root rc=0
  if ! docker image inspect "$name" >/dev/null 2>&1; then
    root=$(mktemp -d /tmp/qlt-rootfs.XXXXXX) || return 1
    if ql_make_rootfs "$root"; then
      tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$name" >/dev/null || rc=1
    else
      rc=1
    fi
    rm -rf "$root"
    if [ "$rc" != 0 ]; then
      echo "[qingluan] could not build the test image $name" >&2
      return 1
    fi
    echo "[qingluan] imported test image $name (busybox-static $("$QL_BUSYBOX" 2>&1 | head -1 | awk '{print $2}'))" >&2
  fi
  if ! docker image inspect busybox:latest >/dev/null 2>&1; then
    docker tag "$name" busybox:latest && echo "[qingluan] tagged $name as busybox:latest" >&2
  fi
  return 0
}

# Kept for older callers.
build_test_image() { ql_build_image "$@"; }
