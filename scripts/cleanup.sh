#!/usr/bin/env bash
# Removes everything the test suite may have left: containers and networks named qlt*,
# namespaces and links named qlt*, and the test instance's OVS bridges, nftables tables and
# DOCKER-USER rules, endpoint veths and detector capture ports (instances "qltest", "qltmp"
# of the managed-plugin test, "qlscale" of the scale bench, and "qingluan" when no system
# daemon serves it), and managed plugins named qlt*.
# Safe to run at any time; touches nothing else.
set -u
ids=$(docker ps -aq --filter name=^qlt 2>/dev/null)
[ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
for n in $(docker network ls --format '{{.Name}}' 2>/dev/null | grep '^qlt'); do docker network rm "$n" >/dev/null 2>&1; done
for p in $(docker plugin ls --format '{{.Name}}' 2>/dev/null | grep '^qlt'); do docker plugin rm -f "$p" >/dev/null 2>&1; done
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^qlt'); do ip netns del "$ns"; done
for l in $(ip -o link 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^qlt'); do ip link del "$l" 2>/dev/null; done
instances="qltest qltmp qlscale"
if ! { [ -S /run/docker/plugins/qingluan.sock ] && qingluan status >/dev/null 2>&1; }; then
  instances="$instances qingluan"
fi
for inst in $instances; do
  for br in $(ovs-vsctl --timeout=5 --columns=name,external_ids --format=csv --no-headings list Bridge 2>/dev/null \
      | grep "qingluan-owner=$inst[,}\"]" | cut -d, -f1); do
    ovs-vsctl --timeout=5 del-br "$br"
  done
  nft delete table inet "$inst" 2>/dev/null
  nft delete table netdev "${inst}_guard" 2>/dev/null
  while iptables -w -S DOCKER-USER 2>/dev/null | grep -q -- "--comment $inst "; do
    rule=$(iptables -w -S DOCKER-USER | grep -- "--comment $inst " | head -1 | sed 's/^-A /-D /')
    eval iptables -w $rule || break
  done
  [ "$inst" = qltest ] || rm -f "/run/docker/plugins/$inst.sock" "/run/docker/plugins/${inst}Ipam.sock"
done
prefixes="qt qm qs"
case " $instances " in *" qingluan "*) prefixes="qt qm qs ql" ;; esac
for p in $prefixes; do
 for l in $(ip -o link 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^$p([vc][0-9a-f]{11}|id[br][0-9a-f]{6})$"); do
  ovs-vsctl --timeout=5 --if-exists del-port "$l" 2>/dev/null
  ip link del "$l" 2>/dev/null
 done
done
exit 0
