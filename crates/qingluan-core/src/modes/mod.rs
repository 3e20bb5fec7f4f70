//! Network modes: one file per mode, each a [`ModeDriver`] chosen by the network's mode.
//!
//! [`build`] turns the stored networks and endpoints into the desired dataplane, each
//! network through its mode. A mode decides what its networks look like in the dataplane
//! (its `build`), what a container gets at Join (gateway or not), and whether it may
//! publish ports. Modes only produce plain data; they never touch the system.

mod flat;
mod nat;
mod nonat;
mod vlan;
mod vxlan;

pub use vxlan::{
    overlay_bridge, tunnel_port, uplink_bridge, vxlan_device, vxlan_prefix, VXLAN_OVERHEAD,
};

use std::collections::BTreeMap;

use qingluan_dataplane::openflow::Meter;
use qingluan_dataplane::ovsdb::{BridgeSpec, PortSpec};

use crate::acl::{self, AclRule};
use crate::connect::{self, Connection};
use crate::desired::{ClusterView, Desired, GatewayPort, HostFacts, Nic, UplinkWant, Veth};
use crate::desired::{ENDPOINT, MIRROR, MODE, NETWORK, OWNER};
use crate::model::{Endpoint, Mode, Network};
use crate::pipeline::{self, Action, Stage};
use crate::policy::{Dnat, Link, Policy, Segment};
use crate::qos::{self, QosSpec, Shaping};
use crate::settings::Settings;
use qingluan_dataplane::netlink::Select;

/// What Join returns for an endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinInfo {
    /// Host-side name of the interface Docker moves into the container.
    pub src_name: String,
    /// Default gateway for the container, if the mode gives one.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// IPv6 default gateway.
    pub gateway_v6: Option<std::net::Ipv6Addr>,
    /// Tell Docker not to add `docker_gwbridge` (modes without a way out).
    pub disable_gateway_service: bool,
    /// Static routes in the container: a subnet through a next hop (a nonat container's
    /// ways to the networks its network is connected to).
    pub routes: Vec<(ipnet::Ipv4Net, std::net::Ipv4Addr)>,
}

/// One network mode.
pub trait ModeDriver: Send + Sync {
    /// Whether `-p` publishing is allowed on this network.
    fn allows_publishing(&self, net: &Network) -> bool;
    /// What Join returns.
    fn join(&self, net: &Network, ep: &Endpoint) -> JoinInfo;
    /// Adds the network's part of the desired dataplane.
    fn build(&self, ctx: &Ctx, net: &Network, eps: &[&Endpoint], out: &mut Desired);
}

/// The driver of a mode.
pub fn driver(mode: Mode) -> &'static dyn ModeDriver {
    match mode {
        Mode::Nat => &nat::Nat,
        Mode::Vxlan => &vxlan::Vxlan,
        Mode::Flat => &flat::Flat,
        Mode::Vlan => &vlan::Vlan,
        Mode::Nonat => &nonat::Nonat,
    }
}

/// A host-local segment: one bridge with the gateway on its internal port, a guarded veth
/// per endpoint and the pipeline's flows. nonat is exactly this; nat adds a way out.
pub(crate) fn local_segment(
    ctx: &Ctx,
    net: &Network,
    eps: &[&Endpoint],
    external: bool,
    out: &mut Desired,
) {
    switch(ctx, net, eps, out);
    gateway(net, &net.bridge(), external, out);
}

/// The network's gateway on host interface `iface`: its addresses, and its segment in the
/// firewall (isolation, and masquerade when `external`). An IPv4-only network's gateway has
/// IPv6 off: its link-local address and routes served nothing, and ovs-vswitchd re-reads
/// every port's routes on each link change.
pub(crate) fn gateway(net: &Network, iface: &str, external: bool, out: &mut Desired) {
    let mut addrs = vec![ipnet::IpNet::V4(
        ipnet::Ipv4Net::new(net.gateway, net.subnet.prefix_len()).expect("valid prefix"),
    )];
    match net.ipv6 {
        Some((v6, gw6)) => addrs.push(ipnet::IpNet::V6(
            ipnet::Ipv6Net::new(gw6, v6.prefix_len()).expect("valid prefix"),
        )),
        None => {
            out.sysctls
                .insert(format!("net.ipv6.conf.{iface}.disable_ipv6"), "1".into());
        }
    }
    out.gateways.push(GatewayPort {
        iface: iface.to_string(),
        addrs,
        mtu: net.mtu,
    });
    out.firewall.segments.push(Segment {
        bridge: iface.to_string(),
        subnet: net.subnet,
        gateway: net.gateway,
        gateway_v6: net.ipv6.map(|(_, gw)| gw),
        external,
        dnat: Vec::new(),
    });
}

/// The way out of an external segment whose gateway is on `iface` (pushed last by
/// [`gateway`]): forwarding on, loopback sources allowed to be DNATed onto it, and each
/// published port DNATed in the kernel (no docker-proxy).
pub(crate) fn publish(iface: &str, eps: &[&Endpoint], out: &mut Desired) {
    out.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    out.sysctls
        .insert(format!("net.ipv4.conf.{iface}.route_localnet"), "1".into());
    let seg = out
        .firewall
        .segments
        .last_mut()
        .expect("gateway pushed the segment");
    for ep in eps {
        for p in &ep.ports {
            let host_ip = match p.host_ip {
                Some(std::net::IpAddr::V4(ip)) => Some(ip),
                _ => None,
            };
            seg.dnat.push(Dnat {
                proto: p.proto.as_str(),
                host_ip,
                host_port: p.host_port,
                to: ep.address.addr(),
                to_port: p.port,
            });
        }
    }
    seg.dnat.sort();
}

/// The network's bridge with a guarded veth per endpoint and the pipeline's flows: an L2
/// switch with anti-spoofing and the network's ACL, and nothing on the host side.
pub(crate) fn switch(ctx: &Ctx, net: &Network, eps: &[&Endpoint], out: &mut Desired) {
    let bridge = net.bridge();
    out.bridges.push(BridgeSpec {
        name: bridge.clone(),
        datapath_type: ctx.facts.datapath.clone(),
        fail_mode: Some("secure".into()),
        external_ids: ctx.ids(net, None),
        other_config: Default::default(),
        protocols: ["OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15"]
            .map(String::from)
            .to_vec(),
        flow_export: ctx.settings.flow_export.clone(),
    });
    let then = [Action::Goto(Stage::Mirror)];
    attach(ctx, net, &bridge, eps, None, &then, out);
    let segment = pipeline::SegmentBridge {
        net,
        endpoints: eps,
    };
    let acl = ctx.acl(
        net,
        eps,
        pipeline::AclBridge::Own,
        Some(pipeline::Port::Local),
    );
    out.flows
        .entry(bridge.clone())
        .or_default()
        .extend(pipeline::collect(&[&segment, &acl]));
    out.sentinels.insert(bridge, segment.sentinel());
}

/// A network on the physical network (flat, vlan): its containers' ports on the uplink
/// bridge of its interface as access ports of VLAN `tag` (0: untagged), with anti-spoofing
/// flows and the network's ACL; the bridge and the interface come from the uplink
/// (`uplink.rs`). The gateway is
/// the physical router, so nothing is on the host side.
pub(crate) fn on_uplink(ctx: &Ctx, net: &Network, eps: &[&Endpoint], tag: u16, out: &mut Desired) {
    let Some(nic) = &net.uplink else {
        return;
    };
    let bridge = net.bridge();
    out.uplinks.push(UplinkWant {
        bridge: bridge.clone(),
        nic: Nic::Named(nic.clone()),
        datapath: ctx.facts.datapath.clone(),
    });
    attach(
        ctx,
        net,
        &bridge,
        eps,
        Some(tag),
        &[Action::Goto(Stage::Mirror)],
        out,
    );
    let acl = ctx.acl(net, eps, pipeline::AclBridge::Uplink, None);
    let ports = pipeline::PhysicalPorts { endpoints: eps };
    out.flows
        .entry(bridge)
        .or_default()
        .extend(pipeline::collect(&[&ports, &acl]));
}

/// Join of a network on the physical network: the physical router is the default gateway.
pub(crate) fn physical_join(net: &Network, ep: &Endpoint) -> JoinInfo {
    JoinInfo {
        src_name: ep.peer_veth(),
        gateway: Some(net.gateway),
        gateway_v6: None,
        disable_gateway_service: true,
        routes: Vec::new(),
    }
}

/// Each endpoint's veth pair, its host end as a port of `bridge` (an access port of VLAN
/// `tag` when given), guarded against the veth bypass on the userspace datapath; and its
/// QoS: the port's shaping (ingress), and its meter and mark (egress) in the `QOS` stage,
/// after which its traffic goes on with `then`.
pub(crate) fn attach(
    ctx: &Ctx,
    net: &Network,
    bridge: &str,
    eps: &[&Endpoint],
    tag: Option<u16>,
    then: &[Action],
    out: &mut Desired,
) {
    let tx_off = tx_off(ctx.facts, net, ctx.kernel_overlay);
    let mut marked = Vec::new();
    for ep in eps {
        let shaping = ctx.qos.get(&ep.id);
        if let Some(s) = shaping.filter(|s| s.meter.is_some() || s.dscp.is_some()) {
            if let Some((id, (rate_kbps, burst_kbits))) = s.meter_id.zip(s.meter) {
                out.meters
                    .entry(bridge.to_string())
                    .or_default()
                    .push(Meter {
                        id,
                        rate_kbps,
                        burst_kbits,
                    });
            }
            marked.push(pipeline::qos::Marked {
                endpoint: ep,
                meter: s.meter_id,
                dscp: s.dscp,
            });
        }
        out.ports.push(PortSpec {
            bridge: bridge.to_string(),
            name: ep.host_veth(),
            kind: String::new(),
            tag,
            external_ids: ctx.ids(net, Some(ep)),
            mtu_request: None,
            mac: None,
            qos: shaping.and_then(|s| s.port.clone()),
            options: Default::default(),
        });
        out.veths.push(veth(net, ep, tx_off));
        if ctx.facts.needs_guards() {
            out.firewall.guards.push(ep.host_veth());
        }
    }
    let qos = pipeline::EndpointQos {
        endpoints: &marked,
        then,
    };
    out.flows
        .entry(bridge.to_string())
        .or_default()
        .extend(pipeline::collect(&[&qos]));
}

/// An endpoint's veth pair as [`build`] wants it, for CreateEndpoint to create before
/// its pass.
pub fn endpoint_veth(
    settings: &Settings,
    facts: &HostFacts,
    networks: &[Network],
    net: &Network,
    ep: &Endpoint,
) -> Veth {
    let kernel_overlay = vxlan::kernel_overlay(settings, facts, networks);
    veth(net, ep, tx_off(facts, net, kernel_overlay))
}

fn veth(net: &Network, ep: &Endpoint, tx_off: bool) -> Veth {
    Veth {
        host: ep.host_veth(),
        peer: ep.peer_veth(),
        mtu: net.mtu,
        mac: ep.mac,
        tx_off,
        recreate: !ep.joined,
    }
}

/// Whether `net`'s containers get checksum offload off (so no TSO either): where OVS
/// cannot finish it, on the userspace datapath without TSO, and for packets OVS tunnels
/// itself on it always (a kernel VXLAN device takes them with their offloads).
fn tx_off(facts: &HostFacts, net: &Network, kernel_overlay: bool) -> bool {
    match net.mode {
        Mode::Vxlan if !kernel_overlay => facts.datapath == "netdev",
        _ => facts.needs_tx_off(),
    }
}

/// An endpoint's QoS as the dataplane applies it, with its meter's ID on its bridge.
#[derive(Clone, Debug, Default)]
pub struct EndpointShaping {
    /// Meter, mark and port shaping.
    pub shaping: Shaping,
    /// The ID of its meter, when it has one.
    pub meter_id: Option<u32>,
}

impl std::ops::Deref for EndpointShaping {
    type Target = Shaping;
    fn deref(&self) -> &Shaping {
        &self.shaping
    }
}

/// Every endpoint's shaping. Meter IDs are the first 8 hex digits of the endpoint ID,
/// probed upwards past IDs another endpoint of the same bridge took (in endpoint ID order,
/// so the choice is stable).
fn shapings(
    settings: &Settings,
    facts: &HostFacts,
    kernel_overlay: bool,
    networks: &[Network],
    endpoints: &[Endpoint],
    overrides: &BTreeMap<String, QosSpec>,
) -> BTreeMap<String, EndpointShaping> {
    let mut out = BTreeMap::new();
    let mut taken: BTreeMap<String, std::collections::BTreeSet<u32>> = BTreeMap::new();
    let mut eps: Vec<&Endpoint> = endpoints.iter().collect();
    eps.sort_by(|a, b| a.id.cmp(&b.id));
    let nets: BTreeMap<&str, &Network> = networks.iter().map(|n| (n.id.as_str(), n)).collect();
    for ep in eps {
        let Some(net) = nets.get(ep.network_id.as_str()) else {
            continue;
        };
        let mut effective = qos::of_endpoint(net, ep, overrides);
        if effective.priority.is_none() && qos::aggregate_of(net, overrides).is_some() {
            // Behind an aggregate limit every packet is classed by its mark.
            effective.priority = Some(qos::Sourced {
                value: qos::Priority::Normal,
                source: qos::Source::Network,
            });
        }
        let shaping = effective.shaping(&settings.qos, net.mtu, tx_off(facts, net, kernel_overlay));
        let meter_id = shaping.meter.map(|_| {
            let used = taken.entry(net.bridge()).or_default();
            let mut id = u32::from_str_radix(crate::model::head(&ep.id, 8), 16).unwrap_or(0);
            id = id % MAX_METER + 1;
            while !used.insert(id) {
                id = id % MAX_METER + 1;
            }
            id
        });
        out.insert(ep.id.clone(), EndpointShaping { shaping, meter_id });
    }
    out
}

/// The largest meter ID OpenFlow allows.
const MAX_METER: u32 = 0xffff_0000;

/// What users asked for besides networks and endpoints.
#[derive(Clone, Debug, Default)]
pub struct Intent {
    /// The `qingluan qos set` overrides, by ID.
    pub qos: BTreeMap<String, QosSpec>,
    /// The ACL rules.
    pub acl: Vec<AclRule>,
    /// The group connections.
    pub connections: Vec<Connection>,
    /// The mirrors.
    pub mirrors: Vec<crate::mirror::Mirror>,
    /// The mirrors' target interfaces that exist.
    pub mirror_interfaces: std::collections::BTreeSet<String>,
}

/// Every network's rules with their selectors resolved, by network ID (user rules in rule
/// ID order, then what connections add), and the links connections make.
fn resolve_rules(
    networks: &[Network],
    endpoints: &[Endpoint],
    view: &ClusterView,
    intent: &Intent,
) -> (BTreeMap<String, Vec<pipeline::ResolvedRule>>, Vec<Link>) {
    let world = acl::World::new(networks, endpoints).with_remote(view);
    let rules = &intent.acl;
    let mut out: BTreeMap<String, Vec<pipeline::ResolvedRule>> = BTreeMap::new();
    for r in rules {
        out.entry(r.spec.network.clone())
            .or_default()
            .push(pipeline::ResolvedRule {
                id: r.id.clone(),
                priority: r.spec.priority,
                verdict: r.spec.verdict,
                from: world.resolve(&r.spec.from),
                to: world.resolve(&r.spec.to),
                proto: r.spec.proto,
                ports: r.spec.ports.clone(),
            });
    }
    let effect = connect::effect(&world, &intent.connections);
    for (net, rules) in effect.rules {
        out.entry(net).or_default().extend(rules);
    }
    (out, effect.links)
}

/// Computes the desired dataplane of `networks` and `endpoints` with what users asked for.
pub fn build(
    settings: &Settings,
    facts: &HostFacts,
    networks: &[Network],
    endpoints: &[Endpoint],
    view: &ClusterView,
    intent: &Intent,
) -> Desired {
    let overrides = &intent.qos;
    let kernel_overlay = vxlan::kernel_overlay(settings, facts, networks);
    let qos = shapings(
        settings,
        facts,
        kernel_overlay,
        networks,
        endpoints,
        overrides,
    );
    let zones = acl::zones(networks);
    let (rules, links) = resolve_rules(networks, endpoints, view, intent);
    let mut d = Desired {
        firewall: Policy {
            name: settings.name.clone(),
            bridge_prefix: format!("{}b", settings.prefix),
            ..Default::default()
        },
        ..Default::default()
    };
    for net in networks {
        if let Some(rate) = qos::aggregate_of(net, overrides) {
            aggregate(settings, facts, kernel_overlay, net, rate, &mut d);
        }
        let eps: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| e.network_id == net.id && e.conflict.is_none())
            .collect();
        driver(net.mode).build(
            &Ctx {
                settings,
                facts,
                kernel_overlay,
                view,
                qos: &qos,
                zones: &zones,
                rules: &rules,
            },
            net,
            &eps,
            &mut d,
        );
    }
    d.uplinks
        .sort_by_key(|u| (u.bridge.clone(), matches!(u.nic, Nic::Holding(_))));
    d.uplinks.dedup_by(|a, b| a.bridge == b.bridge);
    for u in &d.uplinks {
        d.flows
            .entry(u.bridge.clone())
            .or_default()
            .extend(pipeline::collect(&[&pipeline::UplinkSwitch]));
        d.sentinels
            .insert(u.bridge.clone(), pipeline::UplinkSwitch.sentinel());
    }
    let overlay = vxlan::overlay_bridge(&settings.prefix);
    let copying = crate::mirror::copying(
        &intent.mirrors,
        networks,
        endpoints,
        &intent.mirror_interfaces,
        &overlay,
    );
    let interfaces: Vec<String> = copying
        .iter()
        .filter(|c| c.target.is_none())
        .map(|c| c.port.clone())
        .collect();
    for c in copying.iter().filter(|c| c.target.is_none()) {
        if d.ports.iter().any(|p| p.name == c.port) {
            continue;
        }
        let external_ids = BTreeMap::from([
            (OWNER.to_string(), settings.name.clone()),
            (NETWORK.to_string(), c.net.id.clone()),
            (MIRROR.to_string(), c.mirror.id.clone()),
        ]);
        d.ports.push(PortSpec {
            bridge: c.bridge.clone(),
            name: c.port.clone(),
            external_ids,
            ..Default::default()
        });
    }
    for (bridge, watched) in crate::mirror::watched(&copying, endpoints) {
        let mirrors = pipeline::Mirrors {
            watched: &watched,
            interfaces: &interfaces,
        };
        d.flows
            .entry(bridge)
            .or_default()
            .extend(pipeline::collect(&[&mirrors]));
    }
    for flows in d.flows.values_mut() {
        pipeline::sort(flows);
    }
    d.firewall.segments.sort_by(|a, b| a.bridge.cmp(&b.bridge));
    d.firewall.links = links;
    d.firewall.guards.sort();
    d
}

/// Where `net`'s aggregate limit `rate` applies: what leaves through its gateway on this
/// host (nat, nonat, vxlan with `nat=true`), and what leaves through the uplink's
/// interface: a flat network's packets by source subnet, a vlan network's frames by their
/// tag, a vxlan network's tunnel packets by VNI (OVS's tunnel leaves through the uplink
/// bridge on the userspace datapath), or what OVS sends into the VNI's kernel VXLAN device.
fn aggregate(
    settings: &Settings,
    facts: &HostFacts,
    kernel_overlay: bool,
    net: &Network,
    rate: qos::Rate,
    d: &mut Desired,
) {
    if let Some(iface) = net.host_gateway() {
        d.shaped
            .push(settings.qos.aggregate(&settings.prefix, &iface, net, rate));
    }
    let (bridge, select, overhead) = match (net.mode, net.vni) {
        (Mode::Flat, _) => (net.bridge(), Select::Ip(format!("match ip src {}", net.subnet)), 0),
        (Mode::Vlan, Some(vid)) => (net.bridge(), Select::Vlan(vid as u16), 4),
        // What OVS sends into the VNI's kernel device: the inner frames, all of them.
        (Mode::Vxlan, Some(vni)) if kernel_overlay => (
            vxlan::vxlan_device(&settings.prefix, vni),
            Select::Ip("match u32 0 0".into()),
            0,
        ),
        (Mode::Vxlan, Some(vni)) if facts.datapath == "netdev" && settings.underlay_ip.is_some() => (
            uplink_bridge(&settings.prefix),
            Select::Ip(format!(
                "match ip protocol 17 0xff match u16 4789 0xffff at 22 match u32 {:#010x} 0xffffff00 at 32",
                vni << 8
            )),
            VXLAN_OVERHEAD,
        ),
        _ => return,
    };
    d.egress
        .entry(bridge)
        .or_default()
        .push(settings.qos.uplink_group(select, net, overhead, rate));
}

/// What a mode needs besides the records when building.
pub struct Ctx<'a> {
    /// Daemon settings.
    pub settings: &'a Settings,
    /// Host facts.
    pub facts: &'a HostFacts,
    /// Whether vxlan networks go through kernel VXLAN devices here
    /// (`vxlan::kernel_overlay`).
    pub kernel_overlay: bool,
    /// Other hosts' endpoints on overlay networks.
    pub view: &'a ClusterView,
    /// Every endpoint's QoS, by endpoint ID.
    pub qos: &'a BTreeMap<String, EndpointShaping>,
    /// Every network's conntrack zone, by ID.
    pub zones: &'a BTreeMap<String, u16>,
    /// Every network's ACL rules, resolved, by ID.
    pub rules: &'a BTreeMap<String, Vec<pipeline::ResolvedRule>>,
}

impl<'a> Ctx<'a> {
    /// The ACL of `net`, whose containers here are `eps`, on a bridge of kind `on` whose
    /// host side is `host_port`; what it allows goes on to `L2_FORWARD` (`ARP_RESPOND` on
    /// the overlay bridge).
    pub fn acl(
        &self,
        net: &'a Network,
        eps: &'a [&'a Endpoint],
        on: pipeline::AclBridge,
        host_port: Option<pipeline::Port>,
    ) -> pipeline::NetworkAcl<'a> {
        let then = match on {
            pipeline::AclBridge::Overlay(_) => Stage::ArpRespond,
            _ => Stage::L2Forward,
        };
        pipeline::NetworkAcl {
            net,
            zone: self.zones.get(&net.id).copied().unwrap_or(net.zone),
            rules: self.rules.get(&net.id).map_or(&[], Vec::as_slice),
            then,
            on,
            host_port,
            local: eps,
        }
    }

    /// `external_ids` of an object of `net` (and of `ep`, for ports).
    pub fn ids(&self, net: &Network, ep: Option<&Endpoint>) -> BTreeMap<String, String> {
        let mut ids = BTreeMap::from([
            (OWNER.to_string(), self.settings.name.clone()),
            (NETWORK.to_string(), net.id.clone()),
            (MODE.to_string(), net.mode.to_string()),
        ]);
        if let Some(ep) = ep {
            ids.insert(ENDPOINT.to_string(), ep.id.clone());
        }
        ids
    }
}
