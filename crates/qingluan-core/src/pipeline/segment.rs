//! A nat or nonat network's own bridge: the gateway (LOCAL) port and each endpoint, as the
//! spoof guard admits it, go on through the ACL stages (`CONNTRACK`, endpoints through
//! `QOS` first) to a `NORMAL` switch; anything else is dropped.

use qingluan_dataplane::openflow::Flow;

use super::{
    flow, sort, spoof_guard, Action, Cookie, Feature, Field, FlowFeature, Match, Port, Stage,
};
use crate::model::{Endpoint, Network};

/// A network bridge with its endpoints' ports.
pub struct SegmentBridge<'a> {
    /// The network.
    pub net: &'a Network,
    /// Its endpoints.
    pub endpoints: &'a [&'a Endpoint],
}

impl SegmentBridge<'_> {
    /// The cookie of the flow whose absence means the bridge lost its flows.
    pub fn sentinel(&self) -> u64 {
        Cookie::of(Feature::Base, &self.net.id).value()
    }
}

impl FlowFeature for SegmentBridge<'_> {
    fn name(&self) -> &'static str {
        "segment"
    }

    fn stages(&self) -> &'static [Stage] {
        &[Stage::Classify, Stage::Qos, Stage::Mirror, Stage::L2Forward]
    }

    fn flows(&self) -> Vec<Flow> {
        flows(self.net, self.endpoints)
    }
}

fn flows(net: &Network, endpoints: &[&Endpoint]) -> Vec<Flow> {
    let base = Cookie::of(Feature::Base, &net.id);
    let forward = [Action::Goto(Stage::Mirror)];
    let mut out = vec![
        flow(Stage::Classify, 0, base, Match::any(), &[Action::Drop]),
        flow(
            Stage::Classify,
            200,
            base,
            Match::any().and(Field::InPort(Port::Local)),
            &forward,
        ),
        flow(Stage::Qos, 0, base, Match::any(), &forward),
        flow(
            Stage::Mirror,
            0,
            base,
            Match::any(),
            &[Action::Goto(Stage::Conntrack)],
        ),
        flow(Stage::L2Forward, 0, base, Match::any(), &[Action::Normal]),
    ];
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
    sort(&mut out);
    out
}
