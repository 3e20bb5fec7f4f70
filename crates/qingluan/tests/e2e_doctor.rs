//! `qingluan doctor` end to end: it passes on this machine with the real dockerd and OVS, and
//! on a bed host (tests/bed) it names what is broken, with advice, as each part is broken
//! for real: the daemon stopped, a qingluan bridge no record explains, ovs-vswitchd and
//! ovsdb-server stopped, etcd unreachable.

mod bed;
mod common;

use bed::{strs, wait_until, Bed};
use common::{enabled, run, start_sleepers, Env};

/// The checks of a `doctor --json` report that failed, by name.
fn failed(report: &serde_json::Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["outcome"] == "fail")
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// One check of a report.
fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

#[test]
fn doctor_passes_on_this_machine() {
    if !enabled("doctor_passes_on_this_machine") {
        return;
    }
    let env = Env::new();
    env.create_network("qltdoc", &["--opt", "model=nat"]);
    start_sleepers("qltdoc", &["qltdoc1"]);
    let config = env.config();
    let o = run(
        env!("CARGO_BIN_EXE_qingluan"),
        &["--config", config.to_str().unwrap(), "doctor"],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "doctor failed here:\n{out}");
    assert!(out.contains("0 failed"), "{out}");
    for line in ["ok    daemon", "ok    ovs-vswitchd", "ok    plugin sockets"] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let o = run(
        env!("CARGO_BIN_EXE_qingluan"),
        &["--config", config.to_str().unwrap(), "--json", "doctor"],
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["daemon"], "running");
    assert_eq!(report["failed"], 0, "{report:#}");
    for name in ["dockerd", "forwarding", "subnets", "stale objects"] {
        assert_eq!(check(&report, name)["outcome"], "pass", "{report:#}");
    }
}

#[test]
fn doctor_names_what_is_broken_on_a_cluster_host() {
    if !bed::enabled("doctor_names_what_is_broken_on_a_cluster_host") {
        return;
    }
    let mut bed = Bed::start(2, "");
    bed.docker_ok(1, &strs(&Bed::vxlan_args("dov", 5301, &[])));
    bed.docker_ok(1, &strs(&Bed::network_args("nat", "don", &[])));
    bed.sleeper(1, "do1", "dov");
    bed.sleeper(1, "do2", "don");

    let (ok, report) = bed.doctor(1);
    assert!(ok, "doctor failed on a healthy host: {report:#}");
    for name in [
        "etcd",
        "underlay MTU",
        "forwarding",
        "subnets",
        "plugin sockets",
    ] {
        assert_eq!(check(&report, name)["outcome"], "pass", "{report:#}");
    }

    // The daemon stopped: said, and the store file stands in for its records.
    bed.stop_daemon(1);
    let (ok, report) = bed.doctor(1);
    assert!(!ok);
    assert_eq!(report["daemon"], "not running");
    assert_eq!(failed(&report), ["daemon"], "{report:#}");
    assert_eq!(check(&report, "stale objects")["outcome"], "pass");

    // A bridge tagged as ours that no record explains; the advice (start qingluan) works.
    let o = bed.exec(
        1,
        "ovs-vsctl add-br qltdocx -- set Bridge qltdocx datapath_type=netdev \
         external_ids:qingluan-owner=qingluan external_ids:qingluan-network=deadbeef",
    );
    assert!(o.status.success(), "{}", bed::text(&o));
    let (_, report) = bed.doctor(1);
    assert_eq!(failed(&report), ["daemon", "stale objects"], "{report:#}");
    let stale = check(&report, "stale objects");
    assert!(stale["detail"].as_str().unwrap().contains("bridge qltdocx"));
    assert!(stale["advice"].as_str().unwrap().contains("start qingluan"));
    bed.start_daemon(1);
    wait_until(30, "the daemon to remove the stale bridge", || {
        !bed::text(&bed.exec(1, "ovs-vsctl list-br")).contains("qltdocx")
    });
    let (ok, report) = bed.doctor(1);
    assert!(ok, "{report:#}");

    // OVS down: either half of it. Where the underlay address sits on an OVS bridge (OVS's
    // tunnel port on the userspace datapath moves it there), etcd is cut off too.
    bed.stop_ovs_part(1, "ovs-vswitchd");
    let (ok, report) = bed.doctor(1);
    assert!(!ok);
    let f = failed(&report);
    assert!(
        f.contains(&"ovs-vswitchd".to_string())
            && f.iter().all(|c| c == "ovs-vswitchd" || c == "etcd"),
        "{report:#}"
    );
    let advice = check(&report, "ovs-vswitchd")["advice"].as_str().unwrap();
    assert!(advice.contains("start ovs-vswitchd"), "{advice}");
    bed.start_vswitchd(1);
    bed.stop_ovs_part(1, "ovsdb-server");
    let (ok, report) = bed.doctor(1);
    assert!(!ok);
    assert!(
        failed(&report).contains(&"ovsdb-server".to_string()),
        "{report:#}"
    );
    let advice = check(&report, "ovsdb-server")["advice"].as_str().unwrap();
    assert!(advice.contains("openvswitch-switch"), "{advice}");
    bed.start_ovsdb(1);
    wait_until(30, "doctor to pass with OVS back", || bed.doctor(1).0);

    // etcd unreachable.
    bed.stop_etcd();
    let (ok, report) = bed.doctor(1);
    assert!(!ok);
    assert_eq!(failed(&report), ["etcd"], "{report:#}");
    let etcd = check(&report, "etcd");
    assert!(
        etcd["detail"]
            .as_str()
            .unwrap()
            .contains("cannot reach etcd at"),
        "{etcd:#}"
    );
    assert!(etcd["advice"].as_str().unwrap().contains("store.endpoints"));
    bed.start_etcd();
    wait_until(30, "doctor to pass with etcd back", || bed.doctor(1).0);
}
