"""Helpers the Python benchmarks share: commands, container facts, iperf3 between two
containers' network namespaces."""

import json
import subprocess
import time


def sh(*args, check=True):
    """Runs a command; its stdout, stripped. Exits with its stderr when it fails and check."""
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def pid(c):
    """The PID of container c's first process (for nsenter -n)."""
    return sh("docker", "inspect", "-f", "{{.State.Pid}}", c)


def ip(c, net):
    """Container c's address on network net."""
    return sh("docker", "inspect", "-f",
              "{{(index .NetworkSettings.Networks \"%s\").IPAddress}}" % net, c)


def mbits(client, server, net, secs=5):
    """TCP throughput client -> server on net in Mbit/s: iperf3 for secs after 1 s of
    warm-up, both ends in the containers' namespaces."""
    srv = subprocess.Popen(["nsenter", "-t", pid(server), "-n", "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if ":5201" in sh("nsenter", "-t", pid(server), "-n", "ss", "-ltn"):
                break
            time.sleep(0.1)
        out = sh("nsenter", "-t", pid(client), "-n", "iperf3", "-c", ip(server, net), "-t",
                 str(secs), "-O", "1", "-J")
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        srv.kill()
        srv.wait()


def full_reconciles(log):
    """How many full reconciles a daemon's log file reports (0 before it exists)."""
    try:
        with open(log) as f:
            return f.read().count("full reconcile done")
    except FileNotFoundError:
        return 0
