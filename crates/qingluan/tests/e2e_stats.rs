//! `qingluan stats` end to end: counters per container read from OVS over our OpenFlow
//! channel, in the container's directions, spoofed frames counted per container, names
//! from the Engine API, and filters.

mod common;

use common::*;

/// The row of `container` in `qingluan stats --json` output.
fn row<'a>(rows: &'a serde_json::Value, container: &str) -> &'a serde_json::Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["container"] == container)
        .unwrap_or_else(|| panic!("no row for {container} in {rows}"))
}

#[test]
fn stats_count_each_containers_traffic_in_its_directions() {
    if !enabled("stats_count_each_containers_traffic_in_its_directions") {
        return;
    }
    let env = Env::new();
    env.create_network(
        "qlt-stats",
        &["--opt", "model=nat", "--ipam-opt", "pool=nat"],
    );
    start_sleepers("qlt-stats", &["qlt-st-a", "qlt-st-b"]);
    let b = ip_of("qlt-st-b", "qlt-stats");
    let read = |env: &Env| -> serde_json::Value {
        serde_json::from_str(&env.qingluan(&["stats", "--json", "--network", "qlt-stats"])).unwrap()
    };
    let before = read(&env);
    // 40 pings of 1000 bytes payload: 1042-byte frames each way.
    let (ok, out) = exec("qlt-st-a", &format!("ping -c 40 -i 0.05 -s 1000 {b}"));
    assert!(ok, "{out}");
    let after = read(&env);
    let delta = |c: &str, dir: &str, what: &str| {
        let get = |rows: &serde_json::Value| {
            let v = &row(rows, c)[dir];
            if what.is_empty() { v } else { &v[what] }.as_u64().unwrap()
        };
        get(&after) - get(&before)
    };
    for (c, sent, got) in [
        ("qlt-st-a", "transmit", "receive"),
        ("qlt-st-b", "receive", "transmit"),
    ] {
        assert!(delta(c, sent, "packets") >= 40, "{c} {sent}: {after}");
        assert!(delta(c, sent, "bytes") >= 40 * 1042, "{c} {sent}: {after}");
        assert!(delta(c, got, "packets") >= 40, "{c} {got}: {after}");
    }
    assert_eq!(
        delta("qlt-st-a", "spoofed", ""),
        0,
        "nothing spoofed yet: {after}"
    );

    // a sends from an address that is not its own: every frame is dropped and counted.
    let spoof = {
        let o: Vec<&str> = b.split('.').collect();
        format!("{}.{}.{}.200", o[0], o[1], o[2])
    };
    exec("qlt-st-a", &format!("ip addr add {spoof}/24 dev eth0"));
    let (ok, _) = exec(
        "qlt-st-a",
        &format!("ping -c 10 -i 0.05 -W 1 -I {spoof} {b}"),
    );
    assert!(!ok, "a spoofed ping got an answer");
    let spoofed = read(&env);
    assert!(
        row(&spoofed, "qlt-st-a")["spoofed"].as_u64().unwrap() >= 10,
        "{spoofed}"
    );
    assert_eq!(row(&spoofed, "qlt-st-b")["spoofed"], 0, "{spoofed}");

    let a = row(&after, "qlt-st-a");
    assert_eq!(a["network_name"], "qlt-stats");
    assert_eq!(a["mode"], "nat");
    assert!(a["address"].as_str().unwrap().contains('/'), "{a}");

    // Filters by container and by network; the table form prints a row per container.
    let only_b: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["stats", "--json", "--container", "qlt-st-b"]))
            .unwrap();
    assert_eq!(only_b.as_array().unwrap().len(), 1, "{only_b}");
    assert_eq!(only_b[0]["container"], "qlt-st-b");
    let none: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["stats", "--json", "--network", "qlt-nosuch"]))
            .unwrap();
    assert_eq!(none, serde_json::json!([]));
    let table = env.qingluan(&["stats"]);
    assert!(table.starts_with("CONTAINER"), "{table}");
    assert!(
        table.contains("qlt-st-a") && table.contains("qlt-st-b"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("TOTAL") && l.contains("qlt-stats")),
        "a total for the network: {table}"
    );
}
