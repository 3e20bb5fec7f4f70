#!/usr/bin/env python3
"""QoS benchmarks (issue 12), run by scripts/bench.sh against the qingluan daemon it uses.

Two containers on a nat network; iperf3 runs in their network namespaces from the host
(TCP, 5 s measured after 2 s of warm-up):
- the throughput of an unlimited container before and after QoS is in use on its network
  (a third container with an egress and an ingress limit and a priority class), runs
  interleaved, medians, ratio after / before (goal >= 0.97);
- the accuracy of egress (meter) and ingress (HTB) limits from 1 Mbit/s to 1 Gbit/s,
  measured / configured;
- the time from `qingluan qos set` (1gbit -> 50mbit and back up, on a running transfer
  sampled every 100 ms) until the new rate holds: the first 100 ms sample within 10 % of
  it (down) or above 90 % of it (up), and how long the command itself takes.
Everything created is removed at the end.

Usage: bench_qos.py QINGLUAN_CLI...   (e.g. target/release/qingluan --config /tmp/x.toml)
"""

import json
import statistics
import subprocess
import sys
import threading
import time

CLI = sys.argv[1:]
NET = "qlt-bench-qos"
IMAGE = "qlbusybox:latest"
ROUNDS = 5


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def qos(*args):
    sh(*CLI, "qos", *args)


def pid(c):
    return sh("docker", "inspect", "-f", "{{.State.Pid}}", c)


def ip(c):
    return sh("docker", "inspect", "-f",
              "{{(index .NetworkSettings.Networks \"%s\").IPAddress}}" % NET, c)


def iperf(client, server, secs=5, reverse=False, interval=None):
    """iperf3's JSON for a TCP test from client to server (server -> client with reverse)."""
    srv = subprocess.Popen(["nsenter", "-t", pid(server), "-n", "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if ":5201" in sh("nsenter", "-t", pid(server), "-n", "ss", "-ltn"):
                break
            time.sleep(0.1)
        args = ["nsenter", "-t", pid(client), "-n", "iperf3", "-c", ip(server),
                "-t", str(secs), "-J"]
        if interval is None:
            args += ["-O", "2"]
        else:
            args += ["-i", str(interval)]
        if reverse:
            args.append("-R")
        return json.loads(sh(*args))
    finally:
        srv.kill()
        srv.wait()


def mbits(client, server, reverse=False):
    return iperf(client, server, reverse=reverse)["end"]["sum_received"]["bits_per_second"] / 1e6


def run(name):
    sh("docker", "run", "-d", "--name", name, "--net", NET, IMAGE, "sleep", "3600")


def main():
    sh("docker", "network", "create", "--driver", "qingluan", "--ipam-driver", "qingluanIpam",
       "--opt", "model=nat", NET)
    try:
        for c in ("qlt-bq-a", "qlt-bq-b", "qlt-bq-c"):
            run(c)
        bench()
    finally:
        sh("docker", "rm", "-f", "qlt-bq-a", "qlt-bq-b", "qlt-bq-c", check=False)
        sh("docker", "network", "rm", NET, check=False)


def bench():
    print("qos: TCP throughput of an unlimited container, QoS on its network off and on")
    off, on = [], []
    for _ in range(ROUNDS):
        off.append(mbits("qlt-bq-a", "qlt-bq-b"))
        qos("set", "qlt-bq-c", "--egress-rate", "10mbit", "--ingress-rate", "10mbit",
            "--priority", "high")
        on.append(mbits("qlt-bq-a", "qlt-bq-b"))
        qos("rm", "qlt-bq-c")
    o, n = statistics.median(off), statistics.median(on)
    print(f"  off {o:8.0f} Mbit/s   on {n:8.0f} Mbit/s   ratio {n / o:.3f} (goal >= 0.97)"
          f"   ({ROUNDS} interleaved runs each, medians)")

    print("\nqos: accuracy, measured / configured (TCP, 5 s after 2 s warm-up)")
    print(f"  {'configured':>11} {'egress':>10} {'ratio':>6} {'ingress':>10} {'ratio':>6}")
    for rate, unit in ((1, "mbit"), (10, "mbit"), (100, "mbit"), (1000, "mbit")):
        r = f"{rate}{unit}"
        qos("set", "qlt-bq-a", "--egress-rate", r)
        eg = mbits("qlt-bq-a", "qlt-bq-b")
        qos("rm", "qlt-bq-a")
        qos("set", "qlt-bq-a", "--ingress-rate", r)
        ing = mbits("qlt-bq-a", "qlt-bq-b", reverse=True)
        qos("rm", "qlt-bq-a")
        print(f"  {r:>11} {eg:10.2f} {eg / rate:6.3f} {ing:10.2f} {ing / rate:6.3f}")

    print("\nqos: time from `qos set` until the new rate holds (100 ms samples)")
    for what, first, then, down in (("egress 1gbit -> 50mbit", "1gbit", "50mbit", True),
                                    ("egress 50mbit -> 1gbit", "50mbit", "1gbit", False)):
        qos("set", "qlt-bq-a", "--egress-rate", first)
        result = {}
        t = threading.Thread(target=lambda: result.update(
            iperf("qlt-bq-a", "qlt-bq-b", secs=6, interval=0.1)))
        started = time.time()
        t.start()
        time.sleep(3)
        t0 = time.time()
        qos("set", "qlt-bq-a", "--egress-rate", then)
        took = time.time() - t0
        t.join()
        qos("rm", "qlt-bq-a")
        target = float(then.rstrip("gmbit")) * (1000 if then.endswith("gbit") else 1)
        held = None
        for i in result["intervals"]:
            s = i["sum"]
            at = started + s["end"]
            rate = s["bits_per_second"] / 1e6
            ok = rate <= target * 1.1 if down else rate >= target * 0.9
            if at > t0 and ok:
                held = at - t0
                break
        shown = f"{held * 1000:6.0f} ms" if held is not None else "   never"
        print(f"  {what:<24} holds after {shown}   (the command took {took * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
