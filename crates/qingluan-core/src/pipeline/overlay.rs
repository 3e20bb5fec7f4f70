//! The overlay bridge shared by all vxlan networks. `CLASSIFY` admits local ports as the
//! spoof guard allows, tags their frames with the network's VNI (`tun_id`) and marks them
//! local (`reg0=1`), and admits the tunnel port (VNI from the packet); `ARP_RESPOND` answers
//! ARP requests of local containers for every known address of their VNI on the spot;
//! `L2_FORWARD` delivers by (VNI, MAC): to a local port, or through the tunnel to the host
//! holding that MAC; broadcast and multicast of a local container go to its VNI's local
//! ports and to each other host with endpoints in that VNI, those from the tunnel only to
//! local ports; unknown unicast is dropped: every location comes from the cluster store,
//! nothing is learnt by flooding.
//!
//! The `nat=true` gateway serves only this host's containers: its frames are classified like
//! the tunnel's (`reg0=0`), so they reach local ports only, and frames for its MAC are taken
//! only from local containers; each host answers ARP for the gateway itself.

use std::net::{IpAddr, Ipv4Addr};

use qingluan_dataplane::openflow::Flow;

use super::{
    flow, spoof_guard, Action, Cookie, Feature, Field, FlowFeature, Match, Port, Stage, STAGES,
};
use crate::model::{Endpoint, Mac, Network};

/// Where another host's endpoint of an overlay network is.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The host's gateway of an overlay network with `nat=true`: an internal port of the overlay
/// bridge with the same MAC and address on every host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayGateway {
    /// The internal port.
    pub port: String,
    /// Its MAC.
    pub mac: Mac,
    /// The gateway address.
    pub ip: Ipv4Addr,
}

/// The overlay bridge's own flows: default drops and the tunnel port's admission.
pub struct OverlayBase<'a> {
    /// The tunnel port.
    pub tunnel: &'a str,
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
        overlay_base(self.tunnel)
    }
}

/// One overlay network on the overlay bridge: its local endpoints, the endpoints other
/// hosts have in it, and this host's gateway.
pub struct OverlayNetwork<'a> {
    /// The network.
    pub net: &'a Network,
    /// Its VNI.
    pub vni: u32,
    /// Its endpoints on this host.
    pub endpoints: &'a [&'a Endpoint],
    /// Its endpoints on other hosts.
    pub remote: &'a [RemoteEndpoint],
    /// The tunnel port.
    pub tunnel: &'a str,
    /// This host's gateway (`nat=true`).
    pub gateway: Option<&'a OverlayGateway>,
}

impl FlowFeature for OverlayNetwork<'_> {
    fn name(&self) -> &'static str {
        "overlay network"
    }

    fn stages(&self) -> &'static [Stage] {
        &STAGES
    }

    fn flows(&self) -> Vec<Flow> {
        overlay_flows(
            self.net,
            self.vni,
            self.endpoints,
            self.remote,
            self.tunnel,
            self.gateway,
        )
    }
}

fn overlay_base(tunnel: &str) -> Vec<Flow> {
    let c = Cookie::bridge(Feature::Overlay);
    vec![
        flow(Stage::Classify, 0, c, Match::any(), &[Action::Drop]),
        flow(
            Stage::Classify,
            100,
            c,
            Match::any().and(Field::InPort(Port::Named(tunnel.into()))),
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
    ]
}

/// Frames of VNI `vni`, from local containers (`local`) or not.
fn in_vni(vni: u32, local: bool) -> Match {
    Match::any()
        .and(Field::Reg0(u32::from(local)))
        .and(Field::TunId(vni))
}

/// A local container's ARP request for `ip` in VNI `vni`.
fn asks_for(vni: u32, ip: Ipv4Addr) -> Match {
    in_vni(vni, true)
        .and(Field::Arp)
        .and(Field::ArpOp(1))
        .and(Field::ArpTpa(ip))
}

fn overlay_flows(
    net: &Network,
    vni: u32,
    endpoints: &[&Endpoint],
    remote: &[RemoteEndpoint],
    tunnel: &str,
    gateway: Option<&OverlayGateway>,
) -> Vec<Flow> {
    let base = Cookie::of(Feature::Base, &net.id);
    let to_vtep = |vtep: IpAddr| [Action::SetTunDst(vtep), Action::Output(tunnel.into())];
    let admit = [
        Action::SetTunId(vni),
        Action::LoadReg0(1),
        Action::Goto(Stage::ArpRespond),
    ];
    let mut out = Vec::new();
    for ep in endpoints {
        let c = Cookie::of(Feature::Endpoint, &ep.id);
        let (mac, ip) = (ep.mac, ep.address.addr());
        out.push(flow(Stage::Classify, 100, c, spoof_guard::ipv4(ep), &admit));
        out.push(flow(Stage::Classify, 100, c, spoof_guard::arp(ep), &admit));
        out.push(flow(
            Stage::ArpRespond,
            100,
            c,
            asks_for(vni, ip),
            &[Action::ArpReply { mac, ip }],
        ));
        out.push(flow(
            Stage::L2Forward,
            100,
            c,
            Match::any()
                .and(Field::TunId(vni))
                .and(Field::EthDst(mac.0)),
            &[Action::Output(ep.host_veth())],
        ));
    }
    for r in remote {
        let c = Cookie::of(Feature::Remote, &r.id);
        out.push(flow(
            Stage::ArpRespond,
            100,
            c,
            asks_for(vni, r.ip),
            &[Action::ArpReply {
                mac: r.mac,
                ip: r.ip,
            }],
        ));
        out.push(flow(
            Stage::L2Forward,
            100,
            c,
            in_vni(vni, true).and(Field::EthDst(r.mac.0)),
            &to_vtep(r.vtep),
        ));
    }
    let local: Vec<Action> = endpoints
        .iter()
        .map(|e| Action::Output(e.host_veth()))
        .collect();
    let mut vteps: Vec<IpAddr> = remote.iter().map(|r| r.vtep).collect();
    vteps.sort();
    vteps.dedup();
    let mut everywhere = local.clone();
    if let Some(g) = gateway {
        out.push(flow(
            Stage::Classify,
            100,
            base,
            Match::any()
                .and(Field::InPort(Port::Named(g.port.clone())))
                .and(Field::EthSrc(g.mac.0)),
            &[Action::SetTunId(vni), Action::Goto(Stage::ArpRespond)],
        ));
        out.push(flow(
            Stage::ArpRespond,
            100,
            base,
            asks_for(vni, g.ip),
            &[Action::ArpReply {
                mac: g.mac,
                ip: g.ip,
            }],
        ));
        out.push(flow(
            Stage::L2Forward,
            100,
            base,
            in_vni(vni, true).and(Field::EthDst(g.mac.0)),
            &[Action::Output(g.port.clone())],
        ));
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
