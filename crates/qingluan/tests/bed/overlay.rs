//! Checks of the vxlan promises that hold whichever transport carries the overlay (OVS's
//! tunnel port in `e2e_vxlan.rs`, kernel VXLAN devices in `e2e_overlay_kernel.rs`), on a
//! bed where `ov1` (VNI 5001) and `ov2` (VNI 5002) share the subnet 10.60.0.0/24 and
//! [`start_vni_pairs`] started their containers.

use super::{iperf_server, text, wait_until, Bed, IMAGE};

/// Starts container `name` (sleeping) on network `net` of host `h` with address `ip`.
pub fn start_at(bed: &Bed, h: usize, name: &str, net: &str, ip: &str) {
    bed.docker_ok(
        h,
        &[
            "run", "-d", "--name", name, "--net", net, "--ip", ip, IMAGE, "sleep", "600",
        ],
    );
}

/// Starts `qlt-a1` (h1, 10.60.0.11) and `qlt-a2` (h2, 10.60.0.12) on `ov1`, and `qlt-b1`
/// (h1, 10.60.0.21) and `qlt-b2` (h2, 10.60.0.12, the same address as `qlt-a2`) on `ov2`.
pub fn start_vni_pairs(bed: &Bed) {
    for (h, name, net, ip) in [
        (1, "qlt-a1", "ov1", "10.60.0.11"),
        (2, "qlt-a2", "ov1", "10.60.0.12"),
        (1, "qlt-b1", "ov2", "10.60.0.21"),
        (2, "qlt-b2", "ov2", "10.60.0.12"),
    ] {
        start_at(bed, h, name, net, ip);
    }
}

/// ICMP echo requests container `c` on host `h` has received.
fn echoes(bed: &Bed, h: usize, c: &str) -> u64 {
    let snmp = bed.docker_ok(h, &["exec", c, "cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// On the underlay, only VNIs 5001 and 5002 appear, nothing crosses from one to the other
/// (the same address in both gets only its own VNI's ping), ARP for a known address is
/// answered on the host, and ARP for an unknown one stays in its VNI.
pub fn vnis_apart_and_arp_local(bed: &Bed) {
    wait_until(30, "a1 reaches a2", || bed.ping(1, "qlt-a1", "10.60.0.12"));
    wait_until(30, "b1 reaches b2", || bed.ping(1, "qlt-b1", "10.60.0.12"));
    let (a2_before, b2_before) = (echoes(bed, 2, "qlt-a2"), echoes(bed, 2, "qlt-b2"));
    bed.docker(1, &["exec", "qlt-a1", "ip", "neigh", "flush", "all"]);
    let wire = bed.capture("udp port 4789", || {
        assert!(bed.ping(1, "qlt-a1", "10.60.0.12"));
        assert!(bed.ping(1, "qlt-b1", "10.60.0.12"));
        assert!(!bed.ping(1, "qlt-a1", "10.60.0.21"), "ov1 cannot reach ov2");
    });
    assert!(echoes(bed, 2, "qlt-a2") > a2_before, "a1's pings reach a2");
    assert_eq!(
        echoes(bed, 2, "qlt-b2"),
        b2_before + 1,
        "only b1's ping reaches b2: no leak between VNIs"
    );
    let frames: Vec<&str> = wire.lines().filter(|l| l.contains("VXLAN")).collect();
    assert!(frames.len() >= 4, "{wire}");
    for f in &frames {
        assert!(f.contains("vni 5001") || f.contains("vni 5002"), "{f}");
    }
    assert!(frames.iter().any(|f| f.contains("vni 5001")), "{wire}");
    assert!(frames.iter().any(|f| f.contains("vni 5002")), "{wire}");
    assert!(
        !wire.contains("who-has 10.60.0.12"),
        "ARP for a known address is answered on the host, never tunnelled: {wire}"
    );
    assert!(
        wire.contains("who-has 10.60.0.21 tell 10.60.0.11"),
        "an unknown address is asked for in the VNI only: {wire}"
    );
}

/// MTU 1450 in containers: the largest DF ping fits the 1500 underlay, one more byte fails
/// in the sender.
pub fn mtu_fits(bed: &Bed) {
    let mtu = bed.docker_ok(1, &["exec", "qlt-a1", "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1450");
    let fits = bed.in_container(1, "qlt-a1", "ping -M do -s 1422 -c 1 -W 2 10.60.0.12");
    assert!(fits.status.success(), "{}", text(&fits));
    let over = bed.in_container(1, "qlt-a1", "ping -M do -s 1423 -c 1 -W 2 10.60.0.12");
    assert!(!over.status.success());
    assert!(text(&over).contains("message too long"), "{}", text(&over));
}

/// `qingluan trace from to` on h1 reaches `to` on host 2 through a tunnel hop naming VNI
/// `vni`, h2 and its underlay address, then h2's own pipeline from `CLASSIFY` to
/// `L2_FORWARD`.
pub fn trace_crosses_to_h2(bed: &Bed, from: &str, to: &str, vni: u32) {
    let r = bed.ql_json(1, &["trace", from, to]);
    assert_eq!(r["verdict"], "allowed", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("delivered on host h2 to {to}")),
        "{reason}"
    );
    let hops = r["hops"].as_array().unwrap();
    let tunnel = hops
        .iter()
        .find(|h| h["at"] == "tunnel")
        .expect("a tunnel hop");
    let detail = tunnel["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("VXLAN {vni} to host h2")) && detail.contains(&bed.host_ip(2)),
        "{detail}"
    );
    let remote: Vec<&str> = hops
        .iter()
        .filter(|h| h["at"].as_str().unwrap().starts_with("h2:"))
        .map(|h| h["stage"].as_str().unwrap())
        .collect();
    assert_eq!(remote.first(), Some(&"CLASSIFY"), "{r:#}");
    assert_eq!(remote.last(), Some(&"L2_FORWARD"), "{r:#}");
}

/// Median TCP throughput in Mbit/s of three 5 s iperf3 runs (after 2 s of warm-up each)
/// from container `client` to `server` (host, name) at `ip`: the bed's userspace
/// datapaths busy-poll the same two cores, so one run can be starved.
pub fn mbits(bed: &Bed, client: (usize, &str), server: (usize, &str), ip: &str) -> f64 {
    let mut runs: Vec<f64> = (0..3)
        .map(|_| {
            let o = bed.in_container(server.0, server.1, &iperf_server(5201));
            assert!(o.status.success(), "iperf3 server: {}", text(&o));
            let out = text(&bed.in_container(
                client.0,
                client.1,
                &format!("iperf3 -c {ip} -t 5 -O 2 -J"),
            ));
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or_else(|| panic!("iperf3: {out}"))
                / 1e6
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// `qingluan qos set --network NET --aggregate-rate RATE` on host `h`.
pub fn aggregate(bed: &Bed, h: usize, net: &str, rate: &str) {
    let o = bed.ql(
        h,
        &["qos", "set", "--network", net, "--aggregate-rate", rate],
    );
    assert!(o.status.success(), "{}", text(&o));
}
