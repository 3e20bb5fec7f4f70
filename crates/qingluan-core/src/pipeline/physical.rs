//! An uplink bridge (flat and vlan networks, and the underlay on the userspace datapath):
//! whatever no other flow claims is switched (`NORMAL`), which respects each port's VLAN —
//! the interface and the host's internal port are trunks, flat containers' ports access
//! VLAN 0 (untagged), vlan containers' ports their VLAN ID. A container's port passes only
//! what the spoof guard admits, through `QOS` and `CONNTRACK` (where a network with an ACL
//! takes it, `acl.rs`); anything else from it is dropped.

use qingluan_dataplane::openflow::Flow;

use super::{flow, spoof_guard, Action, Cookie, Feature, FlowFeature, Match, Stage};
use crate::model::Endpoint;

/// An uplink bridge's own flow: switch whatever no other flow claims.
pub struct UplinkSwitch;

impl UplinkSwitch {
    /// The cookie of an uplink bridge's sentinel flow.
    pub fn sentinel(&self) -> u64 {
        Cookie::bridge(Feature::Uplink).value()
    }
}

impl FlowFeature for UplinkSwitch {
    fn name(&self) -> &'static str {
        "uplink switch"
    }

    fn stages(&self) -> &'static [Stage] {
        &[
            Stage::Classify,
            Stage::Qos,
            Stage::Mirror,
            Stage::Conntrack,
            Stage::L2Forward,
        ]
    }

    fn flows(&self) -> Vec<Flow> {
        let c = Cookie::bridge(Feature::Uplink);
        let on = |stage| flow(stage, 0, c, Match::any(), &[Action::Goto(Stage::Mirror)]);
        vec![
            flow(Stage::Classify, 0, c, Match::any(), &[Action::Normal]),
            on(Stage::Qos),
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
                &[Action::Goto(Stage::L2Forward)],
            ),
            flow(Stage::L2Forward, 0, c, Match::any(), &[Action::Normal]),
        ]
    }
}

/// Containers' ports on an uplink bridge.
pub struct PhysicalPorts<'a> {
    /// The containers' endpoints.
    pub endpoints: &'a [&'a Endpoint],
}

impl FlowFeature for PhysicalPorts<'_> {
    fn name(&self) -> &'static str {
        "physical ports"
    }

    fn stages(&self) -> &'static [Stage] {
        &[Stage::Classify]
    }

    fn flows(&self) -> Vec<Flow> {
        physical_flows(self.endpoints)
    }
}

fn physical_flows(endpoints: &[&Endpoint]) -> Vec<Flow> {
    let mut out = Vec::new();
    for ep in endpoints {
        let c = Cookie::of(Feature::Endpoint, &ep.id);
        for m in spoof_guard::admitted(ep) {
            out.push(flow(
                Stage::Classify,
                100,
                c,
                m,
                &[Action::Goto(Stage::Qos)],
            ));
        }
        out.push(spoof_guard::refusal(ep));
    }
    out
}
