//! Mode planning and reconcile on the recording fakes: what a nat and a nonat network look
//! like as plain data, and that a second pass over an unchanged state changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use qingluan_core::desired::{self, HostFacts};
use qingluan_core::model::{ContainerRef, Endpoint, Mac, Mode, Network, PortMapping, Proto};
use qingluan_core::modes;
use qingluan_core::qos::{self, Priority, QosSpec, Rate, Target};
use qingluan_core::reconcile::{Adapters, Reconciler};
use qingluan_core::settings::Settings;
use qingluan_dataplane::netfilter::FakeFirewall;
use qingluan_dataplane::netlink::FakeLinks;
use qingluan_dataplane::openflow::FakeFlows;
use qingluan_dataplane::ovsdb::{FakeOvs, OvsOp};

fn net(id: &str, mode: Mode, subnet: &str, internal: bool) -> Network {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    let id = id.repeat(64 / id.len());
    Network {
        bridge: qingluan_core::model::bridge_name("ql", &id),
        id,
        mode,
        internal,
        mtu: 1500,
        subnet,
        gateway: subnet.hosts().next().unwrap(),
        ipv6: None,
        options: Default::default(),
        created: 0,
        vni: None,
        cluster: None,
        gateway_port: None,
        uplink: None,
        qos: Default::default(),
        acl_default: Default::default(),
        zone: 0,
    }
}

fn ep(id: &str, net: &Network, host: u8, ports: Vec<PortMapping>) -> Endpoint {
    let ip = std::net::Ipv4Addr::from(u32::from(net.subnet.network()) + host as u32);
    let id = id.repeat(64 / id.len());
    let (veth, peer) = qingluan_core::model::veth_names("ql", &id);
    Endpoint {
        id,
        network_id: net.id.clone(),
        veth,
        peer,
        address: ipnet::Ipv4Net::new(ip, net.subnet.prefix_len()).unwrap(),
        address_v6: None,
        mac: Mac::from_ipv4(ip),
        ports,
        joined: false,
        sandbox: None,
        left: None,
        created: 0,
        conflict: None,
        qos: Default::default(),
        container: None,
    }
}

/// A reconciler over fresh fakes, and the fakes.
fn reconciler() -> (
    Reconciler,
    Arc<FakeOvs>,
    Arc<FakeFlows>,
    Arc<FakeLinks>,
    Arc<FakeFirewall>,
) {
    let ovs = Arc::new(FakeOvs::default());
    let flows = Arc::new(FakeFlows::default());
    let links = Arc::new(FakeLinks::default());
    let fw = Arc::new(FakeFirewall::default());
    let r = reconciler_on(&ovs, &flows, &links, &fw);
    (r, ovs, flows, links, fw)
}

/// A reconciler over existing fakes (a restarted daemon's).
fn reconciler_on(
    ovs: &Arc<FakeOvs>,
    flows: &Arc<FakeFlows>,
    links: &Arc<FakeLinks>,
    fw: &Arc<FakeFirewall>,
) -> Reconciler {
    Reconciler::new(
        Adapters {
            ovs: ovs.clone(),
            flows: flows.clone(),
            links: links.clone(),
            firewall: fw.clone(),
        },
        "qingluan",
        "ql",
    )
}

/// The desired state of network `n` alone, with `eps` and what users asked for.
fn desired_of(n: &Network, eps: &[Endpoint], intent: &modes::Intent) -> desired::Desired {
    modes::build(
        &Settings::default(),
        &facts(),
        std::slice::from_ref(n),
        eps,
        &Default::default(),
        intent,
    )
}

fn facts() -> HostFacts {
    HostFacts {
        datapath: "netdev".into(),
        userspace_tso: false,
    }
}

#[test]
fn nat_network_plan() {
    let n = net("a1", Mode::Nat, "10.240.0.0/24", false);
    let web = PortMapping {
        proto: Proto::Tcp,
        host_ip: None,
        host_port: 1080,
        port: 80,
    };
    let e = ep("b2", &n, 2, vec![web]);
    let d = modes::build(
        &Settings::default(),
        &facts(),
        std::slice::from_ref(&n),
        std::slice::from_ref(&e),
        &Default::default(),
        &Default::default(),
    );
    assert_eq!(d.bridges.len(), 1);
    assert_eq!(d.bridges[0].name, "qlba1a1a1a1");
    assert_eq!(d.bridges[0].datapath_type, "netdev");
    assert_eq!(d.bridges[0].fail_mode.as_deref(), Some("secure"));
    assert_eq!(d.ports[0].name, "qlvb2b2b2b2b2b");
    assert_eq!(d.veths[0].peer, "qlcb2b2b2b2b2b");
    assert!(d.veths[0].tx_off, "netdev without TSO needs tx off");
    assert_eq!(d.firewall.guards, vec!["qlvb2b2b2b2b2b".to_string()]);
    let seg = &d.firewall.segments[0];
    assert!(seg.external);
    assert_eq!(seg.dnat[0].to.to_string(), "10.240.0.2");
    assert_eq!(
        d.sysctls.get("net.ipv4.ip_forward").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        d.sysctls
            .get("net.ipv4.conf.qlba1a1a1a1.route_localnet")
            .map(String::as_str),
        Some("1")
    );
    let flows: Vec<String> = d.flows["qlba1a1a1a1"].iter().map(|f| f.render()).collect();
    assert!(
        flows
            .iter()
            .any(|f| f
                .contains("in_port=qlvb2b2b2b2b2b,dl_src=02:42:0a:f0:00:02,ip,nw_src=10.240.0.2")),
        "{flows:#?}"
    );
}

#[test]
fn nonat_and_internal_have_no_way_out() {
    let a = net("c3", Mode::Nonat, "10.241.0.0/24", false);
    let b = net("d4", Mode::Nat, "10.240.1.0/24", true);
    let d = modes::build(
        &Settings::default(),
        &facts(),
        &[a, b],
        &[],
        &Default::default(),
        &Default::default(),
    );
    assert!(d.firewall.segments.iter().all(|s| !s.external));
    assert!(
        d.sysctls.keys().all(|k| k.ends_with(".disable_ipv6")),
        "no forwarding or route_localnet: {:?}",
        d.sysctls
    );
    let tso = HostFacts {
        datapath: "netdev".into(),
        userspace_tso: true,
    };
    assert!(!tso.needs_tx_off());
    let kernel = HostFacts {
        datapath: "system".into(),
        userspace_tso: false,
    };
    assert!(!kernel.needs_guards() && !kernel.needs_tx_off());
}

#[test]
fn reconcile_converges_and_then_changes_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (r, ovs, flows, links, fw) = reconciler();
        let n = net("a1", Mode::Nat, "10.240.0.0/24", false);
        let e1 = ep("b2", &n, 2, vec![]);
        let e2 = ep("c3", &n, 3, vec![]);
        let d = modes::build(
            &Settings::default(),
            &facts(),
            std::slice::from_ref(&n),
            &[e1.clone(), e2.clone()],
            &Default::default(),
            &Default::default(),
        );
        let first = r.begin().await.unwrap().sync(&d, false).await.unwrap();
        assert_eq!(first.veths_created, 2);
        assert!(first.ovs_ops >= 3, "{first:?}");
        assert_eq!(first.flows_replaced, 1);
        let second = r.begin().await.unwrap().sync(&d, false).await.unwrap();
        assert_eq!(
            second,
            Default::default(),
            "a second pass must touch nothing"
        );
        // A restarted daemon's reconciler knows nothing it installed: its full pass compares
        // every bridge with the switch and changes nothing.
        let restarted = reconciler_on(&ovs, &flows, &links, &fw);
        let after = restarted
            .begin()
            .await
            .unwrap()
            .sync(&d, true)
            .await
            .unwrap();
        assert_eq!((after.flows_replaced, after.flows_changed), (1, 0));
        assert_eq!(after.ovs_ops + after.veths_created + after.veths_deleted, 0);
        assert!(!after.firewall_changed, "{after:?}");

        // Removing an endpoint removes its port and veth, nothing else.
        let d2 = modes::build(
            &Settings::default(),
            &facts(),
            std::slice::from_ref(&n),
            std::slice::from_ref(&e1),
            &Default::default(),
            &Default::default(),
        );
        let third = r.begin().await.unwrap().sync(&d2, false).await.unwrap();
        assert_eq!(third.veths_deleted, 1);
        assert_eq!(third.ovs_ops, 1);
        assert!(matches!(ovs.log().last(), Some(OvsOp::DeletePort { .. })));

        // Removing the network removes the bridge and the rules.
        let empty = modes::build(
            &Settings::default(),
            &facts(),
            &[],
            &[],
            &Default::default(),
            &Default::default(),
        );
        r.begin().await.unwrap().sync(&empty, false).await.unwrap();
        assert!(matches!(ovs.log().last(), Some(OvsOp::DeleteBridge(_))));
        assert!(fw.current().unwrap().is_empty());
    });
}

#[test]
fn gateways_and_sysctls_are_set_again_only_when_changed_or_full() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (r, _, _, links, _) = reconciler();
        let n = net("a1", Mode::Nat, "10.240.0.0/24", false);
        let build = |eps: &[Endpoint]| desired_of(&n, eps, &Default::default());
        let gateway_calls = || {
            links
                .calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.contains(&n.bridge()) || c.starts_with("sysctl"))
                .count()
        };
        r.begin()
            .await
            .unwrap()
            .sync(&build(&[]), false)
            .await
            .unwrap();
        let first = gateway_calls();
        assert!(first >= 4, "mtu, address, up and the sysctls");
        let d = build(&[ep("b2", &n, 2, vec![])]);
        r.begin().await.unwrap().sync(&d, false).await.unwrap();
        assert_eq!(
            gateway_calls(),
            first,
            "an endpoint's pass leaves the gateway alone"
        );
        r.begin().await.unwrap().sync(&d, true).await.unwrap();
        assert_eq!(gateway_calls(), 2 * first, "a full pass sets it again");
    });
}

#[test]
fn full_passes_compare_32_bridges_in_turn() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (r, _, flows, _, _) = reconciler();
        let nets: Vec<Network> = (0..40)
            .map(|i| {
                net(
                    &format!("n{i}"),
                    Mode::Nat,
                    &format!("10.240.{i}.0/24"),
                    false,
                )
            })
            .collect();
        let d = modes::build(
            &Settings::default(),
            &facts(),
            &nets,
            &[],
            &Default::default(),
            &Default::default(),
        );
        let first = r.begin().await.unwrap().sync(&d, true).await.unwrap();
        assert_eq!(
            first.flows_replaced, 40,
            "a bridge never programmed is programmed"
        );
        let emptied = nets[35].bridge();
        flows.tables.lock().unwrap().insert(emptied.clone(), vec![]);
        for _ in 0..2 {
            let pass = r.begin().await.unwrap().sync(&d, true).await.unwrap();
            assert_eq!(pass.flows_replaced, 32);
        }
        assert_eq!(flows.tables.lock().unwrap()[&emptied], d.flows[&emptied]);
    });
}

#[test]
fn qos_follows_its_sources_and_leaves_no_meter_behind() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (r, ovs, flows, _, _) = reconciler();
        let mut n = net("a1", Mode::Nat, "10.240.0.0/24", false);
        n.qos.egress = Some(Rate(100_000_000));
        // Two endpoints whose IDs start alike: their meter IDs must still differ.
        let mut e1 = ep("b2", &n, 2, vec![]);
        let mut e2 = ep("b2", &n, 3, vec![]);
        e2.id = format!("{}ff", &e2.id[..62]);
        (e2.veth, e2.peer) = qingluan_core::model::veth_names("ql", "b2b2b2b2b2ff");
        e1.qos.priority = Some(Priority::Low);
        e2.container = Some(ContainerRef {
            id: "c".repeat(64),
            name: "c1".into(),
            labels: [(
                "qingluan.qos.ingress.rate".to_string(),
                "20mbit".to_string(),
            )]
            .into(),
        });
        fn build(
            n: &Network,
            eps: &[Endpoint],
            overrides: &BTreeMap<String, QosSpec>,
        ) -> desired::Desired {
            let intent = modes::Intent {
                qos: overrides.clone(),
                ..Default::default()
            };
            desired_of(n, eps, &intent)
        }
        let d = build(&n, &[e1.clone(), e2.clone()], &Default::default());
        let meters = &d.meters[&n.bridge];
        assert_eq!(meters.len(), 2);
        assert_ne!(meters[0].id, meters[1].id, "probed past the taken ID");
        assert!(
            meters.iter().all(|m| m.rate_kbps == 104_559),
            "in frames: no TSO on this datapath"
        );
        let port = |d: &desired::Desired, e: &Endpoint| {
            d.ports
                .iter()
                .find(|p| p.name == e.veth)
                .unwrap()
                .qos
                .clone()
        };
        assert_eq!(
            port(&d, &e2).unwrap().max_rate,
            20_911_602,
            "from the label (in full frames)"
        );
        assert_eq!(port(&d, &e1), None);
        let rendered: Vec<String> = d.flows[&n.bridge].iter().map(|f| f.render()).collect();
        assert!(
            rendered
                .iter()
                .any(|f| f.contains(&format!("in_port={},ip,", e1.veth))
                    && f.contains("set_field:8->ip_dscp")),
            "low is marked CS1: {rendered:#?}"
        );
        r.begin().await.unwrap().sync(&d, false).await.unwrap();
        assert_eq!(flows.meters.lock().unwrap()[&n.bridge].len(), 2);

        // An override wins over the label and the network; without limits nothing is left.
        let overrides = BTreeMap::from([(
            qos::override_id(&n.id, &Target::Container("c".repeat(64))),
            QosSpec {
                ingress: Some(Rate(5_000_000)),
                egress: Some(Rate(1_000_000)),
                ..Default::default()
            },
        )]);
        let d = build(&n, &[e1.clone(), e2.clone()], &overrides);
        assert_eq!(port(&d, &e2).unwrap().max_rate, 5_227_900);
        let report = r.begin().await.unwrap().sync(&d, false).await.unwrap();
        assert_eq!(report.ovs_ops, 1, "the port's shaping changed: {report:?}");
        let rates: Vec<u32> = flows.meters.lock().unwrap()[&n.bridge]
            .values()
            .map(|m| m.rate_kbps)
            .collect();
        assert!(
            rates.contains(&1_046) && rates.contains(&104_559),
            "{rates:?}"
        );
        n.qos = Default::default();
        e1.qos = Default::default();
        e2.container = None;
        let d = build(&n, &[e1.clone(), e2.clone()], &Default::default());
        assert!(d.meters.is_empty());
        r.begin().await.unwrap().sync(&d, false).await.unwrap();
        assert!(flows.meters.lock().unwrap()[&n.bridge].is_empty());
        assert!(matches!(ovs.log().last(), Some(OvsOp::UpdatePort(p)) if p.qos.is_none()));
    });
}

#[test]
fn datapath_is_chosen_by_the_kernel_module_unless_configured() {
    use qingluan_core::service::choose_datapath;
    assert_eq!(choose_datapath("auto", true), "system");
    assert_eq!(choose_datapath("auto", false), "netdev");
    assert_eq!(choose_datapath("netdev", true), "netdev");
    assert_eq!(choose_datapath("system", false), "system");
}

/// A vxlan network with VNI `vni` on 10.50.0.0/24, containers' MTU 1450.
fn vxlan_net(id: &str, vni: u32) -> Network {
    let mut n = net(id, Mode::Vxlan, "10.50.0.0/24", false);
    n.bridge = "qlov".into();
    n.vni = Some(vni);
    n.cluster = Some(format!("vxlan-{vni}"));
    n.mtu = 1450;
    n
}

#[test]
fn vxlan_networks_share_one_overlay_bridge_and_tunnel() {
    let (a, b) = (vxlan_net("aa", 5001), vxlan_net("bb", 5002));
    let (ea, eb) = (ep("e1", &a, 2, vec![]), ep("e2", &b, 2, vec![]));
    let remote = qingluan_core::pipeline::RemoteEndpoint {
        id: "f".repeat(64),
        mac: Mac::from_ipv4("10.50.0.3".parse().unwrap()),
        ip: "10.50.0.3".parse().unwrap(),
        vtep: "10.213.0.2".parse().unwrap(),
    };
    let view = desired::ClusterView {
        overlay: [("vxlan-5001".to_string(), vec![remote])].into(),
        containers: Vec::new(),
    };
    let settings = Settings {
        underlay_ip: Some("10.213.0.1".parse().unwrap()),
        overlay: qingluan_core::settings::Overlay::Ovs,
        ..Settings::default()
    };
    let d = modes::build(
        &settings,
        &facts(),
        &[a, b],
        &[ea, eb],
        &view,
        &Default::default(),
    );

    // One overlay bridge and one tunnel port, however many networks.
    assert_eq!(d.bridges.len(), 1);
    assert_eq!(d.bridges[0].name, "qlov");
    let tunnels: Vec<_> = d.ports.iter().filter(|p| p.kind == "vxlan").collect();
    assert_eq!(tunnels.len(), 1);
    assert_eq!(tunnels[0].options["remote_ip"], "flow");
    assert_eq!(tunnels[0].options["key"], "flow");
    assert_eq!(
        d.uplinks
            .iter()
            .map(|u| u.bridge.as_str())
            .collect::<Vec<_>>(),
        ["qlul"]
    );
    assert!(d.veths.iter().all(|v| v.tx_off && v.mtu == 1450));
    assert!(d.gateways.is_empty() && d.firewall.segments.is_empty());

    let flows: Vec<String> = d.flows["qlov"].iter().map(|f| f.render()).collect();
    let has = |needle: &str| flows.iter().any(|f| f.contains(needle));
    // Each network's frames carry its VNI; the same subnet in two VNIs stays apart.
    assert!(has("actions=set_field:5001->tun_id"));
    assert!(has("actions=set_field:5002->tun_id"));
    // The remote endpoint: unicast to its host, ARP answered here.
    assert!(has(
        "reg0=1,tun_id=5001,dl_dst=02:42:0a:32:00:03,actions=set_field:10.213.0.2->tun_dst,output:qlovt"
    ));
    assert!(has("reg0=1,tun_id=5001,arp,arp_op=1,arp_tpa=10.50.0.3"));
    assert!(!has("tun_id=5002,arp,arp_op=1,arp_tpa=10.50.0.3"));
    // Broadcast goes to hosts with endpoints in the VNI only.
    let bum5002 = flows
        .iter()
        .find(|f| f.contains("reg0=1,tun_id=5002,dl_dst=01:00:00:00:00:00"))
        .unwrap();
    assert!(!bum5002.contains("tun_dst"), "{bum5002}");
    assert!(has("in_port=qlovt,actions=goto_table:10"));
    assert_eq!(d.sentinels.len(), 2, "the overlay and the uplink bridge");
}

#[tokio::test]
async fn the_kernel_overlay_has_a_device_per_vni_that_knows_the_hosts() {
    let (a, b) = (vxlan_net("aa", 5001), vxlan_net("bb", 5002));
    let (ea, eb) = (ep("e1", &a, 2, vec![]), ep("e2", &b, 2, vec![]));
    let remote = |ip: &str, vtep: &str| qingluan_core::pipeline::RemoteEndpoint {
        id: ip.replace('.', ""),
        mac: Mac::from_ipv4(ip.parse().unwrap()),
        ip: ip.parse().unwrap(),
        vtep: vtep.parse().unwrap(),
    };
    let view = desired::ClusterView {
        overlay: [(
            "vxlan-5001".to_string(),
            vec![
                remote("10.50.0.3", "10.213.0.2"),
                remote("10.50.0.4", "10.213.0.3"),
            ],
        )]
        .into(),
        containers: Vec::new(),
    };
    let settings = Settings {
        underlay_ip: Some("10.213.0.1".parse().unwrap()),
        ..Settings::default()
    };
    let tso = HostFacts {
        userspace_tso: true,
        ..facts()
    };
    let limit = QosSpec {
        aggregate: Some(Rate(20_000_000)),
        ..Default::default()
    };
    let intent = modes::Intent {
        qos: [(qos::override_id(&b.id, &Target::Network), limit)].into(),
        ..Default::default()
    };
    let build = |nets: &[Network], eps: &[Endpoint]| {
        modes::build(&settings, &tso, nets, eps, &view, &intent)
    };
    let d = build(&[a.clone(), b.clone()], &[ea.clone(), eb.clone()]);

    // No tunnel port and no uplink bridge: the underlay stays where it is. One device per
    // VNI on the overlay bridge; containers keep their offloads.
    assert!(d.ports.iter().all(|p| p.kind != "vxlan"));
    assert!(d.uplinks.is_empty());
    let names: Vec<&str> = d.vxlans.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["qlx1389", "qlx138a"]);
    assert!(d
        .ports
        .iter()
        .any(|p| p.name == "qlx1389" && p.bridge == "qlov"));
    assert!(d.veths.iter().all(|v| !v.tx_off && v.mtu == 1450));
    let dev = &d.vxlans[0];
    assert_eq!((dev.vni, dev.mtu), (5001, 1450));
    assert_eq!(dev.local.to_string(), "10.213.0.1");
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let fdb: Vec<([u8; 6], std::net::IpAddr)> = dev.fdb.iter().copied().collect();
    assert_eq!(
        fdb,
        [
            ([0; 6], ip("10.213.0.2")),
            ([0; 6], ip("10.213.0.3")),
            (
                Mac::from_ipv4("10.50.0.3".parse().unwrap()).0,
                ip("10.213.0.2")
            ),
            (
                Mac::from_ipv4("10.50.0.4".parse().unwrap()).0,
                ip("10.213.0.3")
            ),
        ]
    );
    assert!(d.vxlans[1].fdb.is_empty(), "no other host in VNI 5002");

    let flows: Vec<String> = d.flows["qlov"].iter().map(|f| f.render()).collect();
    let has = |needle: &str| flows.iter().any(|f| f.contains(needle));
    // What the device brings in is its VNI's; unicast to a remote MAC goes into the device;
    // one copy of a broadcast goes into it, the device copies it to each host.
    assert!(has(
        "in_port=qlx1389,actions=set_field:5001->tun_id,goto_table:10"
    ));
    assert!(has(
        "reg0=1,tun_id=5001,dl_dst=02:42:0a:32:00:03,actions=output:qlx1389"
    ));
    assert!(!has("tun_dst") && !has("qlovt"));
    let bum = flows
        .iter()
        .find(|f| f.contains("reg0=1,tun_id=5001,dl_dst=01:00:00:00:00:00"))
        .unwrap();
    assert_eq!(bum.matches("output:qlx1389").count(), 1, "{bum}");
    assert!(has("reg0=1,tun_id=5001,arp,arp_op=1,arp_tpa=10.50.0.3"));
    // An aggregate limit shapes what goes into the network's device, which OVS leaves alone.
    assert_eq!(d.egress.keys().collect::<Vec<_>>(), ["qlx138a"]);
    let port = d.ports.iter().find(|p| p.name == "qlx138a").unwrap();
    assert_eq!(port.qos, Some(qingluan_dataplane::ovsdb::PortQos::noop()));

    // A flat network on the underlay's interface moves the address onto the uplink bridge:
    // OVS's tunnel port serves the overlay then.
    let mut flat = net("ff", Mode::Flat, "192.168.9.0/24", false);
    flat.bridge = "qlul".into();
    let shared = build(&[a.clone(), flat], std::slice::from_ref(&ea));
    assert!(shared.vxlans.is_empty());
    assert!(shared.ports.iter().any(|p| p.name == "qlovt"));
    assert!(shared.veths.iter().all(|v| v.tx_off));

    // The reconciler makes the devices before the ports, guards them, and deletes the one
    // whose network went.
    let (r, _, _, links, fw) = reconciler();
    r.begin().await.unwrap().sync(&d, false).await.unwrap();
    assert_eq!(links.vxlans.lock().unwrap()["qlx1389"], d.vxlans[0]);
    let guards = fw.current().unwrap().guards;
    assert!(guards.contains(&"qlx1389".to_string()), "{guards:?}");
    let fewer = build(std::slice::from_ref(&a), std::slice::from_ref(&ea));
    r.begin().await.unwrap().sync(&fewer, false).await.unwrap();
    let vxlans = links.vxlans.lock().unwrap().clone();
    assert_eq!(vxlans.keys().collect::<Vec<_>>(), ["qlx1389"]);
    assert!(!fw
        .current()
        .unwrap()
        .guards
        .contains(&"qlx138a".to_string()));
    assert!(links
        .calls
        .lock()
        .unwrap()
        .contains(&"delete_link qlx138a".to_string()));
}

#[test]
fn vxlan_with_nat_has_the_same_gateway_on_every_host() {
    let mut n = net("cc", Mode::Vxlan, "10.51.0.0/24", false);
    n.bridge = "qlov".into();
    n.vni = Some(5100);
    n.cluster = Some("vxlan-5100".into());
    n.mtu = 1450;
    n.gateway_port = Some(qingluan_core::model::bridge_name("ql", &n.id));
    let gw = n.gateway_port.clone().unwrap();
    let web = PortMapping {
        proto: Proto::Tcp,
        port: 80,
        host_ip: None,
        host_port: 8080,
    };
    let e = ep("e3", &n, 2, vec![web]);
    let d = modes::build(
        &Settings::default(),
        &facts(),
        std::slice::from_ref(&n),
        &[e],
        &Default::default(),
        &Default::default(),
    );

    // An internal port of the overlay bridge with a MAC derived from the gateway address,
    // the same on every host; the gateway address on it; masquerade and the published port.
    let port = d.ports.iter().find(|p| p.name == gw).unwrap();
    assert_eq!(
        (port.bridge.as_str(), port.kind.as_str()),
        ("qlov", "internal")
    );
    assert_eq!(port.mac.as_deref(), Some("02:42:0a:33:00:01"));
    assert_eq!(d.gateways.len(), 1);
    assert_eq!(d.gateways[0].iface, gw);
    assert_eq!(d.gateways[0].addrs[0].to_string(), "10.51.0.1/24");
    assert_eq!(d.gateways[0].mtu, 1450);
    let seg = &d.firewall.segments[0];
    assert!(seg.external && seg.bridge == gw);
    assert_eq!(seg.dnat.len(), 1);
    assert_eq!(d.sysctls["net.ipv4.ip_forward"], "1");

    let flows: Vec<String> = d.flows["qlov"].iter().map(|f| f.render()).collect();
    let has = |needle: &str| flows.iter().any(|f| f.contains(needle));
    // The gateway's frames are local-only (reg0 stays 0); ARP for it is answered here;
    // frames for its MAC come only from local containers.
    assert!(has(&format!(
        "in_port={gw},dl_src=02:42:0a:33:00:01,actions=set_field:5100->tun_id,goto_table:10"
    )));
    assert!(has("reg0=1,tun_id=5100,arp,arp_op=1,arp_tpa=10.51.0.1"));
    assert!(has(&format!(
        "reg0=1,tun_id=5100,dl_dst=02:42:0a:33:00:01,actions=output:{gw}"
    )));

    // Join gives the gateway as default route; publishing is allowed.
    let driver = qingluan_core::modes::driver(Mode::Vxlan);
    assert!(driver.allows_publishing(&n));
    let e = ep("e3", &n, 2, vec![]);
    assert_eq!(driver.join(&n, &e).gateway, Some(n.gateway));
    n.gateway_port = None;
    assert!(!driver.allows_publishing(&n));
    assert_eq!(driver.join(&n, &e).gateway, None);
}

#[test]
fn flat_and_vlan_networks_share_the_uplink_bridge_of_their_interface() {
    let phys = |id: &str, mode: Mode, subnet: &str, vni: Option<u32>| {
        let mut n = net(id, mode, subnet, false);
        n.bridge = "qlul".into();
        n.uplink = Some("eth0".into());
        n.vni = vni;
        n
    };
    let flat = phys("dd", Mode::Flat, "192.168.159.0/24", None);
    let v10 = phys("ee", Mode::Vlan, "192.168.10.0/24", Some(10));
    let v20 = phys("ff", Mode::Vlan, "192.168.20.0/24", Some(20));
    let eps = [
        ep("e4", &flat, 130, vec![]),
        ep("e5", &v10, 2, vec![]),
        ep("e6", &v20, 2, vec![]),
    ];
    let d = modes::build(
        &Settings::default(),
        &facts(),
        &[flat.clone(), v10.clone(), v20],
        &eps,
        &Default::default(),
        &Default::default(),
    );

    // One uplink bridge for the interface, no bridge of their own, nothing on the host side.
    assert!(d.bridges.is_empty(), "the uplink plans its own bridge");
    assert_eq!(d.uplinks.len(), 1);
    assert_eq!(
        d.uplinks[0].nic,
        qingluan_core::desired::Nic::Named("eth0".into())
    );
    assert!(d.gateways.is_empty() && d.firewall.segments.is_empty());
    // Access ports: VLAN 0 (untagged only) for flat, the VLAN ID for vlan.
    let tags: Vec<Option<u16>> = eps
        .iter()
        .map(|e| {
            d.ports
                .iter()
                .find(|p| p.name == e.host_veth())
                .unwrap()
                .tag
        })
        .collect();
    assert_eq!(tags, [Some(0), Some(10), Some(20)]);
    assert!(d.ports.iter().all(|p| p.bridge == "qlul"));

    // Anti-spoofing, then QOS and NORMAL; the base flow switches everything else.
    let flows: Vec<String> = d.flows["qlul"].iter().map(|f| f.render()).collect();
    let port = eps[0].host_veth();
    assert!(flows.iter().any(|f| f.contains(&format!(
        "in_port={port},dl_src=02:42:c0:a8:9f:82,ip,nw_src=192.168.159.130,actions=goto_table:5"
    ))));
    assert!(flows.iter().any(|f| f.starts_with("table=0,priority=90,")
        && f.ends_with(&format!("in_port={port},actions=drop"))));
    assert!(flows
        .iter()
        .any(|f| f == "table=0,priority=0,cookie=0x500000000000000,actions=NORMAL"));
    assert_eq!(
        d.sentinels["qlul"],
        qingluan_core::pipeline::UplinkSwitch.sentinel()
    );

    // The physical router is the default gateway; publishing is refused.
    let driver = qingluan_core::modes::driver(Mode::Flat);
    assert_eq!(driver.join(&flat, &eps[0]).gateway, Some(flat.gateway));
    assert!(!driver.allows_publishing(&flat));
    assert!(!qingluan_core::modes::driver(Mode::Vlan).allows_publishing(&v10));
}

/// While one pass waits for ovs-vswitchd, the next builds and commits; the bridge's flows
/// are then programmed in the passes' order, so it ends with the newer table.
#[tokio::test]
async fn the_next_pass_commits_while_one_waits_for_vswitchd() {
    let (r, ovs, flows, _, _) = reconciler();
    let n = net("a1", Mode::Nat, "10.240.0.0/24", false);
    let (e1, e2) = (ep("b2", &n, 2, vec![]), ep("c3", &n, 3, vec![]));
    let build = |eps: &[Endpoint]| desired_of(&n, eps, &Default::default());
    let bare = build(&[]);
    r.begin().await.unwrap().sync(&bare, false).await.unwrap();
    let (d1, d2) = (
        build(std::slice::from_ref(&e1)),
        build(&[e1.clone(), e2.clone()]),
    );
    let adds = |veth: &str| {
        ovs.log()
            .iter()
            .filter(|o| matches!(o, OvsOp::AddPort(p) if p.name == veth))
            .count()
    };
    let table = || flows.tables.lock().unwrap().get(&n.bridge).cloned();
    let gate = ovs.hold().await;
    let first = async { r.begin().await.unwrap().sync(&d1, false).await };
    let second = async {
        while adds(&e1.veth) == 0 {
            tokio::task::yield_now().await;
        }
        let pass = tokio::time::timeout(std::time::Duration::from_secs(5), r.begin())
            .await
            .expect("the pass lock is free while the first pass waits for ovs-vswitchd")
            .unwrap();
        assert_eq!(table(), Some(bare.flows[&n.bridge].clone()));
        let synced = pass.sync(&d2, false);
        tokio::pin!(synced);
        while adds(&e2.veth) == 0 {
            assert!(futures::poll!(synced.as_mut()).is_pending());
            tokio::task::yield_now().await;
        }
        drop(gate);
        synced.await
    };
    let (first, second) = tokio::join!(first, second);
    first.unwrap();
    second.unwrap();
    assert_eq!((adds(&e1.veth), adds(&e2.veth)), (1, 1));
    assert_eq!(table(), Some(d2.flows[&n.bridge].clone()));
}
