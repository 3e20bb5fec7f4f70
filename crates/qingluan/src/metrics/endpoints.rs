//! The endpoints' traffic as Prometheus counters, labelled with what users query by, and
//! kept monotonic. A veth port's counters are the kernel's and survive ovs-vswitchd
//! restarts, but counters OVS keeps itself start again at zero: the spoof-guard flow's when
//! its flow is installed again (every ovs-vswitchd restart), an internal or tap port's when
//! the port is re-created. A reading below the last one adds the last one to the endpoint's
//! offset. An endpoint is forgotten only when its record is gone. The offsets live in the daemon's
//! memory; a daemon restart reads OVS's counters as they are, which are unchanged unless
//! OVS restarted too, and then `qingluan_endpoint_start_time_seconds` moves to the port's
//! new start.
//!
//! IDs in labels (network, endpoint, container) are Docker's 12-character short IDs, as
//! `docker ps` shows them: a third of the size of a scrape with full IDs, and unique in
//! practice.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use qingluan_core::model::head;
use qingluan_core::service::EndpointStats;

use crate::api::Api;
use crate::docker::Names;

/// The labels of every endpoint metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    host: String,
    network: String,
    network_name: String,
    mode: String,
    endpoint: String,
    container: String,
    container_name: String,
}

/// An endpoint metric's labels with the reason of a drop.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    #[prometheus(flatten)]
    endpoint: EndpointLabels,
    reason: &'static str,
}

/// The counters of one endpoint in a fixed order (see [`COUNTERS`]).
type Values = [u64; 9];

/// Name (after `qingluan_endpoint_`) and help of each counter, in [`Values`] order; the
/// last is the spoof guard's drops, exported with a reason label.
const COUNTERS: [(&str, &str); 8] = [
    ("transmit_packets", "Packets the container sent"),
    ("transmit_bytes", "Bytes the container sent"),
    (
        "transmit_dropped_packets",
        "Packets the container sent that its OVS port dropped",
    ),
    ("transmit_errors", "Transmit errors of the container's port"),
    ("receive_packets", "Packets the container received"),
    ("receive_bytes", "Bytes the container received"),
    (
        "receive_dropped_packets",
        "Packets for the container that its OVS port dropped",
    ),
    ("receive_errors", "Receive errors of the container's port"),
];

fn values(s: &EndpointStats) -> Values {
    let (t, r) = (&s.transmit, &s.receive);
    [
        t.packets, t.bytes, t.dropped, t.errors, r.packets, r.bytes, r.dropped, r.errors, s.spoofed,
    ]
}

/// One endpoint's last raw reading, what was added for resets, and when counting began.
#[derive(Debug)]
struct Track {
    last: Values,
    offset: Values,
    started: u64,
}

/// The monotonic view of every endpoint's counters.
#[derive(Debug, Default)]
pub struct Continuity {
    tracks: HashMap<String, Track>,
}

impl Continuity {
    /// The monotonic values and start time of `endpoint` given a raw reading.
    fn advance(&mut self, endpoint: &str, raw: Values, started: u64) -> (Values, u64) {
        let t = self.tracks.entry(endpoint.to_string()).or_insert(Track {
            last: raw,
            offset: [0; 9],
            started,
        });
        for ((now, last), offset) in raw.iter().zip(t.last).zip(t.offset.iter_mut()) {
            if *now < last {
                *offset += last;
            }
        }
        t.last = raw;
        let mut out = raw;
        for (o, off) in out.iter_mut().zip(t.offset) {
            *o += off;
        }
        (out, t.started)
    }

    /// Forgets endpoints whose records are gone.
    fn retain(&mut self, live: &BTreeSet<&str>) {
        self.tracks.retain(|id, _| live.contains(id.as_str()));
    }
}

/// Registers the endpoint metrics of this scrape and the counts of networks and endpoints.
pub async fn register(
    registry: &mut Registry,
    host: &str,
    api: &Api,
    names: &Names,
    counters: &mut Continuity,
    stats: Vec<EndpointStats>,
) {
    let families: Vec<Family<EndpointLabels, Counter>> =
        COUNTERS.iter().map(|_| Family::default()).collect();
    let drops = Family::<DropLabels, Counter>::default();
    let start = Family::<EndpointLabels, Gauge>::default();
    if let Ok(records) = api.driver.state.endpoints().await {
        counters.retain(&records.iter().map(|e| e.id.as_str()).collect());
    }
    for s in &stats {
        let container = names.containers.get(&s.endpoint);
        let labels = EndpointLabels {
            host: host.into(),
            network: head(&s.network, 12).to_string(),
            network_name: names.networks.get(&s.network).cloned().unwrap_or_default(),
            mode: s.mode.to_string(),
            endpoint: head(&s.endpoint, 12).to_string(),
            container: container
                .map(|c| head(&c.id, 12).to_string())
                .unwrap_or_default(),
            container_name: container.map(|c| c.name.clone()).unwrap_or_default(),
        };
        let (v, started) = counters.advance(&s.endpoint, values(s), s.started);
        for (family, value) in families.iter().zip(v) {
            family.get_or_create(&labels).inc_by(value);
        }
        start
            .get_or_create(&labels)
            .set(i64::try_from(started).unwrap_or(i64::MAX));
        drops
            .get_or_create(&DropLabels {
                endpoint: labels,
                reason: "spoofed",
            })
            .inc_by(v[8]);
    }
    for ((name, help), family) in COUNTERS.iter().zip(families) {
        registry.register(format!("endpoint_{name}"), *help, family);
    }
    registry.register(
        "endpoint_policy_dropped_packets",
        "Packets from or to the container that the pipeline dropped, by reason (spoofed: the spoof guard)",
        drops,
    );
    registry.register(
        "endpoint_start_time_seconds",
        "When counting began for the endpoint's counters (seconds since the epoch)",
        start,
    );
    let (Ok(networks), Ok(eps)) = (
        api.driver.state.networks().await,
        api.driver.state.endpoints().await,
    ) else {
        return;
    };
    let per_mode = Family::<ModeLabels, Gauge>::default();
    let per_network = Family::<NetworkLabels, Gauge>::default();
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for e in &eps {
        *counts.entry(e.network_id.as_str()).or_default() += 1;
    }
    for n in &networks {
        let mode = n.mode.to_string();
        per_mode
            .get_or_create(&ModeLabels {
                host: host.into(),
                mode: mode.clone(),
            })
            .inc();
        per_network
            .get_or_create(&NetworkLabels {
                host: host.into(),
                network: head(&n.id, 12).to_string(),
                network_name: names.networks.get(&n.id).cloned().unwrap_or_default(),
                mode,
            })
            .set(counts.get(n.id.as_str()).copied().unwrap_or(0));
    }
    registry.register("networks", "Networks on this host, by mode", per_mode);
    registry.register(
        "endpoints",
        "Endpoints on this host, by network",
        per_network,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    host: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabels {
    host: String,
    network: String,
    network_name: String,
    mode: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_never_go_backwards() {
        let mut c = Continuity::default();
        let mut raw = [0; 9];
        raw[1] = 1000;
        assert_eq!(c.advance("e1", raw, 50), (raw, 50));
        raw[1] = 1500;
        assert_eq!(c.advance("e1", raw, 51).0[1], 1500);
        // The port was re-created: it counts from zero again.
        raw[1] = 200;
        let (v, started) = c.advance("e1", raw, 70);
        assert_eq!(
            (v[1], started),
            (1700, 50),
            "counting began at the first reading"
        );
        raw[1] = 300;
        assert_eq!(c.advance("e1", raw, 70).0[1], 1800);
        // The spoof-guard flow was installed again.
        raw[8] = 5;
        assert_eq!(c.advance("e1", raw, 70).0[8], 5);
        raw[8] = 2;
        assert_eq!(c.advance("e1", raw, 70).0[8], 7);
        c.retain(&BTreeSet::from(["e1"]));
        assert_eq!(
            c.advance("e1", raw, 70).0[1],
            1800,
            "kept while its record lives"
        );
        c.retain(&BTreeSet::new());
        assert_eq!(c.advance("e1", raw, 99), (raw, 99), "a new life");
    }
}
