#!/usr/bin/env python3
"""Monitoring benchmarks (issue 13), run by scripts/bench.sh.

A private qingluan daemon (its own name, prefix, sockets and store; no Docker, so nothing
collects its objects) gets N endpoints (default 1,000) on nat networks of 250 through the
plugin protocol itself, as dockerd would create them. Then:
- the size and time of a /metrics scrape;
- the daemon's CPU per scrape (measured over 60 scrapes, idle CPU subtracted), as CPU
  seconds per minute at Prometheus' default 15 s interval and at 1 s;
- TCP throughput between two of the endpoints (their container ends moved into namespaces
  of our own, iperf3) with monitoring off, with sFlow and IPFIX at sampling 64 on every
  bridge, and with those plus /metrics scraped every second; runs interleaved, medians,
  ratios to off.
The throughput is measured with only those two endpoints on the host (the userspace
datapath slows down with every port it polls), then once more with all N for comparison.
Everything created is removed through the protocol, and the daemon stopped, at the end.

Usage: bench_monitoring.py QINGLUAN_BIN [ENDPOINTS]
"""

import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import full_reconciles

BIN = sys.argv[1]
ENDPOINTS = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
PER_NETWORK = 250
ROUNDS = 5
NAME, PREFIX = "qlbench", "qm"
HZ = os.sysconf("SC_CLK_TCK")


class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("plugin", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    def __init__(self, tmp):
        self.tmp = tmp
        self.metrics = free_port()
        self.proc = None

    def start(self, export=""):
        with open(f"{self.tmp}/config.toml", "w") as f:
            f.write(
                f'[daemon]\nname = "{NAME}"\nprefix = "{PREFIX}"\nplugin_dir = "{self.tmp}/plugins"\n'
                f'api_socket = "{self.tmp}/api.sock"\ndocker_socket = "{self.tmp}/no-docker.sock"\n'
                f'gc_secs = 86400\n[store]\npath = "{self.tmp}/state.redb"\n'
                f'[monitoring]\nlisten = "127.0.0.1:{self.metrics}"\n{export}\n'
            )
        log = open(f"{self.tmp}/daemon.log", "a")
        done = self.reconciles()
        self.proc = subprocess.Popen(
            [BIN, "--config", f"{self.tmp}/config.toml", "daemon"], stdout=log, stderr=log
        )
        # Up once its first full reconcile is done (a restart re-checks every endpoint).
        for _ in range(3000):
            if self.reconciles() > done:
                return
            time.sleep(0.1)
        raise SystemExit("the private daemon did not come up; see its log")

    def reconciles(self):
        return full_reconciles(f"{self.tmp}/daemon.log")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def call(self, ipam, method, body):
        name = NAME + ("Ipam" if ipam else "")
        c = Unix(f"{self.tmp}/plugins/{name}.sock")
        c.request("POST", "/" + method, json.dumps(body))
        r = c.getresponse()
        data = json.loads(r.read() or b"{}")
        c.close()
        if r.status != 200:
            raise SystemExit(f"{method}: {data}")
        return data

    def cpu(self):
        return cpu_of(self.proc.pid)

    def scrape(self):
        t0 = time.perf_counter()
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=60).read()
        return time.perf_counter() - t0, body


def cpu_of(pid):
    """CPU seconds a process used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def build(d, target, nets, eps):
    """Adds endpoints until there are `target`, filling networks of PER_NETWORK."""
    t0 = time.time()
    while len(eps) < target:
        if not nets or sum(1 for e in eps if e[0] == nets[-1][0]) == PER_NETWORK:
            pool = d.call(True, "IpamDriver.RequestPool", {"Pool": "", "Options": {"pool": "nat"}, "V6": False})
            gw = d.call(True, "IpamDriver.RequestAddress", {
                "PoolID": pool["PoolID"], "Address": "",
                "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
            net = secrets.token_hex(32)
            d.call(False, "NetworkDriver.CreateNetwork", {
                "NetworkID": net, "Options": {"com.docker.network.generic": {"model": "nat"}},
                "IPv4Data": [{"AddressSpace": "", "Pool": pool["Pool"], "Gateway": gw}], "IPv6Data": []})
            nets.append((net, pool["PoolID"]))
        net, pool_id = nets[-1]
        addr = d.call(True, "IpamDriver.RequestAddress",
                      {"PoolID": pool_id, "Address": "", "Options": {}})["Address"]
        ep = secrets.token_hex(32)
        r = d.call(False, "NetworkDriver.CreateEndpoint", {
            "NetworkID": net, "EndpointID": ep,
            "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}, "Options": {}})
        eps.append((net, pool_id, ep, addr, r.get("Interface", {}).get("MacAddress")))
    print(f"  {len(eps)} endpoints on {len(nets)} networks ({time.time() - t0:.0f} s to create)")


def teardown(d, nets, eps):
    for net, pool, ep, addr, _ in eps:
        d.call(False, "NetworkDriver.DeleteEndpoint", {"NetworkID": net, "EndpointID": ep})
        d.call(True, "IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": addr.split("/")[0]})
    for net, pool in nets:
        d.call(False, "NetworkDriver.DeleteNetwork", {"NetworkID": net})
        d.call(True, "IpamDriver.ReleasePool", {"PoolID": pool})


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def throughput(server_ns, client_ns, server_ip):
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-t", "5", "-J"],
                         capture_output=True, text=True, check=True).stdout
    srv.wait()
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def main():
    tmp = tempfile.mkdtemp(prefix="qlt-benchmon.")
    d = Daemon(tmp)
    nets, eps, spaces = [], [], []
    try:
        d.start()
        print(f"monitoring (private daemon {NAME})")
        build(d, 2, nets, eps)
        # Two endpoints' container ends in namespaces of our own, like Docker would move them.
        for i, (net, _, ep, addr, mac) in enumerate(eps[:2]):
            ns = f"qlt-bm{i}"
            info = d.call(False, "NetworkDriver.Join", {
                "NetworkID": net, "EndpointID": ep, "SandboxKey": f"/var/run/netns/{ns}", "Options": {}})
            sh("ip", "netns", "add", ns)
            spaces.append(ns)
            dev = info["InterfaceName"]["SrcName"]
            sh("ip", "link", "set", dev, "netns", ns)
            if mac:
                sh("ip", "-n", ns, "link", "set", dev, "address", mac)
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        server_ip = eps[1][3].split("/")[0]
        export = (f'sflow = "127.0.0.1:{free_port(socket.SOCK_DGRAM)}"\n'
                  f'ipfix = "127.0.0.1:{free_port(socket.SOCK_DGRAM)}"\n')
        runs = {"off": [], "export": [], "export+scrape": []}
        for _ in range(ROUNDS):
            for mode in runs:
                d.stop()
                d.start("" if mode == "off" else export)
                scraper = None
                if mode == "export+scrape":
                    scraper = subprocess.Popen(
                        ["sh", "-c", f"while :; do curl -s -o /dev/null 127.0.0.1:{d.metrics}/metrics; sleep 1; done"])
                try:
                    runs[mode].append(throughput(spaces[1], spaces[0], server_ip))
                finally:
                    if scraper:
                        scraper.kill()
                        scraper.wait()
        d.stop()
        d.start()
        off = statistics.median(runs["off"])
        print(f"  throughput between two endpoints, medians of {ROUNDS} interleaved 5 s runs:")
        for mode, label in [("off", "monitoring off"), ("export", "sFlow + IPFIX at 1/64"),
                            ("export+scrape", "sFlow + IPFIX, /metrics every 1 s")]:
            m = statistics.median(runs[mode])
            print(f"    {label:<36} {m:6.2f} Gbit/s  ratio {m / off:.3f}")

        build(d, ENDPOINTS, nets, eps)
        d.scrape()
        times, size = [], 0
        for _ in range(10):
            took, body = d.scrape()
            times.append(took)
            size = len(body)
        series = sum(1 for line in body.splitlines() if not line.startswith(b"#"))
        print(f"  /metrics: {size / 1024:.0f} KiB, {series} series; scrape median "
              f"{statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
        vswitchd = open(os.environ.get("OVS_RUNDIR", "/run/openvswitch") + "/ovs-vswitchd.pid").read().strip()
        c0, v0 = d.cpu(), cpu_of(vswitchd)
        time.sleep(30)
        idle = (d.cpu() - c0) / 30
        print(f"  idle over 30 s: daemon {idle * 100:.2f} %, ovs-vswitchd "
              f"{(cpu_of(vswitchd) - v0) / 30 * 100:.1f} % of a core")
        c0, t0 = d.cpu(), time.time()
        for _ in range(60):
            d.scrape()
            time.sleep(max(0.0, 1.0 - (time.time() - t0) % 1.0))
        per = ((d.cpu() - c0) - idle * (time.time() - t0)) / 60
        print(f"  daemon CPU per scrape {per * 1000:.0f} ms: per minute {per * 4:.2f} s at a 15 s "
              f"interval, {per * 60:.1f} s at 1 s")
        print(f"  the same two endpoints with {ENDPOINTS} on the host, monitoring off: "
              f"{throughput(spaces[1], spaces[0], server_ip):.2f} Gbit/s")
    finally:
        for ns in spaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if d.proc:
            teardown(d, nets, eps)
        d.stop()
        subprocess.run(["rm", "-rf", tmp])


main()
