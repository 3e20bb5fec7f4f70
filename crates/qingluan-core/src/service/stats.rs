//! Traffic counters of this host's endpoints, read from their OVS ports over the OpenFlow
//! channel and turned into the container's directions: what the switch received from a
//! container's port is what the container transmitted. Spoofed frames are the packets of
//! the endpoint's spoof-guard drop flow, read by cookie.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use qingluan_dataplane::openflow::PortStats;
use serde::{Deserialize, Serialize};

use super::{ServiceError, State};
use crate::model::Mode;
use crate::pipeline::{spoof_guard, Cookie, Feature, Stage, FEATURE_MASK};

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Packets dropped.
    pub dropped: u64,
    /// Errors.
    pub errors: u64,
}

/// One endpoint's counters since its port was added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Endpoint ID.
    pub endpoint: String,
    /// Network ID.
    pub network: String,
    /// The network's mode.
    pub mode: Mode,
    /// The container's address.
    pub address: Ipv4Net,
    /// The OVS port (host end of the veth).
    pub port: String,
    /// What the container sent.
    pub transmit: Counters,
    /// What the container received.
    pub receive: Counters,
    /// Frames the spoof guard dropped from the container (another source MAC or address),
    /// since its flows were last installed.
    pub spoofed: u64,
    /// When the port's counters started (seconds since the epoch): when the port was
    /// added to the switch, again after an ovs-vswitchd restart.
    pub started: u64,
}

impl EndpointStats {
    /// The endpoint's counters from its port's: the switch's receive side is the container's
    /// transmit side.
    fn from_port(p: &PortStats) -> (Counters, Counters) {
        let side = |rx: bool| {
            let pick = |(r, t): (u64, u64)| if rx { r } else { t };
            Counters {
                packets: pick(p.packets),
                bytes: pick(p.bytes),
                dropped: pick(p.dropped),
                errors: pick(p.errors),
            }
        };
        (side(true), side(false))
    }
}

impl State {
    /// Counters of every endpoint of this host that has its OVS port (one OpenFlow request
    /// per bridge).
    pub async fn endpoint_stats(&self) -> Result<Vec<EndpointStats>, ServiceError> {
        let nets = self.networks_by_id().await?;
        let eps = self.endpoints().await?;
        let bridges: BTreeSet<String> = eps
            .iter()
            .filter_map(|e| nets.get(&e.network_id))
            .map(|n| n.bridge())
            .collect();
        let mut ports: BTreeMap<String, PortStats> = BTreeMap::new();
        let mut spoofed: BTreeMap<u64, u64> = BTreeMap::new();
        for bridge in &bridges {
            let stats = self
                .reconciler
                .adapters()
                .flows
                .port_stats(bridge)
                .await
                .map_err(|e| ServiceError::Ovs(e.to_string()))?;
            ports.extend(stats.into_iter().map(|p| (p.name.clone(), p)));
            let endpoint_flows = Cookie::bridge(Feature::Endpoint).value();
            let refusals = self
                .reconciler
                .adapters()
                .flows
                .flow_stats(bridge, endpoint_flows, FEATURE_MASK)
                .await
                .map_err(|e| ServiceError::Ovs(e.to_string()))?;
            spoofed.extend(
                refusals
                    .into_iter()
                    .filter(|f| {
                        f.table == Stage::Classify.table()
                            && (f.priority == spoof_guard::REFUSAL_PRIORITY
                                || f.priority == spoof_guard::COPIED_REFUSAL_PRIORITY)
                    })
                    .map(|f| (f.cookie, f.packets)),
            );
        }
        Ok(eps
            .iter()
            .filter_map(|e| {
                let net = nets.get(&e.network_id)?;
                let port = ports.get(&e.host_veth())?;
                let (transmit, receive) = EndpointStats::from_port(port);
                Some(EndpointStats {
                    endpoint: e.id.clone(),
                    network: net.id.clone(),
                    mode: net.mode,
                    address: e.address,
                    port: port.name.clone(),
                    transmit,
                    receive,
                    spoofed: spoofed
                        .get(&Cookie::of(Feature::Endpoint, &e.id).value())
                        .copied()
                        .unwrap_or(0),
                    started: crate::model::now().saturating_sub(port.duration_secs.into()),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_are_the_containers() {
        let p = PortStats {
            name: "qlv1".into(),
            packets: (10, 20),
            bytes: (1000, 2000),
            dropped: (1, 2),
            errors: (0, 3),
            duration_secs: 7,
        };
        let (tx, rx) = EndpointStats::from_port(&p);
        assert_eq!(
            tx,
            Counters {
                packets: 10,
                bytes: 1000,
                dropped: 1,
                errors: 0
            }
        );
        assert_eq!(
            rx,
            Counters {
                packets: 20,
                bytes: 2000,
                dropped: 2,
                errors: 3
            }
        );
    }
}
