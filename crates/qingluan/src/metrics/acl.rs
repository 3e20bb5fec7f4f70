//! The ACL rules' counters: packets each rule matched on its network's bridge, read from
//! the switch on each scrape (the same numbers as `qingluan acl ls`). A counter starts over
//! when its rule's flows are installed anew (an ovs-vswitchd restart, a selector that
//! resolves to other addresses), which Prometheus reads as a counter reset.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use qingluan_core::model::head;

use crate::api::Api;
use crate::docker::Names;

/// The labels of a rule's counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    host: String,
    rule: String,
    network: String,
    network_name: String,
    verdict: String,
}

/// Registers `acl_rule_packets` (nothing when the rules cannot be read).
pub async fn register(registry: &mut Registry, host: &str, api: &Api, names: &Names) {
    let Ok(rows) = api.driver.acl.list().await else {
        return;
    };
    let packets = Family::<RuleLabels, Counter>::default();
    for r in rows {
        let spec = &r.rule.spec;
        packets
            .get_or_create(&RuleLabels {
                host: host.into(),
                rule: r.rule.id.clone(),
                network: head(&spec.network, 12).to_string(),
                network_name: names
                    .networks
                    .get(&spec.network)
                    .cloned()
                    .unwrap_or_default(),
                verdict: spec.verdict.to_string(),
            })
            .inc_by(r.hits);
    }
    registry.register(
        "acl_rule_packets",
        "Packets each ACL rule matched on its network's bridge (a deny's are all dropped)",
        packets,
    );
}
