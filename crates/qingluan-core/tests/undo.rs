//! Every mutating driver call is validate → persist → apply → undo: when the store, OVSDB,
//! the flows or netfilter refuse (once), the call fails and leaves the records and the whole
//! fake dataplane exactly as they were; the same call then succeeds. A new endpoint's pass
//! runs between its CreateEndpoint and its Join, so the two are one call here: the Join
//! fails with the pass and undoes the endpoint. DeleteEndpoint is the exception on the
//! dataplane's side: it answers once its record is deleted, and a refused pass leaves the
//! endpoint's dataplane to the next pass.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use qingluan_core::ipam::Ipam;
use qingluan_core::options::RawPort;
use qingluan_core::reconcile::{Adapters, Reconciler};
use qingluan_core::service::{CreateEndpoint, CreateNetwork, Driver, IpamData, Stores};
use qingluan_core::settings::Settings;
use qingluan_dataplane::netfilter::FakeFirewall;
use qingluan_dataplane::netlink::{FakeLinks, Links};
use qingluan_dataplane::openflow::FakeFlows;
use qingluan_dataplane::ovsdb::{FakeOvs, Ovs};
use qingluan_store::memory::MemoryStore;
use qingluan_store::{Compare, KeyValue, Op, Store, StoreError, TxnResult, WatchEvent};

/// A memory store whose next writes can be refused, after letting `spared` through.
#[derive(Default)]
struct FlakyStore {
    inner: MemoryStore,
    failures: Mutex<usize>,
    spared: Mutex<usize>,
}

#[async_trait]
impl Store for FlakyStore {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        {
            let mut f = self.failures.lock().unwrap();
            let mut spared = self.spared.lock().unwrap();
            if *f > 0 && !ops.is_empty() {
                if *spared > 0 {
                    *spared -= 1;
                } else {
                    *f -= 1;
                    return Err(StoreError::Io {
                        op: "commit",
                        reason: "refused by the test".into(),
                    });
                }
            }
        }
        self.inner.txn(compares, ops).await
    }
    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<WatchEvent>, StoreError> {
        self.inner.watch(prefix).await
    }
    async fn grant(&self, ttl: i64) -> Result<i64, StoreError> {
        self.inner.grant(ttl).await
    }
    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.inner.keep_alive(lease).await
    }
}

/// A driver on fakes, with a nat network and one joined endpoint publishing no port.
struct Host {
    driver: Driver,
    ipam: Arc<Ipam>,
    store: Arc<FlakyStore>,
    ovs: Arc<FakeOvs>,
    flows: Arc<FakeFlows>,
    links: Arc<FakeLinks>,
    firewall: Arc<FakeFirewall>,
    pool: String,
}

const NET: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const EP: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const EP2: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";

fn no_routes() -> Vec<ipnet::IpNet> {
    Vec::new()
}

async fn host() -> Host {
    let settings = Settings::default();
    let store = Arc::new(FlakyStore::default());
    let ipam = Arc::new(
        Ipam::with_routes(store.clone(), &settings.ipam, no_routes)
            .await
            .unwrap(),
    );
    let (ovs, flows) = (Arc::new(FakeOvs::default()), Arc::new(FakeFlows::default()));
    let (links, firewall) = (
        Arc::new(FakeLinks::default()),
        Arc::new(FakeFirewall::default()),
    );
    let adapters = Adapters {
        ovs: ovs.clone(),
        flows: flows.clone(),
        links: links.clone(),
        firewall: firewall.clone(),
    };
    let driver = Driver::new(
        settings,
        Stores {
            local: store.clone(),
            cluster: store.clone(),
            host: "local".into(),
        },
        ipam.clone(),
        Reconciler::new(adapters, "qingluan", "ql"),
    );
    let subnet = ipam
        .request_pool(
            "",
            "",
            &BTreeMap::from([("pool".into(), "nat".into())]),
            false,
        )
        .await
        .unwrap();
    let gw = ipam.request_address(&subnet.id, "", true).await.unwrap();
    let h = Host {
        driver,
        ipam,
        store,
        ovs,
        flows,
        links,
        firewall,
        pool: subnet.id.clone(),
    };
    h.driver
        .networks
        .create(network(NET, &subnet.cidr.to_string(), &gw.to_string()))
        .await
        .unwrap();
    let addr = h.ipam.request_address(&h.pool, "", false).await.unwrap();
    h.driver
        .endpoints
        .create(endpoint(EP, &addr))
        .await
        .unwrap();
    h.driver
        .endpoints
        .join(NET, EP, "/var/run/docker/netns/x", &[])
        .await
        .unwrap();
    h
}

fn network(id: &str, pool: &str, gateway: &str) -> CreateNetwork {
    CreateNetwork {
        id: id.into(),
        generic: BTreeMap::from([("model".into(), "nat".into())]),
        v4: vec![IpamData {
            pool: pool.into(),
            gateway: gateway.into(),
        }],
        ..Default::default()
    }
}

fn endpoint(id: &str, addr: &ipnet::IpNet) -> CreateEndpoint {
    CreateEndpoint {
        network_id: NET.into(),
        endpoint_id: id.into(),
        address: addr.to_string(),
        ..Default::default()
    }
}

fn web() -> Vec<RawPort> {
    vec![RawPort {
        proto: 6,
        host_ip: String::new(),
        host_port: 1080,
        host_port_end: 1080,
        port: 80,
    }]
}

/// The records and the whole fake dataplane, as text. The fakes keep flows of a bridge
/// and the link of an internal port after the bridge is gone (or was never created), where
/// OVS would drop them with it: only those of bridges that exist count. OpenFlow port
/// numbers are OVS's to choose and left out: an undo restores the configuration, and a
/// port deleted and added again gets a new number.
async fn state(h: &Host) -> String {
    let records: Vec<(String, String)> = h
        .store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
        .collect();
    let bridges = h.ovs.snapshot().await.unwrap();
    let exists = |name: &str| bridges.iter().any(|b| b.spec.name == name);
    let links: Vec<String> = h
        .links
        .links_with_prefix("ql")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .filter(|n| !n.starts_with("qlb") || exists(n))
        .collect();
    let flows: BTreeMap<String, Vec<String>> = h
        .flows
        .tables
        .lock()
        .unwrap()
        .iter()
        .filter(|(b, _)| exists(b))
        .map(|(b, f)| (b.clone(), f.iter().map(|f| f.render()).collect()))
        .collect();
    let ovs: Vec<_> = bridges
        .iter()
        .map(|b| (&b.spec, b.ports.iter().map(|p| &p.spec).collect::<Vec<_>>()))
        .collect();
    format!(
        "{records:#?}\n{ovs:#?}\n{flows:#?}\n{links:?}\n{:#?}",
        h.firewall.current()
    )
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Store,
    Ovs,
    Flows,
    Netfilter,
}

#[derive(Clone, Copy, Debug)]
enum Call {
    CreateNetwork,
    DeleteNetwork,
    CreateEndpoint,
    DeleteEndpoint,
    Program,
    Revoke,
}

/// What `call` needs beyond the fixture, asked of IPAM as Docker would before the call.
enum Prepared {
    Nothing,
    Network(CreateNetwork),
    Endpoint(CreateEndpoint),
}

async fn prepare(h: &Host, call: Call) -> Prepared {
    let nat = BTreeMap::from([("pool".to_string(), "nat".to_string())]);
    match call {
        Call::CreateNetwork => {
            let s = h.ipam.request_pool("", "", &nat, false).await.unwrap();
            let gw = h.ipam.request_address(&s.id, "", true).await.unwrap();
            let id = "d4".repeat(32);
            Prepared::Network(network(&id, &s.cidr.to_string(), &gw.to_string()))
        }
        Call::CreateEndpoint => {
            let addr = h.ipam.request_address(&h.pool, "", false).await.unwrap();
            Prepared::Endpoint(endpoint(EP2, &addr))
        }
        Call::Revoke => {
            h.driver.publishing.program(NET, EP, &web()).await.unwrap();
            Prepared::Nothing
        }
        _ => Prepared::Nothing,
    }
}

/// Runs `call` on `h` with what [`prepare`] gave.
async fn run(h: &Host, call: Call, p: &Prepared) -> Result<(), String> {
    let d = &h.driver;
    let r = match (call, p) {
        (Call::CreateNetwork, Prepared::Network(req)) => d.networks.create(req.clone()).await,
        (Call::DeleteNetwork, _) => d.networks.delete(NET).await,
        (Call::CreateEndpoint, Prepared::Endpoint(req)) => {
            match d.endpoints.create(req.clone()).await {
                Ok(_) => d
                    .endpoints
                    .join(NET, EP2, "/var/run/docker/netns/y", &[])
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        }
        (Call::DeleteEndpoint, _) => d.endpoints.delete(NET, EP).await,
        (Call::Program, _) => d.publishing.program(NET, EP, &web()).await,
        (Call::Revoke, _) => d.publishing.revoke(EP).await,
        _ => unreachable!("prepare gives each call what it needs"),
    };
    r.map_err(|e| e.to_string())
}

/// Makes `fault` refuse once what `call` asks of it.
fn inject(h: &Host, fault: Fault) {
    match fault {
        Fault::Store => *h.store.failures.lock().unwrap() = 1,
        Fault::Ovs => h.ovs.fail_next(1),
        Fault::Flows => h.flows.fail_next(1),
        Fault::Netfilter => h.firewall.fail_next(1),
    }
}

#[tokio::test]
async fn every_refused_call_changes_nothing_and_then_succeeds() {
    // Each call with the faults that must make it fail: the parts of the dataplane it
    // changes. Other faults may leave it untouched, and then it simply succeeds.
    let must_fail: [(Call, &[Fault]); 6] = [
        (
            Call::CreateNetwork,
            &[Fault::Store, Fault::Ovs, Fault::Flows, Fault::Netfilter],
        ),
        (
            Call::DeleteNetwork,
            &[Fault::Store, Fault::Ovs, Fault::Netfilter],
        ),
        (
            Call::CreateEndpoint,
            &[Fault::Store, Fault::Ovs, Fault::Flows, Fault::Netfilter],
        ),
        (Call::DeleteEndpoint, &[Fault::Store]),
        (Call::Program, &[Fault::Store, Fault::Netfilter]),
        (Call::Revoke, &[Fault::Store, Fault::Netfilter]),
    ];
    for (call, faults) in must_fail {
        for fault in [Fault::Store, Fault::Ovs, Fault::Flows, Fault::Netfilter] {
            let h = host().await;
            let p = prepare(&h, call).await;
            let before = state(&h).await;
            inject(&h, fault);
            match run(&h, call, &p).await {
                Err(e) => {
                    assert!(e.contains("refused by the test"), "{call:?}/{fault:?}: {e}");
                    let after = state(&h).await;
                    assert!(
                        before == after,
                        "{call:?} refused by {fault:?} changed something:\n--- before\n{before}\n--- after\n{after}"
                    );
                    run(&h, call, &p)
                        .await
                        .unwrap_or_else(|e| panic!("{call:?} after {fault:?}: {e}"));
                }
                Ok(()) => assert!(
                    !faults
                        .iter()
                        .any(|f| std::mem::discriminant(f) == std::mem::discriminant(&fault)),
                    "{call:?} succeeded although {fault:?} refused"
                ),
            }
        }
    }
}

/// A DeleteEndpoint whose pass OVSDB, the flows or netfilter refuse still answers, and the
/// next pass leaves the dataplane as a deletion without faults does.
#[tokio::test]
async fn a_deleted_endpoint_goes_with_the_next_pass_when_its_own_fails() {
    let clean = host().await;
    clean.driver.endpoints.delete(NET, EP).await.unwrap();
    settle(&clean).await;
    let expected = state(&clean).await;
    for fault in [Fault::Ovs, Fault::Flows, Fault::Netfilter] {
        let h = host().await;
        inject(&h, fault);
        h.driver.endpoints.delete(NET, EP).await.unwrap();
        settle(&h).await;
        let after = state(&h).await;
        assert!(
            expected == after,
            "{fault:?}: the deletion did not converge:\n--- expected\n{expected}\n--- after\n{after}"
        );
    }
}

/// Runs passes until one succeeds (the deletion's own pass may or may not have met the
/// injected fault yet); a fault is injected once, so the second pass at the latest succeeds.
async fn settle(h: &Host) {
    if h.driver.collector.sync(false).await.is_err() {
        h.driver.collector.sync(false).await.unwrap();
    }
}

/// A cluster network's CreateEndpoint writes the record first, then the binding and the
/// cluster entry in one transaction; when that is refused, the record goes again and the
/// call fails having changed nothing, and succeeds when tried again.
#[tokio::test]
async fn a_refused_cluster_binding_takes_the_record_back() {
    let h = host().await;
    const VX: &str = "d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4";
    let vx = BTreeMap::from([("pool".into(), "vxlan".into()), ("vni".into(), "77".into())]);
    let subnet = h.ipam.request_pool("", "", &vx, false).await.unwrap();
    let gw = h.ipam.request_address(&subnet.id, "", true).await.unwrap();
    let mut net = network(VX, &subnet.cidr.to_string(), &gw.to_string());
    net.generic = BTreeMap::from([
        ("model".into(), "vxlan".into()),
        ("vni".into(), "77".into()),
    ]);
    h.driver.networks.create(net).await.unwrap();
    let addr = h.ipam.request_address(&subnet.id, "", false).await.unwrap();
    let req = CreateEndpoint {
        network_id: VX.into(),
        ..endpoint(EP2, &addr)
    };
    let before = state(&h).await;
    *h.store.spared.lock().unwrap() = 1;
    *h.store.failures.lock().unwrap() = 1;
    let e = h.driver.endpoints.create(req.clone()).await.unwrap_err();
    assert!(e.to_string().contains("refused by the test"), "{e}");
    let after = state(&h).await;
    assert!(
        before == after,
        "a refused binding changed something:\n--- before\n{before}\n--- after\n{after}"
    );
    h.driver.endpoints.create(req).await.unwrap();
    let entries = h.store.list("cluster/").await.unwrap();
    assert!(
        entries.iter().any(|kv| kv.key.contains(EP2)),
        "the entry is written with the binding: {entries:?}"
    );
}

/// A host network's endpoint's cluster entry (the cluster agent publishes one for
/// `endpoint ls --all`) goes right after its DeleteEndpoint answered.
#[tokio::test]
async fn a_deleted_host_endpoint_takes_its_cluster_entry_along() {
    let h = host().await;
    let key = qingluan_core::cluster::endpoint_key("local", EP);
    h.store
        .txn(vec![], vec![Op::Put(key.clone(), b"{}".to_vec())])
        .await
        .unwrap();
    h.driver.endpoints.delete(NET, EP).await.unwrap();
    // Only a guard against hanging: the entry goes in a task started by the deletion.
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while h.store.get(&key).await.unwrap().is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the entry goes");
}
