//! The overlay bridge shared by all vxlan networks: its own flows and tunnel port
//! ([`OverlayBase`]), and per overlay network the admission of its local containers and
//! forwarding by (VNI, MAC) ([`OverlayForwarding`]). The ARP responder
//! (`arp_responder.rs`) and the `nat=true` gateway (`overlay_gateway.rs`) are features of
//! their own.
//!
//! `CLASSIFY` admits local ports as the spoof guard allows, tags their frames with the
//! network's VNI (`tun_id`) and marks them local (`reg0=1`), and admits the tunnel port (VNI
//! from the packet); both go on through `QOS` (local only) and `CONNTRACK`, where a network
//! with an ACL (`acl.rs`) takes its frames and the bridge's own flow sends the rest on to
//! `ARP_RESPOND`; `L2_FORWARD` delivers by (VNI, MAC): to a local port, or through the
//! tunnel to the host holding that MAC (or into the network's kernel VXLAN device, whose
//! forwarding entries know that host, see [`Tunnel`]); broadcast and multicast of a local
//! container go to its VNI's local ports and to each other host with endpoints in that VNI, those from the
//! tunnel only to local ports; unicast of the `nat=true` gateway (what the host routes into
//! the network from a connected network) also reaches other hosts' containers; unknown unicast is dropped: every location comes from the
//! cluster store, nothing is learnt by flooding.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use qingluan_dataplane::openflow::Flow;
use qingluan_dataplane::ovsdb::PortSpec;

use super::{
    flow, spoof_guard, Action, Cookie, Feature, Field, FlowFeature, Match, OverlayGateway, Port,
    Stage, STAGES,
};
use crate::model::{Endpoint, Mac, Network};

/// Where another host's endpoint of an overlay network is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteEndpoint {
    /// Its endpoint ID.
    pub id: String,
    /// Its MAC.
    pub mac: Mac,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Underlay address of its host (the tunnel endpoint).
    pub vtep: IpAddr,
}

/// The overlay bridge's own flows (default drops, the tunnel port's admission) and its
/// flow-based VXLAN tunnel port.
pub struct OverlayBase<'a> {
    /// The overlay bridge.
    pub bridge: &'a str,
    /// The tunnel port; `None` when kernel VXLAN devices carry the overlay.
    pub tunnel: Option<&'a str>,
    /// `external_ids` of the tunnel port.
    pub ids: &'a BTreeMap<String, String>,
}

impl OverlayBase<'_> {
    /// The cookie of the overlay bridge's sentinel flow.
    pub fn sentinel(&self) -> u64 {
        Cookie::bridge(Feature::Overlay).value()
    }
}

impl FlowFeature for OverlayBase<'_> {
    fn name(&self) -> &'static str {
        "overlay base"
    }

    fn stages(&self) -> &'static [Stage] {
        &STAGES
    }

    fn flows(&self) -> Vec<Flow> {
        let c = Cookie::bridge(Feature::Overlay);
        let mut out = vec![flow(Stage::Classify, 0, c, Match::any(), &[Action::Drop])];
        out.extend(self.tunnel.map(|t| {
            flow(
                Stage::Classify,
                100,
                c,
                Match::any().and(Field::InPort(Port::Named(t.into()))),
                &[Action::Goto(Stage::Mirror)],
            )
        }));
        out.extend([
            flow(
                Stage::Qos,
                0,
                c,
                Match::any(),
                &[Action::Goto(Stage::Mirror)],
            ),
            flow(
                Stage::Mirror,
                0,
                c,
                Match::any(),
                &[Action::Goto(Stage::Conntrack)],
            ),
            flow(
                Stage::Conntrack,
                0,
                c,
                Match::any(),
                &[Action::Goto(Stage::ArpRespond)],
            ),
            flow(
                Stage::ArpRespond,
                0,
                c,
                Match::any(),
                &[Action::Goto(Stage::L2Forward)],
            ),
            flow(Stage::L2Forward, 0, c, Match::any(), &[Action::Drop]),
        ]);
        out
    }

    /// One flow-based VXLAN port (`remote_ip=flow`, `key=flow`, UDP 4789) for every VNI and
    /// every other host; `tos=inherit`, so the outer header carries the inner DSCP mark.
    fn ports(&self) -> Vec<PortSpec> {
        let Some(tunnel) = self.tunnel else {
            return Vec::new();
        };
        vec![PortSpec {
            bridge: self.bridge.into(),
            name: tunnel.into(),
            kind: "vxlan".into(),
            tag: None,
            external_ids: self.ids.clone(),
            mtu_request: None,
            mac: None,
            qos: None,
            options: BTreeMap::from([
                ("remote_ip".to_string(), "flow".to_string()),
                ("key".to_string(), "flow".to_string()),
                ("tos".to_string(), "inherit".to_string()),
            ]),
        }]
    }
}

/// How frames reach other hosts.
#[derive(Clone, Copy, Debug)]
pub enum Tunnel<'a> {
    /// The bridge's flow-based tunnel port: each frame is sent with its VNI and the other
    /// host's address.
    Port(&'a str),
    /// The network's kernel VXLAN device, whose forwarding entries know the hosts: what comes
    /// in on it is the network's, what goes out needs no tunnel metadata, and one copy of a
    /// broadcast reaches every host.
    Device(&'a str),
}

/// One overlay network's admission and forwarding: its local endpoints, the endpoints other
/// hosts have in it, and (for flooding) this host's gateway.
pub struct OverlayForwarding<'a> {
    /// The network.
    pub net: &'a Network,
    /// Its VNI.
    pub vni: u32,
    /// Its endpoints on this host.
    pub endpoints: &'a [&'a Endpoint],
    /// Its endpoints on other hosts.
    pub remote: &'a [RemoteEndpoint],
    /// Where frames for other hosts go.
    pub tunnel: Tunnel<'a>,
    /// This host's gateway (`nat=true`), which floods reach too.
    pub gateway: Option<&'a OverlayGateway>,
}

impl FlowFeature for OverlayForwarding<'_> {
    fn name(&self) -> &'static str {
        "overlay forwarding"
    }

    fn stages(&self) -> &'static [Stage] {
        &[Stage::Classify, Stage::L2Forward]
    }

    fn flows(&self) -> Vec<Flow> {
        let vni = self.vni;
        let base = Cookie::of(Feature::Base, &self.net.id);
        let to_vtep = |vtep: IpAddr| match self.tunnel {
            Tunnel::Port(t) => vec![Action::SetTunDst(vtep), Action::Output(t.into())],
            Tunnel::Device(d) => vec![Action::Output(d.into())],
        };
        let admit = [
            Action::SetTunId(vni),
            Action::LoadReg0(1),
            Action::Goto(Stage::Qos),
        ];
        let mut out = Vec::new();
        if let Tunnel::Device(d) = self.tunnel {
            out.push(flow(
                Stage::Classify,
                100,
                base,
                Match::any().and(Field::InPort(Port::Named(d.into()))),
                &[Action::SetTunId(vni), Action::Goto(Stage::Mirror)],
            ));
        }
        for ep in self.endpoints {
            let c = Cookie::of(Feature::Endpoint, &ep.id);
            out.push(flow(Stage::Classify, 100, c, spoof_guard::ipv4(ep), &admit));
            out.push(flow(Stage::Classify, 100, c, spoof_guard::arp(ep), &admit));
            out.push(spoof_guard::refusal(ep));
            out.push(flow(
                Stage::L2Forward,
                100,
                c,
                Match::any()
                    .and(Field::TunId(vni))
                    .and(Field::EthDst(ep.mac.0)),
                &[Action::Output(ep.host_veth())],
            ));
        }
        for r in self.remote {
            let c = Cookie::of(Feature::Remote, &r.id);
            let to_mac = |m: Match| m.and(Field::EthDst(r.mac.0));
            out.push(flow(
                Stage::L2Forward,
                100,
                c,
                to_mac(in_vni(vni, true)),
                &to_vtep(r.vtep),
            ));
            if let Some(g) = self.gateway {
                out.push(flow(
                    Stage::L2Forward,
                    100,
                    c,
                    to_mac(from_gateway(vni, g)),
                    &to_vtep(r.vtep),
                ));
            }
        }
        let local: Vec<Action> = self
            .endpoints
            .iter()
            .map(|e| Action::Output(e.host_veth()))
            .collect();
        let mut vteps: Vec<IpAddr> = self.remote.iter().map(|r| r.vtep).collect();
        vteps.sort();
        vteps.dedup();
        if let Tunnel::Device(_) = self.tunnel {
            // The device copies a broadcast to every host itself.
            vteps.truncate(1);
        }
        let mut everywhere = local.clone();
        if let Some(g) = self.gateway {
            everywhere.push(Action::Output(g.port.clone()));
        }
        everywhere.extend(vteps.into_iter().flat_map(to_vtep));
        let or_drop = |v: Vec<Action>| if v.is_empty() { vec![Action::Drop] } else { v };
        out.push(flow(
            Stage::L2Forward,
            50,
            base,
            in_vni(vni, true).and(Field::EthMulticast),
            &or_drop(everywhere),
        ));
        out.push(flow(
            Stage::L2Forward,
            50,
            base,
            in_vni(vni, false).and(Field::EthMulticast),
            &or_drop(local),
        ));
        out
    }
}

/// Frames of VNI `vni` from this host's gateway `g` (what the host routes into the network).
pub(super) fn from_gateway(vni: u32, g: &OverlayGateway) -> Match {
    Match::any()
        .and(Field::InPort(Port::Named(g.port.clone())))
        .and(Field::TunId(vni))
}

/// Frames of VNI `vni`, from local containers (`local`) or not.
pub(super) fn in_vni(vni: u32, local: bool) -> Match {
    Match::any()
        .and(Field::Reg0(u32::from(local)))
        .and(Field::TunId(vni))
}
