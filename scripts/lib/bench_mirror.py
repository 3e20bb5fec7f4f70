#!/usr/bin/env python3
"""Mirror benchmark (issue 15), run by scripts/bench.sh against the qingluan daemon it uses.

Two nat networks side by side, each with two containers a and b, and on the mirrored one an
analyzer container that gets a copy of all of its network's traffic (`qingluan mirror add
--network ... --to container:...`). TCP throughput a -> b (iperf3 in the namespaces, 2 s
after 1 s of warm-up) on each network; ROUNDS rounds, each measuring both networks within
seconds of each other, alternating which comes first (this VM's throughput drifts by 10 %
from one minute to the next). Medians per network and the median of the rounds' ratios,
mirrored against not (goal >= 0.9: a mirror must not change the mirrored traffic's rate).
Everything created is removed at the end.

Usage: bench_mirror.py QINGLUAN_CLI...   (e.g. target/release/qingluan --config /tmp/x.toml)
"""

import statistics
import sys

import benchlib
from benchlib import sh

CLI = sys.argv[1:]
IMAGE = "qlbusybox:latest"
ROUNDS = 15
CASES = ("off", "on")


def net(case):
    return f"qlt-bench-mirror-{case}"


def box(case, role):
    return f"qlt-bm{case}-{role}"


def main():
    made = []
    try:
        for case in CASES:
            sh("docker", "network", "create", "--driver", "qingluan", "--ipam-driver",
               "qingluanIpam", "--opt", "model=nat", net(case))
            roles = ("a", "b", "an") if case == "on" else ("a", "b")
            for role in roles:
                made.append(box(case, role))
                sh("docker", "run", "-d", "--name", box(case, role), "--net", net(case), IMAGE,
                   "sleep", "3600")
        sh(*CLI, "mirror", "add", "--network", net("on"), "--to", f"container:{box('on', 'an')}")
        print("mirror: TCP throughput between two containers, their network mirrored to a third"
              " against a network beside it unmirrored")
        got = {case: [] for case in CASES}
        for r in range(ROUNDS):
            for case in CASES if r % 2 == 0 else reversed(CASES):
                got[case].append(benchlib.mbits(box(case, "a"), box(case, "b"), net(case),
                                                secs=2))
        ratio = statistics.median(on / off for on, off in zip(got["on"], got["off"]))
        print(f"  {'mirror':>6} {'Mbit/s':>9}")
        for case in CASES:
            print(f"  {case:>6} {statistics.median(got[case]):9.0f}")
        print(f"  ratio on/off {ratio:.3f} (median of {ROUNDS} interleaved rounds' ratios;"
              " goal >= 0.9)")
    finally:
        sh("docker", "rm", "-f", *made, check=False)
        for case in CASES:
            sh("docker", "network", "rm", net(case), check=False)


if __name__ == "__main__":
    main()
