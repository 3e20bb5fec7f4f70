//! vxlan networks over kernel VXLAN devices (`[cluster] overlay = "kernel"`) end to end on
//! the multi-host test bed (tests/bed): three hosts, each with its own OVS (userspace
//! datapath), qingluan daemon and dockerd. The promises of the OVS tunnel port's tests
//! (`e2e_vxlan.rs`) hold here too: every host reaches every other, the first packet
//! arrives, VNIs stay apart on the wire, ARP is answered on the host, the MTU fits, a host
//! that leaves and comes back is dropped and taken again, a trace follows the packet to
//! the other host; and the underlay address stays on its interface.

mod bed;

use bed::{enabled, overlay, strs, text, wait_until, Bed, IMAGE};

/// The forwarding entries of host `h`'s device `dev`, as `bridge fdb` prints them.
fn fdb(bed: &Bed, h: usize, dev: &str) -> String {
    text(&bed.exec(h, &format!("bridge fdb show dev {dev}")))
}

#[test]
fn kernel_devices_carry_the_overlay_between_hosts() {
    if !enabled("kernel_devices_carry_the_overlay_between_hosts") {
        return;
    }
    let mut bed = Bed::start(3, "overlay = \"kernel\"");
    for (name, vni) in [("ov1", "5001"), ("ov2", "5002")] {
        let args = ["--subnet", "10.60.0.0/24"];
        bed.docker_ok(
            1,
            &strs(&Bed::vxlan_args(name, vni.parse().unwrap(), &args)),
        );
    }
    wait_until(20, "both networks on every host", || {
        (2..=3).all(|h| bed.has_network(h, "ov1") && bed.has_network(h, "ov2"))
    });
    overlay::start_vni_pairs(&bed);
    overlay::start_at(&bed, 3, "qlt-a3", "ov1", "10.60.0.13");

    // One device per VNI on the overlay bridge; the underlay stays on eth0, no uplink bridge.
    let dev = text(&bed.exec(1, "ip -d link show dev qlx1389"));
    assert!(dev.contains("vxlan id 5001"), "{dev}");
    assert!(dev.contains(&format!("local {}", bed.host_ip(1))), "{dev}");
    let ports = text(&bed.exec(1, "ovs-vsctl list-ports qlov"));
    assert!(
        ports.contains("qlx1389") && ports.contains("qlx138a"),
        "{ports}"
    );
    assert!(!ports.contains("qlovt"), "{ports}");
    let eth0 = text(&bed.exec(1, "ip -4 -o addr show dev eth0"));
    assert!(eth0.contains(&bed.host_ip(1)), "{eth0}");
    let ul = text(&bed.exec(1, "ip link show dev qlul"));
    assert!(ul.contains("does not exist"), "{ul}");

    // The first packet arrives once the other host's container is known here.
    let a2_mac = bed.docker_ok(2, &["exec", "qlt-a2", "cat", "/sys/class/net/eth0/address"]);
    wait_until(20, "h1 knows where a2 is", || {
        fdb(&bed, 1, "qlx1389").contains(&format!("{} dst {}", a2_mac.trim(), bed.host_ip(2)))
    });
    let first = bed.docker(
        1,
        &["exec", "qlt-a1", "ping", "-c", "1", "-W", "1", "10.60.0.12"],
    );
    assert!(first.status.success(), "first ping: {}", text(&first));
    let all = [(1, "qlt-a1"), (2, "qlt-a2"), (3, "qlt-a3")];
    wait_until(30, "all pairs ping", || {
        all.iter().all(|(h, from)| {
            ["10.60.0.11", "10.60.0.12", "10.60.0.13"]
                .iter()
                .all(|ip| bed.ping(*h, from, ip))
        })
    });

    overlay::vnis_apart_and_arp_local(&bed);
    overlay::mtu_fits(&bed);
    overlay::trace_crosses_to_h2(&bed, "qlt-a1", "qlt-a2", 5001);

    // h3 leaves: its entries go from h1's device, h2 stays reachable; it comes back.
    let h3 = format!("dst {}", bed.host_ip(3));
    assert!(fdb(&bed, 1, "qlx1389").contains(&h3));
    bed.stop_daemon(3);
    wait_until(10, "h3's entries removed on h1", || {
        !fdb(&bed, 1, "qlx1389").contains(&h3)
    });
    assert!(bed.ping(1, "qlt-a1", "10.60.0.12"), "h2 is unaffected");
    bed.start_daemon(3);
    wait_until(20, "h3's entries back on h1", || {
        fdb(&bed, 1, "qlx1389").contains(&h3)
    });
    wait_until(20, "h1 reaches h3 again", || {
        bed.ping(1, "qlt-a1", "10.60.0.13")
    });

    // The networks gone, so are the devices.
    for (h, c) in [
        (1, "qlt-a1"),
        (2, "qlt-a2"),
        (3, "qlt-a3"),
        (1, "qlt-b1"),
        (2, "qlt-b2"),
    ] {
        bed.docker_ok(h, &["rm", "-f", c]);
    }
    for n in ["ov1", "ov2"] {
        bed.ql(1, &["network", "rm", n]);
    }
    wait_until(20, "devices gone on every host", || {
        (1..=3).all(|h| {
            let links = text(&bed.exec(h, "ip -o link show"));
            !links.contains("qlx1389") && !links.contains("qlx138a")
        })
    });
}

#[test]
fn marks_and_aggregate_limits_hold_through_kernel_devices() {
    if !enabled("marks_and_aggregate_limits_hold_through_kernel_devices") {
        return;
    }
    let bed = Bed::start(2, "overlay = \"kernel\"");
    bed.docker_ok(1, &strs(&Bed::vxlan_args("qv", 5301, &[])));
    wait_until(20, "qv on h2", || bed.has_network(2, "qv"));
    let labels = ["--label", "qingluan.qos.priority=high"];
    let mut args = vec!["run", "-d", "--name", "qlt-qv1", "--net", "qv"];
    args.extend(labels);
    args.extend([IMAGE, "sleep", "600"]);
    bed.docker_ok(1, &args);
    let ip2 = bed.sleeper(2, "qlt-qv2", "qv");
    wait_until(15, "h1 reaches h2", || bed.ping(1, "qlt-qv1", &ip2));

    // The outer header carries the inner mark (AF41, tos 0x88) on the underlay.
    wait_until(15, "h1 marks qlt-qv1's packets", || {
        let marked = bed.capture("udp port 4789 and (ip[1] & 0xfc) = 0x88", || {
            bed.docker_ok(1, &["exec", "qlt-qv1", "ping", "-c", "3", &ip2]);
        });
        marked.lines().count() >= 3
    });
    // Unlimited, the overlay carries far more than the limit below (gigabits on the bed).
    let free = overlay::mbits(&bed, (1, "qlt-qv1"), (2, "qlt-qv2"), &ip2);
    assert!(free > 200.0, "unlimited: {free:.1}");
    // An aggregate limit on h1 shapes what h1 sends into the network's device.
    overlay::aggregate(&bed, 1, "qv", "20mbit");
    let qdisc = text(&bed.exec(1, "tc qdisc show dev qlx14b5"));
    assert!(qdisc.contains("htb"), "{qdisc}");
    let limited = overlay::mbits(&bed, (1, "qlt-qv1"), (2, "qlt-qv2"), &ip2);
    eprintln!("kernel vxlan: unlimited {free:.1}, aggregate 20mbit {limited:.1}");
    assert!(
        (15.0..=22.0).contains(&limited),
        "aggregate 20mbit through the device: {limited:.1}"
    );
    // The limit removed, the device is the host's unshaped again.
    let o = bed.ql(1, &["qos", "rm", "--network", "qv"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(10, "the HTB gone", || {
        !text(&bed.exec(1, "tc qdisc show dev qlx14b5")).contains("htb")
    });
}
