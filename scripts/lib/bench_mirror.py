#!/usr/bin/env python3
"""Mirror benchmark (issue 15), run by scripts/bench.sh against the qingluan daemon it uses.

Two containers on a nat network and an analyzer container beside them: TCP throughput
a -> b (iperf3 in the namespaces, 5 s after 1 s of warm-up) with no mirror and with a
mirror of the network to the analyzer (`qingluan mirror add --to container:...`), five
rounds alternating which comes first; medians per case and the median of the rounds'
ratios, mirrored against not (goal >= 0.9: a mirror must not change the mirrored traffic's
rate). Everything created is removed at the end.

Usage: bench_mirror.py QINGLUAN_CLI...   (e.g. target/release/qingluan --config /tmp/x.toml)
"""

import statistics
import sys

import benchlib
from benchlib import sh

CLI = sys.argv[1:]
NET = "qlt-bench-mirror"
IMAGE = "qlbusybox:latest"
ROUNDS = 5


def mirrored():
    mid = sh(*CLI, "mirror", "add", "--network", NET, "--to", "container:qlt-bm-an")
    try:
        return benchlib.mbits("qlt-bm-a", "qlt-bm-b", NET)
    finally:
        sh(*CLI, "mirror", "rm", mid)


def plain():
    return benchlib.mbits("qlt-bm-a", "qlt-bm-b", NET)


def main():
    sh("docker", "network", "create", "--driver", "qingluan", "--ipam-driver", "qingluanIpam",
       "--opt", "model=nat", NET)
    try:
        for c in ("qlt-bm-a", "qlt-bm-b", "qlt-bm-an"):
            sh("docker", "run", "-d", "--name", c, "--net", NET, IMAGE, "sleep", "3600")
        print("mirror: TCP throughput between two containers with their network mirrored to a"
              " third")
        got = {"off": [], "on": []}
        for r in range(ROUNDS):
            cases = [("off", plain), ("on", mirrored)]
            for name, run in cases if r % 2 == 0 else reversed(cases):
                got[name].append(run())
        ratio = statistics.median(on / off for on, off in zip(got["on"], got["off"]))
        print(f"  {'mirror':>6} {'Mbit/s':>9}")
        for name in ("off", "on"):
            print(f"  {name:>6} {statistics.median(got[name]):9.0f}")
        print(f"  ratio on/off {ratio:.3f} (median of {ROUNDS} rounds' ratios; goal >= 0.9)")
    finally:
        sh("docker", "rm", "-f", "qlt-bm-a", "qlt-bm-b", "qlt-bm-an", check=False)
        sh("docker", "network", "rm", NET, check=False)


if __name__ == "__main__":
    main()
