//! The detector's metrics: alerts by signature and network (counted since the daemon
//! started), frames inspected and dropped per capture port, rules loaded, quarantined
//! containers.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use qingluan_core::model::head;

use crate::api::Api;
use crate::docker::Names;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    host: String,
    sid: String,
    network: String,
    network_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaptureLabels {
    host: String,
    capture: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabel {
    host: String,
}

/// Registers `ids_alerts`, `ids_packets`, `ids_dropped_packets`, `ids_rules` and
/// `ids_quarantined_containers`.
pub async fn register(registry: &mut Registry, host: &str, api: &Api, names: &Names) {
    let alerts = Family::<AlertLabels, Counter>::default();
    for ((sid, net), n) in api.ids.alert_counts() {
        alerts
            .get_or_create(&AlertLabels {
                host: host.into(),
                sid: sid.to_string(),
                network: head(&net, 12).to_string(),
                network_name: names.networks.get(&net).cloned().unwrap_or_default(),
            })
            .inc_by(n);
    }
    registry.register(
        "ids_alerts",
        "Alerts the detector raised since the daemon started, by signature and network",
        alerts,
    );
    let packets = Family::<CaptureLabels, Counter>::default();
    let dropped = Family::<CaptureLabels, Counter>::default();
    for (capture, s) in api.ids.all_capture_stats() {
        let l = CaptureLabels {
            host: host.into(),
            capture,
        };
        packets
            .get_or_create(&l)
            .inc_by(s.packets.load(Ordering::Relaxed));
        dropped
            .get_or_create(&l)
            .inc_by(s.drops.load(Ordering::Relaxed));
    }
    registry.register(
        "ids_packets",
        "Mirrored frames the detector inspected, by capture port",
        packets,
    );
    registry.register(
        "ids_dropped_packets",
        "Mirrored frames lost because the detector fell behind, by capture port",
        dropped,
    );
    let h = HostLabel { host: host.into() };
    let rules = Family::<HostLabel, Gauge>::default();
    rules
        .get_or_create(&h)
        .set(api.ids.rules_info().count as i64);
    registry.register("ids_rules", "Signature rules the detector runs", rules);
    if let Ok(q) = api.driver.ids.quarantines().await {
        let quarantined = Family::<HostLabel, Gauge>::default();
        let mut containers: Vec<&str> = q.iter().map(|q| q.container.as_str()).collect();
        containers.dedup();
        quarantined.get_or_create(&h).set(containers.len() as i64);
        registry.register(
            "ids_quarantined_containers",
            "Containers an IPS quarantine holds",
            quarantined,
        );
    }
}
