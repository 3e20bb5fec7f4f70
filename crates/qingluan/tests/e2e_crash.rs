//! Crash consistency: the daemon dies (abort, like kill -9) at each step of CreateEndpoint,
//! DeleteEndpoint, CreateNetwork and RequestAddress while the real dockerd drives it; after a
//! restart and whatever Docker does next, no address is held twice and, once everything is
//! removed, nothing is left: no endpoint, address, subnet, veth or bridge.
//!
//! The crash points exist in builds with the `failpoints` feature (scripts/test.sh builds
//! with `--all-features`); the daemon is started with `FAILPOINTS=<point>=return`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

/// What makes Docker call the step that crashes.
#[derive(Clone, Copy)]
enum Trigger {
    /// `docker run` on the network.
    Run,
    /// `docker rm -f` of a running container.
    Remove,
    /// `docker network create` of a second network.
    CreateNetwork,
}

fn run_on(name: &str, net: &str) -> std::process::Output {
    run(
        "docker",
        &[
            "run", "-d", "--name", name, "--net", net, IMAGE, "sleep", "600",
        ],
    )
}

/// The addresses qingluan lists for its endpoints.
fn endpoint_addresses(env: &Env) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["--json", "endpoint", "ls"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

/// Whether nothing of the instance is left: endpoints, subnets with addresses, links.
fn nothing_left(env: &Env) -> bool {
    let pools: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["--json", "pool", "ls"])).unwrap();
    let subnets: usize = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["subnets"].as_array().map_or(0, Vec::len))
        .sum();
    let links = sh(&format!(
        "ip -o link show | grep -c ': {}[bvc][0-9a-f]'",
        env.prefix
    ));
    endpoint_addresses(env).is_empty()
        && subnets == 0
        && String::from_utf8_lossy(&links.stdout).trim() == "0"
}

fn crash_at(point: &str, trigger: Trigger) {
    let mut env = Env::with_daemon_config("gc_secs = 20");
    let net_args = ["--opt", "model=nat", "--ipam-opt", "pool=nat"];
    env.create_network("qlt-k1", &net_args);
    docker(&[
        "run", "-d", "--name", "qlt-k0", "--net", "qlt-k1", IMAGE, "sleep", "600",
    ]);

    env.stop();
    env.start_with_env(&[("FAILPOINTS", &format!("{point}=return"))]);
    let (driver, ipam) = (env.driver.clone(), env.ipam.clone());
    let outcome = std::thread::scope(|s| {
        let call = s.spawn(move || match trigger {
            Trigger::Run => run_on("qlt-k2", "qlt-k1"),
            Trigger::Remove => run("docker", &["rm", "-f", "qlt-k0"]),
            Trigger::CreateNetwork => {
                let mut a = vec![
                    "network",
                    "create",
                    "--driver",
                    &driver,
                    "--ipam-driver",
                    &ipam,
                ];
                a.extend_from_slice(&net_args);
                a.push("qlt-k2");
                run("docker", &a)
            }
        });
        env.wait_crashed();
        env.start();
        call.join().unwrap()
    });
    println!(
        "{point}: docker {} after the crash",
        if outcome.status.success() {
            "succeeded"
        } else {
            "failed"
        }
    );

    // What a user does next works, and no address is held twice.
    let _ = run("docker", &["rm", "-f", "qlt-k2"]);
    if matches!(trigger, Trigger::CreateNetwork) {
        let _ = run("docker", &["network", "rm", "qlt-k2"]);
        env.create_network("qlt-k2", &net_args);
    }
    for i in 3..6 {
        let name = format!("qlt-k{i}");
        let o = run_on(&name, "qlt-k1");
        assert!(o.status.success(), "{point}: {name}: {:?}", o);
    }
    let addrs = endpoint_addresses(&env);
    let distinct: BTreeSet<&String> = addrs.iter().collect();
    assert_eq!(
        distinct.len(),
        addrs.len(),
        "{point}: held twice: {addrs:?}"
    );
    let docker_ips: BTreeSet<String> = (3..6)
        .map(|i| ip_of(&format!("qlt-k{i}"), "qlt-k1"))
        .collect();
    assert_eq!(
        docker_ips.len(),
        3,
        "{point}: docker's view: {docker_ips:?}"
    );
    for ip in &docker_ips {
        assert!(
            addrs.iter().any(|a| a.starts_with(&format!("{ip}/"))),
            "{point}: {ip} not among {addrs:?}"
        );
    }

    // Everything removed: after collection nothing is left.
    cleanup_docker();
    assert!(
        wait_for(Duration::from_secs(60), || nothing_left(&env)),
        "{point}: leftovers: endpoints {:?}, pools {}, links {}",
        endpoint_addresses(&env),
        env.qingluan(&["--json", "pool", "ls"]),
        String::from_utf8_lossy(
            &sh(&format!("ip -o link show | grep ': {}[bvc]", env.prefix)).stdout
        )
    );
}

#[test]
fn a_crash_at_any_step_holds_no_address_twice_and_leaks_nothing() {
    if !enabled("a_crash_at_any_step_holds_no_address_twice_and_leaks_nothing") {
        return;
    }
    for (point, trigger) in [
        ("request-address-allocated", Trigger::Run),
        ("create-endpoint-bound", Trigger::Run),
        ("create-endpoint-committed", Trigger::Run),
        ("delete-endpoint-recorded", Trigger::Remove),
        ("create-network-committed", Trigger::CreateNetwork),
    ] {
        crash_at(point, trigger);
    }
}
