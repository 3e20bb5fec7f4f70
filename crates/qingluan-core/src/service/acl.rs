//! `qingluan acl add|rm|ls`: ACL rules, applied on the bridge of the network each names,
//! and their counters read back from the switch.
//!
//! A rule of a nat or nonat network, or one that names such a network, is this host's: a
//! record `acl/<id>`. A rule of a cluster network (flat, vlan, vxlan) that names only
//! cluster networks is the cluster's: kept by cluster key in the cluster store (`cluster.rs`), enforced by every
//! host that has the network (the cluster agent brings other hosts' changes in).
//!
//! Every change is written, then applied, and undone when the dataplane refuses it. A
//! rule goes with its network (a cluster rule with the network's cluster definition).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use qingluan_store::{to_json, Op};

use super::ServiceError;
use crate::acl::{AclError, AclRule, RuleSpec, Scope};
use crate::cluster;
use crate::model::Network;
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
    /// The rule, naming this host's networks.
    #[serde(flatten)]
    pub rule: AclRule,
    /// Where it is kept and enforced.
    pub scope: Scope,
    /// Packets it matched on its network's bridge (each packet of a connection's first
    /// direction; replies pass without a rule).
    pub hits: u64,
    /// Packets it dropped (deny rules).
    pub drops: u64,
}

/// A rule and where it holds, as `acl add` and `acl rm` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScopedRule {
    /// The rule (a cluster rule names networks by cluster key).
    #[serde(flatten)]
    pub rule: AclRule,
    /// Where it is kept and enforced.
    pub scope: Scope,
}

impl From<AclError> for ServiceError {
    fn from(e: AclError) -> ServiceError {
        ServiceError::Option(OptionError::Acl(e))
    }
}

impl Acl {
    /// `qingluan acl add`: stores and applies a rule; returns it.
    pub async fn add(&self, spec: RuleSpec) -> Result<ScopedRule, ServiceError> {
        spec.check()?;
        let _g = self.lock.lock().await;
        self.network(&spec.network).await?;
        if let Some((same, _)) = self
            .enforced_rules()
            .await?
            .into_iter()
            .find(|(r, _)| r.spec == spec)
        {
            return Err(AclError::Duplicate(same.id).into());
        }
        let nets = self.networks_by_id().await?;
        let key = |id: &str| nets.get(id).and_then(|n: &Network| n.cluster.clone());
        if spec.networks().into_iter().all(|id| key(id).is_some()) {
            let spec = spec.renamed(|id| key(id).unwrap_or_else(|| id.to_string()));
            let rule = AclRule {
                id: spec.id(),
                spec,
            };
            let k = cluster::acl_key(&rule);
            self.cluster
                .txn(vec![], vec![Op::Put(k.clone(), to_json(&rule))])
                .await?;
            self.apply_cluster(vec![Op::Delete(k)]).await?;
            return Ok(ScopedRule {
                rule,
                scope: Scope::Cluster,
            });
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
        Ok(ScopedRule {
            rule,
            scope: Scope::Host,
        })
    }

    /// `qingluan acl rm`: removes the rule whose ID starts with `id`; returns it.
    pub async fn remove(&self, id: &str) -> Result<ScopedRule, ServiceError> {
        let _g = self.lock.lock().await;
        let mut found: Vec<(AclRule, Scope)> = self
            .acl_rules()
            .await?
            .into_iter()
            .map(|r| (r, Scope::Host))
            .chain(
                self.cluster_intent()
                    .await
                    .acl
                    .into_iter()
                    .map(|r| (r, Scope::Cluster)),
            )
            .filter(|(r, _)| !id.is_empty() && r.id.starts_with(id))
            .collect();
        let (rule, scope) = match found.len() {
            1 => found.remove(0),
            0 => return Err(AclError::NotFound(id.to_string()).into()),
            _ => return Err(AclError::Ambiguous(id.to_string()).into()),
        };
        if scope == Scope::Cluster {
            let k = cluster::acl_key(&rule);
            self.cluster
                .txn(vec![], vec![Op::Delete(k.clone())])
                .await?;
            self.apply_cluster(vec![Op::Put(k, to_json(&rule))]).await?;
            return Ok(ScopedRule { rule, scope });
        }
        self.commit(
            vec![records::delete::<AclRule>(&rule.id)],
            vec![records::put(&rule)],
        )
        .await?;
        Ok(ScopedRule { rule, scope })
    }

    /// `qingluan acl ls`: every rule with its counters (one OpenFlow request per bridge with
    /// rules; a bridge that cannot be read counts 0).
    pub async fn list(&self) -> Result<Vec<AclRow>, ServiceError> {
        let nets = self.networks_by_id().await?;
        let rules = self.enforced_rules().await?;
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        let bridges: std::collections::BTreeSet<String> = rules
            .iter()
            .filter_map(|(r, _)| nets.get(&r.spec.network))
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
            .map(|(rule, scope)| {
                let hits = counts
                    .get(&Cookie::of(Feature::Acl, &rule.id).value())
                    .copied()
                    .unwrap_or(0);
                let drops = match rule.spec.verdict {
                    crate::acl::Verdict::Deny => hits,
                    crate::acl::Verdict::Allow => 0,
                };
                AclRow {
                    rule,
                    scope,
                    hits,
                    drops,
                }
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
