//! Adapter tests against a private OVS: an ovsdb-server and an ovs-vswitchd (userspace
//! datapath, in a network namespace of the test's own) with their own run and db directory,
//! started and stopped by the test by PID. Skipped visibly when not root or OVS is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qingluan_dataplane::openflow::{Flow, FlowProgrammer, OfctlFlows};
use qingluan_dataplane::ovsdb::{BridgeSpec, Ovs, OvsEvent, OvsOp, OvsdbError, OvsdbOvs, PortSpec};
use serde_json::json;

/// A private OVS; dropping it stops exactly its daemons and removes its namespace.
struct PrivateOvs {
    dir: tempfile::TempDir,
    ns: String,
}

fn sh(cmd: &str, env: &Path) -> std::process::Output {
    Command::new("sh")
        .args(["-c", cmd])
        .env("OVS_RUNDIR", env)
        .env("OVS_DBDIR", env)
        .env("OVS_LOGDIR", env)
        .output()
        .unwrap()
}

fn must(cmd: &str, env: &Path) {
    let o = sh(cmd, env);
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl PrivateOvs {
    fn start(tag: &str) -> Option<PrivateOvs> {
        if !nix::unistd::geteuid().is_root()
            || Command::new("ovs-vswitchd")
                .arg("--version")
                .output()
                .is_err()
        {
            println!("SKIP: {tag}: needs root and the openvswitch-switch package");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("qlt-ovs")
            .tempdir()
            .unwrap();
        let ns = format!("qlt-ovs{}{tag}", std::process::id() % 10000);
        must(
            &format!("ip netns add {ns} && ip -n {ns} link set lo up"),
            dir.path(),
        );
        let ovs = PrivateOvs { dir, ns };
        let d = ovs.dir.path();
        ovs.start_db();
        must(
            &format!(
                "ovs-vsctl --db=unix:{0}/db.sock --no-wait init",
                d.display()
            ),
            d,
        );
        must(
            &format!(
                "ip netns exec {ns} ovs-vswitchd unix:{0}/db.sock --pidfile={0}/ovs-vswitchd.pid --log-file={0}/vswitchd.log -vconsole:off --no-chdir --detach",
                d.display(),
                ns = ovs.ns
            ),
            d,
        );
        Some(ovs)
    }

    fn start_db(&self) {
        let d = self.dir.path();
        if !d.join("conf.db").exists() {
            must(
                &format!(
                    "ovsdb-tool create {0}/conf.db /usr/share/openvswitch/vswitch.ovsschema",
                    d.display()
                ),
                d,
            );
        }
        must(
            &format!(
                "ovsdb-server {0}/conf.db --remote=punix:{0}/db.sock --pidfile={0}/ovsdb-server.pid --log-file={0}/ovsdb.log -vconsole:off --no-chdir --detach",
                d.display()
            ),
            d,
        );
    }

    fn kill(&self, daemon: &str) {
        let pidfile = self.dir.path().join(format!("{daemon}.pid"));
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let pid = pid.trim().to_string();
            let _ = Command::new("kill").arg(&pid).status();
            let end = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn target(&self) -> String {
        format!("unix:{}/db.sock", self.dir.path().display())
    }

    fn rundir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn in_ns(&self, cmd: &str) {
        must(
            &format!("ip netns exec {} sh -c '{cmd}'", self.ns),
            self.dir.path(),
        );
    }
}

impl Drop for PrivateOvs {
    fn drop(&mut self) {
        self.kill("ovs-vswitchd");
        self.kill("ovsdb-server");
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

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
        external_ids: ids(&[("qingluan-owner", "qltest")]),
        other_config: BTreeMap::new(),
        protocols: vec![
            "OpenFlow10".into(),
            "OpenFlow13".into(),
            "OpenFlow14".into(),
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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_ports_and_errors() {
    let Some(ovs) = PrivateOvs::start("a") else {
        return;
    };
    let client = OvsdbOvs::connect(&ovs.target());
    let sys = wait_system(&client).await;
    assert!(
        sys.datapath_types.contains(&"netdev".to_string()),
        "{sys:?}"
    );

    let err = client
        .client()
        .transact(
            "Open_vSwitch",
            vec![json!({"op": "insert", "table": "Bridge", "row": {"name": 5}})],
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("ovsdb transaction failed at operation 0:"),
        "{err}"
    );

    ovs.in_ns("ip link add name qltp1 type veth peer name qltp1b && ip link set dev qltp1 up && ip link set dev qltp1b up");
    client
        .apply(&[
            OvsOp::AddBridge(bridge("qltbr0")),
            OvsOp::AddPort(port("qltbr0", "qltp1", "")),
            OvsOp::AddPort(port("qltbr0", "qltin1", "internal")),
        ])
        .await
        .unwrap();
    let snap = client.snapshot().await.unwrap();
    let b = snap
        .iter()
        .find(|b| b.spec.name == "qltbr0")
        .expect("bridge");
    assert_eq!(b.spec.external_ids["qingluan-owner"], "qltest");
    assert_eq!(b.spec.fail_mode.as_deref(), Some("secure"));
    assert_eq!(b.ports.len(), 2, "own LOCAL port excluded: {:?}", b.ports);
    let p = b.ports.iter().find(|p| p.spec.name == "qltp1").unwrap();
    assert_eq!(p.spec.external_ids["qingluan-endpoint"], "qltp1");
    assert!(
        p.ofport.unwrap_or(-1) > 0,
        "apply waited for ovs-vswitchd: {p:?}"
    );

    let mut tagged = port("qltbr0", "qltp1", "");
    tagged.tag = Some(10);
    client.apply(&[OvsOp::UpdatePort(tagged)]).await.unwrap();
    let snap = client.snapshot().await.unwrap();
    let p = snap[0]
        .ports
        .iter()
        .find(|p| p.spec.name == "qltp1")
        .unwrap();
    assert_eq!(p.spec.tag, Some(10));

    client
        .apply(&[OvsOp::DeletePort {
            bridge: "qltbr0".into(),
            name: "qltp1".into(),
        }])
        .await
        .unwrap();
    assert_eq!(client.snapshot().await.unwrap()[0].ports.len(), 1);
    client
        .apply(&[OvsOp::DeleteBridge("qltbr0".into())])
        .await
        .unwrap();
    assert!(client.snapshot().await.unwrap().is_empty());
    let e = client
        .apply(&[OvsOp::AddPort(port("nosuch", "x", ""))])
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "bridge nosuch not found");
}

async fn wait_system(client: &OvsdbOvs) -> qingluan_dataplane::ovsdb::SystemInfo {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match client.system().await {
            Ok(s) if !s.datapath_types.is_empty() => return s,
            _ if Instant::now() > end => panic!("private ovs never answered"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_fails_fast_while_down() {
    let Some(ovs) = PrivateOvs::start("b") else {
        return;
    };
    let client = OvsdbOvs::connect(&ovs.target());
    wait_system(&client).await;
    let mut events = client.events();
    ovs.kill("ovsdb-server");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let e = client.snapshot().await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "failed only after {:?}",
        t.elapsed()
    );
    assert!(matches!(e, OvsdbError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("ovsdb unreachable at {}", ovs.target())),
        "{e}"
    );
    ovs.start_db();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(OvsEvent::Reconnected) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no Reconnected event");
    client.snapshot().await.unwrap();
    let mon = client
        .client()
        .monitor(
            "Open_vSwitch",
            "qlt",
            json!({"Bridge": [{"columns": ["name"]}]}),
        )
        .await
        .unwrap();
    assert!(mon.is_object(), "{mon}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_flows_is_atomic_and_idempotent() {
    let Some(ovs) = PrivateOvs::start("c") else {
        return;
    };
    let client = OvsdbOvs::connect(&ovs.target());
    wait_system(&client).await;
    client
        .apply(&[OvsOp::AddBridge(bridge("qltbr1"))])
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
    let flows = vec![
        f(0, 0, 0x0100_0000_0000_0001, "", "drop"),
        f(
            0,
            200,
            0x0100_0000_0000_0001,
            "in_port=LOCAL",
            "goto_table:10",
        ),
        f(10, 0, 0x0100_0000_0000_0001, "", "NORMAL"),
    ];
    of.replace_flows("qltbr1", &flows).await.unwrap();
    assert_eq!(
        of.flow_count("qltbr1", 0x0100_0000_0000_0001, u64::MAX)
            .await
            .unwrap(),
        3
    );
    let before = of.dump_flows("qltbr1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    of.replace_flows("qltbr1", &flows).await.unwrap();
    let full = Command::new("ovs-ofctl")
        .args([
            "-O",
            "OpenFlow15",
            "dump-flows",
            &format!("unix:{}/qltbr1.mgmt", ovs.rundir().display()),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&full.stdout);
    assert!(
        !text.contains("duration=0."),
        "an identical replace must not re-add flows: {text}"
    );
    assert_eq!(of.dump_flows("qltbr1").await.unwrap(), before);
    let mut changed = flows.clone();
    changed[2].actions = "drop".into();
    changed.push(f(
        0,
        100,
        0x0200_0000_0000_0002,
        "in_port=1",
        "goto_table:10",
    ));
    of.replace_flows("qltbr1", &changed).await.unwrap();
    assert_eq!(
        of.flow_count("qltbr1", 0x0200_0000_0000_0002, u64::MAX)
            .await
            .unwrap(),
        1
    );
    assert_eq!(of.flow_count("qltbr1", 0, 0).await.unwrap(), 4);
    let e = of
        .replace_flows("qltbr1", &[f(0, 1, 0, "nonsense_field=1", "drop")])
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("ovs-ofctl replace-flows on qltbr1 failed:"),
        "{e}"
    );
    assert_eq!(
        of.flow_count("qltbr1", 0, 0).await.unwrap(),
        4,
        "a failed bundle changes nothing"
    );
}
