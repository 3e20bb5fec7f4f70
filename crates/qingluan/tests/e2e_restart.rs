//! Restarts: the daemon under traffic (no ping lost, and its first pass changes nothing),
//! ovs-vswitchd (connectivity back
//! within 5 s), and dockerd with `--restart=always` containers (they come back, with their
//! `--ip`, and nothing stale is left in qingluan).
//!
//! ovs-vswitchd and dockerd are only restarted when scripts/test.sh started them itself
//! (`QL_OWN_OVS=1`, `QL_OWN_DOCKERD=1`); otherwise those tests print SKIP.

mod common;

use common::*;
use std::time::Duration;

/// Whether a full reconcile's report says it changed nothing.
fn unchanged(report: &str) -> bool {
    report.contains("ovs_ops: 0, veths_created: 0, veths_deleted: 0, ")
        && report.contains("flows_changed: 0, firewall_changed: false")
}

#[test]
fn daemon_restart_loses_no_ping() {
    if !enabled("daemon_restart_loses_no_ping") {
        return;
    }
    let mut env = Env::new();
    env.create_network("qlt-rs", &["--opt", "model=nat", "--ipam-opt", "pool=nat"]);
    docker(&[
        "run", "-d", "--name", "qlt-r1", "--net", "qlt-rs", IMAGE, "sleep", "600",
    ]);
    docker(&[
        "run", "-d", "--name", "qlt-r2", "--net", "qlt-rs", IMAGE, "sleep", "600",
    ]);
    let peer = ip_of("qlt-r2", "qlt-rs");
    let pinger = std::thread::spawn(move || exec("qlt-r1", &format!("ping -c 40 -i 0.2 {peer}")));
    std::thread::sleep(Duration::from_secs(2));
    env.stop();
    std::thread::sleep(Duration::from_millis(500));
    let before = env.reconcile_reports().len();
    env.start();
    let (_, out) = pinger.join().unwrap();
    assert!(
        out.contains("40 packets received") || out.contains(" 0% packet loss"),
        "{out}"
    );
    // The new daemon found the dataplane as its records describe it: its first full pass
    // changed nothing.
    let first = &env.reconcile_reports()[before];
    assert!(
        unchanged(first),
        "the first pass after the restart changed the dataplane: {first}"
    );
    // A new container still works after the restart.
    docker(&[
        "run", "-d", "--name", "qlt-r3", "--net", "qlt-rs", IMAGE, "sleep", "600",
    ]);
    assert!(pings("qlt-r3", &ip_of("qlt-r1", "qlt-rs")));
}

#[test]
fn vswitchd_restart_recovers_within_5s() {
    if !enabled("vswitchd_restart_recovers_within_5s") {
        return;
    }
    if std::env::var("QL_OWN_OVS").as_deref() != Ok("1") {
        println!(
            "SKIP: vswitchd_restart_recovers_within_5s: OVS was not started by scripts/test.sh"
        );
        return;
    }
    let env = Env::new();
    env.create_network("qlt-vs", &["--opt", "model=nat", "--ipam-opt", "pool=nat"]);
    docker(&[
        "run", "-d", "--name", "qlt-v1", "--net", "qlt-vs", IMAGE, "sleep", "600",
    ]);
    docker(&[
        "run", "-d", "--name", "qlt-v2", "--net", "qlt-vs", IMAGE, "sleep", "600",
    ]);
    let peer = ip_of("qlt-v2", "qlt-vs");
    assert!(pings("qlt-v1", &peer));
    let started = restart_by_pidfile("/run/openvswitch/ovs-vswitchd.pid", || {
        run("ovs-appctl", &["version"]).status.success()
    });
    let back = wait_for(Duration::from_secs(15), || {
        exec("qlt-v1", &format!("ping -c 1 -W 1 {peer}")).0
    });
    let took = started.elapsed();
    println!(
        "connectivity back {:.2} s after ovs-vswitchd was started again",
        took.as_secs_f64()
    );
    assert!(
        back,
        "no connectivity after the ovs-vswitchd restart: {}",
        env.log()
    );
    assert!(
        took <= Duration::from_secs(5),
        "connectivity back only after {took:?}"
    );
}

#[test]
fn dockerd_restart_brings_containers_back() {
    if !enabled("dockerd_restart_brings_containers_back") {
        return;
    }
    if std::env::var("QL_OWN_DOCKERD").as_deref() != Ok("1") {
        println!("SKIP: dockerd_restart_brings_containers_back: dockerd was not started by scripts/test.sh");
        return;
    }
    let env = Env::new();
    env.create_network(
        "qlt-dr",
        &[
            "--opt",
            "model=nat",
            "--ipam-opt",
            "pool=nat",
            "--subnet",
            "10.248.7.0/24",
        ],
    );
    docker(&[
        "run",
        "-d",
        "--restart=always",
        "--name",
        "qlt-d1",
        "--net",
        "qlt-dr",
        "--ip",
        "10.248.7.50",
        IMAGE,
        "sleep",
        "100000",
    ]);
    docker(&[
        "run",
        "-d",
        "--restart=always",
        "--name",
        "qlt-d2",
        "--net",
        "qlt-dr",
        IMAGE,
        "sleep",
        "100000",
    ]);
    assert!(pings("qlt-d2", "10.248.7.50"));
    restart_by_pidfile("/run/docker.pid", || {
        run("docker", &["version"]).status.success()
    });
    let up = wait_for(Duration::from_secs(60), || {
        docker(&["inspect", "-f", "{{.State.Running}}", "qlt-d1"]).trim() == "true"
            && docker(&["inspect", "-f", "{{.State.Running}}", "qlt-d2"]).trim() == "true"
    });
    assert!(up, "containers did not come back: {}", env.log());
    assert_eq!(ip_of("qlt-d1", "qlt-dr"), "10.248.7.50");
    let d2 = ip_of("qlt-d2", "qlt-dr");
    assert!(
        wait_for(Duration::from_secs(10), || pings("qlt-d1", &d2)),
        "no connectivity after the dockerd restart"
    );
    let eps: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["endpoint", "ls", "--json"])).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 2, "stale endpoints: {eps}");
    let pools: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["pool", "ls", "--json"])).unwrap();
    let used: u64 = pools
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["subnets"].as_array().unwrap().iter())
        .map(|s| s[1].as_u64().unwrap())
        .sum();
    assert_eq!(used, 3, "gateway + 2 containers, nothing stale");
}

#[test]
fn sigterm_stops_the_daemon_within_two_seconds() {
    if !enabled("sigterm_stops_the_daemon_within_two_seconds") {
        return;
    }
    let mut env = Env::new();
    env.create_network("qlt-t1", &["--opt", "model=nat", "--ipam-opt", "pool=nat"]);
    docker(&[
        "run", "-d", "--name", "qlt-t1c", "--net", "qlt-t1", IMAGE, "sleep", "600",
    ]);
    let gateway = env.gateway_of("qlt-t1");
    let (status, took) = env.terminate();
    println!(
        "daemon stopped {:.0} ms after SIGTERM",
        took.as_secs_f64() * 1e3
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}: {}",
        env.log()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(env.log().contains("stopped; the dataplane stays as it is"));
    // The dataplane stayed: the container still reaches its gateway with no daemon.
    assert!(pings("qlt-t1c", &gateway));
    env.start();
}
