//! Benchmark: vxlan overlay between two hosts of the multi-host test bed (tests/bed), in one
//! run: TCP throughput (iperf3) container to container through the overlay against the two
//! host namespaces over the underlay, before qingluan moved it onto OVS (kernel path) and
//! after (through the uplink bridges the tunnel also crosses); and the time from
//! `docker run -d` on host 1 until a container on host 2 can ping the new container.
//! Needs root, etcd and iperf3; run with
//! `QL_E2E=1 cargo bench -p qingluan --features etcd --bench overlay` (scripts/bench.sh
//! runs it).

#[path = "../tests/bed/mod.rs"]
mod bed;

use std::time::{Duration, Instant};

use bed::{enabled, strs, text, Bed};

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
    sh(bed, server, "iperf3 -s -D -1 >/dev/null 2>&1");
    std::thread::sleep(Duration::from_millis(500));
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

fn main() {
    if !enabled("overlay benchmark") {
        return;
    }
    let bed = Bed::start(2, "");
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
    let underlay_ovs = iperf(&bed, At::Host(2), At::Host(1), &bed.host_ip(2));
    let overlay = iperf(
        &bed,
        At::Container(2, "qlt-bench2"),
        At::Container(1, "qlt-bench1"),
        &ip2,
    );

    let mut times = Vec::new();
    for i in 0..5 {
        let name = format!("qlt-reach{i}");
        let t = Instant::now();
        let ip = bed.sleeper(1, &name, "ov1");
        reach(&bed, 2, "qlt-bench2", &ip, t);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());

    println!("vxlan overlay between two bed hosts (userspace datapath, TSO on), one run");
    for (label, (gbps, retr)) in [
        (
            "underlay, host to host, kernel path (before)",
            underlay_kernel,
        ),
        (
            "underlay, host to host, through the uplink bridges",
            underlay_ovs,
        ),
        ("overlay, container to container", overlay),
    ] {
        println!("  {label:<52} {gbps:>8.2} Gbit/s  ({retr} retransmits)");
    }
    println!(
        "  ratio overlay / underlay through OVS     {:>8.2}",
        overlay.0 / underlay_ovs.0
    );
    println!(
        "  ratio overlay / underlay kernel path     {:>8.2}",
        overlay.0 / underlay_kernel.0
    );
    println!(
        "  docker run on host 1 until host 2 pings it: median {:.0} ms (min {:.0}, max {:.0}, n=5)",
        times[2], times[0], times[4]
    );
}
