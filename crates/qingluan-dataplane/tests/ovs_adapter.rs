//! The OVSDB client, the OVS adapter and the OpenFlow runner against a real, private OVS per
//! test (see `common/ovs.rs`): ovsdb-server and ovs-vswitchd (userspace datapath, in a
//! network namespace of the test's own), started and stopped by PID. Skipped visibly
//! (`SKIP: ...`) when not root or OVS is missing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::ovs::PrivateOvs;
use qingluan_dataplane::openflow::{
    Action, Field, Flow, FlowProgrammer, Meter, NativeFlows, Port, FINGERPRINT_BITS,
};
use qingluan_dataplane::ovsdb::{
    BridgeSpec, Collector, FlowExport, MonitorUpdate, Ovs, OvsEvent, OvsOp, OvsdbClient,
    OvsdbError, OvsdbOvs, PortQos, PortSpec, QueueSpec, UpdateFormat,
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
            "OpenFlow14".into(),
            "OpenFlow15".into(),
        ],
        flow_export: FlowExport::default(),
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
        qos: None,
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

/// Reads come from the monitor-fed replica once it is current: every apply is visible to
/// the very next snapshot (ports with their OpenFlow numbers), an outside change arrives
/// by itself, and nothing is read twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_read_their_own_writes_from_the_replica() {
    let Some(ovs) = PrivateOvs::start("snapshots_read_their_own_writes_from_the_replica") else {
        return;
    };
    let a = adapter(&ovs).await;
    a.apply(&[OvsOp::AddBridge(bridge("qltbr4"))])
        .await
        .unwrap();
    for i in 0..20 {
        let name = format!("qltr{i}");
        a.apply(&[OvsOp::AddPort(port("qltbr4", &name, "internal"))])
            .await
            .unwrap();
        let snap = a.snapshot().await.unwrap();
        let p = snap[0]
            .ports
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("{name} missing right after apply: {snap:?}"));
        assert!(p.ofport.unwrap_or(-1) > 0, "{p:?}");
        if i % 2 == 1 {
            a.apply(&[OvsOp::DeletePort {
                bridge: "qltbr4".into(),
                name: name.clone(),
            }])
            .await
            .unwrap();
            let snap = a.snapshot().await.unwrap();
            assert!(snap[0].ports.iter().all(|p| p.spec.name != name));
        }
    }
    assert_eq!(a.snapshot().await.unwrap()[0].ports.len(), 10);
    ovs.vsctl(&["del-br", "qltbr4"]);
    let end = Instant::now() + Duration::from_secs(5);
    while !a.snapshot().await.unwrap().is_empty() {
        assert!(
            Instant::now() < end,
            "an outside delete never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// sFlow and IPFIX rows: created with the bridge, read back, replaced on update, and gone
/// (garbage-collected by OVSDB) once the bridge lets go of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_export_round_trips_and_leaves_nothing() {
    let Some(ovs) = PrivateOvs::start("flow_export_round_trips_and_leaves_nothing") else {
        return;
    };
    let a = adapter(&ovs).await;
    let collector = |target: &str, sampling| {
        Some(Collector {
            target: target.into(),
            sampling,
        })
    };
    let mut b = bridge("qltbr7");
    b.flow_export = FlowExport {
        sflow: collector("127.0.0.1:6343", 64),
        ipfix: collector("127.0.0.1:4739", 32),
    };
    a.apply(&[OvsOp::AddBridge(b.clone())]).await.unwrap();
    assert_eq!(
        a.snapshot().await.unwrap()[0].spec.flow_export,
        b.flow_export
    );
    let rows = |table: &str| {
        ovs.vsctl(&["--bare", "--columns=targets,sampling", "list", table])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(rows("sFlow"), "127.0.0.1:6343 64");
    assert_eq!(rows("IPFIX"), "127.0.0.1:4739 32");

    b.flow_export.sflow = collector("127.0.0.1:16343", 1);
    b.flow_export.ipfix = None;
    a.apply(&[OvsOp::UpdateBridge(b.clone())]).await.unwrap();
    assert_eq!(
        a.snapshot().await.unwrap()[0].spec.flow_export,
        b.flow_export
    );
    assert_eq!(rows("sFlow"), "127.0.0.1:16343 1", "the old row is gone");
    assert_eq!(rows("IPFIX"), "");

    b.flow_export = FlowExport::default();
    a.apply(&[OvsOp::UpdateBridge(b)]).await.unwrap();
    assert_eq!(rows("sFlow"), "");
    assert_eq!(
        a.snapshot().await.unwrap()[0].spec.flow_export,
        FlowExport::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_qos_round_trips_and_leaves_nothing() {
    let Some(ovs) = PrivateOvs::start("port_qos_round_trips_and_leaves_nothing") else {
        return;
    };
    let a = adapter(&ovs).await;
    let shaped = |rate: u64, burst| PortQos {
        kind: Default::default(),
        max_rate: rate,
        queues: vec![QueueSpec {
            max_rate: rate,
            burst,
            ..Default::default()
        }],
    };
    let mut p = port("qltbr8", "qltq1", "internal");
    p.qos = Some(shaped(100_000_000, Some(800_000)));
    let plain = port("qltbr8", "qltq2", "internal");
    a.apply(&[
        OvsOp::AddBridge(bridge("qltbr8")),
        OvsOp::AddPort(p.clone()),
        OvsOp::AddPort(plain),
    ])
    .await
    .unwrap();
    let read = |snap: Vec<qingluan_dataplane::ovsdb::BridgeState>| {
        snap[0]
            .ports
            .iter()
            .map(|p| p.spec.qos.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(read(a.snapshot().await.unwrap()), vec![p.qos.clone(), None]);
    let count = |table: &str| {
        ovs.vsctl(&["--bare", "--columns=_uuid", "list", table])
            .split_whitespace()
            .count()
    };
    assert_eq!((count("QoS"), count("Queue")), (1, 1));
    let qdisc = || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ovs.netns(),
                "tc",
                "class",
                "show",
                "dev",
                "qltq1",
            ])
            .output()
            .expect("tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let end = Instant::now() + Duration::from_secs(5);
    while !qdisc().contains("ceil 100Mbit") {
        assert!(Instant::now() < end, "no htb class: {}", qdisc());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Unchanged: the rows stay; changed: replaced, the old ones deleted.
    let before = ovs.vsctl(&["--bare", "--columns=_uuid", "list", "QoS"]);
    let mut same = p.clone();
    same.external_ids.insert("x".into(), "1".into());
    a.apply(&[OvsOp::UpdatePort(same)]).await.unwrap();
    assert_eq!(
        ovs.vsctl(&["--bare", "--columns=_uuid", "list", "QoS"]),
        before
    );
    p.qos = Some(shaped(5_000_000, None));
    a.apply(&[OvsOp::UpdatePort(p.clone())]).await.unwrap();
    assert_eq!(read(a.snapshot().await.unwrap())[0], p.qos);
    assert_eq!((count("QoS"), count("Queue")), (1, 1));
    let end = Instant::now() + Duration::from_secs(5);
    while !qdisc().contains("ceil 5Mbit") {
        assert!(Instant::now() < end, "class not changed: {}", qdisc());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `linux-noop`: OVS leaves the qdisc to us.
    p.qos = Some(PortQos::noop());
    a.apply(&[OvsOp::UpdatePort(p.clone())]).await.unwrap();
    assert_eq!(read(a.snapshot().await.unwrap())[0], p.qos);
    assert_eq!((count("QoS"), count("Queue")), (1, 0));

    // Removed with the limit, the port, or the bridge.
    p.qos = None;
    a.apply(&[OvsOp::UpdatePort(p.clone())]).await.unwrap();
    assert_eq!((count("QoS"), count("Queue")), (0, 0));
    p.qos = Some(shaped(1_000_000, None));
    a.apply(&[OvsOp::UpdatePort(p.clone())]).await.unwrap();
    a.apply(&[OvsOp::DeletePort {
        bridge: "qltbr8".into(),
        name: "qltq1".into(),
    }])
    .await
    .unwrap();
    assert_eq!((count("QoS"), count("Queue")), (0, 0));
    a.apply(&[OvsOp::AddPort(p)]).await.unwrap();
    assert_eq!(count("QoS"), 1);
    a.apply(&[OvsOp::DeleteBridge("qltbr8".into())])
        .await
        .unwrap();
    assert_eq!((count("QoS"), count("Queue")), (0, 0));
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
        .monitor(
            DB,
            &[("Bridge", &["name", "external_ids"])],
            UpdateFormat::Update2,
        )
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
        .monitor(DB, &[("Bridge", &["name"])], UpdateFormat::Update2)
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

/// The bridge's flows as ovs-ofctl prints them without statistics, the adapter's
/// fingerprint bits cleared from each cookie.
fn table(ovs: &PrivateOvs, bridge: &str) -> BTreeSet<String> {
    ovs.ofctl("dump-flows", bridge, &["--no-stats", "--names"])
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cookie="))
        .map(|l| {
            let (cookie, rest) = l.split_once(',').unwrap();
            let c = u64::from_str_radix(cookie.trim_start_matches("cookie=0x"), 16).unwrap();
            format!("cookie={:#x},{rest}", c & !FINGERPRINT_BITS)
        })
        .collect()
}

/// Age of each flow by (table, priority, cookie).
async fn ages(of: &NativeFlows, bridge: &str) -> BTreeMap<(u8, u16, u64), Duration> {
    of.flow_stats(bridge, 0, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|f| ((f.table, f.priority, f.cookie), f.age))
        .collect()
}

fn flow(table: u8, priority: u16, cookie: u64, matches: Vec<Field>, actions: Vec<Action>) -> Flow {
    Flow {
        table,
        priority,
        cookie,
        matches,
        actions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_flows_is_exact_atomic_and_idempotent() {
    let Some(ovs) = PrivateOvs::start("replace_flows_is_exact_atomic_and_idempotent") else {
        return;
    };
    let a = adapter(&ovs).await;
    let mut old = bridge("qltbr2");
    old.protocols = vec!["OpenFlow10".into()];
    a.apply(&[
        OvsOp::AddBridge(bridge("qltbr1")),
        OvsOp::AddPort(port("qltbr1", "qltf1", "internal")),
        OvsOp::AddBridge(old),
    ])
    .await
    .unwrap();
    let of = NativeFlows::new(Some(ovs.rundir()));
    const BASE: u64 = 0x0100_0000_0000_0001;
    const EP: u64 = 0x0200_0000_0000_0007;
    let qltf1 = || Port::Named("qltf1".into());
    let flows = vec![
        flow(0, 0, BASE, vec![], vec![]),
        flow(
            0,
            200,
            BASE,
            vec![Field::InPort(Port::Local)],
            vec![Action::Goto(10)],
        ),
        flow(
            0,
            100,
            EP,
            vec![
                Field::InPort(qltf1()),
                Field::Ip,
                Field::IpSrc("10.1.0.2".parse().unwrap()),
            ],
            vec![Action::Goto(10)],
        ),
        flow(10, 0, BASE, vec![], vec![Action::Normal]),
    ];
    of.replace_flows("qltbr1", &flows).await.unwrap();
    assert_eq!(
        table(&ovs, "qltbr1"),
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
    let stats = of.flow_stats("qltbr1", EP, u64::MAX).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].table, stats[0].priority, stats[0].cookie),
        (0, 100, EP)
    );

    // The same set again changes nothing: no flow is re-added (ages keep growing).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(of.replace_flows("qltbr1", &flows).await.unwrap(), 0);
    let after = ages(&of, "qltbr1").await;
    assert_eq!(after.len(), 4);
    for (flow, age) in &after {
        assert!(
            *age >= Duration::from_secs(1),
            "identical replace re-added {flow:?}"
        );
    }

    // A changed set: only the differing flows are touched; a cookie-only change is applied.
    const BASE2: u64 = 0x0100_0000_0000_0002;
    let changed = vec![
        flow(0, 0, BASE, vec![], vec![]),
        flow(
            0,
            200,
            BASE2,
            vec![Field::InPort(Port::Local)],
            vec![Action::Goto(10)],
        ),
        flow(
            0,
            150,
            EP,
            vec![Field::InPort(qltf1()), Field::Arp],
            vec![Action::Goto(10)],
        ),
        flow(10, 0, BASE, vec![], vec![]),
    ];
    let touched = of.replace_flows("qltbr1", &changed).await.unwrap();
    let now = ages(&of, "qltbr1").await;
    assert_eq!(
        now.keys().map(|k| (k.0, k.1, k.2)).collect::<Vec<_>>(),
        [(0, 0, BASE), (0, 150, EP), (0, 200, BASE2), (10, 0, BASE)]
    );
    assert!(
        now[&(0, 0, BASE)] >= Duration::from_secs(1),
        "unchanged flow kept"
    );
    for k in [(0, 150, EP), (0, 200, BASE2), (10, 0, BASE)] {
        assert!(now[&k] < Duration::from_secs(1), "{k:?} replaced");
    }
    assert_eq!(touched, 6, "three flows deleted, three added");
    assert!(table(&ovs, "qltbr1")
        .contains("cookie=0x100000000000001, table=10, priority=0 actions=drop"));

    // Failures change nothing and say what the switch said, and about which flow.
    let before = table(&ovs, "qltbr1");
    let e = of
        .replace_flows(
            "qltbr1",
            &[
                flow(0, 5, 0, vec![], vec![]),
                flow(0, 6, 0, vec![], vec![Action::Meter(7)]),
            ],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("OFPMMFC_INVALID_METER"), "{e}");
    assert!(e.to_string().contains("meter:7"), "{e}");
    assert_eq!(table(&ovs, "qltbr1"), before, "bundle rolled back");
    let e = of
        .replace_flows(
            "qltbr1",
            &[flow(
                0,
                5,
                0,
                vec![Field::InPort(Port::Named("qltgone".into()))],
                vec![],
            )],
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "OpenFlow replace-flows on qltbr1: no port qltgone on the bridge"
    );
    assert_eq!(table(&ovs, "qltbr1"), before);
    let e = of.replace_flows("qltnobr", &flows).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cannot connect to {}/qltnobr.mgmt (OpenFlow of bridge qltnobr): No such file or directory (os error 2)",
            ovs.rundir().display()
        )
    );
    let e = of.replace_flows("qltbr2", &[]).await.unwrap_err();
    assert!(e.to_string().contains("does not allow OpenFlow 1.4"), "{e}");

    // Meters: added, changed in place, used by a flow, deleted.
    let meter = |rate_kbps| Meter {
        id: 7,
        rate_kbps,
        burst_kbits: 1000,
    };
    of.set_meter("qltbr1", meter(10_000)).await.unwrap();
    of.set_meter("qltbr1", meter(20_000)).await.unwrap();
    let meters = ovs.ofctl("dump-meters", "qltbr1", &[]);
    assert!(
        meters.contains("meter=7 kbps burst stats bands=\ntype=drop rate=20000 burst_size=1000"),
        "{meters}"
    );
    assert_eq!(of.meters("qltbr1").await.unwrap(), vec![meter(20_000)]);
    let metered = vec![
        flow(0, 6, 0, vec![], vec![Action::Meter(7), Action::Normal]),
        flow(
            0,
            7,
            0,
            vec![Field::Ip],
            vec![Action::Meter(7), Action::SetDscp(34), Action::Normal],
        ),
    ];
    of.replace_flows("qltbr1", &metered).await.unwrap();
    assert_eq!(
        table(&ovs, "qltbr1"),
        set(vec![
            "cookie=0x0, priority=6 actions=meter:7,NORMAL".into(),
            "cookie=0x0, priority=7,ip actions=meter:7,set_field:34->ip_dscp,NORMAL".into(),
        ])
    );
    of.delete_meter("qltbr1", 7).await.unwrap();
    of.delete_meter("qltbr1", 7).await.unwrap();
    assert!(!ovs.ofctl("dump-meters", "qltbr1", &[]).contains("meter=7"));

    // Port counters by name: what the switch received from qltf1 (its ARP requests).
    ovs.in_ns("ip link set qltf1 up && ip addr add 10.9.0.1/24 dev qltf1 && (ping -c2 -W1 10.9.0.2 >/dev/null 2>&1 || true)");
    let ports = of.port_stats("qltbr1").await.unwrap();
    let mut names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["qltbr1", "qltf1"]);
    let f1 = ports.iter().find(|p| p.name == "qltf1").unwrap();
    assert!(f1.packets.0 >= 2 && f1.bytes.0 >= 84, "{f1:?}");

    // ovs-vswitchd restarts: the open connection breaks, the next call reconnects.
    of.replace_flows("qltbr1", &flows).await.unwrap();
    ovs.stop("ovs-vswitchd");
    ovs.start_vswitchd();
    wait_for_port(&ovs, "qltbr1").await;
    assert_eq!(
        of.flow_count("qltbr1", 0, 0).await.unwrap(),
        0,
        "flows are lost"
    );
    of.replace_flows("qltbr1", &flows).await.unwrap();
    assert_eq!(of.flow_count("qltbr1", 0, 0).await.unwrap(), 4);

    of.replace_flows("qltbr1", &[]).await.unwrap();
    assert_eq!(of.flow_count("qltbr1", 0, 0).await.unwrap(), 0);
    assert!(of.flow_stats("qltbr1", 0, 0).await.unwrap().is_empty());
}

/// Waits until the restarted ovs-vswitchd has the bridge's management socket up.
async fn wait_for_port(ovs: &PrivateOvs, bridge: &str) {
    let sock = ovs.rundir().join(format!("{bridge}.mgmt"));
    let end = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < end, "{bridge}.mgmt never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn set(lines: Vec<String>) -> BTreeSet<String> {
    lines.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conntrack_and_masked_matches_reach_the_switch_as_written() {
    let Some(ovs) = PrivateOvs::start("conntrack_and_masked_matches_reach_the_switch_as_written")
    else {
        return;
    };
    let a = adapter(&ovs).await;
    a.apply(&[OvsOp::AddBridge(bridge("qltbr3"))])
        .await
        .unwrap();
    let of = NativeFlows::new(Some(ovs.rundir()));
    use qingluan_dataplane::openflow::ct;
    let net = |s: &str| s.parse().unwrap();
    let flows = vec![
        flow(
            0,
            10,
            0,
            vec![Field::Ip],
            vec![Action::Ct {
                commit: false,
                mark: None,
                zone: 7,
                table: Some(5),
            }],
        ),
        flow(
            5,
            3000,
            0,
            vec![Field::CtState(
                ct::TRK | ct::EST | ct::RPL,
                ct::TRK | ct::EST | ct::RPL,
            )],
            vec![Action::Goto(10)],
        ),
        flow(
            5,
            200,
            0,
            vec![
                Field::CtState(ct::TRK, ct::TRK | ct::RPL),
                Field::Ip,
                Field::IpSrcNet(net("10.1.0.0/24")),
                Field::IpDstNet(net("10.2.0.5/32")),
                Field::IpProto(6),
                Field::TcpDst(0x1000, 0xf000),
            ],
            vec![
                Action::Ct {
                    commit: true,
                    mark: Some(0x5eed),
                    zone: 7,
                    table: None,
                },
                Action::Goto(10),
            ],
        ),
        flow(
            5,
            3000,
            0,
            vec![
                Field::CtState(ct::TRK | ct::EST, ct::TRK | ct::EST | ct::RPL),
                Field::CtMark(0x5eed),
            ],
            vec![Action::Goto(10)],
        ),
        flow(
            5,
            201,
            0,
            vec![Field::Ip, Field::IpProto(17), Field::UdpDst(53, 0xffff)],
            vec![],
        ),
        flow(
            0,
            20,
            0,
            vec![Field::Reg1(0xa1a1), Field::Ip],
            vec![
                Action::LoadReg1(0xb2b2),
                Action::Ct {
                    commit: false,
                    mark: None,
                    zone: 7,
                    table: Some(5),
                },
            ],
        ),
        flow(
            0,
            30,
            0,
            vec![
                Field::Ipv6,
                Field::Ipv6SrcNet("fd48:a::/64".parse().unwrap()),
                Field::Ipv6DstNet("fe80::/10".parse().unwrap()),
            ],
            vec![],
        ),
        flow(
            0,
            31,
            0,
            vec![Field::Ipv6, Field::IpProto(58), Field::Icmpv6Type(135)],
            vec![Action::Goto(10)],
        ),
        flow(10, 0, 0, vec![], vec![Action::Normal]),
    ];
    of.replace_flows("qltbr3", &flows).await.unwrap();
    assert_eq!(
        table(&ovs, "qltbr3"),
        set(vec![
            "cookie=0x0, priority=10,ip actions=ct(table=5,zone=7)".into(),
            "cookie=0x0, table=5, priority=3000,ct_state=+est+rpl+trk actions=goto_table:10".into(),
            "cookie=0x0, table=5, priority=200,ct_state=-rpl+trk,tcp,nw_src=10.1.0.0/24,nw_dst=10.2.0.5,tp_dst=0x1000/0xf000 actions=ct(commit,zone=7,exec(set_field:0x5eed->ct_mark)),goto_table:10".into(),
            "cookie=0x0, table=5, priority=3000,ct_state=+est-rpl+trk,ct_mark=0x5eed actions=goto_table:10".into(),
            "cookie=0x0, table=5, priority=201,udp,tp_dst=53 actions=drop".into(),
            "cookie=0x0, table=10, priority=0 actions=NORMAL".into(),
            "cookie=0x0, priority=20,ip,reg1=0xa1a1 actions=set_field:0xb2b2->reg1,ct(table=5,zone=7)".into(),
            "cookie=0x0, priority=30,ipv6,ipv6_src=fd48:a::/64,ipv6_dst=fe80::/10 actions=drop".into(),
            "cookie=0x0, priority=31,icmp6,icmp_type=135 actions=goto_table:10".into(),
        ])
    );
    // The same flows again change nothing.
    of.replace_flows("qltbr3", &flows).await.unwrap();
    assert_eq!(of.flow_count("qltbr3", 0, 0).await.unwrap(), 9);
}
