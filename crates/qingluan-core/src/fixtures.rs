//! Networks and endpoints for the domain's unit tests.

use ipnet::Ipv4Net;

use crate::model::{ContainerRef, Endpoint, Mac, Mode, Network};

/// A network `id` of `mode` on `subnet`, its bridge `qlb<id>`, its gateway the first host.
pub fn net(id: &str, mode: Mode, subnet: &str) -> Network {
    let subnet: Ipv4Net = subnet.parse().expect("a subnet");
    Network {
        id: id.into(),
        mode,
        bridge: format!("qlb{id}"),
        internal: false,
        mtu: 1500,
        subnet,
        gateway: subnet.hosts().next().expect("a host"),
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

/// A joined endpoint `id` of `n` at host number `host` of its subnet, of `container`
/// (ID `<container>-id`).
pub fn ep(id: &str, n: &Network, host: u32, container: &str) -> Endpoint {
    let ip = std::net::Ipv4Addr::from(u32::from(n.subnet.network()) + host);
    Endpoint {
        id: id.into(),
        network_id: n.id.clone(),
        veth: format!("qlv{id}"),
        peer: format!("qlc{id}"),
        address: Ipv4Net::new(ip, n.subnet.prefix_len()).expect("a prefix"),
        address_v6: None,
        mac: Mac::from_ipv4(ip),
        ports: Vec::new(),
        joined: true,
        sandbox: None,
        left: None,
        created: 0,
        conflict: None,
        qos: Default::default(),
        container: Some(ContainerRef {
            id: format!("{container}-id"),
            name: container.into(),
            labels: Default::default(),
        }),
    }
}
