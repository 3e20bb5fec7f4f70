#!/usr/bin/env python3
"""ACL benchmarks (issue 14), run by scripts/bench.sh against the qingluan daemon it uses.

Three nat networks side by side, each with two containers, a and b, where b runs iperf3
and a TCP server that accepts and closes connections in one Python process (no fork per
connection, so the server does not bound the rate). The networks carry 0, 100 and 1,000
rules (allows of TCP/80 from unrelated /32s, so every packet meets the connection tracker
and the whole rule table); the one with 0 rules has no ACL at all, so the ratios include
the tracker's own cost. Measured on each network:
- TCP throughput a -> b (iperf3 in the namespaces, 2 s after 1 s of warm-up), ratio to the
  network with 0 rules (goal >= 0.9 at 1,000);
- the connection rate: 2,000 TCP connections to b's server opened and closed in a row by
  one Python process in a's network namespace, ratio as above (goal >= 0.9 at 1,000);
- the time `qingluan acl add` of a deny takes (it answers once the flows are installed),
  checked right after by a refused ping.
This VM's throughput drifts by 10 % from one minute to the next, more than the rules could
cost, so the levels are measured as interleaved short runs, as the Docker comparisons are:
ROUNDS rounds, each visiting the three networks in a rotated order within seconds of each
other, and each ratio is the median of the rounds' ratios (a level against the 0 rules of
its own round). Everything created is removed at the end.

Usage: bench_acl.py QINGLUAN_CLI...   (e.g. target/release/qingluan --config /tmp/x.toml)
"""

import statistics
import subprocess
import sys
import time

import benchlib
from benchlib import pid, sh

CLI = sys.argv[1:]
IMAGE = "qlbusybox:latest"
LEVELS = (0, 100, 1000)
FETCHES = 2000
ROUNDS = 15


def net(n):
    return f"qlt-bench-acl{n}"


def box(n, side):
    return f"qlt-ba{n}-{side}"


def acl(*args):
    return sh(*CLI, "acl", *args)


# Each server listens on PORTS ports and its client goes round them: one client reusing
# its ephemeral ports towards one server port wraps around within seconds at these rates,
# and a new connection on a 4-tuple the tracker and the server still hold in TIME_WAIT
# stalls for a retransmission (measured: from ~5,000 to ~300 connections/s once ~14,000
# connections went to one port within 30 s, with any number of rules). Spread over the
# ports, the bench's ~30,000 connections per network never reuse a 4-tuple.
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


def add_rules(n):
    for i in range(n):
        acl("add", "--network", net(n), "--from", f"cidr:10.199.{i // 250}.{i % 250 + 1}",
            "--to", "any", "--proto", "tcp", "--port", "80", "--allow")


def measure(n):
    """Throughput, connection rate, `acl add` time and whether the deny held, on the
    network with n rules."""
    a, b = box(n, "a"), box(n, "b")
    target = benchlib.ip(b, net(n))
    tput = benchlib.mbits(a, b, net(n), secs=2)
    rate = float(sh("nsenter", "-t", pid(a), "-n", "python3", "-c", CONNECT_LOOP, target,
                    str(FETCHES)))
    t0 = time.time()
    rule = acl("add", "--network", net(n), "--from", f"container:{a}", "--to",
               f"container:{b}", "--proto", "icmp", "--deny")
    took = time.time() - t0
    held = subprocess.run(["docker", "exec", a, "ping", "-c", "1", "-W", "1", target],
                          capture_output=True).returncode != 0
    acl("rm", rule)
    return tput, rate, took, held


def bench():
    print("acl: TCP throughput and connection rate between two containers by rules on their"
          " network")
    got = {n: [] for n in LEVELS}
    for r in range(ROUNDS):
        for i in range(len(LEVELS)):
            n = LEVELS[(r + i) % len(LEVELS)]
            got[n].append(measure(n))
    print(f"  {'rules':>6} {'Mbit/s':>9} {'ratio':>6} {'conn/s':>8} {'ratio':>6} {'acl add':>9}")
    for n in LEVELS:
        tput, rate, took = (statistics.median(m[k] for m in got[n]) for k in range(3))
        ratios = [statistics.median(m[k] / z[k] for m, z in zip(got[n], got[0]))
                  for k in range(2)]
        held = all(m[3] for m in got[n])
        print(f"  {n:>6} {tput:9.0f} {ratios[0]:6.3f} {rate:8.1f} {ratios[1]:6.3f}"
              f" {took * 1000:7.0f} ms{'' if held else '  (a deny did NOT hold)'}")
    print(f"  (medians of {ROUNDS} rounds, each measuring the three networks within seconds in"
          " a rotated order; a ratio is the median of the rounds' ratios; goal: >= 0.9 of"
          " 0 rules at 1,000)")


def main():
    servers = []
    try:
        for n in LEVELS:
            sh("docker", "network", "create", "--driver", "qingluan", "--ipam-driver",
               "qingluanIpam", "--opt", "model=nat", net(n))
            for side in ("a", "b"):
                sh("docker", "run", "-d", "--name", box(n, side), "--net", net(n), IMAGE,
                   "sleep", "3600")
            servers.append(subprocess.Popen(["nsenter", "-t", pid(box(n, "b")), "-n",
                                             "python3", "-c", ACCEPT_LOOP],
                                            stderr=subprocess.DEVNULL))
            add_rules(n)
        for n in LEVELS:
            for _ in range(50):
                if f":{PORT + PORTS - 1}" in sh("nsenter", "-t", pid(box(n, "b")), "-n", "ss",
                                                "-ltn"):
                    break
                time.sleep(0.1)
        bench()
    finally:
        for s in servers:
            s.kill()
            s.wait()
        for n in LEVELS:
            sh("docker", "rm", "-f", box(n, "a"), box(n, "b"), check=False)
            sh("docker", "network", "rm", net(n), check=False)


if __name__ == "__main__":
    main()
