//! Golden dataplanes: the complete flow table of every bridge and the netfilter ruleset for
//! each mode (nonat, nat, flat, vlan, vxlan, vxlan with nat=true, and an internal dual-stack
//! nat network), rendered as ovs-ofctl text and as the `nft -f` script, and compared with the
//! files in `tests/golden/`. A change to the pipeline or the netfilter policy shows as a diff
//! of those files; `QL_BLESS=1 cargo test --test golden` rewrites them after a deliberate
//! change.

use std::net::{IpAddr, Ipv4Addr};

use qingluan_core::acl::{self, AclRule, PortRange, RuleSpec, Selector, Verdict};
use qingluan_core::desired::{ClusterView, HostFacts, RemoteContainer};
use qingluan_core::model::{self, Endpoint, Mac, Mode, Network, PortMapping, Proto};
use qingluan_core::modes;
use qingluan_core::pipeline::RemoteEndpoint;
use qingluan_core::qos::{Priority, QosSpec, Rate};
use qingluan_core::settings::Settings;
use qingluan_dataplane::netfilter::render_script;

fn net(id: &str, mode: Mode, subnet: &str) -> Network {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    let id = id.repeat(64 / id.len());
    let (bridge, vni, cluster, uplink) = match mode {
        Mode::Nat | Mode::Nonat => (model::bridge_name("ql", &id), None, None, None),
        Mode::Flat => (
            "qlul".to_string(),
            None,
            Some(format!("flat-{}", subnet.to_string().replace('/', "_"))),
            Some("eth0".to_string()),
        ),
        Mode::Vlan => (
            "qlul".to_string(),
            Some(10),
            Some("vlan-10".to_string()),
            Some("eth0".to_string()),
        ),
        Mode::Vxlan => (
            "qlov".to_string(),
            Some(5001),
            Some("vxlan-5001".to_string()),
            None,
        ),
    };
    Network {
        bridge,
        id,
        mode,
        internal: false,
        mtu: 1500,
        subnet,
        gateway: subnet.hosts().next().unwrap(),
        ipv6: None,
        options: Default::default(),
        created: 0,
        vni,
        cluster,
        gateway_port: None,
        uplink,
        qos: Default::default(),
        acl_default: Default::default(),
        zone: 0,
    }
}

fn ep(id: &str, net: &Network, host: u8) -> Endpoint {
    let ip = Ipv4Addr::from(u32::from(net.subnet.network()) + host as u32);
    let id = id.repeat(64 / id.len());
    let (veth, peer) = model::veth_names("ql", &id);
    Endpoint {
        id,
        network_id: net.id.clone(),
        veth,
        peer,
        address: ipnet::Ipv4Net::new(ip, net.subnet.prefix_len()).unwrap(),
        address_v6: None,
        mac: Mac::from_ipv4(ip),
        ports: Vec::new(),
        joined: true,
        sandbox: None,
        left: None,
        created: 0,
        conflict: None,
        qos: Default::default(),
        container: None,
    }
}

/// Every bridge's flows of one network with two local endpoints (the first publishing two
/// ports) and, for vxlan, one endpoint on another host, as ovs-ofctl text; then the
/// netfilter script.
fn table(n: Network) -> String {
    table_with(n, &modes::Intent::default())
}

/// [`table`] with what users asked for: the first endpoint is container `web1` with label
/// `tier=frontend`; the other host's is `db9` with `tier=backend`.
fn table_with(n: Network, intent: &modes::Intent) -> String {
    let mut first = ep("b2", &n, 2);
    first.container = Some(model::ContainerRef {
        id: "e5".repeat(32),
        name: "web1".into(),
        labels: [("tier".to_string(), "frontend".to_string())].into(),
    });
    first.ports = vec![
        PortMapping {
            proto: Proto::Tcp,
            host_ip: None,
            host_port: 8080,
            port: 80,
        },
        PortMapping {
            proto: Proto::Udp,
            host_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            host_port: 5353,
            port: 53,
        },
    ];
    let mut limited = ep("c3", &n, 3);
    limited.qos = QosSpec {
        egress: Some(Rate(10_000_000)),
        ingress: Some(Rate(20_000_000)),
        priority: Some(Priority::High),
        ..Default::default()
    };
    let eps = [first, limited];
    let mut view = ClusterView::default();
    if let Some(key) = n.cluster.clone().filter(|_| n.mode == Mode::Vxlan) {
        let ip = Ipv4Addr::from(u32::from(n.subnet.network()) + 9);
        view.overlay.insert(
            key.clone(),
            vec![RemoteEndpoint {
                id: "d4".repeat(32),
                mac: Mac::from_ipv4(ip),
                ip,
                vtep: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            }],
        );
        let db9 = model::ContainerRef {
            id: "f6".repeat(32),
            name: "db9".into(),
            labels: [("tier".to_string(), "backend".to_string())].into(),
        };
        view.containers.push(RemoteContainer {
            container: db9,
            address: ip,
            network: key,
        });
    }
    let settings = Settings {
        underlay_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        ..Settings::default()
    };
    let facts = HostFacts {
        datapath: "netdev".into(),
        userspace_tso: true,
    };
    let d = modes::build(&settings, &facts, &[n], &eps, &view, intent);
    let mut out = String::new();
    for (bridge, flows) in &d.flows {
        out.push_str(&format!("# {bridge}\n"));
        for f in flows {
            out.push_str(&f.render());
            out.push('\n');
        }
    }
    for (bridge, meters) in &d.meters {
        for m in meters {
            out.push_str(&format!(
                "# {bridge} meter={} kbps rate={} burst_size={}\n",
                m.id, m.rate_kbps, m.burst_kbits
            ));
        }
    }
    for p in d.ports.iter().filter(|p| p.qos.is_some()) {
        out.push_str(&format!("# {} qos {:?}\n", p.name, p.qos.as_ref().unwrap()));
    }
    out.push_str("# netfilter\n");
    out.push_str(&render_script(&d.firewall.ruleset()).0);
    out
}

fn check(name: &str, got: String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.flows"));
    if std::env::var("QL_BLESS").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (QL_BLESS=1 writes it)", path.display()));
    assert!(
        want == got,
        "{name}: the flow table changed; if on purpose, rerun with QL_BLESS=1 and review \
         the diff of {}\n--- want\n{want}--- got\n{got}",
        path.display()
    );
}

#[test]
fn nonat_flows() {
    check("nonat", table(net("a1", Mode::Nonat, "10.241.0.0/24")));
}

/// A rule of network `network`.
fn rule(
    network: &str,
    from: Selector,
    to: Selector,
    proto: acl::Proto,
    ports: Vec<PortRange>,
    verdict: Verdict,
    priority: u16,
) -> AclRule {
    let spec = RuleSpec {
        network: network.to_string(),
        from,
        to,
        proto,
        ports,
        verdict,
        priority,
        note: None,
    };
    AclRule {
        id: spec.id(),
        spec,
    }
}

#[test]
fn nat_acl_flows() {
    let mut n = net("a1", Mode::Nat, "10.240.0.0/24");
    n.acl_default = Verdict::Deny;
    n.zone = 0xa1a1;
    n.ipv6 = Some((
        "fd48:a1::/64".parse().unwrap(),
        "fd48:a1::1".parse().unwrap(),
    ));
    let rule = |from, to, proto, ports, verdict, priority| {
        rule(&n.id, from, to, proto, ports, verdict, priority)
    };
    let intent = modes::Intent {
        acl: vec![
            rule(
                Selector::Label("tier".into(), "frontend".into()),
                Selector::Network(n.id.clone()),
                acl::Proto::Tcp,
                vec![PortRange { lo: 5432, hi: 5432 }],
                Verdict::Allow,
                200,
            ),
            rule(
                Selector::Container("web1".into()),
                Selector::Cidr("0.0.0.0/0".parse().unwrap()),
                acl::Proto::Any,
                vec![],
                Verdict::Deny,
                100,
            ),
            rule(
                Selector::Any,
                Selector::Any,
                acl::Proto::Udp,
                vec![PortRange { lo: 8000, hi: 8010 }],
                Verdict::Allow,
                100,
            ),
            rule(
                Selector::Container("gone".into()),
                Selector::Any,
                acl::Proto::Icmp,
                vec![],
                Verdict::Allow,
                100,
            ),
        ],
        ..Default::default()
    };
    check("nat-acl", table_with(n, &intent));
}

#[test]
fn nat_flows() {
    check("nat", table(net("a1", Mode::Nat, "10.240.0.0/24")));
}

#[test]
fn flat_flows() {
    check("flat", table(net("a1", Mode::Flat, "192.168.159.0/24")));
}

#[test]
fn vlan_flows() {
    check("vlan", table(net("a1", Mode::Vlan, "10.242.0.0/24")));
}

#[test]
fn vxlan_flows() {
    check("vxlan", table(net("a1", Mode::Vxlan, "10.243.0.0/24")));
}

#[test]
fn vxlan_nat_flows() {
    let mut n = net("a1", Mode::Vxlan, "10.243.0.0/24");
    n.gateway_port = Some(model::bridge_name("ql", &n.id));
    check("vxlan-nat", table(n));
}

#[test]
fn vxlan_acl_flows() {
    let mut n = net("a1", Mode::Vxlan, "10.243.0.0/24");
    n.gateway_port = Some(model::bridge_name("ql", &n.id));
    n.acl_default = Verdict::Deny;
    n.zone = 0xa1a1;
    let intent = modes::Intent {
        acl: vec![
            rule(
                &n.id,
                Selector::Label("tier".into(), "frontend".into()),
                Selector::Label("tier".into(), "backend".into()),
                acl::Proto::Tcp,
                vec![PortRange { lo: 5432, hi: 5432 }],
                Verdict::Allow,
                200,
            ),
            rule(
                &n.id,
                Selector::Container("db9".into()),
                Selector::Any,
                acl::Proto::Icmp,
                vec![],
                Verdict::Deny,
                100,
            ),
        ],
        ..Default::default()
    };
    check("vxlan-acl", table_with(n, &intent));
}

#[test]
fn vlan_acl_flows() {
    let mut n = net("a1", Mode::Vlan, "10.242.0.0/24");
    n.acl_default = Verdict::Deny;
    n.zone = 0xa1a1;
    let intent = modes::Intent {
        acl: vec![rule(
            &n.id,
            Selector::Label("tier".into(), "frontend".into()),
            Selector::Cidr("192.0.2.0/24".parse().unwrap()),
            acl::Proto::Tcp,
            vec![PortRange { lo: 443, hi: 443 }],
            Verdict::Allow,
            200,
        )],
        ..Default::default()
    };
    check("vlan-acl", table_with(n, &intent));
}

#[test]
fn nat_internal_dual_stack_flows() {
    let mut n = net("a1", Mode::Nat, "10.244.0.0/24");
    n.internal = true;
    n.ipv6 = Some(("fd00:1::/64".parse().unwrap(), "fd00:1::1".parse().unwrap()));
    check("nat-internal-v6", table(n));
}
