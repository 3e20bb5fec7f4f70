//! flat and vlan networks end to end on the multi-host test bed (tests/bed): containers on
//! the underlay itself, which plays the physical network. It carries tagged frames (its
//! Linux bridge does not filter VLANs); the outside namespace (`ot`, .200) is a physical
//! machine on it, and a router namespace (`rt`) on the trunk is the physical gateway: .254
//! untagged, one gateway per VLAN, 198.51.100.1 as the outside world.

mod bed;

use bed::{enabled, iperf_server, strs, text, wait_until, Bed, IMAGE};

/// Arguments of the flat network on the underlay's subnet, containers from .128/25, with
/// `extra` options.
fn flat_args(bed: &Bed, name: &str, extra: &[&str]) -> Vec<String> {
    let subnet = format!("{}.0/24", bed.router_ip().rsplit_once('.').unwrap().0);
    let range = format!("{}.128/25", bed.router_ip().rsplit_once('.').unwrap().0);
    let router = bed.router_ip();
    let mut all = vec![
        "--subnet",
        &subnet,
        "--gateway",
        &router,
        "--ip-range",
        &range,
    ];
    all.extend_from_slice(extra);
    Bed::network_args("flat", name, &all)
}

fn vlan_args(name: &str, vlan: u16, extra: &[&str]) -> Vec<String> {
    let id = format!("vni={vlan}");
    let mut all = vec!["--opt", id.as_str(), "--ipam-opt", id.as_str()];
    all.extend_from_slice(extra);
    Bed::network_args("vlan", name, &all)
}

/// Creates vlan10 (subnet carved from the vlan pool) and vlan20 (192.168.20.0/24) on host 1
/// and starts the router with their gateways; returns vlan10's subnet.
fn vlans_and_router(bed: &Bed) -> String {
    bed.docker_ok(1, &strs(&vlan_args("vlan10", 10, &[])));
    bed.docker_ok(
        1,
        &strs(&vlan_args(
            "vlan20",
            20,
            &["--subnet", "192.168.20.0/24", "--gateway", "192.168.20.1"],
        )),
    );
    let v10 = bed.ql_json(1, &["network", "inspect", "vlan10"]);
    let (subnet, gw) = (
        v10["subnet"].as_str().unwrap().to_string(),
        v10["gateway"].as_str().unwrap().to_string(),
    );
    let prefix = subnet.rsplit_once('/').unwrap().1;
    bed.start_router(&[(10, &format!("{gw}/{prefix}")), (20, "192.168.20.1/24")]);
    subnet
}

/// A vlan20 container cannot reach `ip` at L2 even when told it is on its link: the ARP
/// request stays in VLAN 20.
fn l2_isolated(bed: &Bed, h: usize, from: &str, ip: &str) -> bool {
    let o = bed.in_container(
        h,
        from,
        &format!(
            "ip route add {ip}/32 dev eth0; ping -c 1 -W 2 {ip}; r=$?; \
             ip route del {ip}/32 dev eth0; ip neigh flush dev eth0; exit $r"
        ),
    );
    !o.status.success()
}

#[test]
fn flat_and_vlan_networks_span_hosts_on_the_physical_network() {
    if !enabled("flat_and_vlan_networks_span_hosts_on_the_physical_network") {
        return;
    }
    let bed = Bed::start(2, "");
    let refused = |args: Vec<String>, want: &str| bed.docker_refused(1, &args, want);
    // Bad input is refused with its reason, and changes nothing.
    refused(
        Bed::network_args("vlan", "qlt-bad", &["--ipam-opt", "vni=10"]),
        "model vlan needs --opt vni=<1-4094> (and the same --ipam-opt vni)",
    );
    for bad in ["0", "4095", "ten"] {
        refused(
            Bed::network_args(
                "vlan",
                "qlt-bad",
                &["--opt", &format!("vni={bad}"), "--ipam-opt", "vni=10"],
            ),
            &format!("invalid vni \"{bad}\" for model vlan: must be a number from 1 to 4094"),
        );
    }
    refused(
        Bed::network_args(
            "vlan",
            "qlt-bad",
            &["--opt", "vni=10", "--ipam-opt", "vni=11"],
        ),
        "is not a qingluanIpam subnet of vlan-10",
    );
    refused(
        Bed::network_args("flat", "qlt-bad", &[]),
        "a flat network needs --subnet",
    );
    refused(
        Bed::network_args("flat", "qlt-bad", &["--subnet", "192.168.159.0/24"]),
        "a flat network needs --gateway",
    );
    refused(
        flat_args(&bed, "qlt-bad", &["--opt", "parent=nosuch0"]),
        "parent interface \"nosuch0\" does not exist on this host",
    );
    let listed = bed.docker_ok(1, &["network", "ls", "--format", "{{.Name}}"]);
    assert!(!listed.contains("qlt-bad"), "{listed}");

    // flat on the underlay: created on host 1, replicated to host 2; the underlay moves onto
    // the uplink bridge on both and the hosts keep their connectivity.
    bed.docker_ok(1, &strs(&flat_args(&bed, "flat1", &[])));
    wait_until(20, "flat1 on host 2", || bed.has_network(2, "flat1"));
    let v10 = vlans_and_router(&bed);
    wait_until(20, "the vlans on host 2", || {
        bed.has_network(2, "vlan10") && bed.has_network(2, "vlan20")
    });
    refused(
        vlan_args("qlt-bad", 20, &["--subnet", "192.168.21.0/24"]),
        "vlan-20 already has subnet 192.168.20.0/24",
    );
    for h in 1..=2 {
        wait_until(20, &format!("h{h}'s address on the uplink bridge"), || {
            text(&bed.exec(h, "ip -4 -o addr show dev qlul")).contains(&bed.host_ip(h))
        });
    }

    let f1 = bed.sleeper(1, "qlt-f1", "flat1");
    let f2 = bed.sleeper(2, "qlt-f2", "flat1");
    assert!(f1.ends_with(|c: char| c.is_ascii_digit()));
    let last: u8 = f1.rsplit_once('.').unwrap().1.parse().unwrap();
    assert!(last >= 128, "from --ip-range: {f1}");
    let routes = text(&bed.in_container(1, "qlt-f1", "ip route"));
    assert!(
        routes.contains(&format!("default via {}", bed.router_ip())),
        "{routes}"
    );
    let o = bed.docker(
        1,
        &[
            "run", "-d", "--name", "qlt-pub", "--net", "flat1", "-p", "8080:80", IMAGE, "sleep",
            "60",
        ],
    );
    assert!(
        text(&o).contains("port publishing (-p) is not supported on flat and vlan networks"),
        "{}",
        text(&o)
    );

    // Peers of the physical network: each other across hosts, the physical machine both
    // ways, the outside world through the physical gateway; the host still reaches them.
    let outside = bed.outside_ip();
    wait_until(
        20,
        "flat containers reach each other and the outside",
        || {
            bed.ping(1, "qlt-f1", &f2)
                && bed.ping(2, "qlt-f2", &outside)
                && bed.ping(1, "qlt-f1", "198.51.100.1")
        },
    );
    assert!(bed
        .exec_in("ot", &format!("ping -c 1 -W 2 {f1}"))
        .status
        .success());
    assert!(bed
        .exec(2, &format!("ping -c 1 -W 2 {f1}"))
        .status
        .success());
    assert!(
        bed.ql(1, &["status"]).status.success(),
        "etcd still reached"
    );

    // vlan10 across hosts, tagged on the wire; vlan20 reached only through the router.
    let a = bed.sleeper(1, "qlt-v10a", "vlan10");
    let b = bed.sleeper(2, "qlt-v10b", "vlan10");
    let c = bed.sleeper(1, "qlt-v20a", "vlan20");
    let mtu = bed.docker_ok(1, &["exec", "qlt-v10a", "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1500", "the uplink's MTU");
    wait_until(20, "vlan10 spans the hosts", || bed.ping(1, "qlt-v10a", &b));
    let seen = bed.capture("icmp or (vlan and icmp)", || {
        assert!(bed.ping(1, "qlt-v10a", &b));
    });
    assert!(seen.contains("vlan 10") && seen.contains(&b), "{seen}");
    assert!(
        seen.lines()
            .filter(|l| l.contains(&b))
            .all(|l| l.contains("vlan 10")),
        "every frame tagged: {seen}"
    );
    wait_until(20, "vlan10 and vlan20 meet at the router", || {
        bed.ping(1, "qlt-v10a", &c) && bed.ping(2, "qlt-v10b", "198.51.100.1")
    });
    assert!(
        v10.starts_with("10.242."),
        "carved from the vlan pool: {v10}"
    );

    // L2 isolation: a vlan20 container that believes vlan10 addresses are on its link
    // reaches neither the one on its own host nor the one on the other; its broadcasts
    // leave tagged 20 and never reach a vlan10 or flat container.
    let leak = bed.capture("arp or (vlan and arp)", || {
        assert!(l2_isolated(&bed, 1, "qlt-v20a", &a));
        assert!(l2_isolated(&bed, 1, "qlt-v20a", &b));
    });
    assert!(leak.contains("vlan 20"), "{leak}");
    let in_v10 = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            text(&bed.in_container(
                2,
                "qlt-v10b",
                "timeout 8 tcpdump -nn -e -l -i eth0 arp 2>/dev/null",
            ))
        });
        let flat = s.spawn(|| {
            text(&bed.in_container(
                2,
                "qlt-f2",
                "timeout 8 tcpdump -nn -e -l -i eth0 arp 2>/dev/null",
            ))
        });
        std::thread::sleep(std::time::Duration::from_millis(1500));
        l2_isolated(&bed, 1, "qlt-v20a", "192.168.20.77");
        // Controls: what vlan10 and flat containers broadcast does reach them.
        l2_isolated(&bed, 1, "qlt-v10a", "10.242.250.77");
        l2_isolated(&bed, 1, "qlt-f1", "172.31.250.77");
        (watch.join().unwrap(), flat.join().unwrap())
    });
    let (v10_saw, flat_saw) = in_v10;
    assert!(v10_saw.contains("10.242.250.77"), "vlan10 saw: {v10_saw}");
    assert!(!v10_saw.contains("192.168.20."), "vlan10 saw: {v10_saw}");
    assert!(!v10_saw.contains("172.31.250.77"), "vlan10 saw: {v10_saw}");
    assert!(flat_saw.contains("172.31.250.77"), "flat saw: {flat_saw}");
    assert!(!flat_saw.contains("192.168.20."), "flat saw: {flat_saw}");
    assert!(!flat_saw.contains("10.242.250.77"), "flat saw: {flat_saw}");

    // Host 1 leaves every network: its address and default route go back to eth0.
    for c in ["qlt-f1", "qlt-v10a", "qlt-v20a", "qlt-pub"] {
        let _ = bed.docker(1, &["rm", "-f", c]);
    }
    for n in ["flat1", "vlan10", "vlan20"] {
        bed.docker_ok(1, &["network", "rm", n]);
    }
    wait_until(20, "the underlay back on eth0", || {
        text(&bed.exec(1, "ip -4 -o addr show dev eth0")).contains(&bed.host_ip(1))
    });
    let route = text(&bed.exec(1, "ip route show default"));
    assert!(route.contains("dev eth0"), "{route}");
    assert!(!text(&bed.exec(1, "ip link")).contains("qlul"));
    assert!(bed.ping(2, "qlt-f2", &outside), "host 2 unaffected");
}

#[test]
fn flat_and_vlan_work_on_one_host_with_the_embedded_store() {
    if !enabled("flat_and_vlan_work_on_one_host_with_the_embedded_store") {
        return;
    }
    let mut bed = Bed::start_local();
    // Containers follow the uplink's MTU.
    assert!(bed.exec(1, "ip link set eth0 mtu 1400").status.success());
    bed.docker_ok(1, &strs(&flat_args(&bed, "flat1", &[])));
    vlans_and_router(&bed);
    bed.sleeper(1, "qlt-f1", "flat1");
    let mtu = bed.docker_ok(1, &["exec", "qlt-f1", "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1400");
    let a = bed.sleeper(1, "qlt-v10a", "vlan10");
    bed.sleeper(1, "qlt-v20a", "vlan20");
    wait_until(
        20,
        "flat reaches the physical machine and the outside",
        || bed.ping(1, "qlt-f1", &bed.outside_ip()) && bed.ping(1, "qlt-f1", "198.51.100.1"),
    );
    wait_until(20, "vlan10 reaches vlan20 through the router", || {
        bed.ping(1, "qlt-v10a", "192.168.20.1") && bed.ping(1, "qlt-v20a", &a)
    });
    assert!(l2_isolated(&bed, 1, "qlt-v20a", &a));

    // Restarting qingluan, then ovs-vswitchd, loses no address and no path.
    bed.kill_daemon(1);
    bed.start_daemon(1);
    assert_eq!(bed.address(1, "qlt-v10a"), a);
    assert!(bed.ping(1, "qlt-v10a", "192.168.20.1"));
    bed.restart_vswitchd(1);
    wait_until(15, "paths back after an ovs-vswitchd restart", || {
        bed.ping(1, "qlt-f1", &bed.outside_ip()) && bed.ping(1, "qlt-v20a", &a)
    });
    assert!(l2_isolated(&bed, 1, "qlt-v20a", &a), "VLANs apart again");
    // A second flat network shares the interface's bridge: one uplink bridge in all.
    bed.docker_ok(
        1,
        &strs(&Bed::network_args(
            "flat",
            "flat2",
            &["--subnet", "172.30.0.0/24", "--gateway", "172.30.0.1"],
        )),
    );
    bed.sleeper(1, "qlt-f2", "flat2");
    let bridges = text(&bed.exec(1, "ovs-vsctl list-br"));
    assert_eq!(bridges.trim(), "qlul", "{bridges}");
    // Flat and vlan networks are routed by the physical router: `connect` refuses them,
    // naming the first network at fault as typed, and keeps nothing.
    for (a, b, want) in [
        ("flat1", "flat2", "network flat1 is flat"),
        ("flat2", "flat1", "network flat2 is flat"),
        ("vlan10", "vlan20", "network vlan10 is vlan"),
        ("vlan20", "vlan10", "network vlan20 is vlan"),
    ] {
        let o = bed.ql(1, &["connect", a, b]);
        assert!(
            !o.status.success() && text(&o).contains(want) && text(&o).contains("physical router"),
            "connect {a} {b}: {}",
            text(&o)
        );
    }
    let kept = bed.ql_json(1, &["connect", "ls"]);
    assert_eq!(
        kept["connections"].as_array().map(Vec::len),
        Some(0),
        "{kept}"
    );
    let listed = text(&bed.ql(1, &["network", "ls"]));
    assert!(
        ["flat1", "vlan10", "vlan20"]
            .iter()
            .all(|n| listed.contains(n)),
        "{listed}"
    );
}

#[test]
fn qos_limits_and_marks_hold_on_flat_and_vlan() {
    if !enabled("qos_limits_and_marks_hold_on_flat_and_vlan") {
        return;
    }
    let bed = Bed::start_local();
    bed.docker_ok(
        1,
        &strs(&flat_args(
            &bed,
            "flat1",
            &["--opt", "qos.egress.rate=40mbit"],
        )),
    );
    vlans_and_router(&bed);
    bed.sleeper(1, "qlt-f1", "flat1");
    bed.docker_ok(
        1,
        &[
            "run",
            "-d",
            "--name",
            "qlt-v10q",
            "--net",
            "vlan10",
            "--label",
            "qingluan.qos.priority=high",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    let outside = bed.outside_ip();
    wait_until(20, "flat reaches the physical machine", || {
        bed.ping(1, "qlt-f1", &outside)
    });
    // iperf3 against the physical machine (`ot`), 5 s after 2 s of warm-up.
    let mbits = |container: &str, reverse: &str| {
        let o = bed.exec_in("ot", &iperf_server(5201));
        assert!(o.status.success(), "iperf3 server: {}", text(&o));
        let out = text(&bed.in_container(
            1,
            container,
            &format!("iperf3 -c {outside} -t 5 -O 2 -J {reverse}"),
        ));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or_else(|| panic!("iperf3: {out}"))
            / 1e6
    };
    let egress = mbits("qlt-f1", "");
    assert!(
        (36.0..=44.0).contains(&egress),
        "flat egress 40mbit: {egress:.1}"
    );
    let o = bed.ql(1, &["qos", "set", "qlt-f1", "--ingress-rate", "20mbit"]);
    assert!(o.status.success(), "{}", text(&o));
    let ingress = mbits("qlt-f1", "-R");
    assert!(
        (18.0..=22.0).contains(&ingress),
        "flat ingress 20mbit: {ingress:.1}"
    );
    // The vlan container's class leaves the trunk tagged 10 with AF41 (tos 0x88).
    wait_until(15, "the label was learnt", || {
        text(&bed.ql(1, &["qos", "ls"])).contains("high (label)")
    });
    let marked = bed.capture("vlan 10 and (ip[1] & 0xfc) = 0x88", || {
        let _ = bed.docker(
            1,
            &[
                "exec",
                "qlt-v10q",
                "ping",
                "-c",
                "3",
                "-W",
                "1",
                "192.168.20.1",
            ],
        );
    });
    assert!(
        marked.lines().count() >= 3,
        "no AF41 on VLAN 10: {marked:?}"
    );
}

/// Mbit/s each of `clients` sends at once to iperf3 servers on their ports on the bed's
/// physical machine (`ot`), 5 s after 2 s of warm-up.
fn concurrent_to_outside(bed: &Bed, clients: &[(&str, u16)]) -> Vec<f64> {
    let outside = bed.outside_ip();
    for (_, port) in clients {
        let o = bed.exec_in("ot", &iperf_server(*port));
        assert!(o.status.success(), "iperf3 server: {}", text(&o));
    }
    // Every container's PID first: a slow `docker inspect` between two starts would let the
    // later client run alone for a while and take more than its share.
    let pids: Vec<String> = clients
        .iter()
        .map(|(c, _)| {
            bed.docker_ok(1, &["inspect", "-f", "{{.State.Pid}}", c])
                .trim()
                .to_string()
        })
        .collect();
    let running: Vec<_> = clients
        .iter()
        .zip(&pids)
        .map(|((_, port), pid)| {
            std::process::Command::new("nsenter")
                .args([
                    "-t", pid, "-n", "iperf3", "-c", &outside, "-t", "5", "-O", "2", "-J",
                ])
                .args(["-p", &port.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    running
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or_else(|| panic!("iperf3: {}", String::from_utf8_lossy(&out.stdout)))
                / 1e6
        })
        .collect()
}

#[test]
fn classes_share_an_aggregate_on_the_uplink() {
    if !enabled("classes_share_an_aggregate_on_the_uplink") {
        return;
    }
    let bed = Bed::start_local();
    bed.docker_ok(
        1,
        &strs(&flat_args(
            &bed,
            "flat1",
            &["--opt", "qos.aggregate.rate=50mbit"],
        )),
    );
    for (c, class) in [("qlt-fhi", "high"), ("qlt-flo", "low")] {
        bed.docker_ok(
            1,
            &[
                "run",
                "-d",
                "--name",
                c,
                "--net",
                "flat1",
                "--label",
                &format!("qingluan.qos.priority={class}"),
                IMAGE,
                "sleep",
                "600",
            ],
        );
    }
    let outside = bed.outside_ip();
    wait_until(20, "flat reaches the physical machine", || {
        bed.ping(1, "qlt-fhi", &outside) && bed.ping(1, "qlt-flo", &outside)
    });
    wait_until(15, "the labels were learnt", || {
        let t = text(&bed.ql(1, &["qos", "ls"]));
        t.contains("high (label)") && t.contains("low (label)")
    });
    // The median of three runs: the bed's two userspace datapaths busy-poll the same two
    // cores, so one run can be starved (CI once measured 44.2 for a 50mbit aggregate).
    let mut runs: Vec<f64> = (0..3)
        .map(|_| concurrent_to_outside(&bed, &[("qlt-flo", 5401)])[0])
        .collect();
    runs.sort_by(f64::total_cmp);
    let alone = [runs[1]];
    eprintln!("flat aggregate 50mbit, low alone: runs {runs:?}");
    assert!(
        (45.0..=55.0).contains(&alone[0]),
        "low alone under 50mbit: {:.1}",
        alone[0]
    );
    let both = concurrent_to_outside(&bed, &[("qlt-fhi", 5402), ("qlt-flo", 5403)]);
    eprintln!(
        "flat aggregate 50mbit: low alone {:.1}, high {:.1} + low {:.1}",
        alone[0], both[0], both[1]
    );
    assert!(
        both[0] >= 27.0 && both[0] + both[1] <= 55.0,
        "high {:.1} and low {:.1} under 50mbit: high must keep 60 %",
        both[0],
        both[1]
    );
    // Removing the network removes the interface's HTB and OVS's QoS row.
    bed.docker_ok(1, &["rm", "-f", "qlt-fhi", "qlt-flo"]);
    bed.docker_ok(1, &["network", "rm", "flat1"]);
    let qdisc = text(&bed.exec(1, "tc qdisc show dev eth0"));
    assert!(!qdisc.contains("htb 1: root"), "{qdisc}");
    let rows = text(&bed.exec(1, "ovs-vsctl --bare --columns=_uuid list qos"));
    assert!(rows.trim().is_empty(), "{rows}");
    // A vlan network's frames are told apart by their tag on the trunk.
    vlans_and_router(&bed);
    bed.sleeper(1, "qlt-v10g", "vlan10");
    let gw = bed.ql_json(1, &["network", "inspect", "vlan10"])["gateway"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(20, "vlan10 reaches its router", || {
        bed.ping(1, "qlt-v10g", &gw)
    });
    let o = bed.ql(
        1,
        &[
            "qos",
            "set",
            "--network",
            "vlan10",
            "--aggregate-rate",
            "30mbit",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = bed.exec_in("rt", &iperf_server(5404));
    assert!(o.status.success(), "iperf3 server: {}", text(&o));
    let out = text(&bed.in_container(
        1,
        "qlt-v10g",
        &format!("iperf3 -c {gw} -p 5404 -t 5 -O 2 -J"),
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let vlan = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3: {out}"))
        / 1e6;
    eprintln!("vlan aggregate 30mbit: {vlan:.1}");
    assert!(
        (27.0..=33.0).contains(&vlan),
        "vlan aggregate 30mbit: {vlan:.1}"
    );
}

#[test]
fn acl_rules_hold_on_flat_and_vlan_networks() {
    if !enabled("acl_rules_hold_on_flat_and_vlan_networks") {
        return;
    }
    let mut bed = Bed::start(2, "");
    let deny = ["--opt", "acl.default=deny"];
    bed.docker_ok(1, &strs(&flat_args(&bed, "flat1", &deny)));
    bed.docker_ok(1, &strs(&vlan_args("vlan10", 10, &deny)));
    let v10 = bed.ql_json(1, &["network", "inspect", "vlan10"]);
    let (subnet, gw) = (
        v10["subnet"].as_str().unwrap().to_string(),
        v10["gateway"].as_str().unwrap().to_string(),
    );
    let prefix = subnet.rsplit_once('/').unwrap().1;
    bed.start_router(&[(10, &format!("{gw}/{prefix}"))]);
    wait_until(20, "flat1 and vlan10 on h2", || {
        bed.has_network(2, "flat1") && bed.has_network(2, "vlan10")
    });
    let f1 = bed.sleeper(1, "qlt-f1", "flat1");
    let f2 = bed.sleeper(2, "qlt-f2", "flat1");
    let v1 = bed.sleeper(1, "qlt-v1", "vlan10");
    let v2 = bed.sleeper(2, "qlt-v2", "vlan10");

    // The default: the gateway (the physical router) is reachable, the rest of the
    // segment is not: other containers, and the physical machine on the flat subnet.
    let (router, outside) = (bed.router_ip(), bed.outside_ip());
    wait_until(20, "the physical gateways answer", || {
        bed.ping(1, "qlt-f1", &router) && bed.ping(2, "qlt-v2", &gw)
    });
    assert!(!bed.ping_once(1, "qlt-f1", &f2), "flat default deny");
    assert!(!bed.ping_once(1, "qlt-f1", &outside), "flat default deny");
    assert!(!bed.ping_once(1, "qlt-v1", &v2), "vlan default deny");

    // A container rule added on h1 naming h2's container holds on both hosts, one way.
    let pair = bed.acl_add(
        1,
        &[
            "--network",
            "flat1",
            "--from",
            "container:qlt-f1",
            "--to",
            "container:qlt-f2",
            "--proto",
            "icmp",
            "--allow",
        ],
    );
    wait_until(5, "f1 reaches f2 across hosts", || {
        bed.ping_once(1, "qlt-f1", &f2)
    });
    assert!(!bed.ping_once(2, "qlt-f2", &f1), "not the reverse");
    assert!(!bed.ping_once(1, "qlt-f1", &outside), "only f2 is allowed");
    let listed = bed.ql_json(2, &["acl", "ls"]);
    assert!(
        listed["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == pair.as_str() && r["scope"] == "cluster"),
        "h2 lists the rule: {listed}"
    );
    // A network rule on vlan10 added on h2 opens the VLAN to itself.
    bed.acl_add(
        2,
        &[
            "--network",
            "vlan10",
            "--from",
            "vlan10",
            "--to",
            "vlan10",
            "--allow",
        ],
    );
    wait_until(5, "v1 reaches v2 across hosts", || {
        bed.ping_once(1, "qlt-v1", &v2)
    });
    assert!(bed.ping_once(2, "qlt-v2", &v1), "both ways");

    // The rules hold after the daemon is killed and after ovs-vswitchd restarts.
    bed.kill_daemon(1);
    bed.start_daemon(1);
    bed.restart_vswitchd(1);
    wait_until(15, "paths back after the restarts", || {
        bed.ping_once(1, "qlt-f1", &f2) && bed.ping_once(1, "qlt-v1", &v2)
    });
    assert!(!bed.ping_once(2, "qlt-f2", &f1), "still not the reverse");
    assert!(
        !bed.ping_once(1, "qlt-f1", &outside),
        "still only f2 is allowed"
    );
}
