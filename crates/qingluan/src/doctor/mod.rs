//! `qingluan doctor`: checks what breaks deployments on this host and says how to fix each.
//!
//! Every check yields a [`Check`]: `pass`, `fail` (with the advice that fixes it) or `skip`
//! (it does not apply here: no systemd, no etcd, dockerd without iptables, the userspace
//! datapath where no openvswitch module exists). The checks run whether the daemon runs or
//! not: the records that explain our OVS objects come from its API when it answers, else from
//! the embedded store file. The exit code is 0 only when nothing failed.
//!
//! One file per area: `ovs` (OVSDB, ovs-vswitchd, datapath, kernel modules), `docker`
//! (dockerd, start order, plugin sockets, forwarding), `network` (subnets against host
//! routes, the underlay MTU), `cluster` (etcd, clocks) and `stale` (objects no record
//! explains).

mod cluster;
mod docker;
mod network;
mod ovs;
mod stale;

use std::time::Duration;

use qingluan_core::model::{Endpoint, Network};
use qingluan_dataplane::ovsdb::{default_db_target, OvsdbOvs};
use serde::Serialize;

use crate::api::{NetworkView, Status};
use crate::config::Config;
use crate::http::request;

/// How long any one probe may take.
pub(crate) const PROBE: Duration = Duration::from_secs(3);

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Fine.
    Pass,
    /// Broken: `advice` says how to fix it.
    Fail,
    /// Does not apply on this host.
    Skip,
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Short name, e.g. `ovs-vswitchd`.
    pub name: &'static str,
    /// Its outcome.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// How to fix it (failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

impl Check {
    pub(crate) fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Pass,
            detail: detail.into(),
            advice: None,
        }
    }

    pub(crate) fn fail(
        name: &'static str,
        detail: impl Into<String>,
        advice: impl Into<String>,
    ) -> Check {
        Check {
            name,
            outcome: Outcome::Fail,
            detail: detail.into(),
            advice: Some(advice.into()),
        }
    }

    pub(crate) fn skip(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Skip,
            detail: detail.into(),
            advice: None,
        }
    }
}

/// This instance's records: its networks and endpoints, and where they were read.
pub(crate) struct Records {
    /// `api` (the running daemon) or `store` (the store file).
    pub source: &'static str,
    /// Networks.
    pub networks: Vec<Network>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// The whole report, as `--json` prints it.
#[derive(Serialize)]
struct Report {
    /// `running` or `not running`.
    daemon: String,
    /// Every check, in order.
    checks: Vec<Check>,
    passed: usize,
    failed: usize,
    skipped: usize,
}

/// Whether the daemon answers on its management socket, and its status.
async fn daemon_status(config: &Config) -> Result<Status, String> {
    let (code, body) = request(&config.daemon.api_socket, "GET", "/v1/status", None, PROBE)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if code != 200 {
        return Err(format!(
            "answered {code}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// The records from the running daemon's API.
async fn records_from_api(config: &Config) -> anyhow::Result<Records> {
    let (code, body) = request(
        &config.daemon.api_socket,
        "GET",
        "/v1/networks",
        None,
        PROBE,
    )
    .await?;
    anyhow::ensure!(code == 200, "{}", String::from_utf8_lossy(&body));
    let views: Vec<NetworkView> = serde_json::from_slice(&body)?;
    let mut endpoints = Vec::new();
    let networks = views
        .into_iter()
        .map(|v| {
            endpoints.extend(v.endpoints);
            v.network
        })
        .collect();
    Ok(Records {
        source: "api",
        networks,
        endpoints,
    })
}

/// Runs every check, prints them (a table, or JSON) and fails when any check failed.
pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let status = daemon_status(config).await;
    let mut checks = Vec::new();
    let records = match &status {
        Ok(s) => {
            checks.push(Check::pass(
                "daemon",
                format!(
                    "running: version {}, up {} s, {} networks, {} endpoints",
                    s.version, s.uptime_secs, s.networks, s.endpoints
                ),
            ));
            records_from_api(config).await
        }
        Err(e) => {
            checks.push(Check::fail(
                "daemon",
                format!(
                    "not running: no answer on {} ({e})",
                    config.daemon.api_socket.display()
                ),
                "start it: systemctl start qingluan (or `qingluan daemon`)",
            ));
            stale::records_from_store(config).await
        }
    };
    // One OVSDB connection serves the OVS checks and the stale-object check.
    let db = config.ovs.db.clone().unwrap_or_else(default_db_target);
    let ovsdb = OvsdbOvs::connect(&db);
    let ovs_checks = ovs::checks(config, &ovsdb, &db).await;
    let reachable = ovs_checks
        .first()
        .is_some_and(|c| c.outcome == Outcome::Pass);
    checks.extend(ovs_checks);
    checks.extend(docker::checks(config, status.is_ok(), records.as_ref().ok()).await);
    checks.extend(network::checks(config, records.as_ref().ok()));
    checks.extend(cluster::checks(config).await);
    checks.push(stale::check(config, records, reachable.then_some(&ovsdb)).await);
    let count = |o: Outcome| checks.iter().filter(|c| c.outcome == o).count();
    let report = Report {
        daemon: if status.is_ok() {
            "running".into()
        } else {
            "not running".into()
        },
        passed: count(Outcome::Pass),
        failed: count(Outcome::Fail),
        skipped: count(Outcome::Skip),
        checks,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    if report.failed > 0 {
        anyhow::bail!("{} of {} checks failed", report.failed, report.checks.len());
    }
    Ok(())
}

fn print(report: &Report) {
    for c in &report.checks {
        let tag = match c.outcome {
            Outcome::Pass => "ok  ",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        };
        println!("{tag}  {:<16} {}", c.name, c.detail);
        if let Some(a) = &c.advice {
            println!("      {:<16} fix: {a}", "");
        }
    }
    println!(
        "\n{} passed, {} failed, {} skipped (daemon {})",
        report.passed, report.failed, report.skipped, report.daemon
    );
}
