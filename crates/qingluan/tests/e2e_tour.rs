//! The README tour end to end: nat, nonat, a custom subnet, a second network on a running
//! container, a static address, published ports without docker-proxy, isolation, and a
//! clean slate after removal.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn nat_and_nonat_tour() {
    if !enabled("nat_and_nonat_tour") {
        return;
    }
    let mut env = Env::new();
    let nice = env.daemon_nice();
    assert!(
        nice.len() > 1 && nice.iter().all(|n| *n == -10),
        "every thread of the daemon runs at daemon.nice's default, -10: {nice:?}"
    );
    let (out_ns, host_ip, out_ip) = env.outside();
    let pools_before = env.qingluan(&["pool", "ls", "--json"]);

    env.create_network(
        "qlt-nat1",
        &["--opt", "model=nat", "--ipam-opt", "pool=nat"],
    );
    env.create_network(
        "qlt-nat2",
        &[
            "--opt",
            "model=nat",
            "--ipam-opt",
            "pool=nat",
            "--subnet",
            "192.168.2.0/24",
            "--gateway",
            "192.168.2.1",
        ],
    );
    env.create_network(
        "qlt-nonat1",
        &["--opt", "model=nonat", "--ipam-opt", "pool=nonat"],
    );
    env.create_network(
        "qlt-nonat2",
        &[
            "--opt",
            "model=nonat",
            "--ipam-opt",
            "pool=nonat",
            "--subnet",
            "192.168.1.0/24",
        ],
    );
    assert_eq!(env.gateway_of("qlt-nonat2"), "192.168.1.1");
    assert_eq!(env.gateway_of("qlt-nat2"), "192.168.2.1");

    docker(&[
        "run",
        "-itd",
        "--name",
        "qlt-busybox-nat",
        "--net",
        "qlt-nat1",
        IMAGE,
    ]);
    docker(&[
        "run",
        "-itd",
        "--name",
        "qlt-web-nat",
        "--net",
        "qlt-nat1",
        "-p",
        "1080:80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
    ]);
    docker(&[
        "run",
        "-itd",
        "--name",
        "qlt-busybox-nonat",
        "--net",
        "qlt-nonat1",
        IMAGE,
    ]);
    docker(&[
        "run",
        "-itd",
        "--name",
        "qlt-busybox-nonat2",
        "--net",
        "qlt-nonat1",
        IMAGE,
    ]);
    docker(&["network", "connect", "qlt-nat2", "qlt-busybox-nat"]);

    let web = ip_of("qlt-web-nat", "qlt-nat1");
    let nat_gw = env.gateway_of("qlt-nat1");
    let nonat_peer = ip_of("qlt-busybox-nonat2", "qlt-nonat1");
    let nonat_gw = env.gateway_of("qlt-nonat1");

    // Same network: peers and gateway.
    assert!(pings("qlt-busybox-nat", &web), "nat peers");
    assert!(pings("qlt-busybox-nat", &nat_gw), "nat gateway");
    assert!(pings("qlt-busybox-nonat", &nonat_peer), "nonat peers");
    assert!(pings("qlt-busybox-nonat", &nonat_gw), "nonat gateway");
    assert!(
        pings("qlt-busybox-nat", "192.168.2.1"),
        "second network's gateway via eth1"
    );
    // Different networks: nothing.
    assert!(
        !pings("qlt-busybox-nonat", &web),
        "nonat reached a nat container"
    );
    assert!(
        !pings("qlt-web-nat", &nonat_peer),
        "nat reached a nonat container"
    );
    assert!(
        !pings("qlt-busybox-nonat", &nat_gw),
        "nonat reached the nat gateway"
    );
    assert!(
        !pings("qlt-web-nat", &nonat_gw),
        "nat reached the nonat gateway"
    );

    // MAC and interface: eth0 with the address IPAM gave, MAC derived from it.
    let (_, addr) = exec("qlt-busybox-nat", "ip -o addr show eth0; ip link show eth0");
    assert!(
        addr.contains(&ip_of("qlt-busybox-nat", "qlt-nat1")),
        "{addr}"
    );

    // Outbound nat with MASQUERADE: the outside sees the host's address.
    let cap = std::process::Command::new("ip")
        .args([
            "netns", "exec", &out_ns, "timeout", "8", "tcpdump", "-n", "-l", "-c", "1", "-i",
            "eth0", "icmp",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        pings("qlt-busybox-nat", &out_ip),
        "nat container reaches the outside"
    );
    let seen = String::from_utf8_lossy(&cap.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        seen.contains(&format!("IP {host_ip} > {out_ip}")),
        "masquerade: {seen}"
    );

    // nonat: no route out.
    assert!(
        !pings("qlt-busybox-nonat", &out_ip),
        "nonat reached the outside"
    );
    let (_, routes) = exec("qlt-busybox-nonat", "ip route");
    assert!(
        !routes.contains("default"),
        "nonat has a default route: {routes}"
    );

    // Published port on the host's addresses, on 127.0.0.1, from the outside, with no proxy.
    for url in [
        "http://127.0.0.1:1080/".to_string(),
        format!("http://{host_ip}:1080/"),
        format!("http://{nat_gw}:1080/"),
    ] {
        let o = run(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                &url,
            ],
        );
        let code = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            code.starts_with('2') || code.starts_with('4'),
            "{url} answered {code:?}"
        );
    }
    let o = run(
        "ip",
        &[
            "netns",
            "exec",
            &out_ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            &format!("http://{host_ip}:1080/"),
        ],
    );
    let code = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        code.starts_with('2') || code.starts_with('4'),
        "outside answered {code:?}"
    );
    // Hairpin: a container of the same network through the host address.
    let (hairpin, msg) = exec(
        "qlt-busybox-nat",
        &format!("wget -q -T 5 -O - http://{host_ip}:1080/ 2>&1; true"),
    );
    assert!(hairpin && !msg.contains("timed out"), "hairpin: {msg}");
    assert!(
        !sh("pgrep -x docker-proxy").status.success(),
        "a docker-proxy is running"
    );

    // Static address: Docker itself allows --ip only on networks created with --subnet.
    let out = docker(&[
        "run",
        "--rm",
        "--net",
        "qlt-nat2",
        "--ip",
        "192.168.2.200",
        IMAGE,
        "ip",
        "addr",
    ]);
    assert!(out.contains("192.168.2.200/24"), "{out}");
    let carved = env.subnet_of("qlt-nat1").replace(".0/24", ".200");
    let e = fails(
        "docker",
        &[
            "run", "--rm", "--net", "qlt-nat1", "--ip", &carved, IMAGE, "true",
        ],
    );
    assert!(e.contains("user specified IP address is supported only when connecting to networks with user configured subnets"), "{e}");

    // The CLI.
    let ls = env.qingluan(&["network", "ls"]);
    assert!(ls.contains("qlt-nat1") && ls.contains("nonat"), "{ls}");
    let inspect = env.qingluan(&["network", "inspect", "qlt-nat1"]);
    assert!(inspect.contains(&web), "{inspect}");
    let eps = env.qingluan(&["endpoint", "ls"]);
    assert!(eps.contains("1080->80/tcp"), "{eps}");
    let pools = env.qingluan(&["pool", "ls"]);
    assert!(
        pools.contains("10.240.0.0/16") || pools.contains("nat"),
        "{pools}"
    );
    let status = env.qingluan(&["status"]);
    assert!(status.contains("NetworkDriver.Join"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().nth(3) == Some("up")),
        "this host is listed up: {status}"
    );

    // Tear down: nothing of ours is left.
    docker(&["network", "disconnect", "qlt-nat2", "qlt-busybox-nat"]);
    docker(&[
        "rm",
        "-f",
        "qlt-busybox-nat",
        "qlt-web-nat",
        "qlt-busybox-nonat",
        "qlt-busybox-nonat2",
    ]);
    for n in ["qlt-nat1", "qlt-nat2", "qlt-nonat1", "qlt-nonat2"] {
        docker(&["network", "rm", n]);
    }
    assert_clean(&env);
    assert_eq!(env.qingluan(&["pool", "ls", "--json"]), pools_before);
}

/// Nothing of the instance is left in OVS, links, netfilter or the store.
pub fn assert_clean(env: &Env) {
    let settle = wait_for(Duration::from_secs(5), || {
        let brs = ok("ovs-vsctl", &["list-br"]);
        !brs.lines()
            .any(|b| b.starts_with(&format!("{}b", env.prefix)))
    });
    assert!(settle, "bridges left: {}", ok("ovs-vsctl", &["list-br"]));
    let links = ok("ip", &["-o", "link"]);
    for pfx in ["v", "c", "b"] {
        let p = format!(": {}{pfx}", env.prefix);
        assert!(!links.contains(&p), "links left: {links}");
    }
    let tables = ok("nft", &["list", "tables"]);
    assert!(
        !tables.contains(&format!("inet {}\n", env.driver)),
        "nft table left: {tables}"
    );
    let eps = env.qingluan(&["endpoint", "ls", "--json"]);
    assert_eq!(eps.trim(), "[]");
    let nets = env.qingluan(&["network", "ls", "--json"]);
    assert_eq!(nets.trim(), "[]");
    let du = run("iptables", &["-S", "DOCKER-USER"]);
    assert!(!String::from_utf8_lossy(&du.stdout).contains(&format!("--comment {}", env.driver)));
}
