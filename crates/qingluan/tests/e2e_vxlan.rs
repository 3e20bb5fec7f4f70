//! vxlan overlay networks end to end on the multi-host test bed (tests/bed): tunnels between
//! three hosts, each with its own OVS (userspace datapath), qingluan daemon and dockerd.

mod bed;

use std::time::Instant;

use bed::{enabled, text, wait_until, Bed, IMAGE};

fn create(bed: &Bed, h: usize, name: &str, vni: u32, extra: &[&str]) {
    let args = Bed::vxlan_args(name, vni, extra);
    bed.docker_ok(h, &args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn run(bed: &Bed, h: usize, name: &str, net: &str) -> String {
    bed.docker_ok(
        h,
        &[
            "run", "-d", "--name", name, "--net", net, IMAGE, "sleep", "600",
        ],
    );
    bed.address(h, name)
}

fn ping(bed: &Bed, h: usize, from: &str, to: &str) -> bool {
    bed.docker(h, &["exec", from, "ping", "-c", "1", "-W", "2", to])
        .status
        .success()
}

#[test]
fn overlay_connects_every_host() {
    if !enabled("overlay_connects_every_host") {
        return;
    }
    let bed = Bed::start(3, "");
    create(&bed, 1, "ov1", 5001, &[]);
    wait_until(20, "ov1 on every host", || {
        bed.has_network(2, "ov1") && bed.has_network(3, "ov1")
    });
    let mut c = Vec::new();
    for h in 1..=3 {
        let name = format!("qlt-a{h}");
        let ip = run(&bed, h, &name, "ov1");
        c.push((h, name, ip));
    }
    // The underlay moved onto the uplink bridge, and the hosts still reach each other.
    let shown = text(&bed.exec(1, "ip -4 -o addr show dev qlul"));
    assert!(shown.contains(&bed.host_ip(1)), "{shown}");
    let eth0 = text(&bed.exec(1, "ip -4 -o addr show dev eth0"));
    assert!(!eth0.contains("inet "), "{eth0}");
    let t = Instant::now();
    wait_until(30, "all pairs ping", || {
        c.iter().all(|(h, from, _)| {
            c.iter()
                .filter(|(_, to, _)| to != from)
                .all(|(_, _, ip)| ping(&bed, *h, from, ip))
        })
    });
    println!(
        "all pairs of 3 hosts ping over the overlay {:.1} s after the last start",
        t.elapsed().as_secs_f64()
    );
}
