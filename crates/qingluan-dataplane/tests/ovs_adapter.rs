//! The OVSDB client, the OVS adapter and the OpenFlow runner against a real, private OVS per
//! test (see `common/ovs.rs`): ovsdb-server and ovs-vswitchd (userspace datapath, in a
//! network namespace of the test's own), started and stopped by PID. Skipped visibly
//! (`SKIP: ...`) when not root or OVS is missing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::ovs::PrivateOvs;
use qingluan_dataplane::openflow::{Flow, FlowProgrammer, OfctlFlows};
use qingluan_dataplane::ovsdb::{
    BridgeSpec, MonitorUpdate, Ovs, OvsEvent, OvsOp, OvsdbClient, OvsdbError, OvsdbOvs, PortSpec,
    UpdateFormat,
};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

const DB: &str = "Open_vSwitch";

fn ids(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn bridge(name: &str) -> BridgeSpec {
    BridgeSpec {
        name: name.into(),
        datapath_type: "netdev".into(),
        fail_mode: Some("secure".into()),
        external_ids: ids(&[("qingluan-owner", "qltest"), ("qingluan-network", "n1")]),
        other_config: ids(&[("hwaddr", "02:00:00:00:00:01")]),
        protocols: vec![
            "OpenFlow10".into(),
            "OpenFlow13".into(),
            "OpenFlow15".into(),
        ],
    }
}

fn port(bridge: &str, name: &str, kind: &str) -> PortSpec {
    PortSpec {
        bridge: bridge.into(),
        name: name.into(),
        kind: kind.into(),
        tag: None,
        external_ids: ids(&[("qingluan-owner", "qltest"), ("qingluan-endpoint", name)]),
        mtu_request: None,
        options: BTreeMap::new(),
        mac: None,
    }
}

/// Connects the adapter and waits until the private OVS answers.
async fn adapter(ovs: &PrivateOvs) -> OvsdbOvs {
    let a = OvsdbOvs::connect(&ovs.target());
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match a.system().await {
            Ok(s) if s.datapath_types.contains(&"netdev".to_string()) => return a,
            r => assert!(Instant::now() < end, "private ovs never answered: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next event that satisfies `want`, within 10 s.
async fn event(rx: &mut broadcast::Receiver<OvsEvent>, want: OvsEvent) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while rx.recv().await.expect("event channel") != want {}
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} event within 10 s"));
}

/// The next monitor message, within 10 s.
async fn update(rx: &mut mpsc::UnboundedReceiver<MonitorUpdate>) -> MonitorUpdate {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no monitor update within 10 s")
        .expect("monitor closed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transact_results_and_error_texts() {
    let Some(ovs) = PrivateOvs::start("transact_results_and_error_texts") else {
        return;
    };
    let c = OvsdbClient::connect(&ovs.target());
    let r = c
        .transact(
            DB,
            vec![
                json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["_uuid"]}),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r[0]["rows"].as_array().unwrap().len(), 1, "{r:?}");

    let e = c
        .transact(
            DB,
            vec![
                json!({"op": "comment", "comment": "qltest"}),
                json!({"op": "insert", "table": "Bridge", "row": {"name": 5}}),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ovsdb transaction failed at operation 1 (insert into Bridge): syntax error: expected string"
    );

    let e = c
        .transact(
            DB,
            vec![json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                "mutations": [["bridges", "insert", ["set", [["uuid", "00000000-0000-0000-0000-000000000001"]]]]]})],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, OvsdbError::Commit { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("ovsdb transaction not committed: referential integrity violation: "),
        "{e}"
    );

    let e = c.transact("Nope", vec![]).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("ovsdb transact failed: unknown database"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_and_ports_round_trip() {
    let Some(ovs) = PrivateOvs::start("bridges_and_ports_round_trip") else {
        return;
    };
    let a = adapter(&ovs).await;
    ovs.in_ns("ip link add qltv1 type veth peer name qltv1p && ip link set qltv1 up && ip link set qltv1p up");
    let br = bridge("qltbr0");
    let veth = port("qltbr0", "qltv1", "");
    let mut internal = port("qltbr0", "qltin1", "internal");
    internal.mtu_request = Some(1400);
    internal.options = ids(&[]);
    internal.mac = Some("02:42:0a:33:00:01".into());
    a.apply(&[
        OvsOp::AddBridge(br.clone()),
        OvsOp::AddPort(veth.clone()),
        OvsOp::AddPort(internal.clone()),
    ])
    .await
    .unwrap();

    let snap = a.snapshot().await.unwrap();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].spec, br, "every column reads back");
    let specs: Vec<&PortSpec> = snap[0].ports.iter().map(|p| &p.spec).collect();
    assert_eq!(specs, [&internal, &veth], "sorted, LOCAL port excluded");
    for p in &snap[0].ports {
        assert!(
            p.ofport.unwrap_or(-1) > 0,
            "apply waited for ovs-vswitchd: {p:?}"
        );
    }
    assert_eq!(
        ovs.vsctl(&[
            "get",
            "Interface",
            "qltv1",
            "external_ids:qingluan-endpoint"
        ]),
        "qltv1",
        "external_ids on the Interface row too"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "qltbr0", "type"]),
        "internal"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "qltin1", "mac_in_use"]),
        "\"02:42:0a:33:00:01\"",
        "the internal port has the MAC asked for"
    );

    let mut tagged = veth.clone();
    tagged.tag = Some(10);
    tagged.external_ids.insert("extra".into(), "1".into());
    let mut standalone = br.clone();
    standalone.fail_mode = Some("standalone".into());
    a.apply(&[
        OvsOp::UpdatePort(tagged.clone()),
        OvsOp::UpdateBridge(standalone.clone()),
    ])
    .await
    .unwrap();
    let snap = a.snapshot().await.unwrap();
    assert_eq!(snap[0].spec, standalone);
    assert_eq!(snap[0].ports[1].spec, tagged);
    assert_eq!(ovs.vsctl(&["get", "Port", "qltv1", "tag"]), "10");
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "qltv1", "external_ids:extra"]),
        "\"1\""
    );

    let errors = [
        (
            vec![OvsOp::AddPort(port("nosuch", "qltx", ""))],
            "bridge nosuch not found",
        ),
        (
            vec![OvsOp::AddBridge(bridge("qltbr0"))],
            "bridge qltbr0 already exists",
        ),
        (
            vec![OvsOp::UpdatePort(port("qltbr0", "nope", ""))],
            "port nope not found on bridge qltbr0",
        ),
        (
            vec![
                OvsOp::AddPort(port("qltbr0", "qltin2", "internal")),
                OvsOp::AddPort(port("qltbr0", "qltv1", "")),
            ],
            "port qltv1 already exists on bridge qltbr0",
        ),
    ];
    for (ops, text) in errors {
        assert_eq!(a.apply(&ops).await.unwrap_err().to_string(), text);
    }
    assert_eq!(
        a.snapshot().await.unwrap()[0].ports.len(),
        2,
        "a refused apply changes nothing"
    );

    let mut retyped = port("qltbr0", "qltin1", "internal");
    retyped.tag = Some(5);
    a.apply(&[
        OvsOp::DeletePort {
            bridge: "qltbr0".into(),
            name: "qltin1".into(),
        },
        OvsOp::AddPort(retyped.clone()),
        OvsOp::DeletePort {
            bridge: "qltbr0".into(),
            name: "qltv1".into(),
        },
        OvsOp::DeletePort {
            bridge: "qltbr0".into(),
            name: "gone".into(),
        },
    ])
    .await
    .unwrap();
    let snap = a.snapshot().await.unwrap();
    let specs: Vec<&PortSpec> = snap[0].ports.iter().map(|p| &p.spec).collect();
    assert_eq!(specs, [&retyped]);
    assert_eq!(
        ovs.vsctl(&["--columns=name", "find", "Interface", "name=qltv1"]),
        "",
        "the deleted port's interface is garbage collected"
    );

    a.apply(&[]).await.unwrap();
    a.apply(&[
        OvsOp::DeleteBridge("qltbr0".into()),
        OvsOp::DeleteBridge("qltbr0".into()),
    ])
    .await
    .unwrap();
    assert!(a.snapshot().await.unwrap().is_empty());
    assert_eq!(ovs.vsctl(&["--columns=name", "list", "Port"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_delivers_updates_and_changed_events() {
    let Some(ovs) = PrivateOvs::start("monitor_delivers_updates_and_changed_events") else {
        return;
    };
    let a = adapter(&ovs).await;
    let mut events = a.events();
    let mut rx = a
        .client()
        .monitor(DB, &[("Bridge", &["name", "external_ids"])])
        .await
        .unwrap();
    let first = update(&mut rx).await;
    assert!(first.initial);
    assert_eq!(
        first.format,
        UpdateFormat::Update2,
        "OVS 3.1 has monitor_cond"
    );
    assert_eq!(first.tables, json!({}), "no bridges yet");

    a.apply(&[OvsOp::AddBridge(bridge("qltbr2"))])
        .await
        .unwrap();
    let next = update(&mut rx).await;
    assert!(!next.initial);
    let rows = next.tables["Bridge"].as_object().unwrap();
    let row = rows.values().next().unwrap();
    assert_eq!(row["insert"]["name"], "qltbr2", "{next:?}");
    event(&mut events, OvsEvent::Changed).await;

    ovs.vsctl(&["set", "Bridge", "qltbr2", "external_ids:someone=else"]);
    let next = update(&mut rx).await;
    let row = next.tables["Bridge"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert!(row["modify"]["external_ids"].is_array(), "{next:?}");
    event(&mut events, OvsEvent::Changed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_an_ovsdb_restart_and_fails_fast_while_down() {
    let Some(ovs) = PrivateOvs::start("survives_an_ovsdb_restart_and_fails_fast_while_down") else {
        return;
    };
    let a = adapter(&ovs).await;
    a.apply(&[OvsOp::AddBridge(bridge("qltbr3"))])
        .await
        .unwrap();
    let mut events = a.events();
    let mut rx = a
        .client()
        .monitor(DB, &[("Bridge", &["name"])])
        .await
        .unwrap();
    assert!(update(&mut rx).await.initial);

    ovs.stop("ovsdb-server");
    event(&mut events, OvsEvent::Disconnected).await;
    let t = Instant::now();
    let e = a.snapshot().await.unwrap_err();
    let e2 = a
        .apply(&[OvsOp::AddPort(port("qltbr3", "qltp3", "internal"))])
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "failed only after {:?}",
        t.elapsed()
    );
    let target = ovs.target();
    for e in [&e, &e2] {
        let text = e.to_string();
        assert!(
            text == format!("ovsdb unreachable at {target}: no such file or directory")
                || text == format!("ovsdb unreachable at {target}: connection refused"),
            "{text}"
        );
    }

    ovs.start_ovsdb();
    event(&mut events, OvsEvent::Reconnected).await;
    let again = update(&mut rx).await;
    assert!(again.initial, "the monitor is re-issued: {again:?}");
    assert_eq!(
        again.tables["Bridge"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()["initial"]["name"],
        "qltbr3"
    );
    let snap = a.snapshot().await.unwrap();
    assert_eq!(snap[0].spec.name, "qltbr3");
    // ovs-vswitchd reconnects by itself; apply still waits for it.
    a.apply(&[OvsOp::AddPort(port("qltbr3", "qltp3", "internal"))])
        .await
        .unwrap();
    let snap = a.snapshot().await.unwrap();
    assert!(snap[0].ports[0].ofport.unwrap_or(-1) > 0, "{snap:?}");
    event(&mut events, OvsEvent::Changed).await;
}

/// Durations by flow (the line without its statistics).
fn durations(dump: &str) -> BTreeMap<String, f64> {
    dump.lines()
        .filter(|l| l.contains("duration="))
        .map(|l| {
            let fields: Vec<&str> = l.trim().split(", ").collect();
            let duration = fields
                .iter()
                .find_map(|f| f.strip_prefix("duration="))
                .and_then(|d| d.trim_end_matches('s').parse().ok())
                .unwrap();
            let key = fields
                .iter()
                .filter(|f| {
                    !["duration=", "n_packets=", "n_bytes=", "idle_age="]
                        .iter()
                        .any(|p| f.starts_with(p))
                })
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            (key, duration)
        })
        .collect()
}

fn set(lines: Vec<String>) -> BTreeSet<String> {
    lines.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_flows_is_exact_atomic_and_idempotent() {
    let Some(ovs) = PrivateOvs::start("replace_flows_is_exact_atomic_and_idempotent") else {
        return;
    };
    let a = adapter(&ovs).await;
    a.apply(&[
        OvsOp::AddBridge(bridge("qltbr1")),
        OvsOp::AddPort(port("qltbr1", "qltf1", "internal")),
    ])
    .await
    .unwrap();
    let of = OfctlFlows {
        rundir: Some(ovs.rundir()),
    };
    let f = |table, priority, cookie, matches: &str, actions: &str| Flow {
        table,
        priority,
        cookie,
        matches: matches.into(),
        actions: actions.into(),
    };
    const BASE: u64 = 0x0100_0000_0000_0001;
    const EP: u64 = 0x0200_0000_0000_0007;
    let flows = vec![
        f(0, 0, BASE, "", "drop"),
        f(0, 200, BASE, "in_port=LOCAL", "goto_table:10"),
        f(
            0,
            100,
            EP,
            "in_port=qltf1,dl_type=0x0800,nw_src=10.1.0.2",
            "goto_table:10",
        ),
        f(10, 0, BASE, "", "NORMAL"),
    ];
    of.replace_flows("qltbr1", &flows).await.unwrap();
    assert_eq!(
        set(of.dump_flows("qltbr1").await.unwrap()),
        set(vec![
            "cookie=0x100000000000001, priority=0 actions=drop".into(),
            "cookie=0x100000000000001, priority=200,in_port=LOCAL actions=goto_table:10".into(),
            "cookie=0x200000000000007, priority=100,ip,in_port=qltf1,nw_src=10.1.0.2 actions=goto_table:10".into(),
            "cookie=0x100000000000001, table=10, priority=0 actions=NORMAL".into(),
        ])
    );
    assert_eq!(of.flow_count("qltbr1", BASE, u64::MAX).await.unwrap(), 3);
    assert_eq!(
        of.flow_count("qltbr1", EP, 0xff00_0000_0000_0000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(of.flow_count("qltbr1", 0, 0).await.unwrap(), 4);

    // The same set again changes nothing: no flow is re-added (durations keep growing).
    let before = durations(&ovs.ofctl("dump-flows", "qltbr1", &[]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    of.replace_flows("qltbr1", &flows).await.unwrap();
    let after = durations(&ovs.ofctl("dump-flows", "qltbr1", &[]));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (flow, d) in &after {
        assert!(*d >= 1.0, "identical replace re-added {flow} ({d} s)");
    }

    // A changed set: only the differing flows are touched; a cookie-only change is applied.
    const BASE2: u64 = 0x0100_0000_0000_0002;
    let changed = vec![
        f(0, 0, BASE, "", "drop"),
        f(0, 200, BASE2, "in_port=LOCAL", "goto_table:10"),
        f(0, 150, EP, "in_port=qltf1,arp", "goto_table:10"),
        f(10, 0, BASE, "", "drop"),
    ];
    of.replace_flows("qltbr1", &changed).await.unwrap();
    let now = ovs.ofctl("dump-flows", "qltbr1", &[]);
    let d = durations(&now);
    assert_eq!(d.len(), 4, "{now}");
    let age = |needle: &str| {
        d.iter()
            .find(|(k, _)| k.contains(needle))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no flow with {needle} in {now}"))
    };
    assert!(
        age("priority=0 actions=drop") >= 1.0,
        "unchanged flow kept: {now}"
    );
    assert!(
        age("cookie=0x100000000000002") < 1.0,
        "cookie change applied: {now}"
    );
    assert!(age("table=10, priority=0 actions=drop") < 1.0, "{now}");
    assert!(age("priority=150") < 1.0, "{now}");
    assert_eq!(of.flow_count("qltbr1", BASE2, u64::MAX).await.unwrap(), 1);
    assert_eq!(of.flow_count("qltbr1", 0, 0).await.unwrap(), 4);

    // Failures change nothing and carry ovs-ofctl's words.
    let table = of.dump_flows("qltbr1").await.unwrap();
    let e = of
        .replace_flows("qltbr1", &[f(0, 1, 0, "nonsense_field=1", "drop")])
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ovs-ofctl replace-flows on qltbr1 failed: ovs-ofctl: -:1: unknown keyword nonsense_field"
    );
    let e = of
        .replace_flows(
            "qltbr1",
            &[f(0, 5, 0, "", "drop"), f(0, 6, 0, "", "meter:7")],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("OFPMMFC_INVALID_METER"), "{e}");
    assert_eq!(
        of.dump_flows("qltbr1").await.unwrap(),
        table,
        "bundle rolled back"
    );
    let e = of.replace_flows("qltnobr", &flows).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "ovs-ofctl replace-flows on qltnobr failed: ovs-ofctl: connecting to unix:{}/qltnobr.mgmt (No such file or directory)",
            ovs.rundir().display()
        )
    );

    of.replace_flows("qltbr1", &[]).await.unwrap();
    assert_eq!(of.flow_count("qltbr1", 0, 0).await.unwrap(), 0);
    assert!(of.dump_flows("qltbr1").await.unwrap().is_empty());
}
