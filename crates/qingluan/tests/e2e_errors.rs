//! Bad input through the Docker CLI: each refused with its exact message, changing nothing.

mod common;

use common::*;

fn assert_says(stderr: &str, want: &str) {
    assert!(stderr.contains(want), "expected {want:?} in: {stderr}");
}

#[test]
fn bad_network_input_is_refused_clearly() {
    if !enabled("bad_network_input_is_refused_clearly") {
        return;
    }
    let env = Env::new();
    let before = env.qingluan(&["pool", "ls", "--json"]);

    let e = env.create_network_fails(
        "qlt-bad",
        &["--opt", "model=bogus", "--ipam-opt", "pool=nat"],
    );
    assert_says(
        &e,
        "unknown model \"bogus\" (models: nonat, nat, flat, vlan, vxlan)",
    );

    let e = env.create_network_fails(
        "qlt-bad",
        &["--opt", "model=nat", "--subnet", "10.1.2.300/24"],
    );
    // Docker validates these four itself before asking the plugin; its text is what users see.
    assert_says(
        &e,
        "Invalid subnet 10.1.2.300/24 : invalid CIDR address: 10.1.2.300/24",
    );

    let e = env.create_network_fails(
        "qlt-bad",
        &[
            "--opt",
            "model=nat",
            "--subnet",
            "10.2.0.0/24",
            "--gateway",
            "10.1.0.1",
        ],
    );
    assert_says(&e, "no matching subnet for gateway 10.1.0.1");

    let e = env.create_network_fails(
        "qlt-bad",
        &[
            "--opt",
            "model=nat",
            "--subnet",
            "10.3.0.0/24",
            "--ip-range",
            "10.4.0.0/25",
        ],
    );
    assert_says(&e, "no matching subnet for range 10.4.0.0/25");

    env.create_network(
        "qlt-nat-a",
        &[
            "--opt",
            "model=nat",
            "--subnet",
            "10.5.0.0/24",
            "--ip-range",
            "10.5.0.64/26",
            "--aux-address",
            "router=10.5.0.64",
        ],
    );
    let e = env.create_network_fails(
        "qlt-bad",
        &["--opt", "model=nat", "--subnet", "10.5.0.0/25"],
    );
    assert_says(
        &e,
        "subnet 10.5.0.0/25 overlaps 10.5.0.0/24, already used by a nat or nonat network",
    );

    let e = env.create_network_fails(
        "qlt-bad",
        &["--opt", "model=nat", "--ipam-opt", "pool=nosuch"],
    );
    assert_says(
        &e,
        "unknown pool \"nosuch\" (pools: nat, nonat, flat, vlan, vxlan)",
    );

    let e = env.create_network_fails("qlt-bad", &["--opt", "model=nat", "--opt", "mtu=abc"]);
    assert_says(
        &e,
        "invalid mtu \"abc\": must be a number between 68 and 65535",
    );

    let e = env.create_network_fails("qlt-bad", &["--opt", "model=nat", "--opt", "colour=red"]);
    assert_says(&e, "unknown option \"colour\" for model nat");

    let e = env.create_network_fails(
        "qlt-bad",
        &["--opt", "model=nat", "--ipam-opt", "colour=red"],
    );
    assert_says(
        &e,
        "unknown ipam option \"colour\" (valid options: pool, vni)",
    );

    // Exhausted pool.
    env.qingluan(&[
        "pool",
        "create",
        "qlt-tiny",
        "--subnet",
        "10.9.0.0/24",
        "--prefix",
        "24",
    ]);
    env.create_network(
        "qlt-tiny1",
        &["--opt", "model=nat", "--ipam-opt", "pool=qlt-tiny"],
    );
    let e = env.create_network_fails(
        "qlt-bad",
        &["--opt", "model=nat", "--ipam-opt", "pool=qlt-tiny"],
    );
    assert_says(
        &e,
        "pool qlt-tiny (10.9.0.0/24) has no free /24 subnet left",
    );
    let e = String::from_utf8_lossy(&env.cli(&["pool", "rm", "qlt-tiny"]).stderr).into_owned();
    assert_says(&e, "pool qlt-tiny is in use by 1 subnet(s): 10.9.0.0/24");
    docker(&["network", "rm", "qlt-tiny1"]);
    env.qingluan(&["pool", "rm", "qlt-tiny"]);

    // Static addresses.
    docker(&[
        "run",
        "-d",
        "--name",
        "qlt-st1",
        "--net",
        "qlt-nat-a",
        "--ip",
        "10.5.0.10",
        IMAGE,
        "sleep",
        "600",
    ]);
    let e = fails(
        "docker",
        &[
            "run",
            "--rm",
            "--net",
            "qlt-nat-a",
            "--ip",
            "10.5.0.10",
            IMAGE,
            "true",
        ],
    );
    assert_says(
        &e,
        "address 10.5.0.10 is already in use in subnet 10.5.0.0/24",
    );
    let e = fails(
        "docker",
        &[
            "run",
            "--rm",
            "--net",
            "qlt-nat-a",
            "--ip",
            "10.6.0.10",
            IMAGE,
            "true",
        ],
    );
    assert_says(
        &e,
        "Invalid address 10.6.0.10: It does not belong to any of this network's subnets",
    );
    let e = fails(
        "docker",
        &[
            "run",
            "--rm",
            "--net",
            "qlt-nat-a",
            "--ip",
            "10.5.0.0",
            IMAGE,
            "true",
        ],
    );
    assert_says(
        &e,
        "address 10.5.0.0 is reserved in subnet 10.5.0.0/24 (network or broadcast address)",
    );

    // Publishing on nonat and on internal networks.
    env.create_network(
        "qlt-nonat-a",
        &["--opt", "model=nonat", "--ipam-opt", "pool=nonat"],
    );
    let e = fails(
        "docker",
        &[
            "run",
            "--rm",
            "--net",
            "qlt-nonat-a",
            "-p",
            "2080:80",
            IMAGE,
            "true",
        ],
    );
    assert_says(
        &e,
        "port publishing (-p) is not supported on nonat networks: they have no route out",
    );
    env.create_network(
        "qlt-int",
        &["--internal", "--opt", "model=nat", "--ipam-opt", "pool=nat"],
    );
    let e = fails(
        "docker",
        &[
            "run", "--rm", "--net", "qlt-int", "-p", "2081:80", IMAGE, "true",
        ],
    );
    assert_says(
        &e,
        "port publishing (-p) is not supported on internal networks: they have no route out",
    );
    // A host port published twice.
    docker(&[
        "run",
        "-d",
        "--name",
        "qlt-p1",
        "--net",
        "qlt-nat-a",
        "-p",
        "2082:80",
        IMAGE,
        "sleep",
        "600",
    ]);
    let e = fails(
        "docker",
        &[
            "run",
            "--rm",
            "--net",
            "qlt-nat-a",
            "-p",
            "2082:80",
            IMAGE,
            "true",
        ],
    );
    assert_says(&e, "host port 2082/tcp is already published by endpoint");
    // Dynamic addresses come from --ip-range, never the aux address.
    assert_eq!(ip_of("qlt-p1", "qlt-nat-a"), "10.5.0.65");

    // Nothing changed by the refusals: the pools hold only what the live networks use.
    docker(&["rm", "-f", "qlt-st1", "qlt-p1"]);
    for n in ["qlt-nat-a", "qlt-nonat-a", "qlt-int"] {
        docker(&["network", "rm", n]);
    }
    assert_eq!(env.qingluan(&["pool", "ls", "--json"]), before);
    let eps = env.qingluan(&["endpoint", "ls", "--json"]);
    assert_eq!(eps.trim(), "[]");
}

#[test]
fn internal_nat_behaves_like_nonat() {
    if !enabled("internal_nat_behaves_like_nonat") {
        return;
    }
    let mut env = Env::new();
    let (_, _, out_ip) = env.outside();
    env.create_network(
        "qlt-int2",
        &[
            "--internal",
            "--opt",
            "model=nat",
            "--ipam-opt",
            "pool=nat",
            "--opt",
            "mtu=1400",
        ],
    );
    docker(&[
        "run", "-d", "--name", "qlt-i1", "--net", "qlt-int2", IMAGE, "sleep", "600",
    ]);
    docker(&[
        "run", "-d", "--name", "qlt-i2", "--net", "qlt-int2", IMAGE, "sleep", "600",
    ]);
    assert!(pings("qlt-i1", &ip_of("qlt-i2", "qlt-int2")));
    assert!(pings("qlt-i1", &env.gateway_of("qlt-int2")));
    assert!(
        !pings("qlt-i1", &out_ip),
        "internal network reached the outside"
    );
    let (_, routes) = exec("qlt-i1", "ip route");
    assert!(!routes.contains("default"), "{routes}");
    let (_, link) = exec("qlt-i1", "ip link show eth0");
    assert!(link.contains("mtu 1400"), "the MTU is ours to set: {link}");
}
