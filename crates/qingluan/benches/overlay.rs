//! Benchmark: vxlan overlay between two hosts of the multi-host test bed (tests/bed), in one
//! run, with each transport (`[cluster] overlay`): OVS's tunnel port, then kernel VXLAN
//! devices. TCP throughput (iperf3) container to container through the overlay against the
//! two host namespaces over the underlay, on the kernel path (where the kernel devices'
//! packets go) and, with OVS's tunnel port, through the uplink bridges the tunnel also
//! crosses; and the time from `docker run -d` on host 1 until a container on host 2 can ping
//! the new container. For the kernel devices the benchmark raises `net.core.rmem_default`
//! to 4 MiB as the daemon does on a real host (the bed's daemons run in network namespaces,
//! which cannot write it) and puts the old value back.
//! Needs root, etcd and iperf3; run with
//! `QL_E2E=1 cargo bench -p qingluan --features etcd --bench overlay` (scripts/bench.sh
//! runs it).

#[path = "../tests/bed/mod.rs"]
mod bed;

use std::time::{Duration, Instant};

use bed::{enabled, iperf_server, strs, text, Bed};

/// Where a command runs: a host's namespace, or a container's (with host programs).
#[derive(Clone, Copy)]
enum At<'a> {
    Host(usize),
    Container(usize, &'a str),
}

fn sh(bed: &Bed, at: At, cmd: &str) -> String {
    match at {
        At::Host(h) => text(&bed.exec(h, cmd)),
        At::Container(h, c) => text(&bed.in_container(h, c, cmd)),
    }
}

/// Pings `ip` from container `from` on host `h` (1 s timeout) until it answers; panics
/// 30 s after `since`.
fn reach(bed: &Bed, h: usize, from: &str, ip: &str, since: Instant) {
    while !bed
        .docker(h, &["exec", from, "ping", "-c", "1", "-W", "1", ip])
        .status
        .success()
    {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{ip} never reachable"
        );
    }
}

/// Gbit/s and TCP retransmits of a 5 s iperf3 run from `client` to `ip`, served at
/// `server`.
fn iperf(bed: &Bed, server: At, client: At, ip: &str) -> (f64, u64) {
    sh(bed, server, &iperf_server(5201));
    let out = sh(bed, client, &format!("iperf3 -c {ip} -t 5 -J"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .unwrap_or_else(|| panic!("iperf3 failed: {out}"));
    (
        gbps,
        v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    )
}

/// `net.core.rmem_default`, put back when dropped.
struct SocketBuffers(String);

const RMEM_DEFAULT: &str = "/proc/sys/net/core/rmem_default";

impl SocketBuffers {
    fn raise() -> SocketBuffers {
        let old = std::fs::read_to_string(RMEM_DEFAULT).unwrap();
        std::fs::write(RMEM_DEFAULT, (4u64 << 20).to_string()).unwrap();
        SocketBuffers(old)
    }
}

impl Drop for SocketBuffers {
    fn drop(&mut self) {
        let _ = std::fs::write(RMEM_DEFAULT, self.0.trim());
    }
}

/// What one transport gave.
struct Run {
    underlay_kernel: (f64, u64),
    underlay_ovs: Option<(f64, u64)>,
    overlay: (f64, u64),
    reach_ms: Vec<f64>,
}

/// Two bed hosts with `cluster_toml`, one vxlan network, the measurements.
fn run(cluster_toml: &str) -> Run {
    let bed = Bed::start(2, cluster_toml);
    let underlay_kernel = iperf(&bed, At::Host(2), At::Host(1), &bed.host_ip(2));
    bed.docker_ok(1, &strs(&Bed::vxlan_args("ov1", 5001, &[])));
    let t = Instant::now();
    while !bed.has_network(2, "ov1") {
        assert!(t.elapsed() < Duration::from_secs(20), "ov1 not replicated");
        std::thread::sleep(Duration::from_millis(100));
    }
    bed.sleeper(1, "qlt-bench1", "ov1");
    let ip2 = bed.sleeper(2, "qlt-bench2", "ov1");
    reach(&bed, 1, "qlt-bench1", &ip2, Instant::now());
    let on_uplink = bed.exec(1, "ip link show dev qlul").status.success();
    let underlay_ovs = on_uplink.then(|| iperf(&bed, At::Host(2), At::Host(1), &bed.host_ip(2)));
    let overlay = iperf(
        &bed,
        At::Container(2, "qlt-bench2"),
        At::Container(1, "qlt-bench1"),
        &ip2,
    );
    let mut reach_ms = Vec::new();
    for i in 0..5 {
        let name = format!("qlt-reach{i}");
        let t = Instant::now();
        let ip = bed.sleeper(1, &name, "ov1");
        reach(&bed, 2, "qlt-bench2", &ip, t);
        reach_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    reach_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Run {
        underlay_kernel,
        underlay_ovs,
        overlay,
        reach_ms,
    }
}

fn main() {
    if !enabled("overlay benchmark") {
        return;
    }
    let ovs = run("overlay = \"ovs\"");
    let kernel = {
        let _buffers = SocketBuffers::raise();
        run("overlay = \"kernel\"")
    };
    let uplink = ovs
        .underlay_ovs
        .expect("OVS's tunnel port moves the underlay");

    println!("vxlan overlay between two bed hosts (userspace datapath, TSO on), one run");
    let line = |label: &str, (gbps, retr): (f64, u64)| {
        println!("  {label:<58} {gbps:>8.2} Gbit/s  ({retr} retransmits)");
    };
    line(
        "underlay, host to host, kernel path (before)",
        ovs.underlay_kernel,
    );
    line("underlay, host to host, through the uplink bridges", uplink);
    line(
        "overlay through OVS's tunnel port (overlay = \"ovs\")",
        ovs.overlay,
    );
    line(
        "underlay, host to host, kernel path (second bed)",
        kernel.underlay_kernel,
    );
    line(
        "overlay through kernel VXLAN devices (overlay = \"kernel\")",
        kernel.overlay,
    );
    println!(
        "  ratio OVS tunnel port / underlay through OVS        {:>8.2}",
        ovs.overlay.0 / uplink.0
    );
    println!(
        "  ratio OVS tunnel port / underlay kernel path        {:>8.2}",
        ovs.overlay.0 / ovs.underlay_kernel.0
    );
    println!(
        "  ratio kernel devices / underlay through OVS         {:>8.2}",
        kernel.overlay.0 / uplink.0
    );
    println!(
        "  ratio kernel devices / underlay kernel path         {:>8.2}",
        kernel.overlay.0 / kernel.underlay_kernel.0
    );
    println!(
        "  ratio kernel devices / OVS tunnel port              {:>8.2}",
        kernel.overlay.0 / ovs.overlay.0
    );
    for (label, r) in [("OVS tunnel port", &ovs), ("kernel devices", &kernel)] {
        let t = &r.reach_ms;
        println!(
            "  docker run on host 1 until host 2 pings it, {label}: median {:.0} ms (min {:.0}, max {:.0}, n=5)",
            t[2], t[0], t[4]
        );
    }
}
