//! The spoof guard: what a container's port may send. Frames pass only with the endpoint's
//! own MAC and, for IPv4 and ARP, its own address; IPv6 only with its MAC. These matches
//! are the one definition every bridge kind admits endpoints with; everything else from the
//! port meets the endpoint's own drop flow ([`refusal`]), whose counter is the endpoint's
//! spoofed frames; a mirrored endpoint's ([`copied_refusal`]) copies them to its mirror
//! ports before dropping them.

use qingluan_dataplane::openflow::Flow;

use super::{flow, Action, Cookie, Feature, Field, Match, Port, Stage};
use crate::model::Endpoint;

/// Priority of an endpoint's drop flow, below its admissions.
pub const REFUSAL_PRIORITY: u16 = 90;

/// Priority of a mirrored endpoint's drop flow that copies what it drops, above the plain
/// one (`pipeline/mirror.rs`).
pub const COPIED_REFUSAL_PRIORITY: u16 = REFUSAL_PRIORITY + 1;

/// The endpoint's drop flow in `CLASSIFY`: whatever its port sends that no admission
/// matched. Counted by cookie, it is the endpoint's spoofed frames.
pub fn refusal(ep: &Endpoint) -> Flow {
    flow(
        Stage::Classify,
        REFUSAL_PRIORITY,
        Cookie::of(Feature::Endpoint, &ep.id),
        port(ep),
        &[Action::Drop],
    )
}

/// The drop flow of a mirrored endpoint: what [`refusal`] drops, first copied out of
/// `to` (so an analyzer, or the detector's ARP spoofing check, sees the attempts). Same
/// cookie, so its counter is still the endpoint's spoofed frames.
pub fn copied_refusal(ep: &Endpoint, to: &[String]) -> Flow {
    let mut actions: Vec<Action> = to.iter().cloned().map(Action::Output).collect();
    if actions.is_empty() {
        actions.push(Action::Drop);
    }
    flow(
        Stage::Classify,
        COPIED_REFUSAL_PRIORITY,
        Cookie::of(Feature::Endpoint, &ep.id),
        port(ep),
        &actions,
    )
}

/// The endpoint's own IPv4 traffic from its port.
pub fn ipv4(ep: &Endpoint) -> Match {
    from(ep).and(Field::Ip).and(Field::IpSrc(ep.address.addr()))
}

/// The endpoint's own ARP from its port.
pub fn arp(ep: &Endpoint) -> Match {
    from(ep)
        .and(Field::Arp)
        .and(Field::ArpSpa(ep.address.addr()))
        .and(Field::ArpSha(ep.mac.0))
}

/// The endpoint's IPv6 traffic (by MAC) from its port.
pub fn ipv6(ep: &Endpoint) -> Match {
    from(ep).and(Field::Ipv6)
}

/// Everything the endpoint may send: [`ipv4`], [`arp`] and [`ipv6`].
pub fn admitted(ep: &Endpoint) -> [Match; 3] {
    [ipv4(ep), arp(ep), ipv6(ep)]
}

/// Anything from the endpoint's port.
pub fn port(ep: &Endpoint) -> Match {
    Match::any().and(Field::InPort(Port::Named(ep.host_veth())))
}

fn from(ep: &Endpoint) -> Match {
    port(ep).and(Field::EthSrc(ep.mac.0))
}
