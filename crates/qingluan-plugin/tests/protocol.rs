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
use qingluan_core::reconcile::{Adapters, Reconciler};
use qingluan_core::service::{Driver, Stores};
use qingluan_core::settings::Settings;
use qingluan_dataplane::netfilter::FakeFirewall;
use qingluan_dataplane::netlink::{FakeLinks, Links};
use qingluan_dataplane::openflow::FakeFlows;
use qingluan_dataplane::ovsdb::FakeOvs;
use qingluan_plugin::{router, CallStats, Interface, Plugin};
use qingluan_store::memory::MemoryStore;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Harness {
    plugin: Plugin,
    links: Arc<FakeLinks>,
    flows: Arc<FakeFlows>,
}

async fn harness() -> Harness {
    let settings = Settings::default();
    let store = Arc::new(MemoryStore::new());
    fn no_routes() -> Vec<ipnet::IpNet> {
        Vec::new()
    }
    let ipam = Arc::new(
        Ipam::with_routes(store.clone(), &settings.ipam, no_routes)
            .await
            .unwrap(),
    );
    let links = Arc::new(FakeLinks::default());
    let flows = Arc::new(FakeFlows::default());
    let adapters = Adapters {
        ovs: Arc::new(FakeOvs::default()),
        flows: flows.clone(),
        links: links.clone(),
        firewall: Arc::new(FakeFirewall::default()),
    };
    let reconciler = Reconciler::new(adapters, "qingluan", "ql");
    let stores = Stores {
        local: store.clone(),
        cluster: store,
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
    let veth = h
        .links
        .link("qlcb2b2b2b2b2b")
        .await
        .unwrap()
        .expect("peer veth created in the host namespace");
    assert_eq!(veth.mtu, 1400, "we set the MTU, Docker does not");
    let join = json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/does-not-exist-yet", "Options": {}});
    let (s, r) = post(
        &h,
        Interface::Network,
        "/NetworkDriver.Join",
        &join.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r["InterfaceName"],
        json!({"SrcName": "qlcb2b2b2b2b2b", "DstPrefix": "eth"})
    );
    assert_eq!(r["Gateway"], "10.240.0.1");
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
    }
    assert!(
        h.links.link("qlvb2b2b2b2b2b").await.unwrap().is_none(),
        "veth removed"
    );
}

/// Creates endpoint `id` on `NET` at `addr` and joins it.
async fn create_and_join(h: &Harness, id: &str, addr: &str) {
    let ep = json!({"NetworkID": NET, "EndpointID": id, "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}, "Options": {}});
    let (s, r) = post(
        h,
        Interface::Network,
        "/NetworkDriver.CreateEndpoint",
        &ep.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let join = json!({"NetworkID": NET, "EndpointID": id, "SandboxKey": "/var/run/docker/netns/x", "Options": {}});
    let (s, r) = post(h, Interface::Network, "/NetworkDriver.Join", &join.to_string()).await;
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
        d.collect_garbage(&listed, 0).await.unwrap().is_empty(),
        "a listed endpoint stays"
    );
    let young = std::collections::BTreeMap::from([(NET.to_string(), Default::default())]);
    assert!(
        d.collect_garbage(&young, 3600).await.unwrap().is_empty(),
        "a young endpoint stays"
    );
    assert!(
        d.collect_garbage(&Default::default(), 0)
            .await
            .unwrap()
            .is_empty(),
        "networks docker does not list are left alone"
    );
    assert_eq!(
        d.collect_garbage(&young, 0).await.unwrap(),
        vec![EP.to_string()]
    );
    assert!(d.endpoints().await.unwrap().is_empty());
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
