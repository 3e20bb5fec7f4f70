#!/usr/bin/env bash
# Builds the Debian package target/debian/qingluan_<version>_<arch>.deb: the binary, the
# systemd unit (before docker.service, after ovs-vswitchd), the default config as a conffile,
# bash/zsh/fish completions and man pages generated from the CLI definition. Then the managed
# plugin's directory target/plugin/ (packaging/plugin/config.json and a rootfs holding the
# binary, nft, iptables and tc with the libraries they load), for
# `docker plugin create qingluan ./target/plugin`.
#
# QL_PACKAGE_BINARY=path packages that binary instead of building a release one (the tests
# package the binary they test).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
bin=${QL_PACKAGE_BINARY:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --features etcd
  bin=target/release/qingluan
fi

stage=target/debian/stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/qingluan" \
  "$stage/usr/share/doc/qingluan" "$stage/usr/share/man/man1" \
  "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d"

install -s -m 0755 "$bin" "$stage/usr/bin/qingluan"
sed 's|/usr/local/bin/qingluan|/usr/bin/qingluan|' packaging/qingluan.service \
  >"$stage/lib/systemd/system/qingluan.service"
chmod 0644 "$stage/lib/systemd/system/qingluan.service"
install -m 0644 packaging/config.toml "$stage/etc/qingluan/config.toml"
install -m 0644 README.md "$stage/usr/share/doc/qingluan/README.md"
cp -r docs "$stage/usr/share/doc/qingluan/docs"
printf 'qingluan\nLicense: Apache-2.0 (/usr/share/common-licenses/Apache-2.0)\n' \
  >"$stage/usr/share/doc/qingluan/copyright"

# Generated from the CLI definition by the packaged binary itself.
q() { "$stage/usr/bin/qingluan" --config /dev/null "$@"; }
q completions bash >"$stage/usr/share/bash-completion/completions/qingluan"
q completions zsh >"$stage/usr/share/zsh/vendor-completions/_qingluan"
q completions fish >"$stage/usr/share/fish/vendor_completions.d/qingluan.fish"
q man-pages "$stage/usr/share/man/man1"
gzip -9n "$stage"/usr/share/man/man1/*.1

for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"; done
echo /etc/qingluan/config.toml >"$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: qingluan
Version: $version
Architecture: $arch
Maintainer: qingluan developers <qingluan@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), openvswitch-switch, nftables, iptables, iproute2
Recommends: docker.io | docker-ce
Suggests: etcd-server
Section: net
Priority: optional
Homepage: https://github.com/qingluan
Description: Open vSwitch network plugin for Docker
 qingluan gives Docker networks on Open vSwitch in five modes (nonat, nat, flat,
 vlan, vxlan) with an IPAM driver carving subnets from named pools, QoS, traffic
 monitoring, ACLs and intrusion detection. One host needs only OVS and Docker;
 several hosts share state through etcd.
CONTROL

deb="target/debian/qingluan_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"

# The managed plugin: each program with the shared libraries it loads, at their own paths.
plugin=target/plugin
rm -rf "$plugin"
root="$plugin/rootfs"
mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/tmp" "$root/run" "$root/var/lib" "$root/var/log"
chmod 1777 "$root/tmp"
ln -s ../run "$root/var/run"
install -m 0755 "$stage/usr/bin/qingluan" "$root/usr/bin/qingluan"
cp -L "$(command -v nft)" "$root/usr/sbin/nft"
cp -L "$(command -v tc)" "$root/usr/sbin/tc"
cp -L "$(command -v xtables-nft-multi)" "$root/usr/sbin/xtables-nft-multi"
ln -s xtables-nft-multi "$root/usr/sbin/iptables"
comment=$(find /usr/lib /lib -name libxt_comment.so -print -quit)
[ -n "$comment" ] || { echo "package.sh: iptables' extensions (libxt_comment.so) not found" >&2; exit 1; }
xt=$(dirname "$comment")
mkdir -p "$root$xt" && cp -a "$xt/." "$root$xt/"
for prog in "$root"/usr/bin/qingluan "$root"/usr/sbin/nft "$root"/usr/sbin/tc \
  "$root"/usr/sbin/xtables-nft-multi "$root$xt"/*.so; do
  { ldd "$prog" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
    [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"; }
  done
done
install -m 0644 packaging/plugin/config.json "$plugin/config.json"
echo "$plugin"
