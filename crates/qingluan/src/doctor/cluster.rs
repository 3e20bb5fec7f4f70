//! Doctor checks of cluster mode: etcd reachable, and the other hosts' clocks against this
//! one's.
//!
//! Clocks are compared through the statistics rows every host writes to etcd every 5 s with
//! its own time (`host_stats`): a row stamped in our future means that host's clock is ahead;
//! one older than its refresh period plus 2 s means it is behind (or that host stalls). So
//! skews under 2 s are not told apart from write delays.

use std::time::Duration;

use super::{Check, PROBE};
use crate::config::Config;

/// Skew tolerated before the check fails.
const SKEW: Duration = Duration::from_secs(2);
/// How often hosts write their rows.
const REFRESH: Duration = crate::host_stats::PUBLISH_EVERY;

/// Every cluster check.
pub async fn checks(config: &Config) -> Vec<Check> {
    let store = match crate::daemon::etcd_store(config) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return vec![
                Check::skip("etcd", "single host: store.backend = \"redb\""),
                Check::skip("clocks", "single host"),
            ]
        }
        Err(e) => {
            return vec![
                Check::fail(
                    "etcd",
                    format!("{e:#}"),
                    "fix the [store] section of the config (docs/configuration.md)",
                ),
                Check::skip("clocks", "etcd is unreachable"),
            ]
        }
    };
    let endpoints = config.store.endpoints.join(", ");
    let hosts = tokio::time::timeout(PROBE, qingluan_core::membership::hosts(&*store)).await;
    let hosts = match hosts {
        Ok(Ok(h)) => h,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {PROBE:?}"),
            };
            return vec![
                Check::fail(
                    "etcd",
                    format!("cannot reach etcd at {endpoints}: {why}"),
                    "start etcd or fix store.endpoints (and the TLS files for https); \
                     local networks keep working, cluster networks cannot change meanwhile",
                ),
                Check::skip("clocks", "etcd is unreachable"),
            ];
        }
    };
    let up = hosts.iter().filter(|h| h.up).count();
    let etcd = Check::pass(
        "etcd",
        format!(
            "reachable at {endpoints}: {} hosts known, {up} up",
            hosts.len()
        ),
    );
    let up: Vec<String> = hosts
        .iter()
        .filter(|h| h.up)
        .map(|h| h.host.id.clone())
        .collect();
    vec![etcd, clocks(config, &*store, &up).await]
}

/// The clocks of the hosts that are up (a dead host's last row lingers on its lease).
async fn clocks(config: &Config, store: &dyn qingluan_store::Store, up: &[String]) -> Check {
    const NAME: &str = "clocks";
    let me = crate::daemon::this_host(config).id;
    let rows = match tokio::time::timeout(PROBE, crate::host_stats::read(store)).await {
        Ok(Ok(rows)) => rows,
        _ => return Check::skip(NAME, "the hosts' statistics rows cannot be read"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let others: Vec<_> = rows
        .iter()
        .filter(|r| r.host != me && up.contains(&r.host))
        .collect();
    if others.is_empty() {
        return Check::skip(NAME, "no other host publishes its time");
    }
    let mut off = Vec::new();
    for r in &others {
        let lag = now - r.at_ms as i64;
        if -lag > SKEW.as_millis() as i64 {
            off.push(format!("{} is {:.1} s ahead", r.host, -lag as f64 / 1000.0));
        } else if lag > (REFRESH + SKEW).as_millis() as i64 {
            off.push(format!(
                "{} is at least {:.1} s behind",
                r.host,
                (lag - REFRESH.as_millis() as i64) as f64 / 1000.0
            ));
        }
    }
    if off.is_empty() {
        Check::pass(
            NAME,
            format!(
                "{} other hosts within {} s of this one",
                others.len(),
                SKEW.as_secs()
            ),
        )
    } else {
        Check::fail(
            NAME,
            off.join("; "),
            "run NTP on every host (systemd-timesyncd or chrony): alert times and \
             `ids alerts --since` compare clocks",
        )
    }
}
