//! vxlan: an overlay segment shared by every host of the cluster, keyed by its VNI.
//!
//! All vxlan networks of a host share one overlay bridge (`<prefix>ov`). What carries their
//! frames to other hosts is one of two transports ([`kernel_overlay`] chooses):
//! - On the userspace datapath, by default, a kernel VXLAN device per VNI
//!   (`<prefix>x<vni in hex>`, UDP 4789, a port of the overlay bridge) whose forwarding
//!   entries say which host each remote MAC is on, and with the all-zero MAC which hosts
//!   get broadcasts. The kernel segments and encapsulates the large frames of userspace
//!   TSO, and the underlay address stays on its interface.
//! - Otherwise (kernel datapath, `[cluster] overlay = "ovs"`, or an underlay interface that
//!   also carries flat or vlan networks) one flow-based VXLAN port of OVS (`<prefix>ovt`,
//!   `remote_ip=flow`, `key=flow`) for every VNI and host. On the userspace datapath the
//!   underlay address must then sit on an OVS bridge for OVS to route tunnel packets, so
//!   the network also asks for the uplink bridge (`uplink.rs`), and container ports have TX
//!   checksum offload off: that port cannot take packets that still need offloads.
//!
//! Either way the number of OVS ports grows with neither hosts nor containers elsewhere.
//! The pipeline's overlay features (`pipeline/overlay.rs`, `arp_responder.rs`,
//! `overlay_gateway.rs`) keep VNIs apart by `tun_id` (set from the device a frame came
//! in on, or read from the tunnel), answer ARP locally and send unicast straight to the
//! host holding the MAC, from the locations in the cluster store; a network's ACL
//! (`pipeline/acl.rs`) holds on every host for the traffic of its containers there.
//!
//! Without `nat=true` no host holds the gateway: containers get no default route and
//! Docker's `docker_gwbridge` is disabled. Publishing is refused: there is no way out.
//! With `nat=true` every host holds the gateway on an internal port of the overlay bridge
//! (named like a network bridge, so the firewall treats it as one), with the same address
//! and MAC everywhere: a container keeps its default route wherever it runs. Each host
//! masquerades its own containers' traffic out and DNATs the ports they publish, exactly as
//! nat mode does; the gateway reaches only the containers of its own host.

use std::collections::BTreeMap;

use qingluan_dataplane::netlink::Vxlan as VxlanDevice;
use qingluan_dataplane::ovsdb::{BridgeSpec, PortQos, PortSpec};

use super::Ctx;
use super::{attach, gateway, publish, JoinInfo, ModeDriver};
use crate::desired::{Desired, HostFacts, Nic, UplinkWant, MODE, OWNER};
use crate::model::{Endpoint, Mac, Mode, Network};
use crate::pipeline::{self, FlowFeature, Tunnel};
use crate::settings::{Overlay, Settings};

/// The vxlan mode.
pub struct Vxlan;

/// Bytes VXLAN over an IPv4 underlay adds to each frame (outer Ethernet 14, IPv4 20, UDP 8,
/// VXLAN 8): the default container MTU of a vxlan network is `network.mtu` minus this.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The overlay bridge of an instance.
pub fn overlay_bridge(prefix: &str) -> String {
    format!("{prefix}ov")
}

/// The flow-based tunnel port on the overlay bridge.
pub fn tunnel_port(prefix: &str) -> String {
    format!("{prefix}ovt")
}

/// The uplink bridge the underlay moves onto (userspace datapath).
pub fn uplink_bridge(prefix: &str) -> String {
    format!("{prefix}ul")
}

/// The start of every kernel VXLAN device's name.
pub fn vxlan_prefix(prefix: &str) -> String {
    format!("{prefix}x")
}

/// The kernel VXLAN device of VNI `vni` (`[cluster] overlay = "kernel"`), e.g. `qlx1389`.
pub fn vxlan_device(prefix: &str, vni: u32) -> String {
    format!("{}{vni:x}", vxlan_prefix(prefix))
}

/// Whether this host's vxlan networks use kernel VXLAN devices: asked for, on the userspace
/// datapath, with an underlay address whose interface carries no flat or vlan network. Such
/// a network moves the address onto the uplink bridge, and the kernel's VXLAN packets
/// would then leave through OVS's internal port, which does not finish their inner
/// checksums: OVS's tunnel port serves the overlay instead.
pub fn kernel_overlay(settings: &Settings, facts: &HostFacts, networks: &[Network]) -> bool {
    let uplink = uplink_bridge(&settings.prefix);
    settings.overlay == Overlay::Kernel
        && facts.datapath == "netdev"
        && settings.underlay_ip.is_some()
        && !networks
            .iter()
            .any(|n| matches!(n.mode, Mode::Flat | Mode::Vlan) && n.bridge == uplink)
}

impl ModeDriver for Vxlan {
    fn allows_publishing(&self, net: &Network) -> bool {
        net.external()
    }

    fn join(&self, net: &Network, ep: &Endpoint) -> JoinInfo {
        let external = net.external();
        JoinInfo {
            src_name: ep.peer_veth(),
            gateway: external.then_some(net.gateway),
            gateway_v6: None,
            disable_gateway_service: !external,
            routes: Vec::new(),
        }
    }

    fn build(&self, ctx: &Ctx, net: &Network, eps: &[&Endpoint], out: &mut Desired) {
        let prefix = &ctx.settings.prefix;
        let bridge = overlay_bridge(prefix);
        let kernel = ctx.kernel_overlay;
        let tunnel = tunnel_port(prefix);
        let ids = BTreeMap::from([
            (OWNER.to_string(), ctx.settings.name.clone()),
            (MODE.to_string(), net.mode.to_string()),
        ]);
        if !out.bridges.iter().any(|b| b.name == bridge) {
            out.bridges.push(BridgeSpec {
                name: bridge.clone(),
                datapath_type: ctx.facts.datapath.clone(),
                fail_mode: Some("secure".into()),
                external_ids: ids.clone(),
                other_config: Default::default(),
                protocols: ["OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15"]
                    .map(String::from)
                    .to_vec(),
                flow_export: ctx.settings.flow_export.clone(),
            });
            let base = pipeline::OverlayBase {
                bridge: &bridge,
                tunnel: (!kernel).then_some(tunnel.as_str()),
                ids: &ids,
            };
            out.ports.extend(base.ports());
            out.flows
                .entry(bridge.clone())
                .or_default()
                .extend(pipeline::collect(&[&base]));
            out.sentinels.insert(bridge.clone(), base.sentinel());
            if ctx.facts.datapath == "netdev" && !kernel {
                if let Some(address) = ctx.settings.underlay_ip {
                    out.uplinks.push(UplinkWant {
                        bridge: uplink_bridge(prefix),
                        nic: Nic::Holding(address),
                        datapath: ctx.facts.datapath.clone(),
                    });
                }
            }
        }
        attach(
            ctx,
            net,
            &bridge,
            eps,
            None,
            &[pipeline::Action::Goto(pipeline::Stage::Mirror)],
            out,
        );
        let gw = net
            .gateway_port
            .as_ref()
            .filter(|_| net.external())
            .map(|port| pipeline::OverlayGateway {
                port: port.clone(),
                mac: Mac::from_ipv4(net.gateway),
                ip: net.gateway,
            });
        let gw_port = gw.as_ref().map(|g| pipeline::OverlayGatewayPort {
            net,
            vni: net.vni,
            bridge: &bridge,
            gateway: g,
            ids: ctx.ids(net, None),
        });
        if let Some(p) = &gw_port {
            out.ports.extend(p.ports());
            gateway(net, &p.gateway.port, true, out);
            publish(&p.gateway.port, eps, out);
        }
        let (Some(vni), Some(key)) = (net.vni, &net.cluster) else {
            return;
        };
        let remote = ctx
            .view
            .overlay
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let device = vxlan_device(prefix, vni);
        let via = match ctx.settings.underlay_ip.filter(|_| kernel) {
            Some(local) => {
                out.ports.push(PortSpec {
                    bridge: bridge.clone(),
                    name: device.clone(),
                    external_ids: ids,
                    // Its qdisc is ours: a network's aggregate limit shapes it.
                    qos: Some(PortQos::noop()),
                    ..Default::default()
                });
                out.vxlans.push(VxlanDevice {
                    name: device.clone(),
                    vni,
                    local,
                    mtu: net.mtu,
                    fdb: remote
                        .iter()
                        .flat_map(|r| [([0; 6], r.vtep), (r.mac.0, r.vtep)])
                        .collect(),
                });
                Tunnel::Device(&device)
            }
            None => Tunnel::Port(&tunnel),
        };
        let forwarding = pipeline::OverlayForwarding {
            net,
            vni,
            endpoints: eps,
            remote,
            tunnel: via,
            gateway: gw.as_ref(),
        };
        let arp = pipeline::ArpResponder {
            net,
            vni,
            endpoints: eps,
            remote,
            gateway: gw.as_ref(),
        };
        let host_port = gw.as_ref().map(|g| pipeline::Port::Named(g.port.clone()));
        let acl = ctx.acl(net, eps, pipeline::AclBridge::Overlay(vni), host_port);
        let mut features: Vec<&dyn FlowFeature> = vec![&forwarding, &arp, &acl];
        if let Some(p) = &gw_port {
            features.push(p);
        }
        let flows = pipeline::collect(&features);
        out.flows.entry(bridge.clone()).or_default().extend(flows);
    }
}
