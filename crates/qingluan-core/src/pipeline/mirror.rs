//! Mirroring in the `MIRROR` stage (`qingluan mirror`, see `mirror.rs`): a copy of every
//! frame a watched container sends (by its port) or is sent (by its MAC, on the overlay
//! bridge within its VNI) goes out of each of its mirror ports, and the frame itself goes on
//! to `CONNTRACK` unchanged. The stage follows `QOS`, so the copy is what the container's
//! meter let through. A frame between two watched containers is copied once (by its sender's
//! port). What the spoof guard refuses from a watched container is copied too, in
//! `CLASSIFY`, before it is dropped (`spoof_guard::copied_refusal`). A bridge without
//! mirrors has only its base flow here. What comes in on a mirror interface (a host
//! interface added as a port) is dropped in `CLASSIFY`.

use qingluan_dataplane::openflow::Flow;

use super::{flow, Action, Cookie, Feature, Field, FlowFeature, Match, Port, Stage};
use crate::model::Endpoint;

/// A watched endpoint and where its copies go.
#[derive(Clone, Debug)]
pub struct Watched<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    /// Its network's VNI on the overlay bridge.
    pub vni: Option<u32>,
    /// The mirror ports (OVS port names on the same bridge).
    pub to: Vec<String>,
}

/// The mirrors of one bridge.
pub struct Mirrors<'a> {
    /// The watched endpoints.
    pub watched: &'a [Watched<'a>],
    /// Mirror ports that are host interfaces (on any bridge; only those named in
    /// `watched` count here).
    pub interfaces: &'a [String],
}

impl FlowFeature for Mirrors<'_> {
    fn name(&self) -> &'static str {
        "mirror"
    }

    fn stages(&self) -> &'static [Stage] {
        &[Stage::Classify, Stage::Mirror]
    }

    fn flows(&self) -> Vec<Flow> {
        let mut out = Vec::new();
        let mut sinks: Vec<&String> = self
            .interfaces
            .iter()
            .filter(|i| self.watched.iter().any(|w| w.to.contains(i)))
            .collect();
        sinks.sort();
        sinks.dedup();
        for i in sinks {
            let c = Cookie::bridge(Feature::Mirror);
            let from = Match::any().and(Field::InPort(Port::Named(i.clone())));
            out.push(flow(Stage::Classify, 300, c, from, &[Action::Drop]));
        }
        for w in self.watched {
            let ep = w.endpoint;
            let c = Cookie::of(Feature::Mirror, &ep.id);
            let mut actions: Vec<Action> = w.to.iter().cloned().map(Action::Output).collect();
            actions.push(Action::Goto(Stage::Conntrack));
            out.push(super::spoof_guard::copied_refusal(ep, &w.to));
            let sent = Match::any().and(Field::InPort(Port::Named(ep.host_veth())));
            out.push(flow(Stage::Mirror, 100, c, sent, &actions));
            let mut to = Match::any();
            if let Some(vni) = w.vni {
                to = to.and(Field::TunId(vni));
            }
            out.push(flow(
                Stage::Mirror,
                90,
                c,
                to.and(Field::EthDst(ep.mac.0)),
                &actions,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{ep, net};
    use crate::model::Mode;

    #[test]
    fn copies_go_out_of_every_mirror_port_and_the_frame_goes_on() {
        let ep = ep(
            "a1b2c3d4e5f6",
            &net("n", Mode::Vxlan, "10.9.0.0/24"),
            2,
            "a",
        );
        let watched = [Watched {
            endpoint: &ep,
            vni: Some(7),
            to: vec!["qlvt1".into(), "qlvt2".into()],
        }];
        let flows: Vec<String> = Mirrors {
            watched: &watched,
            interfaces: &["qlvt2".into(), "other".into()],
        }
        .flows()
        .iter()
        .map(Flow::render)
        .collect();
        assert_eq!(
            flows,
            [
                "table=0,priority=300,cookie=0x900000000000000,in_port=qlvt2,actions=drop"
                    .to_string(),
                format!(
                    "table=0,priority=91,cookie=0x2000000a1b2c3d4,in_port={},\
                     actions=output:qlvt1,output:qlvt2",
                    ep.host_veth()
                ),
                format!(
                    "table=10,priority=100,cookie=0x9000000a1b2c3d4,in_port={},\
                     actions=output:qlvt1,output:qlvt2,goto_table:15",
                    ep.host_veth()
                ),
                "table=10,priority=90,cookie=0x9000000a1b2c3d4,tun_id=7,dl_dst=02:42:0a:09:00:02,\
                 actions=output:qlvt1,output:qlvt2,goto_table:15"
                    .to_string(),
            ]
        );
    }
}
