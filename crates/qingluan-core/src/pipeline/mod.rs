//! The OpenFlow pipeline of every qingluan bridge: its stages, typed matches, actions and
//! cookies, rendered to flows in one place, and the features that produce the flows, one
//! file each.
//!
//! Stages, in order (a stage's table number is derived from its position, never written):
//!
//! | stage          | table | what it does                                                 |
//! |----------------|-------|--------------------------------------------------------------|
//! | `CLASSIFY`     | 0     | admits frames by source port, MAC and address (the spoof guard) and tags overlay frames with their VNI |
//! | `QOS`          | 5     | an admitted container's egress meter and DSCP mark            |
//! | `CONNTRACK`    | 10    | a network with ACLs: IPv4 through the connection tracker, in the network's zone |
//! | `POLICY`       | 15    | the network's ACL rules and default, on tracked packets       |
//! | `ARP_RESPOND`  | 20    | answers ARP requests of local overlay containers on the spot  |
//! | `L2_FORWARD`   | 25    | switching: `NORMAL` on network bridges, by (VNI, MAC) on the overlay bridge |
//!
//! Features, each a type implementing [`FlowFeature`] in its own file (it declares the
//! stages it writes, produces its flows and the OVS ports it needs; [`collect`] holds it to
//! its stages): [`SegmentBridge`] (a nat/nonat network bridge), [`UplinkSwitch`] and
//! [`PhysicalPorts`] (an uplink bridge and the containers on it), on the vxlan bridge
//! [`OverlayBase`] (its own flows and tunnel port), [`OverlayForwarding`] (admission and
//! forwarding by VNI and MAC), [`ArpResponder`] and [`OverlayGatewayPort`] (the `nat=true`
//! gateway), on every bridge [`EndpointQos`] (egress meters and DSCP marks), and on
//! every bridge of a network [`NetworkAcl`] (conntrack and the ACL rules).
//! [`spoof_guard`] is the one definition of what an endpoint may send, used by all of them.
//!
//! Bridges run with `fail_mode=secure`, so without these flows nothing passes: isolation never
//! depends on flows being present, and a restarted ovs-vswitchd is detected by the missing
//! sentinel flow and re-programmed.
//!
//! Cookies are a typed [`Cookie`]: bits 56–63 the [`Feature`], bits 0–31 the owner (first 8
//! hex digits of the network or endpoint ID). `docs/pipeline.md` shows example flows.

pub mod acl;
pub mod arp_responder;
pub mod mirror;
pub mod overlay;
pub mod overlay_gateway;
pub mod physical;
pub mod qos;
pub mod segment;
pub mod spoof_guard;

use std::net::{IpAddr, Ipv4Addr};

use qingluan_dataplane::openflow::{self, Flow};
pub use qingluan_dataplane::openflow::{Field, Port};
use qingluan_dataplane::ovsdb::PortSpec;

use crate::model::Mac;

pub use acl::{AclBridge, NetworkAcl, ResolvedRule};
pub use arp_responder::ArpResponder;
pub use mirror::{Mirrors, Watched};
pub use overlay::{OverlayBase, OverlayForwarding, RemoteEndpoint, Tunnel};
pub use overlay_gateway::{OverlayGateway, OverlayGatewayPort};
pub use physical::{PhysicalPorts, UplinkSwitch};
pub use qos::EndpointQos;
pub use segment::SegmentBridge;

/// A pipeline stage; its table number follows from its place in [`STAGES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Admission by source port, MAC and address.
    Classify,
    /// Egress meters and DSCP marks of admitted containers.
    Qos,
    /// Copies of watched containers' traffic to mirror ports.
    Mirror,
    /// The connection tracker (networks with ACLs).
    Conntrack,
    /// ACL rules and defaults.
    Policy,
    /// Allowed connections committed to the tracker, marked with the policy's generation.
    Commit,
    /// Local answers to ARP requests (overlay bridge).
    ArpRespond,
    /// Switching.
    L2Forward,
}

/// Every stage, in pipeline order.
pub const STAGES: [Stage; 8] = [
    Stage::Classify,
    Stage::Qos,
    Stage::Mirror,
    Stage::Conntrack,
    Stage::Policy,
    Stage::Commit,
    Stage::ArpRespond,
    Stage::L2Forward,
];

/// Table numbers between consecutive stages, room for stages to come.
const TABLE_STEP: u8 = 5;

impl Stage {
    /// The OpenFlow table of this stage.
    pub fn table(self) -> u8 {
        let pos = STAGES
            .iter()
            .position(|s| *s == self)
            .expect("every stage is listed");
        pos as u8 * TABLE_STEP
    }

    /// The stage at OpenFlow table `table`, if any.
    pub fn at_table(table: u8) -> Option<Stage> {
        STAGES.iter().copied().find(|s| s.table() == table)
    }

    /// The name used in docs and logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Classify => "CLASSIFY",
            Stage::Qos => "QOS",
            Stage::Mirror => "MIRROR",
            Stage::Conntrack => "CONNTRACK",
            Stage::Policy => "POLICY",
            Stage::Commit => "COMMIT",
            Stage::ArpRespond => "ARP_RESPOND",
            Stage::L2Forward => "L2_FORWARD",
        }
    }
}

/// The feature a flow belongs to, the top byte of its cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// A network's base flows.
    Base = 0x01,
    /// An endpoint's flows.
    Endpoint = 0x02,
    /// Flows towards another host's endpoint.
    Remote = 0x03,
    /// The overlay bridge's own flows.
    Overlay = 0x04,
    /// An uplink bridge's own flows.
    Uplink = 0x05,
    /// An endpoint's meter and DSCP mark.
    Qos = 0x06,
    /// An ACL rule's flows (owner: the rule's ID).
    Acl = 0x07,
    /// A network's conntrack and ACL defaults.
    AclBase = 0x08,
    /// A watched endpoint's mirror flows.
    Mirror = 0x09,
}

impl Feature {
    const ALL: [Feature; 9] = [
        Feature::Base,
        Feature::Endpoint,
        Feature::Remote,
        Feature::Overlay,
        Feature::Uplink,
        Feature::Qos,
        Feature::Acl,
        Feature::AclBase,
        Feature::Mirror,
    ];

    /// The feature of a cookie as the switch shows it (fingerprint bits and all).
    pub fn of_cookie(cookie: u64) -> Option<Feature> {
        let byte = (cookie >> 56) as u8;
        Feature::ALL.into_iter().find(|f| *f as u8 == byte)
    }

    /// What its flows are, in the words of docs/pipeline.md.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::Base => "network base flows",
            Feature::Endpoint => "endpoint admission (spoof guard)",
            Feature::Remote => "another host's endpoint",
            Feature::Overlay => "overlay bridge",
            Feature::Uplink => "uplink bridge",
            Feature::Qos => "endpoint QoS (meter and mark)",
            Feature::Acl => "ACL rule",
            Feature::AclBase => "ACL conntrack and default",
            Feature::Mirror => "mirror",
        }
    }
}

/// The cookie bits that hold the owner: the first 8 hex digits of its network or endpoint ID.
pub const OWNER_MASK: u64 = 0x0000_0000_ffff_ffff;

/// The cookie bits that hold the [`Feature`].
pub const FEATURE_MASK: u64 = 0xff00_0000_0000_0000;

/// A flow's cookie: its feature and its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// The feature.
    pub feature: Feature,
    /// The first 8 hex digits of the owning network or endpoint ID; 0 for a bridge's own.
    pub owner: u32,
}

impl Cookie {
    /// The cookie of `feature` for the network or endpoint with ID `id`.
    pub fn of(feature: Feature, id: &str) -> Cookie {
        let owner = u32::from_str_radix(crate::model::head(id, 8), 16).unwrap_or(0);
        Cookie { feature, owner }
    }

    /// The cookie of a bridge's own flows of `feature`.
    pub fn bridge(feature: Feature) -> Cookie {
        Cookie { feature, owner: 0 }
    }

    /// The 64-bit value OpenFlow carries.
    pub fn value(self) -> u64 {
        ((self.feature as u64) << 56) | u64::from(self.owner)
    }
}

/// A feature of the pipeline, one type per file: it declares the stages its flows are in
/// and produces them; [`collect`] gathers the flows of a bridge's features and holds each
/// to its declaration.
pub trait FlowFeature {
    /// The feature's name, for docs and messages.
    fn name(&self) -> &'static str;
    /// The stages its flows are in.
    fn stages(&self) -> &'static [Stage];
    /// Its flows.
    fn flows(&self) -> Vec<Flow>;
    /// The OVS ports it needs besides the endpoints' own (none by default).
    fn ports(&self) -> Vec<PortSpec> {
        Vec::new()
    }
}

/// The flows of `features`, in order. A flow outside its feature's declared stages is a
/// programming error, caught in debug builds, so by every test that builds a dataplane.
pub fn collect(features: &[&dyn FlowFeature]) -> Vec<Flow> {
    let mut out = Vec::new();
    for f in features {
        let flows = f.flows();
        debug_assert!(
            flows
                .iter()
                .all(|x| f.stages().iter().any(|s| s.table() == x.table)),
            "feature {} writes outside its stages {:?}",
            f.name(),
            f.stages()
        );
        out.extend(flows);
    }
    out
}

/// A match: its fields, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match(pub Vec<Field>);

impl Match {
    /// Matches everything.
    pub fn any() -> Match {
        Match::default()
    }

    /// This match and `f`.
    pub fn and(mut self, f: Field) -> Match {
        self.0.push(f);
        self
    }
}

/// One action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Continue at a later stage.
    Goto(Stage),
    /// Out of a port.
    Output(String),
    /// Back out of the port it came in on.
    InPort,
    /// The bridge's MAC-learning switch.
    Normal,
    /// Nothing (the only action of a flow that drops).
    Drop,
    /// Set the tunnel ID (VNI).
    SetTunId(u32),
    /// Set the tunnel's remote end.
    SetTunDst(IpAddr),
    /// Set register 0.
    LoadReg0(u32),
    /// Set register 1 (an uplink bridge's ACL: the network's zone).
    LoadReg1(u32),
    /// Pass through a meter (a rate limit).
    Meter(u32),
    /// Set the DSCP bits (the flow matches IPv4 or IPv6).
    SetDscp(u8),
    /// Through the connection tracker (see the adapter's `Action::Ct`).
    Ct {
        /// Record the connection.
        commit: bool,
        /// The mark a commit sets.
        mark: Option<u32>,
        /// The zone.
        zone: u16,
        /// The stage the tracked packet goes on in.
        table: Option<Stage>,
    },
    /// Turn an ARP request into the reply that `mac` has `ip` (the ARP responder).
    ArpReply {
        /// The MAC answered.
        mac: Mac,
        /// The address asked for.
        ip: Ipv4Addr,
    },
}

impl Action {
    /// The adapter's actions for this one.
    fn lower(&self, out: &mut Vec<openflow::Action>) {
        use openflow::{Action as A, Header as H};
        match self {
            Action::Goto(stage) => out.push(A::Goto(stage.table())),
            Action::Output(p) => out.push(A::Output(Port::Named(p.clone()))),
            Action::InPort => out.push(A::InPort),
            Action::Normal => out.push(A::Normal),
            Action::Drop => {}
            Action::SetTunId(v) => out.push(A::SetTunId(*v)),
            Action::SetTunDst(ip) => out.push(A::SetTunDst(*ip)),
            Action::LoadReg0(v) => out.push(A::LoadReg0(*v)),
            Action::LoadReg1(v) => out.push(A::LoadReg1(*v)),
            Action::Meter(m) => out.push(A::Meter(*m)),
            Action::SetDscp(d) => out.push(A::SetDscp(*d)),
            Action::Ct {
                commit,
                mark,
                zone,
                table,
            } => out.push(A::Ct {
                commit: *commit,
                mark: *mark,
                zone: *zone,
                table: table.map(Stage::table),
            }),
            Action::ArpReply { mac, ip } => out.extend([
                A::Move(H::EthSrc, H::EthDst),
                A::SetEthSrc(mac.0),
                A::SetArpOp(2),
                A::Move(H::ArpSha, H::ArpTha),
                A::Move(H::ArpSpa, H::ArpTpa),
                A::SetArpSha(mac.0),
                A::SetArpSpa(*ip),
                A::InPort,
            ]),
        }
    }
}

/// A flow of `stage`, for the OpenFlow adapter.
pub fn flow(stage: Stage, priority: u16, cookie: Cookie, m: Match, actions: &[Action]) -> Flow {
    let mut lowered = Vec::new();
    for a in actions {
        a.lower(&mut lowered);
    }
    Flow {
        table: stage.table(),
        priority,
        cookie: cookie.value(),
        matches: m.0,
        actions: lowered,
    }
}

/// Sorts flows by table, priority (highest first) and match: a stable order, so an
/// unchanged table compares equal.
pub fn sort(flows: &mut [Flow]) {
    flows.sort_by_cached_key(|f| (f.table, std::cmp::Reverse(f.priority), f.render_match()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_follow_the_stage_order() {
        let tables: Vec<u8> = STAGES.iter().map(|s| s.table()).collect();
        assert_eq!(tables, [0, 5, 10, 15, 20, 25, 30, 35]);
        assert_eq!(
            STAGES.map(Stage::name),
            [
                "CLASSIFY",
                "QOS",
                "MIRROR",
                "CONNTRACK",
                "POLICY",
                "COMMIT",
                "ARP_RESPOND",
                "L2_FORWARD"
            ]
        );
    }

    struct Stray;

    impl FlowFeature for Stray {
        fn name(&self) -> &'static str {
            "stray"
        }
        fn stages(&self) -> &'static [Stage] {
            &[Stage::Classify]
        }
        fn flows(&self) -> Vec<Flow> {
            vec![flow(
                Stage::L2Forward,
                0,
                Cookie::bridge(Feature::Base),
                Match::any(),
                &[Action::Drop],
            )]
        }
    }

    #[test]
    #[should_panic(expected = "feature stray writes outside its stages")]
    fn a_feature_keeps_to_its_stages() {
        collect(&[&Stray]);
    }

    #[test]
    fn cookie_layout() {
        assert_eq!(
            Cookie::of(Feature::Endpoint, "deadbeef0123").value(),
            0x0200_0000_dead_beef
        );
        assert_eq!(
            Cookie::bridge(Feature::Uplink).value(),
            0x0500_0000_0000_0000
        );
    }

    #[test]
    fn renders_matches_and_actions() {
        let f = flow(
            Stage::Classify,
            100,
            Cookie::bridge(Feature::Overlay),
            Match::any().and(Field::InPort(Port::Local)).and(Field::Ip),
            &[Action::SetTunId(7), Action::Goto(Stage::L2Forward)],
        );
        assert_eq!(
            f.render(),
            "table=0,priority=100,cookie=0x400000000000000,in_port=LOCAL,ip,actions=set_field:7->tun_id,goto_table:35"
        );
    }
}
