//! Hostile and malformed requests on the real plugin sockets, each refused with a clear
//! error that changes nothing (the hardening issue's defects, as regression tests).

mod common;

use common::*;

fn ids_of(container: &str, network: &str) -> (String, String) {
    let f = |field: &str| {
        docker(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").{field}}}}}"),
            container,
        ])
        .trim()
        .to_string()
    };
    (f("NetworkID"), f("EndpointID"))
}

/// OVS bridges and this instance's links.
fn links(prefix: &str) -> Vec<u8> {
    sh(&format!(
        "ovs-vsctl list-br; ip -o link show | grep -o ' {prefix}[bvc][0-9a-f]*' | sort"
    ))
    .stdout
}

#[test]
fn hostile_requests_are_refused_and_change_nothing() {
    if !enabled("hostile_requests_are_refused_and_change_nothing") {
        return;
    }
    let env = Env::new();
    env.create_network("qlt-ha", &["--opt", "model=nat", "--ipam-opt", "pool=nat"]);
    env.create_network("qlt-hb", &["--opt", "model=nat", "--ipam-opt", "pool=nat"]);
    docker(&[
        "run", "-d", "--name", "qlt-h1", "--net", "qlt-ha", IMAGE, "sleep", "600",
    ]);
    let (net_a, ep) = ids_of("qlt-h1", "qlt-ha");
    let net_b = docker(&["network", "inspect", "-f", "{{.Id}}", "qlt-hb"])
        .trim()
        .to_string();
    // The daemon learns the endpoint's container after the Join: wait for it, so that the
    // snapshot below holds nothing that was still on its way.
    assert!(
        wait_for(std::time::Duration::from_secs(10), || env
            .qingluan(&["--json", "endpoint", "ls"])
            .contains("qlt-h1")),
        "the endpoint's container is learnt"
    );
    let before = (
        env.qingluan(&["--json", "network", "ls"]),
        env.qingluan(&["--json", "endpoint", "ls"]),
        links(&env.prefix),
    );

    // Non-ASCII and oversized IDs: an error, never a panic or an empty reply.
    env.post_refused(
        false,
        "NetworkDriver.Join",
        r#"{"NetworkID":"aéééééééééééé","EndpointID":"x"}"#,
        "invalid network ID \"aéééééééééééé\": Docker's IDs are 64 lowercase hexadecimal characters",
    );
    let huge = "a".repeat(1 << 20);
    env.post_refused(
        false,
        "NetworkDriver.CreateNetwork",
        &format!(r#"{{"NetworkID":"{huge}","Options":{{}},"IPv4Data":[{{"Pool":"10.246.1.0/24","Gateway":"10.246.1.1/24"}}]}}"#),
        "invalid network ID \"aaaaaaaaaaaaaaaaaaaa…\"",
    );
    env.post_refused(
        false,
        "NetworkDriver.DeleteEndpoint",
        "",
        "invalid network ID \"\"",
    );

    // A conflicting CreateNetwork for an existing ID is refused; an exact repeat is not.
    env.post_refused(
        false,
        "NetworkDriver.CreateNetwork",
        &format!(r#"{{"NetworkID":"{net_a}","Options":{{"com.docker.network.generic":{{"model":"nonat"}}}},"IPv4Data":[{{"Pool":"10.246.1.0/24","Gateway":"10.246.1.1/24"}}]}}"#),
        "already exists with another definition",
    );

    // CreateEndpoint outside the subnet, or with a negative host port.
    let fake_ep = "e".repeat(64);
    env.post_refused(
        false,
        "NetworkDriver.CreateEndpoint",
        &format!(r#"{{"NetworkID":"{net_a}","EndpointID":"{fake_ep}","Interface":{{"Address":"192.0.2.5/24"}}}}"#),
        "address 192.0.2.5 is not in subnet",
    );
    let subnet = env.subnet_of("qlt-ha");
    let inside = subnet.replace(".0/", ".77/");
    env.post_refused(
        false,
        "NetworkDriver.CreateEndpoint",
        &format!(r#"{{"NetworkID":"{net_a}","EndpointID":"{fake_ep}","Interface":{{"Address":"{inside}"}},"Options":{{"com.docker.network.portmap":[{{"Proto":6,"Port":80,"HostPort":-1,"HostPortEnd":-1}}]}}}}"#),
        "invalid port mapping: host port -1",
    );

    // Join under another network's ID, and a SandboxKey that is not a namespace path.
    env.post_refused(
        false,
        "NetworkDriver.Join",
        &format!(r#"{{"NetworkID":"{net_b}","EndpointID":"{ep}","SandboxKey":"/var/run/docker/netns/x"}}"#),
        &format!("endpoint {} is on network {}, not on {}", &ep[..12], &net_a[..12], &net_b[..12]),
    );
    env.post_refused(
        false,
        "NetworkDriver.Join",
        &format!(r#"{{"NetworkID":"{net_a}","EndpointID":"{ep}","SandboxKey":"../../../../proc/1/ns/net"}}"#),
        "invalid SandboxKey \"../../../../proc/1/ns/net\"",
    );

    // Pools of absurd size, raw and through the Docker CLI.
    env.post_refused(
        true,
        "IpamDriver.RequestPool",
        r#"{"Pool":"::/0","V6":true,"Options":{"pool":"nat"}}"#,
        "subnet ::/0 is out of bounds: an IPv6 subnet's prefix length must be from /32 to /126",
    );
    let e = env.create_network_fails(
        "qlt-hc",
        &[
            "--opt",
            "model=nat",
            "--ipam-opt",
            "pool=nat",
            "--subnet",
            "10.200.0.0/31",
        ],
    );
    assert!(
        e.contains("subnet 10.200.0.0/31 is out of bounds: an IPv4 subnet's prefix length must be from /8 to /30"),
        "{e}"
    );

    let after = (
        env.qingluan(&["--json", "network", "ls"]),
        env.qingluan(&["--json", "endpoint", "ls"]),
        links(&env.prefix),
    );
    assert!(before == after, "a refused call changed something");
    assert!(!env.log().contains("panicked"), "{}", env.log());
    // The container still reaches its gateway: its network was not replaced.
    assert!(pings("qlt-h1", &env.gateway_of("qlt-ha")));
}
