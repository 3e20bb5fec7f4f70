//! vxlan overlay networks over OVS's tunnel port (`[cluster] overlay = "ovs"`) end to end on
//! the multi-host test bed (tests/bed): tunnels between three hosts, each with its own OVS
//! (userspace datapath), qingluan daemon and dockerd; and QoS limits and DSCP marks on an
//! overlay across two of them.

mod bed;

use std::time::Instant;

use bed::{enabled, overlay, strs, text, wait_until, Bed, IMAGE};

/// These tests run on OVS's tunnel port; `e2e_overlay_kernel.rs` tests the kernel devices.
const OVS_PORT: &str = "overlay = \"ovs\"";

fn create(bed: &Bed, h: usize, name: &str, vni: u32, extra: &[&str]) {
    bed.docker_ok(h, &strs(&Bed::vxlan_args(name, vni, extra)));
}

#[test]
fn overlay_connects_every_host() {
    if !enabled("overlay_connects_every_host") {
        return;
    }
    let bed = Bed::start(3, OVS_PORT);
    let mut c = Vec::new();
    // Every host primes the others' tunnel endpoints once the network is there (an empty
    // VXLAN datagram, which OVS drops); that draws no ICMP error on the underlay: the
    // uplink interface is guarded, so the host's kernel never sees the datagram.
    let unreachable = bed.capture("icmp and icmp[icmptype] == icmp-unreach", || {
        create(&bed, 1, "ov1", 5001, &[]);
        wait_until(20, "ov1 on every host", || {
            bed.has_network(2, "ov1") && bed.has_network(3, "ov1")
        });
        for h in 1..=3 {
            let name = format!("qlt-a{h}");
            let ip = bed.sleeper(h, &name, "ov1");
            c.push((h, name, ip));
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
    });
    assert!(
        !unreachable.contains("unreachable"),
        "priming drew ICMP errors: {unreachable}"
    );
    // The underlay moved onto the uplink bridge, and the hosts still reach each other.
    let shown = text(&bed.exec(1, "ip -4 -o addr show dev qlul"));
    assert!(shown.contains(&bed.host_ip(1)), "{shown}");
    let eth0 = text(&bed.exec(1, "ip -4 -o addr show dev eth0"));
    assert!(!eth0.contains("inet "), "{eth0}");
    // Each host learns the other tunnel endpoints' MACs before any container talks (the
    // daemon primes them), so the very first packet between two hosts is not lost.
    for h in 1..=3 {
        wait_until(
            15,
            &format!("h{h} knows the other tunnel endpoints"),
            || {
                let neigh = text(&bed.exec(h, "ovs-appctl tnl/neigh/show"));
                (1..=3)
                    .filter(|o| *o != h)
                    .all(|o| neigh.contains(&format!("{} ", bed.host_ip(o))))
            },
        );
    }
    for (h, from, _) in &c {
        let (_, _, to) = &c[*h % 3];
        let first = bed.docker(*h, &["exec", from, "ping", "-c", "1", "-W", "1", to]);
        assert!(
            first.status.success(),
            "first ping {from} -> {to}: {}",
            text(&first)
        );
    }
    let t = Instant::now();
    wait_until(30, "all pairs ping", || {
        c.iter().all(|(h, from, _)| {
            c.iter()
                .filter(|(_, to, _)| to != from)
                .all(|(_, _, ip)| bed.ping(*h, from, ip))
        })
    });
    println!(
        "all pairs of 3 hosts ping over the overlay {:.1} s after the last start",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn vnis_are_isolated_arp_stays_local_and_mtu_fits() {
    if !enabled("vnis_are_isolated_arp_stays_local_and_mtu_fits") {
        return;
    }
    let bed = Bed::start(2, OVS_PORT);
    // Two VNIs with the same subnet, and the same address in both.
    create(&bed, 1, "ov1", 5001, &["--subnet", "10.60.0.0/24"]);
    create(&bed, 1, "ov2", 5002, &["--subnet", "10.60.0.0/24"]);
    wait_until(20, "both networks on h2", || {
        bed.has_network(2, "ov1") && bed.has_network(2, "ov2")
    });
    overlay::start_vni_pairs(&bed);
    overlay::vnis_apart_and_arp_local(&bed);
    overlay::mtu_fits(&bed);

    // Bad VNIs are refused with clear errors.
    for (vni, msg) in [
        (
            "0",
            "invalid vni \"0\" for model vxlan: must be a number from 1 to 16777215",
        ),
        (
            "16777216",
            "invalid vni \"16777216\" for model vxlan: must be a number from 1 to 16777215",
        ),
        ("abc", "invalid vni \"abc\" for model vxlan"),
    ] {
        let opt = format!("vni={vni}");
        let args = ["--opt", opt.as_str(), "--ipam-opt", "vni=77"];
        let o = bed.docker(1, &strs(&Bed::network_args("vxlan", "qlt-bad", &args)));
        assert!(!o.status.success());
        assert!(text(&o).contains(msg), "{}", text(&o));
    }
    let only_ipam = ["--ipam-opt", "vni=77"];
    let o = bed.docker(1, &strs(&Bed::network_args("vxlan", "qlt-bad", &only_ipam)));
    assert!(
        text(&o).contains("model vxlan needs --opt vni=<1-16777215>"),
        "{}",
        text(&o)
    );
    let disagree = ["--opt", "vni=78", "--ipam-opt", "vni=77"];
    let o = bed.docker(1, &strs(&Bed::network_args("vxlan", "qlt-bad", &disagree)));
    assert!(
        text(&o).contains("is not a qingluanIpam subnet of vxlan-78"),
        "{}",
        text(&o)
    );
    assert!(!bed.has_network(1, "qlt-bad"));
}

#[test]
fn hosts_leaving_and_joining_update_the_tunnels() {
    if !enabled("hosts_leaving_and_joining_update_the_tunnels") {
        return;
    }
    let mut bed = Bed::start(3, OVS_PORT);
    create(&bed, 1, "ov1", 5001, &[]);
    wait_until(20, "ov1 on every host", || {
        bed.has_network(2, "ov1") && bed.has_network(3, "ov1")
    });
    let ips: Vec<String> = (1..=3)
        .map(|h| bed.sleeper(h, &format!("qlt-c{h}"), "ov1"))
        .collect();
    wait_until(30, "h1 reaches h3", || bed.ping(1, "qlt-c1", &ips[2]));
    let h3 = bed.host_ip(3);
    let towards_h3 = |bed: &Bed| {
        let flows = text(&bed.exec(1, "ovs-ofctl -O OpenFlow15 dump-flows qlov"));
        flows.contains(&format!("set_field:{h3}->tun_dst"))
    };
    assert!(towards_h3(&bed));

    // h3 leaves (its daemon stops): h1 drops its flows within a few seconds.
    let t = Instant::now();
    bed.stop_daemon(3);
    wait_until(10, "h3's flows removed on h1", || !towards_h3(&bed));
    println!(
        "h3's tunnels gone from h1 {:.1} s after it left",
        t.elapsed().as_secs_f64()
    );
    assert!(bed.ping(1, "qlt-c1", &ips[1]), "h2 is unaffected");

    // h3 joins again: its flows come back and its container is reachable.
    let t = Instant::now();
    bed.start_daemon(3);
    wait_until(20, "h3's flows back on h1", || towards_h3(&bed));
    wait_until(20, "h1 reaches h3 again", || bed.ping(1, "qlt-c1", &ips[2]));
    println!(
        "h3 reachable again {:.1} s after its daemon started",
        t.elapsed().as_secs_f64()
    );

    // The last vxlan network gone, the underlay address moves back to eth0.
    for h in 1..=3 {
        bed.docker_ok(h, &["rm", "-f", &format!("qlt-c{h}")]);
    }
    bed.ql(1, &["network", "rm", "ov1"]);
    wait_until(20, "underlay back on eth0 of every host", || {
        (1..=3).all(|h| {
            let eth0 = text(&bed.exec(h, "ip -4 -o addr show dev eth0"));
            eth0.contains(&bed.host_ip(h))
        })
    });
    let gone = text(&bed.exec(1, "ip link show dev qlul"));
    assert!(gone.contains("does not exist"), "{gone}");
    let route = text(&bed.exec(1, "ip route show default"));
    assert!(route.contains("dev eth0"), "{route}");
}

#[test]
fn nat_gives_every_host_the_same_gateway_out() {
    if !enabled("nat_gives_every_host_the_same_gateway_out") {
        return;
    }
    let bed = Bed::start(2, OVS_PORT);
    let refused = |args: Vec<String>, want: &str| bed.docker_refused(1, &args, want);
    refused(
        Bed::vxlan_args("qlt-bad", 5100, &["--opt", "nat=yes"]),
        "invalid nat \"yes\": must be true or false",
    );
    refused(
        Bed::vxlan_args("qlt-bad", 5100, &["--opt", "nat=true", "--internal"]),
        "--internal and --opt nat=true contradict each other",
    );
    create(
        &bed,
        1,
        "ovn",
        5100,
        &["--subnet", "10.51.0.0/24", "--opt", "nat=true"],
    );
    wait_until(20, "ovn on host 2", || bed.has_network(2, "ovn"));
    refused(
        Bed::vxlan_args("qlt-plain", 5100, &["--subnet", "10.51.0.0/24"]),
        "vxlan-5100 already exists as network ovn with nat true; this definition has false",
    );
    let nat_args = Bed::network_args("nat", "qlt-nat", &["--subnet", "10.51.0.0/25"]);
    let o = bed.docker(1, &strs(&nat_args));
    assert!(
        !o.status.success() && text(&o).contains("overlaps 10.51.0.0/24"),
        "{}",
        text(&o)
    );

    let web = "mkdir -p /www && echo qingluan-nat > /www/index.html && exec httpd -f -p 80 -h /www";
    bed.docker_ok(
        1,
        &[
            "run", "-d", "--name", "qlt-w1", "--net", "ovn", "-p", "8080:80", IMAGE, "sh", "-c",
            web,
        ],
    );
    let w1 = bed.address(1, "qlt-w1");
    bed.sleeper(2, "qlt-n2", "ovn");

    // The same gateway address and MAC on both hosts; the containers' default route.
    for h in 1..=2 {
        let addrs = text(&bed.exec(h, "ip -o -4 addr show; ip -o link show"));
        assert!(addrs.contains("inet 10.51.0.1/24"), "h{h}: {addrs}");
        assert!(addrs.contains("02:42:0a:33:00:01"), "h{h}: {addrs}");
    }
    let routes = text(&bed.in_container(2, "qlt-n2", "ip route"));
    assert!(routes.contains("default via 10.51.0.1"), "{routes}");

    // Each host masquerades its own containers to the outside.
    let outside = bed.outside_ip();
    // Replies are counted, not only seen: each echo is answered exactly once, from the
    // very first (the uplink interface must not hand a second copy to the host's kernel).
    let once = |h: usize, c: &str| {
        let o = text(&bed.docker(h, &["exec", c, "ping", "-c", "3", "-W", "2", &outside]));
        assert!(!o.contains("DUP!"), "h{h} {c}: duplicate replies: {o}");
        o.contains("3 packets received")
    };
    wait_until(20, "both containers reach the outside", || {
        once(1, "qlt-w1") && once(2, "qlt-n2")
    });
    let seen = bed.capture(&format!("icmp and host {outside}"), || {
        assert!(bed.ping(2, "qlt-n2", &outside));
    });
    assert!(
        seen.contains(&format!("{} > {outside}", bed.host_ip(2))),
        "{seen}"
    );
    assert!(!seen.contains("10.51.0."), "{seen}");

    // The port published on host 1 answers from the outside; the overlay still works.
    let url = format!("http://{}:8080/", bed.host_ip(1));
    wait_until(20, "the published port answers", || {
        text(&bed.exec_in("ot", &format!("curl -s --max-time 3 {url}"))).contains("qingluan-nat")
    });
    wait_until(10, "the overlay still connects the hosts", || {
        bed.ping(2, "qlt-n2", &w1)
    });
    assert!(bed
        .exec(1, &format!("ping -c 1 -W 2 {w1}"))
        .status
        .success());

    // Leaving the network takes the gateway off that host only.
    bed.docker_ok(1, &["rm", "-f", "qlt-w1"]);
    bed.docker_ok(1, &["network", "rm", "ovn"]);
    wait_until(10, "the gateway leaves host 1", || {
        !text(&bed.exec(1, "ip -o -4 addr show")).contains("10.51.0.1/24")
    });
    assert!(text(&bed.exec(2, "ip -o -4 addr show")).contains("10.51.0.1/24"));
    assert!(bed.ping(2, "qlt-n2", &outside));
}

#[test]
fn qos_limits_and_marks_hold_across_hosts() {
    if !enabled("qos_limits_and_marks_hold_across_hosts") {
        return;
    }
    let bed = Bed::start(2, OVS_PORT);
    create(&bed, 1, "qv", 5301, &[]);
    wait_until(20, "qv on h2", || bed.has_network(2, "qv"));
    // A per-container limit and class from labels on h1; an ingress limit set on h2.
    bed.docker_ok(
        1,
        &[
            "run",
            "-d",
            "--name",
            "qlt-qv1",
            "--net",
            "qv",
            "--label",
            "qingluan.qos.egress.rate=50mbit",
            "--label",
            "qingluan.qos.priority=high",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    let ip2 = bed.sleeper(2, "qlt-qv2", "qv");
    wait_until(15, "h1 reaches h2", || bed.ping(1, "qlt-qv1", &ip2));
    wait_until(15, "h1 learnt the label", || {
        bed.ql_json(1, &["qos", "ls"])["endpoints"][0]["effective"]["egress"]["value"] == "50mbit"
    });
    // Over the bed's overlay (two namespaced hosts on two cores, userspace datapaths, no
    // TSO) single runs measured 50mbit egress 44.4–49.6 (a policer on MTU-sized packets
    // loses some of the rate to TCP's loss recovery), 30mbit ingress 24.2–30.0, a 20mbit
    // aggregate 15.3–20.0 (docs/qos.md). Medians are held to 75–110 % here, which still
    // tells a limit from none (the overlay carries ~500 Mbit/s); one host's tests hold the
    // accuracy to 90–110 %.
    let egress = overlay::mbits(&bed, (1, "qlt-qv1"), (2, "qlt-qv2"), &ip2);
    assert!(
        (37.5..=55.0).contains(&egress),
        "egress 50mbit across hosts: {egress:.1}"
    );
    let o = bed.ql(2, &["qos", "set", "qlt-qv2", "--ingress-rate", "30mbit"]);
    assert!(o.status.success(), "{}", text(&o));
    let ingress = overlay::mbits(&bed, (1, "qlt-qv1"), (2, "qlt-qv2"), &ip2);
    assert!(
        (22.5..=33.0).contains(&ingress),
        "ingress 30mbit on h2: {ingress:.1}"
    );
    // The outer header carries the inner mark (AF41, tos 0x88) on the underlay.
    let marked = bed.capture("udp port 4789 and (ip[1] & 0xfc) = 0x88", || {
        bed.docker_ok(1, &["exec", "qlt-qv1", "ping", "-c", "3", &ip2]);
    });
    assert!(
        marked.lines().count() >= 3,
        "no AF41 outer header: {marked:?}"
    );
    // An aggregate limit on h1 shapes what h1 sends into the tunnel for this VNI.
    overlay::aggregate(&bed, 1, "qv", "20mbit");
    let tunnel = overlay::mbits(&bed, (1, "qlt-qv1"), (2, "qlt-qv2"), &ip2);
    eprintln!("vxlan: egress 50mbit {egress:.1}, ingress 30mbit {ingress:.1}, aggregate 20mbit {tunnel:.1}");
    assert!(
        (15.0..=22.0).contains(&tunnel),
        "tunnel aggregate 20mbit: {tunnel:.1}"
    );
}
