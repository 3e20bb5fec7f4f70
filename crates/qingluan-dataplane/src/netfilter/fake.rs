//! Recording fake of the netfilter adapter for domain unit tests.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{Firewall, FirewallError, Ruleset};

/// Keeps every ruleset it was asked to apply.
#[derive(Default)]
pub struct FakeFirewall {
    /// Rulesets applied, in order.
    pub applied: Mutex<Vec<Ruleset>>,
}

impl FakeFirewall {
    /// The last ruleset applied.
    pub fn current(&self) -> Option<Ruleset> {
        self.applied.lock().unwrap().last().cloned()
    }
}

#[async_trait]
impl Firewall for FakeFirewall {
    async fn apply(&self, rules: &Ruleset, _force: bool) -> Result<bool, FirewallError> {
        let mut a = self.applied.lock().unwrap();
        let changed = a.last() != Some(rules);
        a.push(rules.clone());
        Ok(changed)
    }
}
