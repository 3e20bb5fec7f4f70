#!/usr/bin/env python3
"""ACL benchmarks (issue 14), run by scripts/bench.sh against the qingluan daemon it uses.

Two containers on a nat network, b running iperf3 and a TCP server that accepts and closes
connections in one Python process (no fork per connection, so the server does not bound the
rate); with 0, 100 and 1,000 rules on the network (allows of TCP/80 from unrelated /32s, so
every packet meets the connection tracker and the whole rule table):
- TCP throughput a -> b (iperf3 in the namespaces, 5 s after 1 s of warm-up), ratio to 0
  rules (goal >= 0.9 at 1,000);
- the connection rate: 2,000 TCP connections to b's server opened and closed in a row by
  one Python process in a's network namespace, connections per second (the median of three
  such runs), ratio to 0 rules (goal >= 0.9 at 1,000);
- the time `qingluan acl add` of a deny takes (it answers once the flows are installed),
  checked right after by a refused ping.
Five rounds, each visiting the three levels in a different order (so no level always comes
last, after the tracker collected the others' closed connections), adding or removing rules
to reach each; medians per level, and each ratio is the median of the rounds' ratios (each
level against the 0 rules measured in the same round, a minute apart: this VM's
throughput drifts by 10 % from minute to minute).
Everything created is removed at the end.

Usage: bench_acl.py QINGLUAN_CLI...   (e.g. target/release/qingluan --config /tmp/x.toml)
"""

import statistics
import subprocess
import sys
import time

import benchlib
from benchlib import pid, sh

CLI = sys.argv[1:]
NET = "qlt-bench-acl"
IMAGE = "qlbusybox:latest"
FETCHES = 2000
ROUNDS = 5


def acl(*args):
    return sh(*CLI, "acl", *args)


def ip(c):
    return benchlib.ip(c, NET)


def mbits(client, server):
    return benchlib.mbits(client, server, NET)


# The server listens on PORTS ports and the client goes round them: one client reusing its
# ephemeral ports towards one server port wraps around within seconds at these rates, and a
# new connection on a 4-tuple the tracker and the server still hold in TIME_WAIT stalls for
# a retransmission (measured: from ~5,000 to ~300 connections/s once ~14,000 connections
# went to one port within 30 s, with any number of rules). Spread over the ports, the
# bench's ~40,000 connections never reuse a 4-tuple.
PORT, PORTS = 7000, 16

ACCEPT_LOOP = f"""
import selectors, socket
sel = selectors.DefaultSelector()
for p in range({PORT}, {PORT + PORTS}):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p))
    s.listen(1024)
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept()
        c.close()
"""

CONNECT_LOOP = f"""
import socket, sys, time
ip, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
for i in range(n):
    s = socket.create_connection((ip, {PORT} + i % {PORTS}), timeout=3)
    s.close()
print(n / (time.perf_counter() - t0))
"""


def connects(client, server):
    """TCP connections per second from client to server's accept loop: one Python process
    in the client's network namespace connecting and closing FETCHES times; the median of
    three runs."""
    runs = [float(sh("nsenter", "-t", pid(client), "-n", "python3", "-c", CONNECT_LOOP,
                     ip(server), str(FETCHES)))
            for _ in range(3)]
    return statistics.median(runs)


def add_rules(start, end):
    return [acl("add", "--network", NET, "--from", f"cidr:10.199.{i // 250}.{i % 250 + 1}",
                "--to", "any", "--proto", "tcp", "--port", "80", "--allow")
            for i in range(start, end)]


def main():
    sh("docker", "network", "create", "--driver", "qingluan", "--ipam-driver", "qingluanIpam",
       "--opt", "model=nat", NET)
    try:
        sh("docker", "run", "-d", "--name", "qlt-ba-a", "--net", NET, IMAGE, "sleep", "3600")
        sh("docker", "run", "-d", "--name", "qlt-ba-b", "--net", NET, IMAGE, "sleep", "3600")
        server = subprocess.Popen(["nsenter", "-t", pid("qlt-ba-b"), "-n", "python3", "-c",
                                   ACCEPT_LOOP], stderr=subprocess.DEVNULL)
        try:
            for _ in range(50):
                if f":{PORT + PORTS - 1}" in sh("nsenter", "-t", pid("qlt-ba-b"), "-n", "ss",
                                                "-ltn"):
                    break
                time.sleep(0.1)
            bench()
        finally:
            server.kill()
            server.wait()
    finally:
        sh("docker", "rm", "-f", "qlt-ba-a", "qlt-ba-b", check=False)
        sh("docker", "network", "rm", NET, check=False)


def measure():
    tput = mbits("qlt-ba-a", "qlt-ba-b")
    rate = connects("qlt-ba-a", "qlt-ba-b")
    t0 = time.time()
    rule = acl("add", "--network", NET, "--from", "container:qlt-ba-a", "--to",
               "container:qlt-ba-b", "--proto", "icmp", "--deny")
    took = time.time() - t0
    held = subprocess.run(["docker", "exec", "qlt-ba-a", "ping", "-c", "1", "-W", "1",
                           ip("qlt-ba-b")], capture_output=True).returncode != 0
    acl("rm", rule)
    return tput, rate, took, held


def bench():
    print("acl: TCP throughput and connection rate between two containers by rules on their network")
    levels = (0, 100, 1000)
    orders = [(0, 100, 1000), (1000, 100, 0), (100, 0, 1000), (1000, 0, 100), (0, 1000, 100)]
    got = {n: [] for n in levels}
    ids = []
    for r in range(ROUNDS):
        for n in orders[r % len(orders)]:
            while len(ids) > n:
                acl("rm", ids.pop())
            ids += add_rules(len(ids), n)
            got[n].append(measure())
    for i in ids:
        acl("rm", i)
    print(f"  {'rules':>6} {'Mbit/s':>9} {'ratio':>6} {'conn/s':>8} {'ratio':>6} {'acl add':>9}")
    med = {n: [statistics.median(r[k] for r in got[n]) for k in range(3)] for n in levels}
    ratio = {n: [statistics.median(r[k] / z[k] for r, z in zip(got[n], got[0])) for k in range(2)]
             for n in levels}
    for n in levels:
        tput, rate, took = med[n]
        held = all(r[3] for r in got[n])
        print(f"  {n:>6} {tput:9.0f} {ratio[n][0]:6.3f} {rate:8.1f} {ratio[n][1]:6.3f}"
              f" {took * 1000:7.0f} ms{'' if held else '  (a deny did NOT hold)'}")
    print(f"  (medians of {ROUNDS} rounds, each visiting the levels in another order; a ratio"
          " is the median of the rounds' ratios; goal: >= 0.9 of 0 rules at 1,000)")


if __name__ == "__main__":
    main()
