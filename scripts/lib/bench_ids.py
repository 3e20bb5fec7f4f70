#!/usr/bin/env python3
"""Detector benchmark (issue 15), run by scripts/bench.sh against the qingluan daemon it uses.

Two containers on a nat network. TCP throughput a -> b (iperf3 in the namespaces, 5 s after
1 s of warm-up) with the network unwatched, and watched by the detector
(`qingluan ids enable`) with 0, 100 and 10,000 random content rules of the kind
crates/qingluan-ids/examples/ids_bench.rs makes. For each: the network's own throughput
(its ratio to unwatched; three alternating rounds for 0 rules, goal >= 0.9), and what the
detector read from its capture port meanwhile (Mbit/s and frames/s inspected) against what
the kernel dropped because it fell behind (`ids status`). Then the alert latency: the EVE
timestamp of a signature's alert minus the time the request carrying it was sent (curl in
a's namespace to busybox httpd in b), median and max of 20; and in IPS mode the time from a
`drop` rule's alert until the sender is quarantined. Everything created is removed.

Usage: bench_ids.py QINGLUAN_CLI...   (e.g. target/release/qingluan --config /tmp/x.toml)
"""

import contextlib
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib
from benchlib import sh

CLI = sys.argv[1:]
NET = "qlt-bench-ids"
IMAGE = "qlbusybox:latest"
A, B = "qlt-bi-a", "qlt-bi-b"
MARKER_SID = 1_999_999


def rules(count, path):
    """Writes `count` random content rules (sids 1..count) and the latency marker rule."""
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    ports = ["any", "80", "$HTTP_PORTS", "1024:", "[80,443,8080]"]
    with open(path, "w") as f:
        for i in range(count):
            content = "".join(rng.choice(alphabet) for _ in range(rng.randint(6, 12)))
            nocase = " nocase;" if i % 3 == 0 else ""
            f.write(f'alert tcp any any -> any {rng.choice(ports)} (msg:"bench {i}"; '
                    f'flow:established,to_server; content:"{content}";{nocase} sid:{i + 1};)\n')
        f.write(f'alert tcp any any -> any 80 (msg:"bench marker"; flow:established,to_server; '
                f'content:"qlt-bench-marker"; sid:{MARKER_SID};)\n')
        f.write(f'drop tcp any any -> any 80 (msg:"bench drop"; flow:established,to_server; '
                f'content:"qlt-bench-drop"; sid:{MARKER_SID + 1};)\n')


def status():
    return json.loads(sh(*CLI, "--json", "ids", "status"))


def counters():
    w = status()["watches"][0]
    return w["packets"], w["bytes"], w["dropped"]


@contextlib.contextmanager
def watching(path, mode="ids"):
    """The network watched with the rules at `path` in `mode`, once the detector reads
    its capture port; the EVE log's path."""
    sh(*CLI, "ids", "enable", "--network", NET, "--rules", path, "--mode", mode)
    try:
        for _ in range(100):
            if status()["watches"][0]["inspecting"]:
                break
            time.sleep(0.1)
        yield status()["eve_log"]
    finally:
        sh(*CLI, "ids", "disable", "--network", NET)


def request(pid, b, marker):
    """An HTTP request carrying `marker` to address `b` (curl in the namespace of `pid`)."""
    sh("nsenter", "-t", pid, "-n", "curl", "-s", "-m", "3", "-o", "/dev/null",
       f"http://{b}/?q={marker}", check=False)


def watched(path):
    """Throughput a -> b with the network watched by the rules at `path`, and the
    detector's counters over it."""
    with watching(path):
        p0, b0, d0 = counters()
        t0 = time.time()
        mbit = benchlib.mbits(A, B, NET)
        took = time.time() - t0
        p1, b1, d1 = counters()
        return mbit, (b1 - b0) * 8 / took / 1e6, (p1 - p0) / took, d1 - d0, p1 - p0


def latency(path):
    """Alert latencies in ms of 20 requests carrying the marker."""
    with watching(path) as eve:
        pid, b = benchlib.pid(A), benchlib.ip(B, NET)
        out = []
        for i in range(20):
            marker = f"qlt-bench-marker-{os.getpid()}-{i}"
            sent = time.time()
            request(pid, b, marker)
            for _ in range(300):
                hit = alert_time(eve, marker)
                if hit:
                    out.append((hit - sent) * 1000)
                    break
                time.sleep(0.01)
        return out


def quarantine(path):
    """In IPS mode, ms from a `drop` rule's alert (its EVE timestamp) until `ids status`
    lists its sender as quarantined, 5 times (released in between)."""
    with watching(path, "ips") as eve:
        pid, b = benchlib.pid(A), benchlib.ip(B, NET)
        out = []
        for i in range(5):
            marker = f"qlt-bench-drop-{os.getpid()}-{i}"
            request(pid, b, marker)
            held = None
            for _ in range(500):
                if any(q["container"] == A for q in status()["quarantined"]):
                    held = time.time()
                    break
                time.sleep(0.002)
            hit = alert_time(eve, marker)
            if held and hit:
                out.append((held - hit) * 1000)
            sh(*CLI, "ids", "release", A, check=False)
        return out


def alert_time(eve, marker):
    """The EVE timestamp (seconds) of the marker's alert, if logged."""
    try:
        with open(eve) as f:
            for line in f:
                if marker in line:
                    ts = json.loads(line)["timestamp"]
                    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except FileNotFoundError:
        pass
    return None


def main():
    tmp = tempfile.mkdtemp(prefix="qlt-bench-ids.")
    files = {}
    for n in (0, 100, 10_000):
        files[n] = os.path.join(tmp, f"r{n}.rules")
        rules(n, files[n])
    sh("docker", "network", "create", "--driver", "qingluan", "--ipam-driver", "qingluanIpam",
       "--opt", "model=nat", NET)
    try:
        for c in (A, B):
            sh("docker", "run", "-d", "--name", c, "--net", NET, IMAGE, "sleep", "3600")
        sh("docker", "exec", "-d", B, "sh", "-c",
           "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www")
        print("ids: TCP throughput between two containers with their network watched by the"
              " detector, and what the detector inspected")
        off, on = [], []
        rows = {}
        for r in range(3):
            cases = [("off", lambda: off.append(benchlib.mbits(A, B, NET))),
                     ("on", lambda: on.append(watched(files[0])))]
            for _, run in cases if r % 2 == 0 else reversed(cases):
                run()
        rows[0] = on[len(on) // 2]
        for n in (100, 10_000):
            rows[n] = watched(files[n])
        base = statistics.median(off)
        print(f"  {'rules':>6} {'Mbit/s':>8} {'ratio':>6} {'inspected Mbit/s':>17}"
              f" {'frames/s':>9} {'dropped':>8}")
        print(f"  {'off':>6} {base:8.0f} {1:6.3f}")
        for n, (mbit, imbit, fps, dropped, frames) in rows.items():
            print(f"  {n:>6} {mbit:8.0f} {mbit / base:6.3f} {imbit:17.0f} {fps:9.0f}"
                  f" {dropped:>8} (of {frames + dropped})")
        ratio = statistics.median(o[0] / f for o, f in zip(on, off))
        print(f"  ratio watched (0 rules) / unwatched {ratio:.3f} (median of 3 rounds' ratios;"
              " goal >= 0.9)")
        lat = latency(files[100])
        if lat:
            print(f"  alert latency with 100 rules: median {statistics.median(lat):.1f} ms,"
                  f" max {max(lat):.1f} ms ({len(lat)} of 20 alerts)")
        else:
            print("  alert latency: no alert seen")
        q = quarantine(files[100])
        if q:
            print(f"  quarantine after a drop rule's alert (until `ids status` lists it):"
                  f" median {statistics.median(q):.1f} ms, max {max(q):.1f} ms ({len(q)} of 5)")
        else:
            print("  quarantine: none seen")
    finally:
        sh("docker", "rm", "-f", A, B, check=False)
        sh("docker", "network", "rm", NET, check=False)
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
