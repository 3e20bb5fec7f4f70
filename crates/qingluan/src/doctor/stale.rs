//! Doctor check of stale objects: OVS bridges and ports tagged as this instance's
//! (`qingluan-owner`) whose network or endpoint no record explains. The running daemon
//! removes them at its next full pass; they last while it is stopped, or when its store was
//! lost or replaced.

use std::collections::BTreeSet;
use std::sync::Arc;

use qingluan_core::desired::{ENDPOINT, NETWORK, OWNER};
use qingluan_core::model::{Endpoint, Network};
use qingluan_dataplane::ovsdb::{Ovs, OvsdbOvs};
use qingluan_store::redb::RedbStore;
use qingluan_store::scoped::Scoped;

use super::{Check, Records, PROBE};
use crate::config::Config;

/// The records in the store file, read while the daemon is stopped (it holds the file open
/// while it runs).
pub async fn records_from_store(config: &Config) -> anyhow::Result<Records> {
    let path = &config.store.path;
    if !path.exists() {
        return Ok(Records {
            source: "store",
            networks: Vec::new(),
            endpoints: Vec::new(),
        });
    }
    let file = RedbStore::open(path).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot open {} ({e}); a daemon that does not answer may hold it",
            path.display()
        )
    })?;
    let host = crate::daemon::this_host(config).id;
    let local = Scoped::new(Arc::new(file), &format!("local/{host}/"));
    Ok(Records {
        source: "store",
        networks: qingluan_core::records::list::<Network>(&local).await?,
        endpoints: qingluan_core::records::list::<Endpoint>(&local).await?,
    })
}

/// Bridges and ports of this instance that no record explains; `ovs` is `None` when OVSDB
/// did not answer the OVS checks.
pub async fn check(
    config: &Config,
    records: anyhow::Result<Records>,
    ovs: Option<&OvsdbOvs>,
) -> Check {
    const NAME: &str = "stale objects";
    let records = match records {
        Ok(r) => r,
        Err(e) => return Check::skip(NAME, format!("no records to compare with: {e:#}")),
    };
    let Some(ovs) = ovs else {
        return Check::skip(NAME, "OVSDB is unreachable");
    };
    let snapshot = match tokio::time::timeout(PROBE, ovs.snapshot()).await {
        Ok(Ok(s)) => s,
        _ => return Check::skip(NAME, "OVSDB is unreachable"),
    };
    let name = &config.daemon.name;
    let networks: BTreeSet<&str> = records.networks.iter().map(|n| n.id.as_str()).collect();
    let endpoints: BTreeSet<&str> = records.endpoints.iter().map(|e| e.id.as_str()).collect();
    let ours = |ids: &std::collections::BTreeMap<String, String>| ids.get(OWNER) == Some(name);
    let unexplained = |ids: &std::collections::BTreeMap<String, String>| {
        ids.get(NETWORK)
            .is_some_and(|n| !networks.contains(n.as_str()))
            || ids
                .get(ENDPOINT)
                .is_some_and(|e| !endpoints.contains(e.as_str()))
    };
    let mut stale = Vec::new();
    let mut owned = 0;
    for b in &snapshot {
        if ours(&b.spec.external_ids) {
            owned += 1;
            if unexplained(&b.spec.external_ids) {
                stale.push(format!("bridge {}", b.spec.name));
                continue;
            }
        }
        for p in b.ports.iter().filter(|p| ours(&p.spec.external_ids)) {
            owned += 1;
            if unexplained(&p.spec.external_ids) {
                stale.push(format!("port {} on {}", p.spec.name, b.spec.name));
            }
        }
    }
    let from = if records.source == "api" {
        "the daemon's records"
    } else {
        "the store file"
    };
    if stale.is_empty() {
        return Check::pass(
            NAME,
            format!("{owned} OVS objects of {name}, each explained by {from}"),
        );
    }
    Check::fail(
        NAME,
        format!("no record in {from} explains {}", stale.join(", ")),
        format!(
            "(re)start qingluan: its first full pass removes them; or remove them by hand \
             (ovs-vsctl del-br / del-port) if no {name} daemon should own them"
        ),
    )
}
