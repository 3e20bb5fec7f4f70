//! Recording fake of the netfilter adapter for domain unit tests.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{Firewall, FirewallError, Ruleset};

/// Keeps every ruleset it was asked to apply.
#[derive(Default)]
pub struct FakeFirewall {
    /// Rulesets applied, in order.
    pub applied: Mutex<Vec<Ruleset>>,
    /// Applies still to refuse (see [`FakeFirewall::fail_next`]).
    failures: Mutex<usize>,
}

impl FakeFirewall {
    /// Makes the next `n` applies fail as `nft -f` would, changing nothing.
    pub fn fail_next(&self, n: usize) {
        *self.failures.lock().unwrap() = n;
    }

    /// The last ruleset applied.
    pub fn current(&self) -> Option<Ruleset> {
        self.applied.lock().unwrap().last().cloned()
    }
}

#[async_trait]
impl Firewall for FakeFirewall {
    async fn apply(&self, rules: &Ruleset, _force: bool) -> Result<bool, FirewallError> {
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(FirewallError::Command {
                    cmd: "nft -f".into(),
                    stderr: "refused by the test".into(),
                });
            }
        }
        let mut a = self.applied.lock().unwrap();
        let changed = a.last() != Some(rules);
        a.push(rules.clone());
        Ok(changed)
    }
}
