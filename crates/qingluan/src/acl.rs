//! `qingluan acl add|rm|ls`: the routes (`/v1/acl`) and the command.
//!
//! The daemon resolves what the user typed: `--network` and bare-name selectors are Docker
//! network names or ID prefixes of qingluan networks; a `container:` selector must name a
//! container Docker has, or one another host has on a cluster network (it is kept as typed and resolved again at every reconcile, so it
//! follows the container as it comes and goes).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use qingluan_core::acl::{self, PortRange, Proto, RuleSpec, Selector, Typed, Verdict};
use qingluan_core::model::head;
use qingluan_core::service::{AclRow, ScopedRule};
use serde::{Deserialize, Serialize};

use crate::api::{bad, service, Api, ApiError};
use crate::cli::Client;

/// An `acl add` request, as typed (also the command's arguments).
#[derive(Clone, Debug, Default, Serialize, Deserialize, clap::Args)]
pub struct AclRequest {
    /// The network whose traffic the rule applies to (Docker name or ID prefix).
    #[arg(long)]
    pub network: String,
    /// Source: any, a network name, container:<name|id>, label:<k>=<v>, cidr:<prefix>.
    #[arg(long, default_value = "any")]
    pub from: String,
    /// Destination, as --from.
    #[arg(long, default_value = "any")]
    pub to: String,
    /// tcp, udp, icmp or any.
    #[arg(long)]
    pub proto: Option<String>,
    /// Destination ports (tcp, udp): 80, 80,443, 8000-8080.
    #[arg(long)]
    pub port: Option<String>,
    /// Let matching connections through (their replies too).
    #[arg(long)]
    pub allow: bool,
    /// Drop matching packets (established connections too).
    #[arg(long)]
    pub deny: bool,
    /// 0-1000, higher wins; at the same priority deny beats allow.
    #[arg(long)]
    pub priority: Option<String>,
}

/// `acl ls` with the names Docker gives networks and containers, and the spoof guard's
/// drops.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AclView {
    /// Every rule with its counters.
    pub rules: Vec<AclRow>,
    /// Network names by ID.
    pub network_names: BTreeMap<String, String>,
    /// Frames the spoof guard dropped, by endpoint ID (only endpoints with any).
    pub spoofed: BTreeMap<String, u64>,
}

/// A selector as typed, with a network name resolved and a container checked.
async fn selector(api: &Api, what: &str, typed: &str) -> Result<Selector, ApiError> {
    let t: Typed = typed.parse().map_err(|e| bad(format!("{what}: {e}")))?;
    match t {
        Typed::Network(n) => Ok(Selector::Network(
            crate::api::network_named(api, &n)
                .await
                .map_err(|e| bad(format!("{what}: {}", e.1)))?,
        )),
        Typed::Selector(Selector::Container(c)) => {
            if !crate::api::container_known(api, &c).await {
                return Err(bad(format!(
                    "{what}: no container {c:?} on this host or on another host's cluster networks"
                )));
            }
            Ok(Selector::Container(c))
        }
        Typed::Selector(s) => Ok(s),
    }
}

/// The rule a request asks for, checked.
async fn spec(api: &Api, r: &AclRequest) -> Result<RuleSpec, ApiError> {
    let verdict = match (r.allow, r.deny) {
        (true, false) => Verdict::Allow,
        (false, true) => Verdict::Deny,
        _ => return Err(bad(acl::AclError::Verdict)),
    };
    let proto: Proto = r.proto.as_deref().unwrap_or("any").parse().map_err(bad)?;
    let ports: Vec<PortRange> = match &r.port {
        Some(p) => acl::parse_ports(p).map_err(bad)?,
        None => Vec::new(),
    };
    let priority = match &r.priority {
        Some(p) => acl::parse_priority(p).map_err(bad)?,
        None => acl::DEFAULT_PRIORITY,
    };
    let spec = RuleSpec {
        network: crate::api::network_named(api, &r.network).await?,
        from: selector(api, "--from", &r.from).await?,
        to: selector(api, "--to", &r.to).await?,
        proto,
        ports,
        verdict,
        priority,
        note: None,
    };
    spec.check().map_err(bad)?;
    Ok(spec)
}

/// `POST /v1/acl`: `acl add`.
pub async fn add(
    State(api): State<Api>,
    Json(r): Json<AclRequest>,
) -> Result<Json<ScopedRule>, ApiError> {
    let spec = spec(&api, &r).await?;
    Ok(Json(api.driver.acl.add(spec).await.map_err(service)?))
}

/// `DELETE /v1/acl/{id}`: `acl rm`.
pub async fn remove(
    State(api): State<Api>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<ScopedRule>, ApiError> {
    Ok(Json(api.driver.acl.remove(&id).await.map_err(service)?))
}

/// `GET /v1/acl`: `acl ls`.
pub async fn list(State(api): State<Api>) -> Result<Json<AclView>, ApiError> {
    let rules = api.driver.acl.list().await.map_err(service)?;
    let names = crate::docker::networks(&api.docker, &api.driver.state.settings.docker_driver())
        .await
        .unwrap_or_default();
    let spoofed = api
        .driver
        .state
        .endpoint_stats()
        .await
        .map_err(service)?
        .into_iter()
        .filter(|s| s.spoofed > 0)
        .map(|s| (s.endpoint, s.spoofed))
        .collect();
    Ok(Json(AclView {
        rules,
        network_names: names.into_iter().map(|(id, n)| (id, n.name)).collect(),
        spoofed,
    }))
}

/// A selector as `acl ls` prints it.
fn shown(s: &Selector, names: &BTreeMap<String, String>) -> String {
    match s {
        Selector::Any => "any".into(),
        Selector::Network(id) => names
            .get(id)
            .cloned()
            .unwrap_or_else(|| head(id, 12).to_string()),
        Selector::Container(c) => format!("container:{c}"),
        Selector::Label(k, v) => format!("label:{k}={v}"),
        Selector::Cidr(n) => format!("cidr:{n}"),
    }
}

/// A rule's protocol and ports as `acl ls` prints them: `tcp/80,443`, `icmp`, `any`.
fn traffic(s: &RuleSpec) -> String {
    let ports: Vec<String> = s.ports.iter().map(PortRange::to_string).collect();
    if ports.is_empty() {
        s.proto.to_string()
    } else {
        format!("{}/{}", s.proto, ports.join(","))
    }
}

impl Client {
    /// `qingluan acl add`: prints the new rule's ID.
    pub async fn acl_add(&self, r: &AclRequest) -> anyhow::Result<()> {
        self.create("/v1/acl", r).await
    }

    /// `qingluan acl rm`.
    pub async fn acl_rm(&self, id: &str) -> anyhow::Result<()> {
        self.call("DELETE", &format!("/v1/acl/{id}"), None).await?;
        Ok(())
    }

    /// `qingluan acl ls`.
    pub async fn acl_ls(&self, network: Option<&str>) -> anyhow::Result<()> {
        let (view, raw): (AclView, _) = self.get("/v1/acl").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        let names = &view.network_names;
        let net_name = |id: &str| {
            names
                .get(id)
                .cloned()
                .unwrap_or_else(|| head(id, 12).to_string())
        };
        let wanted = |id: &str| network.is_none_or(|n| net_name(id) == n || id.starts_with(n));
        println!(
            "{:<9} {:<16} {:<8} {:<5} {:<24} {:<24} {:<16} {:<6} {:>10} {:>10}",
            "ID", "NETWORK", "SCOPE", "PRIO", "FROM", "TO", "TRAFFIC", "ACTION", "HITS", "DROPS"
        );
        for row in view.rules.iter().filter(|r| wanted(&r.rule.spec.network)) {
            let s = &row.rule.spec;
            println!(
                "{:<9} {:<16} {:<8} {:<5} {:<24} {:<24} {:<16} {:<6} {:>10} {:>10}",
                row.rule.id,
                net_name(&s.network),
                row.scope,
                s.priority,
                shown(&s.from, names),
                shown(&s.to, names),
                traffic(s),
                s.verdict,
                row.hits,
                row.drops
            );
            if let Some(note) = &s.note {
                println!("          ({note})");
            }
        }
        let spoofed: u64 = view.spoofed.values().sum();
        println!(
            "spoof guard: {spoofed} frames dropped{}",
            if view.spoofed.is_empty() {
                String::new()
            } else {
                let per: Vec<String> = view
                    .spoofed
                    .iter()
                    .map(|(ep, n)| format!("endpoint {}: {n}", head(ep, 12)))
                    .collect();
                format!(" ({})", per.join(", "))
            }
        );
        Ok(())
    }
}
