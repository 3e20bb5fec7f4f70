//! The libnetwork protocol as Docker speaks it (pitfalls checklist, protocol doc §11), on the
//! real routes over the domain with recording fakes: no Content-Type, empty bodies, 500 +
//! `Err` on both interfaces, EndpointOperInfo, never echoing the CreateEndpoint interface,
//! the RequestPool overlap loop, Join without entering the namespace, MTU set by us,
//! `--internal` and publishing enforced by us, 404 for unknown methods.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use qingluan_core::ipam::Ipam;
use qingluan_core::model::Endpoint;
use qingluan_core::reconcile::{Adapters, Reconciler};
use qingluan_core::service::{Driver, Stores};
use qingluan_core::settings::Settings;
use qingluan_dataplane::netfilter::FakeFirewall;
use qingluan_dataplane::netlink::{FakeLinks, Links};
use qingluan_dataplane::openflow::FakeFlows;
use qingluan_dataplane::ovsdb::{FakeOvs, Ovs};
use qingluan_plugin::{router, CallStats, Interface, Plugin};
use qingluan_store::memory::MemoryStore;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Harness {
    plugin: Plugin,
    links: Arc<FakeLinks>,
    flows: Arc<FakeFlows>,
    ovs: Arc<FakeOvs>,
    firewall: Arc<FakeFirewall>,
    store: Arc<MemoryStore>,
}

async fn harness() -> Harness {
    let store = Arc::new(MemoryStore::new());
    over(
        store,
        Arc::default(),
        Arc::default(),
        Arc::default(),
        Arc::default(),
    )
    .await
}

/// A daemon over `store` and the fake system.
async fn over(
    store: Arc<MemoryStore>,
    links: Arc<FakeLinks>,
    flows: Arc<FakeFlows>,
    ovs: Arc<FakeOvs>,
    firewall: Arc<FakeFirewall>,
) -> Harness {
    let settings = Settings::default();
    fn no_routes() -> Vec<ipnet::IpNet> {
        Vec::new()
    }
    let ipam = Arc::new(
        Ipam::with_routes(store.clone(), &settings.ipam, no_routes)
            .await
            .unwrap(),
    );
    let adapters = Adapters {
        ovs: ovs.clone(),
        flows: flows.clone(),
        links: links.clone(),
        firewall: firewall.clone(),
    };
    let reconciler = Reconciler::new(adapters, "qingluan", "ql");
    let stores = Stores {
        local: store.clone(),
        cluster: store.clone(),
        host: "local".into(),
    };
    let driver = Arc::new(Driver::new(settings, stores, ipam.clone(), reconciler));
    Harness {
        plugin: Plugin {
            driver,
            ipam,
            on_activate: Arc::new(|| {}),
            stats: Arc::new(CallStats::default()),
        },
        links,
        flows,
        ovs,
        firewall,
        store,
    }
}

impl Harness {
    /// A daemon over this one's store and system: a restart of it.
    async fn restarted(&self) -> Harness {
        over(
            self.store.clone(),
            self.links.clone(),
            self.flows.clone(),
            self.ovs.clone(),
            self.firewall.clone(),
        )
        .await
    }
}

/// Posts like dockerd does: no Content-Type, `Accept` only, body as given.
async fn post(h: &Harness, iface: Interface, path: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header("Accept", "application/vnd.docker.plugins.v1.2+json")
        .header("Host", "")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router(h.plugin.clone(), iface).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!bytes.is_empty(), "{path}: every reply carries a JSON body");
    (status, serde_json::from_slice(&bytes).unwrap())
}

const NET: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const EP: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";

async fn create_nat(h: &Harness, extra: Value, internal: bool) -> String {
    let (s, pool) = post(h, Interface::Ipam, "/IpamDriver.RequestPool", r#"{"AddressSpace":"qingluan-local","Pool":"","SubPool":"","Options":{"pool":"nat"},"V6":false}"#).await;
    assert_eq!(s, StatusCode::OK, "{pool}");
    let id = pool["PoolID"].as_str().unwrap().to_string();
    let (s, gw) = post(h, Interface::Ipam, "/IpamDriver.RequestAddress", &json!({"PoolID": id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}).to_string()).await;
    assert_eq!(s, StatusCode::OK);
    let mut generic = json!({"model": "nat"});
    for (k, v) in extra.as_object().unwrap() {
        generic[k] = v.clone();
    }
    let mut opts =
        json!({"com.docker.network.generic": generic, "com.docker.network.enable_ipv6": false});
    if internal {
        opts["com.docker.network.internal"] = json!(true);
    }
    let body = json!({"NetworkID": NET, "Options": opts, "IPv4Data": [{"AddressSpace": "qingluan-local", "Pool": pool["Pool"], "Gateway": gw["Address"]}], "IPv6Data": []});
    let (s, r) = post(
        h,
        Interface::Network,
        "/NetworkDriver.CreateNetwork",
        &body.to_string(),
    )
    .await;
    assert_eq!((s, &r), (StatusCode::OK, &json!({})));
    id
}

#[tokio::test]
async fn activation_and_capabilities_with_empty_bodies() {
    let h = harness().await;
    let (s, r) = post(&h, Interface::Network, "/Plugin.Activate", "").await;
    assert_eq!(
        (s, r),
        (StatusCode::OK, json!({"Implements": ["NetworkDriver"]}))
    );
    let (_, r) = post(&h, Interface::Ipam, "/Plugin.Activate", "").await;
    assert_eq!(r, json!({"Implements": ["IpamDriver"]}));
    let (_, r) = post(&h, Interface::Network, "/NetworkDriver.GetCapabilities", "").await;
    assert_eq!(r["Scope"], "local");
    let (_, r) = post(&h, Interface::Ipam, "/IpamDriver.GetCapabilities", "").await;
    assert_eq!(r["RequiresRequestReplay"], false);
    let (_, r) = post(
        &h,
        Interface::Ipam,
        "/IpamDriver.GetDefaultAddressSpaces",
        "",
    )
    .await;
    assert_eq!(r["LocalDefaultAddressSpace"], "qingluan-local");
    let (s, _) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.AllocateNetwork",
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn errors_are_500_with_err_on_both_interfaces() {
    let h = harness().await;
    let (s, r) = post(
        &h,
        Interface::Ipam,
        "/IpamDriver.RequestPool",
        r#"{"Pool":"","Options":{"pool":"nope"}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r["Err"],
        "unknown pool \"nope\" (pools: nat, nonat, flat, vlan, vxlan)"
    );
    let body = json!({"NetworkID": NET, "Options": {"com.docker.network.generic": {"model": "bogus"}}, "IPv4Data": [{"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}]});
    let (s, r) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.CreateNetwork",
        &body.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r["Err"].as_str().unwrap().starts_with("unknown model"));
    let (s, r) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.CreateNetwork",
        "{not json",
    )
    .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r["Err"]
        .as_str()
        .unwrap()
        .starts_with("malformed request body"));
}

#[tokio::test]
async fn request_pool_never_returns_the_same_automatic_pool() {
    let h = harness().await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let (s, r) = post(
            &h,
            Interface::Ipam,
            "/IpamDriver.RequestPool",
            r#"{"Pool":"","SubPool":"","Options":{},"V6":false}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            seen.insert(r["Pool"].as_str().unwrap().to_string()),
            "pool handed out twice: {r}"
        );
    }
    let (s, r) = post(
        &h,
        Interface::Ipam,
        "/IpamDriver.ReleasePool",
        r#"{"PoolID":"unknown"}"#,
    )
    .await;
    assert_eq!((s, r), (StatusCode::OK, json!({})));
}

#[tokio::test]
async fn endpoint_lifecycle_as_docker_drives_it() {
    let h = harness().await;
    let pool = create_nat(&h, json!({"mtu": "1400"}), false).await;
    let (_, addr) = post(
        &h,
        Interface::Ipam,
        "/IpamDriver.RequestAddress",
        &json!({"PoolID": pool, "Address": "", "Options": null}).to_string(),
    )
    .await;
    let ep = json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": addr["Address"], "AddressIPv6": "", "MacAddress": ""},
        "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}});
    let (s, r) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.CreateEndpoint",
        &ep.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r,
        json!({"Interface": {"MacAddress": "02:42:0a:f0:00:02"}}),
        "only the MAC Docker left empty"
    );
    let (s, r) = join(&h, EP, "/var/run/docker/netns/does-not-exist-yet").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let veth = h
        .links
        .link("qlcb2b2b2b2b2b")
        .await
        .unwrap()
        .expect("peer veth created in the host namespace by Join's answer");
    assert_eq!(veth.mtu, 1400, "we set the MTU, Docker does not");
    assert_eq!(
        r["InterfaceName"],
        json!({"SrcName": "qlcb2b2b2b2b2b", "DstPrefix": "eth"})
    );
    assert_eq!(r["Gateway"], "10.240.0.1");
    assert!(
        has_port(&h, "qlvb2b2b2b2b2b").await,
        "Join answers once the endpoint's pass added its port"
    );
    let ids = json!({"NetworkID": NET, "EndpointID": EP}).to_string();
    let (s, r) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.EndpointOperInfo",
        &ids,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["Value"]["ip"], "10.240.0.2/24");
    let program = json!({"NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 1080, "HostPortEnd": 1080}]}});
    let (s, _) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.ProgramExternalConnectivity",
        &program.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for m in ["RevokeExternalConnectivity", "Leave", "DeleteEndpoint"] {
        let (s, r) = post(&h, Interface::Network, &format!("/NetworkDriver.{m}"), &ids).await;
        assert_eq!((s, r), (StatusCode::OK, json!({})), "{m}");
        if m == "Leave" {
            let left: Endpoint = qingluan_core::records::get(&*h.store, EP)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (left.sandbox, left.left.as_deref()),
                (None, Some("/var/run/docker/netns/does-not-exist-yet")),
                "the sandbox left is recorded: a restarted daemon's next deletion still waits for it"
            );
        }
    }
    // DeleteEndpoint answers once the record is gone; the veth goes with the pass after it.
    h.plugin.driver.collector.sync(false).await.unwrap();
    assert!(
        h.links.link("qlvb2b2b2b2b2b").await.unwrap().is_none(),
        "veth removed"
    );
}

/// CreateEndpoint answers while ovs-vswitchd has not taken the new port yet, and Join only
/// once it has and the veth pair exists: dockerd holds the network's lock around
/// CreateEndpoint, and the container runs only after its Joins.
#[tokio::test]
async fn create_endpoint_answers_before_ovs_vswitchd_and_join_after() {
    let h = harness().await;
    create_nat(&h, json!({}), false).await;
    let busy = h.ovs.hold().await;
    let created = create_endpoint(&h, EP, "10.240.0.2/24");
    let (s, r) = tokio::time::timeout(std::time::Duration::from_secs(10), created)
        .await
        .expect("CreateEndpoint does not wait for ovs-vswitchd");
    assert_eq!(s, StatusCode::OK, "{r}");
    let joined = join(&h, EP, "/var/run/docker/netns/x");
    tokio::pin!(joined);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), &mut joined)
            .await
            .is_err(),
        "Join answered while ovs-vswitchd had not taken the port"
    );
    drop(busy);
    let (s, r) = joined.await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(
        h.links.link("qlcb2b2b2b2b2b").await.unwrap().is_some(),
        "the peer Docker moves after Join exists"
    );
}

/// A Join whose endpoint an earlier run of the daemon created, whose pass failed there,
/// gets a pass of its own before it answers.
#[tokio::test]
async fn a_join_after_a_restart_runs_the_pass_itself() {
    let h = harness().await;
    create_nat(&h, json!({}), false).await;
    h.ovs.fail_next(1);
    let (s, r) = create_endpoint(&h, EP, "10.240.0.2/24").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while h.ovs.failures_left() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the endpoint's pass ran");
    let reconciler = h.plugin.driver.state.reconciler();
    drop(reconciler.begin().await.unwrap());
    reconciler.settled().await;
    assert!(
        !has_port(&h, "qlvb2b2b2b2b2b").await,
        "the first run's pass was refused"
    );
    let again = h.restarted().await;
    let (s, r) = join(&again, EP, "/var/run/docker/netns/x").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(
        has_port(&again, "qlvb2b2b2b2b2b").await,
        "Join answered before the endpoint's port was added"
    );
}

/// Joins endpoint `id` of `NET` to `sandbox`, as dockerd does.
async fn join(h: &Harness, id: &str, sandbox: &str) -> (StatusCode, Value) {
    let body = json!({"NetworkID": NET, "EndpointID": id, "SandboxKey": sandbox, "Options": {}});
    post(
        h,
        Interface::Network,
        "/NetworkDriver.Join",
        &body.to_string(),
    )
    .await
}

/// Whether OVS has a port named `name`.
async fn has_port(h: &Harness, name: &str) -> bool {
    h.ovs
        .snapshot()
        .await
        .unwrap()
        .iter()
        .flat_map(|b| &b.ports)
        .any(|p| p.spec.name == name)
}

/// Creates endpoint `id` on `NET` at `addr`, as dockerd does (no MAC).
async fn create_endpoint(h: &Harness, id: &str, addr: &str) -> (StatusCode, Value) {
    let ep = json!({"NetworkID": NET, "EndpointID": id, "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}, "Options": {}});
    post(
        h,
        Interface::Network,
        "/NetworkDriver.CreateEndpoint",
        &ep.to_string(),
    )
    .await
}

/// Creates endpoint `id` on `NET` at `addr` and joins it.
async fn create_and_join(h: &Harness, id: &str, addr: &str) {
    let (s, r) = create_endpoint(h, id, addr).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, r) = join(h, id, "/var/run/docker/netns/x").await;
    assert_eq!(s, StatusCode::OK, "{r}");
}

#[tokio::test]
async fn a_dead_containers_port_leaves_the_flows_of_the_others() {
    let h = harness().await;
    create_nat(&h, json!({}), false).await;
    create_and_join(&h, EP, "10.240.0.2/24").await;
    // The container died with its namespace, and no DeleteEndpoint came (dockerd killed):
    // its host veth is gone, so OVS could give its port no OpenFlow number.
    h.links.delete_link("qlvb2b2b2b2b2b").await.unwrap();
    let other = "c3".repeat(32);
    create_and_join(&h, &other, "10.240.0.3/24").await;
    let tables = h.flows.tables.lock().unwrap().clone();
    let flows: Vec<String> = tables.values().flatten().map(|f| f.render()).collect();
    assert!(
        flows.iter().any(|f| f.contains("in_port=qlvc3c3c3c3c3c")),
        "{flows:#?}"
    );
    assert!(
        !flows.iter().any(|f| f.contains("qlvb2b2b2b2b2b")),
        "no flow names the dead container's port: {flows:#?}"
    );
}

#[tokio::test]
async fn a_user_mac_is_never_echoed() {
    let h = harness().await;
    create_nat(&h, json!({}), false).await;
    let ep = json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.240.0.9/24", "AddressIPv6": "", "MacAddress": "02:42:11:22:33:44"}, "Options": {}});
    let (s, r) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.CreateEndpoint",
        &ep.to_string(),
    )
    .await;
    assert_eq!((s, r), (StatusCode::OK, json!({})));
}

#[tokio::test]
async fn internal_networks_get_no_gateway_and_no_publishing() {
    let h = harness().await;
    create_nat(&h, json!({}), true).await;
    let ep = json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.240.0.9/24", "MacAddress": ""}});
    post(
        &h,
        Interface::Network,
        "/NetworkDriver.CreateEndpoint",
        &ep.to_string(),
    )
    .await;
    let join = json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x", "Options": {"com.docker.network.portmap": []}});
    let (_, r) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.Join",
        &join.to_string(),
    )
    .await;
    assert!(r.get("Gateway").is_none(), "{r}");
    assert_eq!(r["DisableGatewayService"], true);
    let join = json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x", "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8080, "HostIP": ""}]}});
    let (s, r) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.Join",
        &join.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r["Err"],
        "port publishing (-p) is not supported on internal networks: they have no route out"
    );
}

#[tokio::test]
async fn endpoints_docker_forgot_are_collected() {
    let h = harness().await;
    let pool = create_nat(&h, json!({}), false).await;
    let (_, addr) = post(
        &h,
        Interface::Ipam,
        "/IpamDriver.RequestAddress",
        &json!({"PoolID": pool, "Address": "", "Options": null}).to_string(),
    )
    .await;
    let ep = json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": addr["Address"], "MacAddress": ""}});
    post(
        &h,
        Interface::Network,
        "/NetworkDriver.CreateEndpoint",
        &ep.to_string(),
    )
    .await;
    let d = &h.plugin.driver;
    let listed = std::collections::BTreeMap::from([(
        NET.to_string(),
        std::collections::BTreeSet::from([EP.to_string()]),
    )]);
    assert!(
        d.collector.endpoints(&listed, 0).await.unwrap().is_empty(),
        "a listed endpoint stays"
    );
    let young = std::collections::BTreeMap::from([(NET.to_string(), Default::default())]);
    assert!(
        d.collector
            .endpoints(&young, 3600)
            .await
            .unwrap()
            .is_empty(),
        "a young endpoint stays"
    );
    assert!(
        d.collector
            .endpoints(&Default::default(), 0)
            .await
            .unwrap()
            .is_empty(),
        "networks docker does not list are left alone"
    );
    assert_eq!(
        d.collector.endpoints(&young, 0).await.unwrap(),
        vec![EP.to_string()]
    );
    assert!(d.state.endpoints().await.unwrap().is_empty());
    let (_, again) = post(
        &h,
        Interface::Ipam,
        "/IpamDriver.RequestAddress",
        &json!({"PoolID": pool, "Address": "", "Options": null}).to_string(),
    )
    .await;
    assert_eq!(
        again["Address"], addr["Address"],
        "its address was released"
    );
}

/// Every route of both interfaces.
const ROUTES: [(Interface, &str); 18] = [
    (Interface::Network, "NetworkDriver.GetCapabilities"),
    (Interface::Network, "NetworkDriver.CreateNetwork"),
    (Interface::Network, "NetworkDriver.DeleteNetwork"),
    (Interface::Network, "NetworkDriver.CreateEndpoint"),
    (Interface::Network, "NetworkDriver.EndpointOperInfo"),
    (Interface::Network, "NetworkDriver.DeleteEndpoint"),
    (Interface::Network, "NetworkDriver.Join"),
    (Interface::Network, "NetworkDriver.Leave"),
    (
        Interface::Network,
        "NetworkDriver.ProgramExternalConnectivity",
    ),
    (
        Interface::Network,
        "NetworkDriver.RevokeExternalConnectivity",
    ),
    (Interface::Network, "NetworkDriver.DiscoverNew"),
    (Interface::Ipam, "IpamDriver.GetCapabilities"),
    (Interface::Ipam, "IpamDriver.GetDefaultAddressSpaces"),
    (Interface::Ipam, "IpamDriver.RequestPool"),
    (Interface::Ipam, "IpamDriver.ReleasePool"),
    (Interface::Ipam, "IpamDriver.RequestAddress"),
    (Interface::Ipam, "IpamDriver.ReleaseAddress"),
    (Interface::Network, "Plugin.Activate"),
];

/// A field name of the protocol, or any short string.
fn wire_key() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        Just("NetworkID".to_string()),
        Just("EndpointID".to_string()),
        Just("Options".to_string()),
        Just("IPv4Data".to_string()),
        Just("IPv6Data".to_string()),
        Just("Interface".to_string()),
        Just("Address".to_string()),
        Just("SandboxKey".to_string()),
        Just("Pool".to_string()),
        Just("PoolID".to_string()),
        Just("Gateway".to_string()),
        Just("com.docker.network.generic".to_string()),
        Just("com.docker.network.portmap".to_string()),
        Just("HostPort".to_string()),
        ".{0,12}".prop_map(String::from),
    ]
}

/// Arbitrary JSON leaning towards the protocol's values: valid and invalid IDs, CIDRs,
/// numbers of every sign, unicode, nesting.
fn wire_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| json!(f)),
        2 => Just(json!(NET)),
        2 => Just(json!(EP)),
        1 => Just(json!("10.240.0.0/24")),
        1 => Just(json!("10.240.0.1/24")),
        1 => Just(json!("::/0")),
        1 => Just(json!("../../../../proc/1/ns/net")),
        6 => ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(wire_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An ID field's value: ours, any hex, any text, or any JSON.
fn wire_id() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    prop_oneof![
        2 => Just(json!(NET)),
        2 => Just(json!(EP)),
        1 => "[0-9a-f]{64}".prop_map(Value::from),
        4 => ".{0,70}".prop_map(Value::from),
        1 => wire_json(),
    ]
}

/// A request body: mostly the two IDs and other protocol fields, sometimes anything.
fn wire_body() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let fields = (
        wire_id(),
        wire_id(),
        prop::collection::btree_map(wire_key(), wire_json(), 0..5),
    )
        .prop_map(|(n, e, rest)| {
            let mut m: serde_json::Map<String, Value> = rest.into_iter().collect();
            m.insert("NetworkID".into(), n);
            m.insert("EndpointID".into(), e);
            Value::Object(m).to_string()
        });
    prop_oneof![
        6 => fields,
        1 => wire_json().prop_map(|v| v.to_string()),
        1 => ".{0,64}".prop_map(String::from),
    ]
}

async fn store_dump(h: &Harness) -> Vec<(String, Vec<u8>)> {
    use qingluan_store::Store;
    h.store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

#[test]
fn arbitrary_requests_never_panic_and_refusals_change_nothing() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(async {
        let h = harness().await;
        create_nat(&h, json!({}), false).await;
        create_and_join(&h, EP, "10.240.0.2/24").await;
        h
    });
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        rng_seed: RngSeed::Fixed(0x71_6e67_6c75_616e),
        failure_persistence: None,
        ..Config::default()
    });
    let routes = (0..ROUTES.len()).prop_map(|i| ROUTES[i]);
    runner
        .run(&(routes, wire_body()), |((iface, method), body)| {
            rt.block_on(async {
                let before = store_dump(&h).await;
                let (s, r) = post(&h, iface, &format!("/{method}"), &body).await;
                assert!(r.is_object(), "{method} {body}: {r}");
                if s == StatusCode::INTERNAL_SERVER_ERROR {
                    let err = r["Err"].as_str().unwrap_or_default();
                    assert!(!err.is_empty(), "{method} {body}: {r}");
                    assert!(
                        !err.starts_with("internal error"),
                        "{method} {body}: a defect: {r}"
                    );
                    assert!(
                        before == store_dump(&h).await,
                        "{method} {body}: refused with {err:?} but changed the store"
                    );
                } else {
                    assert_eq!(s, StatusCode::OK, "{method} {body}: {r}");
                }
            });
            Ok(())
        })
        .unwrap();
}

/// A crash right after CreateEndpoint was committed: Docker saw the call fail, released the
/// address and asks for another. The address stays with the endpoint we still have, so the
/// next container gets another one; once the endpoint is collected, the address is free.
#[tokio::test]
async fn an_address_is_never_handed_out_while_its_endpoint_exists() {
    let h = harness().await;
    let pool = create_nat(&h, json!({}), false).await;
    let request = json!({"PoolID": pool, "Address": "", "Options": null}).to_string();
    let (_, addr) = post(&h, Interface::Ipam, "/IpamDriver.RequestAddress", &request).await;
    let ep = json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": addr["Address"], "MacAddress": ""}});
    let (s, _) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.CreateEndpoint",
        &ep.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Docker's retry of the lost reply is refused, and it releases the address.
    let (s, _) = post(&h, Interface::Network, "/NetworkDriver.CreateEndpoint", "").await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let release = json!({"PoolID": pool, "Address": addr["Address"]}).to_string();
    let (s, _) = post(&h, Interface::Ipam, "/IpamDriver.ReleaseAddress", &release).await;
    assert_eq!(s, StatusCode::OK);
    let (_, next) = post(&h, Interface::Ipam, "/IpamDriver.RequestAddress", &request).await;
    assert_ne!(next["Address"], addr["Address"], "handed out twice");
    // A static request for it is refused too.
    let fixed = json!({"PoolID": pool, "Address": addr["Address"].as_str().unwrap().split('/').next(), "Options": null});
    let (s, r) = post(
        &h,
        Interface::Ipam,
        "/IpamDriver.RequestAddress",
        &fixed.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{r}");

    // The stale endpoint is collected and its address freed; the other one stays.
    let d = &h.plugin.driver;
    let known = std::collections::BTreeMap::from([(NET.to_string(), Default::default())]);
    assert_eq!(
        d.collector.endpoints(&known, 0).await.unwrap(),
        vec![EP.to_string()]
    );
    let (_, again) = post(&h, Interface::Ipam, "/IpamDriver.RequestAddress", &request).await;
    assert_eq!(
        again["Address"], addr["Address"],
        "freed once its endpoint went"
    );
    let (_, after) = post(&h, Interface::Ipam, "/IpamDriver.RequestAddress", &request).await;
    assert_ne!(
        after["Address"], next["Address"],
        "the other address stays taken"
    );
}

/// A pool Docker requested for a network whose creation failed, and which it could not
/// release either (a full disk), is released once older than the grace period, unless a
/// network (ours, or any with our IPAM driver) uses it.
#[tokio::test]
async fn subnets_no_network_uses_are_collected() {
    let h = harness().await;
    create_nat(&h, json!({}), false).await;
    let request_pool = || async {
        let (s, r) = post(
            &h,
            Interface::Ipam,
            "/IpamDriver.RequestPool",
            r#"{"Pool":"","Options":{"pool":"nat"},"V6":false}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        r["Pool"].as_str().unwrap().parse::<ipnet::IpNet>().unwrap()
    };
    let orphan = request_pool().await;
    let foreign = request_pool().await;
    let d = &h.plugin.driver;
    let docker = std::collections::BTreeSet::from([foreign]);
    assert!(
        d.collector.subnets(&docker, 3600).await.unwrap().is_empty(),
        "young subnets stay"
    );
    assert_eq!(d.collector.subnets(&docker, 0).await.unwrap(), vec![orphan]);
    let left: Vec<String> = h
        .plugin
        .ipam
        .subnets()
        .await
        .unwrap()
        .iter()
        .map(|s| s.cidr.to_string())
        .collect();
    assert_eq!(left.len(), 2, "the network's and docker's stay: {left:?}");
    assert!(left.contains(&foreign.to_string()), "{left:?}");
    assert!(!left.contains(&orphan.to_string()), "{left:?}");
}
