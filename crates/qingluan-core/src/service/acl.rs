//! `qingluan acl add|rm|ls`: ACL rules as records (`acl/<id>`), applied on the bridge of
//! the network each names, and their counters read back from the switch.
//!
//! Every change is written, then applied, and undone when the dataplane refuses it. A
//! rule goes with its network.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ServiceError;
use crate::acl::{AclError, AclRule, RuleSpec};
use crate::model::Mode;
use crate::options::OptionError;
use crate::pipeline::{Cookie, Feature, FEATURE_MASK};
use crate::records;

handle! {
    /// ACL rules.
    Acl
}

/// A rule as `qingluan acl ls` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AclRow {
    /// The rule.
    #[serde(flatten)]
    pub rule: AclRule,
    /// Packets it matched on its network's bridge (each packet of a connection's first
    /// direction; replies pass without a rule).
    pub hits: u64,
    /// Packets it dropped (deny rules).
    pub drops: u64,
}

impl From<AclError> for ServiceError {
    fn from(e: AclError) -> ServiceError {
        ServiceError::Option(OptionError::Acl(e))
    }
}

impl Acl {
    /// `qingluan acl add`: stores and applies a rule; returns it.
    pub async fn add(&self, spec: RuleSpec) -> Result<AclRule, ServiceError> {
        spec.check()?;
        let _g = self.lock.lock().await;
        let net = self.network(&spec.network).await?;
        if !matches!(net.mode, Mode::Nat | Mode::Nonat) {
            return Err(AclError::Mode(net.short_id().to_string(), net.mode).into());
        }
        if let Some(same) = self.acl_rules().await?.into_iter().find(|r| r.spec == spec) {
            return Err(AclError::Duplicate(same.id).into());
        }
        let rule = AclRule {
            id: spec.id(),
            spec,
        };
        self.commit(
            vec![records::put(&rule)],
            vec![records::delete::<AclRule>(&rule.id)],
        )
        .await?;
        Ok(rule)
    }

    /// `qingluan acl rm`: removes the rule whose ID starts with `id`; returns it.
    pub async fn remove(&self, id: &str) -> Result<AclRule, ServiceError> {
        let _g = self.lock.lock().await;
        let found: Vec<AclRule> = self
            .acl_rules()
            .await?
            .into_iter()
            .filter(|r| !id.is_empty() && r.id.starts_with(id))
            .collect();
        let rule = match found.as_slice() {
            [one] => one.clone(),
            [] => return Err(AclError::NotFound(id.to_string()).into()),
            _ => return Err(AclError::Ambiguous(id.to_string()).into()),
        };
        self.commit(
            vec![records::delete::<AclRule>(&rule.id)],
            vec![records::put(&rule)],
        )
        .await?;
        Ok(rule)
    }

    /// `qingluan acl ls`: every rule with its counters (one OpenFlow request per bridge with
    /// rules; a bridge that cannot be read counts 0).
    pub async fn list(&self) -> Result<Vec<AclRow>, ServiceError> {
        let nets = self.networks_by_id().await?;
        let rules = self.acl_rules().await?;
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        let bridges: std::collections::BTreeSet<String> = rules
            .iter()
            .filter_map(|r| nets.get(&r.spec.network))
            .map(|n| n.bridge())
            .collect();
        for bridge in bridges {
            let flows = self
                .reconciler
                .adapters()
                .flows
                .flow_stats(&bridge, Cookie::bridge(Feature::Acl).value(), FEATURE_MASK)
                .await
                .unwrap_or_default();
            for f in flows {
                *counts.entry(f.cookie).or_default() += f.packets;
            }
        }
        let mut rows: Vec<AclRow> = rules
            .into_iter()
            .map(|rule| {
                let hits = counts
                    .get(&Cookie::of(Feature::Acl, &rule.id).value())
                    .copied()
                    .unwrap_or(0);
                let drops = match rule.spec.verdict {
                    crate::acl::Verdict::Deny => hits,
                    crate::acl::Verdict::Allow => 0,
                };
                AclRow { rule, hits, drops }
            })
            .collect();
        rows.sort_by(|a, b| {
            (
                &a.rule.spec.network,
                std::cmp::Reverse(a.rule.spec.priority),
                &a.rule.id,
            )
                .cmp(&(
                    &b.rule.spec.network,
                    std::cmp::Reverse(b.rule.spec.priority),
                    &b.rule.id,
                ))
        });
        Ok(rows)
    }
}
