#!/usr/bin/env python3
"""Scale benchmarks (issue 16), run by scripts/bench.sh.

A private qingluan daemon of its own name (`qlscale`, driver names `qlscale` and
`qlscaleIpam`, link prefix `qs`), next to whatever daemon serves `qingluan`, driven by the
real dockerd. For each level of endpoints already up (default 0 and 300, in networks of 10
`sleep` containers; QL_BENCH_SCALE_LEVELS=0,300,1000 for more), it restarts the daemon (so the
call timings are this level's only) and:
- starts 100 containers, 10 at a time, on 10 new qingluan nat networks, and the same on 10
  Docker bridge networks; wall time of each, and CreateEndpoint / Join p50 and p99 from
  `status --json` (the plugin's own handling time);
- stops the 100 qingluan containers in one `docker stop -t 0`, then the 100 bridge ones;
  wall time of each and DeleteEndpoint p50 / p99;
- starts 30 containers, 10 at a time, on one new qingluan network, and the same on one
  Docker bridge network (dockerd creates one network's endpoints one at a time); wall time
  of each;
- at the top level also: the daemon's idle CPU over 30 s, its RSS, flows per bridge, and a
  kill -9 with a ping (every 10 ms) between two containers running throughout: packets
  lost, the time until the restarted daemon answers `status` and until its first full
  reconcile is done.
Beside the calls' percentiles it prints the floors measured while the same containers start
and stop: a 4 KiB overwrite and `fdatasync` every 10 ms in the daemon's store directory
(every CreateEndpoint and DeleteEndpoint waits for one fsync of its store), and an OVSDB
change that `ovs-vsctl` waits for ovs-vswitchd to apply, every 200 ms (Join waits for
ovs-vswitchd to apply the endpoint's port); the latter also idle, as the tool's own cost.
Everything created is removed at the end.

Usage: bench_scale.py QINGLUAN_BIN
"""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import full_reconciles, pid, sh

BIN = sys.argv[1]
NAME, PREFIX = "qlscale", "qs"
IMAGE = "qlbusybox:latest"
LEVELS = [int(n) for n in os.environ.get("QL_BENCH_SCALE_LEVELS", "0,300").split(",")]
BATCH, PARALLEL, PER_NETWORK, ONE_NETWORK = 100, 10, 10, 30
HZ = os.sysconf("SC_CLK_TCK")


class Daemon:
    def __init__(self, tmp):
        self.tmp = tmp
        self.config = f"{tmp}/config.toml"
        with open(self.config, "w") as f:
            f.write(
                f'[daemon]\nname = "{NAME}"\nprefix = "{PREFIX}"\n'
                f'api_socket = "{tmp}/api.sock"\n[store]\npath = "{tmp}/state.redb"\n'
                f'[ids]\neve_log = "{tmp}/eve.json"\n'
                # Metrics off: the daemon scripts/bench.sh runs serves the default port.
                '[monitoring]\nlisten = ""\n'
            )
        self.proc = None
        self.fsync = fsync_probe(tmp)

    def start(self):
        """Starts the daemon; returns (seconds until status answers, until the first full
        reconcile is done)."""
        log = f"{self.tmp}/daemon.log"
        done = self.reconciles()
        t0 = time.monotonic()
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [BIN, "--config", self.config, "daemon"], stdout=out, stderr=out
            )
        answered = None
        while time.monotonic() - t0 < 300:
            if answered is None and subprocess.run(
                [BIN, "--config", self.config, "status"], capture_output=True
            ).returncode == 0:
                answered = time.monotonic() - t0
            if self.reconciles() > done:
                return answered or time.monotonic() - t0, time.monotonic() - t0
            time.sleep(0.02)
        raise SystemExit(f"the private daemon did not come up; see {log}")

    def reconciles(self):
        return full_reconciles(f"{self.tmp}/daemon.log")

    def stop(self, sig=signal.SIGTERM):
        if self.proc:
            self.proc.send_signal(sig)
            self.proc.wait()
            self.proc = None

    def calls(self):
        out = sh(BIN, "--config", self.config, "status", "--json")
        return {c["method"]: c for c in json.loads(out)["calls"]}

    def cpu(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in v[11:15]) / HZ

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)
        return int(kb) / 1024


class Floor(threading.Thread):
    """Times one probe every `every` seconds until stopped; the samples in seconds."""

    def __init__(self, probe, every):
        super().__init__(daemon=True)
        self.probe, self.every, self.samples = probe, every, []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t = time.perf_counter()
            self.probe()
            self.samples.append(time.perf_counter() - t)
            self.halt.wait(self.every)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_):
        self.halt.set()
        self.join()

    def pct(self):
        s = sorted(self.samples)
        if not s:
            return "(no samples)"
        at = lambda q: s[min(len(s) - 1, int(len(s) * q))] * 1e3
        return f"p50 {at(0.5):7.1f} ms  p99 {at(0.99):7.1f} ms  ({len(s)} samples)"


def fsync_probe(directory):
    """A probe that overwrites one of 256 preallocated 4 KiB pages and fdatasyncs it."""
    fd = os.open(f"{directory}/fsync-probe", os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, bytes(256 * 4096), 0)
    os.fsync(fd)
    page, n = b"q" * 4096, [0]

    def probe():
        os.pwrite(fd, page, (n[0] % 256) * 4096)
        os.fdatasync(fd)
        n[0] += 1

    return probe


def ovs_probe():
    """A probe that changes one key in OVSDB and waits until ovs-vswitchd applied it."""
    n = [0]

    def probe():
        n[0] += 1
        sh("ovs-vsctl", "--timeout=10", "set", "Open_vSwitch", ".",
           f"external_ids:qlt-scale-probe={n[0]}")

    return probe


def networks(prefix, count, driver):
    names = [f"{prefix}{i}" for i in range(count)]
    for n in names:
        if driver == "bridge":
            sh("docker", "network", "create", "--driver", "bridge", n)
        else:
            sh("docker", "network", "create", "--driver", NAME, "--ipam-driver",
               NAME + "Ipam", "--opt", "model=nat", "--ipam-opt", "pool=nat", n)
    return names


def run_containers(nets, prefix, per_network):
    """Starts per_network sleep containers on each of nets, PARALLEL at a time, round-robin
    over the networks (dockerd serialises endpoint creation per network); wall seconds."""
    jobs = [(f"{prefix}-{j}-{i}", n) for j in range(per_network) for i, n in enumerate(nets)]
    t0 = time.monotonic()
    procs = []
    for name, net in jobs:
        if len(procs) == PARALLEL:
            procs.pop(0).wait()
        procs.append(subprocess.Popen(
            ["docker", "run", "-d", "--name", name, "--net", net, IMAGE, "sleep", "86400"],
            stdout=subprocess.DEVNULL))
    for p in procs:
        p.wait()
    took = time.monotonic() - t0
    names = [n for n, _ in jobs]
    running = sh("docker", "ps", "-q", "--filter", f"name=^{prefix}-").split()
    if len(running) != len(names):
        raise SystemExit(f"only {len(running)} of {len(names)} {prefix} containers run")
    return took, names


def stop(names):
    t0 = time.monotonic()
    sh("docker", "stop", "-t", "0", *names)
    took = time.monotonic() - t0
    sh("docker", "rm", *names)
    return took


def remove(prefix):
    ids = sh("docker", "ps", "-aq", "--filter", f"name=^{prefix}").split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    nets = sh("docker", "network", "ls", "-q", "--filter", f"name=^{prefix}").split()
    if nets:
        r = subprocess.run(["docker", "network", "rm", *nets], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"  left behind: {r.stderr.strip()}")


def pct(calls, method):
    c = calls.get(method)
    return f"p50 {c['p50_ms']:7.1f} ms  p99 {c['p99_ms']:7.1f} ms" if c else "(no calls)"


def flows_per_bridge():
    counts = []
    for b in sh("ovs-vsctl", "list-br").split():
        if b.startswith(PREFIX + "b"):
            out = sh("ovs-ofctl", "-O", "OpenFlow14", "dump-aggregate", b)
            counts.append(int(re.search(r"flow_count=(\d+)", out).group(1)))
    return counts


def kill_with_ping(daemon, a, b, net):
    """kill -9 the daemon while a pings b every 10 ms; restarts it. Returns (sent, lost,
    seconds until status answers, seconds until the full reconcile is done)."""
    dst = sh("docker", "inspect", "-f",
             "{{(index .NetworkSettings.Networks \"%s\").IPAddress}}" % net, b)
    # A fixed count, not SIGINT: an interrupted ping counts the request still in flight
    # as lost. 600 requests take 6 s; the kill comes 2 s in.
    ping = subprocess.Popen(["nsenter", "-t", pid(a), "-n", "ping", "-c", "600", "-i", "0.01",
                             "-W", "1", dst], stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    daemon.stop(signal.SIGKILL)
    answered, reconciled = daemon.start()
    out = ping.communicate()[0]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    sent, got = int(m.group(1)), int(m.group(2))
    return sent, sent - got, answered, reconciled


def level(daemon, up):
    print(f"with {up} endpoints up ({up // PER_NETWORK} networks of {PER_NETWORK}):")
    daemon.stop()
    daemon.start()
    qnets = networks("qlt-scq", BATCH // PER_NETWORK, NAME)
    bnets = networks("qlt-scb", BATCH // PER_NETWORK, "bridge")
    with Floor(ovs_probe(), 0.2) as ovs_idle:
        time.sleep(4)
    with Floor(daemon.fsync, 0.01) as disk_start, Floor(ovs_probe(), 0.2) as ovs_start:
        q_start, qnames = run_containers(qnets, "qlt-scq", PER_NETWORK)
    b_start, bnames = run_containers(bnets, "qlt-scb", PER_NETWORK)
    calls = daemon.calls()
    with Floor(daemon.fsync, 0.01) as disk_stop:
        q_stop = stop(qnames)
    b_stop = stop(bnames)
    deletes = daemon.calls()
    print(f"  start {BATCH}, {PARALLEL} at a time: qingluan {q_start:6.1f} s  bridge "
          f"{b_start:6.1f} s  ratio {q_start / b_start:5.2f}")
    print(f"    CreateEndpoint {pct(calls, 'NetworkDriver.CreateEndpoint')}")
    print(f"      floor, a 4 KiB fdatasync beside the store meanwhile: {disk_start.pct()}")
    print(f"    Join           {pct(calls, 'NetworkDriver.Join')}")
    print(f"      floor, an OVSDB change applied by ovs-vswitchd meanwhile: {ovs_start.pct()}")
    print(f"        the same idle (the tool's own cost): {ovs_idle.pct()}")
    print(f"  docker stop -t 0 of {BATCH}: qingluan {q_stop:6.1f} s  bridge {b_stop:6.1f} s  "
          f"ratio {q_stop / b_stop:5.2f}")
    print(f"    DeleteEndpoint {pct(deletes, 'NetworkDriver.DeleteEndpoint')}")
    print(f"      floor, a 4 KiB fdatasync beside the store meanwhile: {disk_stop.pct()}")
    remove("qlt-scq")
    remove("qlt-scb")
    q_one, _ = run_containers(networks("qlt-sc1q", 1, NAME), "qlt-sc1q", ONE_NETWORK)
    b_one, _ = run_containers(networks("qlt-sc1b", 1, "bridge"), "qlt-sc1b", ONE_NETWORK)
    print(f"  start {ONE_NETWORK} on one network, {PARALLEL} at a time: qingluan {q_one:6.1f} s"
          f"  bridge {b_one:6.1f} s  ratio {q_one / b_one:5.2f}")
    remove("qlt-sc1")


def main():
    if subprocess.run(["docker", "network", "ls", "-q", "--filter", "name=^qlt-sc"],
                      capture_output=True, text=True).stdout.strip():
        raise SystemExit("qlt-sc* networks exist: remove them first")
    tmp = tempfile.mkdtemp(prefix="qlt-scale.")
    daemon = Daemon(tmp)
    daemon.start()
    up = 0
    try:
        for target in LEVELS:
            while up < target:
                nets = networks(f"qlt-scu{up // PER_NETWORK}-", 1, NAME)
                run_containers(nets, f"qlt-scu{up // PER_NETWORK}-c", PER_NETWORK)
                up += PER_NETWORK
            level(daemon, up)
        time.sleep(5)
        c0, t0 = daemon.cpu(), time.monotonic()
        time.sleep(30)
        idle = 100 * (daemon.cpu() - c0) / (time.monotonic() - t0)
        flows = flows_per_bridge()
        print(f"at {up} endpoints: idle CPU {idle:.2f} % of a core, RSS {daemon.rss_mib():.0f} MiB,"
              f" flows per bridge median {statistics.median(flows) if flows else 0:.0f}"
              f" max {max(flows, default=0)} over {len(flows)} bridges")
        if up:
            a, b = "qlt-scu0-c-0-0", "qlt-scu0-c-1-0"
            sent, lost, answered, reconciled = kill_with_ping(daemon, a, b, "qlt-scu0-0")
            print(f"  kill -9 with a ping every 10 ms: {lost} of {sent} lost; status answers "
                  f"{answered * 1e3:.0f} ms after start, full reconcile done at "
                  f"{reconciled * 1e3:.0f} ms")
    finally:
        try:
            remove("qlt-sc")
        finally:
            subprocess.run(["ovs-vsctl", "--timeout=10", "remove", "Open_vSwitch", ".",
                            "external_ids", "qlt-scale-probe"], capture_output=True)
            daemon.stop()
            subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
