//! The `nat=true` gateway of an overlay network: an internal port of the overlay bridge
//! with the same MAC and address on every host. It serves only this host's containers: its
//! frames are classified like the tunnel's (`reg0=0`), so they reach local ports only, and
//! frames for its MAC are taken only from local containers; each host answers ARP for the
//! gateway itself (`arp_responder.rs`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use qingluan_dataplane::openflow::Flow;
use qingluan_dataplane::ovsdb::PortSpec;

use super::overlay::in_vni;
use super::{flow, Action, Cookie, Feature, Field, FlowFeature, Match, Port, Stage};
use crate::model::{Mac, Network};

/// Where the gateway is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayGateway {
    /// The internal port.
    pub port: String,
    /// Its MAC.
    pub mac: Mac,
    /// The gateway address.
    pub ip: Ipv4Addr,
}

/// The gateway's port and flows on the overlay bridge.
pub struct OverlayGatewayPort<'a> {
    /// The network.
    pub net: &'a Network,
    /// Its VNI, when known (no flows without one).
    pub vni: Option<u32>,
    /// The overlay bridge.
    pub bridge: &'a str,
    /// The gateway.
    pub gateway: &'a OverlayGateway,
    /// `external_ids` of the port.
    pub ids: BTreeMap<String, String>,
}

impl FlowFeature for OverlayGatewayPort<'_> {
    fn name(&self) -> &'static str {
        "overlay gateway"
    }

    fn stages(&self) -> &'static [Stage] {
        &[Stage::Classify, Stage::L2Forward]
    }

    fn flows(&self) -> Vec<Flow> {
        let Some(vni) = self.vni else {
            return Vec::new();
        };
        let (g, base) = (self.gateway, Cookie::of(Feature::Base, &self.net.id));
        vec![
            flow(
                Stage::Classify,
                100,
                base,
                Match::any()
                    .and(Field::InPort(Port::Named(g.port.clone())))
                    .and(Field::EthSrc(g.mac.0)),
                &[Action::SetTunId(vni), Action::Goto(Stage::Mirror)],
            ),
            flow(
                Stage::L2Forward,
                100,
                base,
                in_vni(vni, true).and(Field::EthDst(g.mac.0)),
                &[Action::Output(g.port.clone())],
            ),
        ]
    }

    /// The internal port that holds the gateway address, with the gateway's MAC.
    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec {
            bridge: self.bridge.into(),
            name: self.gateway.port.clone(),
            kind: "internal".into(),
            tag: None,
            external_ids: self.ids.clone(),
            mtu_request: None,
            options: Default::default(),
            mac: Some(self.gateway.mac.to_string()),
            qos: None,
        }]
    }
}
