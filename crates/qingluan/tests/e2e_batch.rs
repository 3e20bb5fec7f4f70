//! The original qingluan lost addresses on batch stops: 30 containers started in parallel,
//! stopped in one batch, removed, and 30 new ones must get unique addresses with none lost.
//! Every container's interface has its carrier (the host end is up). Removed all at once,
//! they leave a network dockerd can delete: its endpoint count lost no decrement to
//! dockerd's race between one network's deletions (moby/moby#42119).

mod common;

use common::*;
use std::collections::BTreeSet;

fn start_batch(round: u32) -> Vec<String> {
    let script = format!(
        "for i in $(seq 1 30); do docker run -d --name qlt-b{round}-$i --net qlt-batch {IMAGE} sleep 3600 >/dev/null & done; wait"
    );
    let o = sh(&script);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (1..=30).map(|i| format!("qlt-b{round}-{i}")).collect()
}

/// Containers whose interface has no carrier: the host end of its veth is down (a pair a
/// pass added to OVS before it was up: ovs-vswitchd writes the flags back as it read them).
fn without_carrier(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| exec(n, "cat /sys/class/net/eth0/carrier").1.trim() != "1")
        .cloned()
        .collect()
}

fn addresses(names: &[String]) -> BTreeSet<String> {
    names.iter().map(|n| ip_of(n, "qlt-batch")).collect()
}

fn used_addresses(env: &Env) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["pool", "ls", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["subnets"].as_array().unwrap().iter())
        .map(|s| s[1].as_u64().unwrap())
        .sum()
}

#[test]
fn thirty_in_parallel_then_batch_stop() {
    if !enabled("thirty_in_parallel_then_batch_stop") {
        return;
    }
    let env = Env::new();
    env.create_network(
        "qlt-batch",
        &["--opt", "model=nat", "--ipam-opt", "pool=nat"],
    );
    let base = used_addresses(&env);
    assert_eq!(base, 1, "only the gateway is allocated");

    let first = start_batch(1);
    assert_eq!(without_carrier(&first), Vec::<String>::new());
    let a = addresses(&first);
    assert_eq!(a.len(), 30, "30 distinct addresses: {a:?}");
    assert!(!a.contains(""), "a container got no address");
    assert_eq!(used_addresses(&env), base + 30);

    let o = sh("docker stop -t 1 $(docker ps -q --filter name=^qlt-b1-) >/dev/null");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        used_addresses(&env),
        base,
        "addresses lost or leaked after the batch stop"
    );
    let o = sh("docker rm $(docker ps -aq --filter name=^qlt-b1-) >/dev/null");
    assert!(o.status.success());

    let second = start_batch(2);
    assert_eq!(without_carrier(&second), Vec::<String>::new());
    let b = addresses(&second);
    assert_eq!(b.len(), 30, "30 distinct addresses again: {b:?}");
    assert_eq!(used_addresses(&env), base + 30);
    let eps = env.qingluan(&["endpoint", "ls", "--json"]);
    let eps: serde_json::Value = serde_json::from_str(&eps).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 30);

    let o = sh("docker rm -f $(docker ps -aq --filter name=^qlt-b2-) >/dev/null");
    assert!(o.status.success());
    assert_eq!(used_addresses(&env), base);
    let o = sh("docker network rm qlt-batch");
    assert!(
        o.status.success(),
        "the emptied network cannot be removed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
