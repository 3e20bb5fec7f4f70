//! Isolation that cannot be bypassed: not through OVS, not through the host's routing, not
//! through the host kernel seeing the OVS-side veth (the userspace datapath's veth bypass),
//! and not with a spoofed source address.

mod common;

use common::*;

#[test]
fn networks_are_isolated_by_every_path() {
    if !enabled("networks_are_isolated_by_every_path") {
        return;
    }
    let mut env = Env::new();
    let (_, host_ip, _) = env.outside();
    env.create_network(
        "qlt-iso-a",
        &["--opt", "model=nat", "--ipam-opt", "pool=nat"],
    );
    env.create_network(
        "qlt-iso-b",
        &["--opt", "model=nat", "--ipam-opt", "pool=nat"],
    );
    env.create_network(
        "qlt-iso-c",
        &["--opt", "model=nonat", "--ipam-opt", "pool=nonat"],
    );
    start_sleepers("qlt-iso-a", &["qlt-a1", "qlt-a2"]);
    start_sleepers("qlt-iso-b", &["qlt-b1"]);
    start_sleepers("qlt-iso-c", &["qlt-c1"]);
    let (gw_a, gw_b, gw_c) = (
        env.gateway_of("qlt-iso-a"),
        env.gateway_of("qlt-iso-b"),
        env.gateway_of("qlt-iso-c"),
    );
    let (b1, c1, a2) = (
        ip_of("qlt-b1", "qlt-iso-b"),
        ip_of("qlt-c1", "qlt-iso-c"),
        ip_of("qlt-a2", "qlt-iso-a"),
    );
    let subnet_b = env.subnet_of("qlt-iso-b");
    let subnet_c = env.subnet_of("qlt-iso-c");

    assert!(pings("qlt-a1", &a2));
    // Routed through our own gateway towards the other networks.
    exec(
        "qlt-a1",
        &format!("ip route add {subnet_b} via {gw_a}; ip route add {subnet_c} via {gw_a}"),
    );
    assert!(!pings("qlt-a1", &b1), "a1 reached b1 through the host");
    assert!(!pings("qlt-a1", &c1), "a1 reached c1 through the host");
    assert!(!pings("qlt-a1", &gw_b), "a1 reached network b's gateway");
    assert!(!pings("qlt-a1", &gw_c), "a1 reached network c's gateway");
    // On-link tricks: ARP for the other gateway straight on eth0.
    exec("qlt-a1", &format!("ip route add {gw_b}/32 dev eth0"));
    assert!(!pings("qlt-a1", &gw_b), "a1 reached b's gateway on-link");
    // nonat reaches only its gateway, even on-link to a host address (the veth bypass).
    exec("qlt-c1", &format!("ip route add {host_ip}/32 dev eth0"));
    assert!(
        !pings("qlt-c1", &host_ip),
        "nonat container reached a host address (veth bypass)"
    );
    assert!(pings("qlt-c1", &gw_c), "nonat container lost its gateway");
    // The reverse direction too.
    exec(
        "qlt-b1",
        &format!("ip route add {} via {gw_b}", env.subnet_of("qlt-iso-a")),
    );
    assert!(!pings("qlt-b1", &a2), "b1 reached a2");
    // Spoofing: a second address on a1 must not get through.
    let spoof = a2
        .rsplit_once('.')
        .map(|(p, _)| format!("{p}.250"))
        .unwrap();
    exec("qlt-a1", &format!("ip addr add {spoof}/24 dev eth0"));
    let (ok, out) = exec("qlt-a1", &format!("ping -c 2 -W 1 -I {spoof} {a2}"));
    assert!(!ok, "spoofed source got through: {out}");
    assert!(pings("qlt-a1", &a2), "a1 lost its real address");
}

#[test]
fn dual_stack_networks_are_isolated_too() {
    if !enabled("dual_stack_networks_are_isolated_too") {
        return;
    }
    let env = Env::new();
    let v6 = |name: &str, v4: &str, v6: &str, model: &str| {
        env.create_network(
            name,
            &[
                "--opt",
                &format!("model={model}"),
                "--ipv6",
                "--subnet",
                v4,
                "--subnet",
                v6,
            ],
        );
    };
    v6("qlt-v6a", "10.248.10.0/24", "fd48:a::/64", "nat");
    v6("qlt-v6b", "10.248.11.0/24", "fd48:b::/64", "nat");
    v6("qlt-v6c", "10.248.12.0/24", "fd48:c::/64", "nonat");
    for (c, n) in [
        ("qlt-6a", "qlt-v6a"),
        ("qlt-6b", "qlt-v6b"),
        ("qlt-6c", "qlt-v6c"),
    ] {
        start_sleepers(n, &[c]);
    }
    let ping6 = |c: &str, ip: &str| {
        exec(
            c,
            &format!("for i in 1 2 3 4 5; do ping -c 1 -W 1 {ip} && exit 0; sleep 1; done; exit 1"),
        )
        .0
    };
    assert!(ping6("qlt-6a", "fd48:a::1"), "own IPv6 gateway");
    assert!(
        !ping6("qlt-6a", "fd48:b::1"),
        "another network's IPv6 gateway through the host"
    );
    exec("qlt-6c", "ip -6 route add fd48:a::/64 via fd48:c::1");
    assert!(
        ping6("qlt-6c", "fd48:c::1"),
        "nonat reaches its IPv6 gateway"
    );
    assert!(
        !ping6("qlt-6c", "fd48:a::1"),
        "nonat reached another IPv6 gateway"
    );
}
