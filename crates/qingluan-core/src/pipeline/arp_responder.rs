//! The ARP responder of an overlay network: the overlay bridge answers a local container's
//! ARP request for any known address of its VNI on the spot — its local neighbours, the
//! endpoints other hosts have in it, and the gateway — so no ARP broadcast crosses the
//! tunnel; and the host's ARP requests (from the `nat=true` gateway) for other hosts'
//! containers, which the host reaches when it routes from a connected network.

use std::net::Ipv4Addr;

use qingluan_dataplane::openflow::Flow;

use super::overlay::{from_gateway, in_vni};
use super::{
    flow, Action, Cookie, Feature, Field, FlowFeature, Match, OverlayGateway, RemoteEndpoint, Stage,
};
use crate::model::{Endpoint, Network};

/// The answers of one overlay network.
pub struct ArpResponder<'a> {
    /// The network.
    pub net: &'a Network,
    /// Its VNI.
    pub vni: u32,
    /// Its endpoints on this host.
    pub endpoints: &'a [&'a Endpoint],
    /// Its endpoints on other hosts.
    pub remote: &'a [RemoteEndpoint],
    /// This host's gateway (`nat=true`).
    pub gateway: Option<&'a OverlayGateway>,
}

impl FlowFeature for ArpResponder<'_> {
    fn name(&self) -> &'static str {
        "ARP responder"
    }

    fn stages(&self) -> &'static [Stage] {
        &[Stage::ArpRespond]
    }

    fn flows(&self) -> Vec<Flow> {
        let answer = |cookie, mac, ip| {
            flow(
                Stage::ArpRespond,
                100,
                cookie,
                asks_for(self.vni, ip),
                &[Action::ArpReply { mac, ip }],
            )
        };
        let mut out: Vec<Flow> = self
            .endpoints
            .iter()
            .map(|ep| {
                answer(
                    Cookie::of(Feature::Endpoint, &ep.id),
                    ep.mac,
                    ep.address.addr(),
                )
            })
            .collect();
        out.extend(
            self.remote
                .iter()
                .map(|r| answer(Cookie::of(Feature::Remote, &r.id), r.mac, r.ip)),
        );
        if let Some(g) = self.gateway {
            out.extend(self.remote.iter().map(|r| {
                flow(
                    Stage::ArpRespond,
                    100,
                    Cookie::of(Feature::Remote, &r.id),
                    from_gateway(self.vni, g)
                        .and(Field::Arp)
                        .and(Field::ArpOp(1))
                        .and(Field::ArpTpa(r.ip)),
                    &[Action::ArpReply {
                        mac: r.mac,
                        ip: r.ip,
                    }],
                )
            }));
        }
        if let Some(g) = self.gateway {
            out.push(answer(Cookie::of(Feature::Base, &self.net.id), g.mac, g.ip));
        }
        out
    }
}

/// A local container's ARP request for `ip` in VNI `vni`.
fn asks_for(vni: u32, ip: Ipv4Addr) -> Match {
    in_vni(vni, true)
        .and(Field::Arp)
        .and(Field::ArpOp(1))
        .and(Field::ArpTpa(ip))
}
