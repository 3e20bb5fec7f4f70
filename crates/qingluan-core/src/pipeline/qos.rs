//! An endpoint's egress QoS in the `QOS` stage: what the spoof guard admitted from its port
//! passes its meter (the egress rate limit) and gets its priority class's DSCP mark, then
//! goes on as the bridge's own `QOS` flow would send it (`then`). Endpoints with neither
//! have no flow here.

use qingluan_dataplane::openflow::Flow;

use super::{flow, spoof_guard, Action, Cookie, Feature, Field, FlowFeature, Stage};
use crate::model::Endpoint;

/// One endpoint's meter and mark.
pub struct Marked<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    /// Its meter's ID, if it has an egress limit.
    pub meter: Option<u32>,
    /// Its DSCP mark, if its class is set.
    pub dscp: Option<u8>,
}

/// The egress QoS of a bridge's endpoints.
pub struct EndpointQos<'a> {
    /// The endpoints.
    pub endpoints: &'a [Marked<'a>],
    /// Where the bridge's traffic goes after `QOS`.
    pub then: &'a [Action],
}

impl FlowFeature for EndpointQos<'_> {
    fn name(&self) -> &'static str {
        "endpoint qos"
    }

    fn stages(&self) -> &'static [Stage] {
        &[Stage::Qos]
    }

    fn flows(&self) -> Vec<Flow> {
        let mut out = Vec::new();
        for m in self.endpoints {
            let c = Cookie::of(Feature::Qos, &m.endpoint.id);
            let metered: Vec<Action> = m.meter.map(Action::Meter).into_iter().collect();
            let port = spoof_guard::port(m.endpoint);
            if let Some(d) = m.dscp {
                let mut marked = metered.clone();
                marked.push(Action::SetDscp(d));
                marked.extend_from_slice(self.then);
                for ip in [Field::Ip, Field::Ipv6] {
                    out.push(flow(Stage::Qos, 100, c, port.clone().and(ip), &marked));
                }
            }
            if !metered.is_empty() {
                let mut actions = metered;
                actions.extend_from_slice(self.then);
                out.push(flow(Stage::Qos, 90, c, port, &actions));
            }
        }
        out
    }
}
