//! `qingluan mirror add|rm|ls`: the routes (`/v1/mirror`) and the commands.
//!
//! The daemon resolves what the user typed: `--network` is a Docker network name or ID
//! prefix of a qingluan network; `--to container:<name|id>` must name a container on that
//! network on this host, `--to interface:<name>` a host interface that is no OVS port yet
//! (both kept as typed, resolved again at every reconcile).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use qingluan_core::mirror::{Mirror, MirrorSpec, Target};
use qingluan_core::model::head;
use qingluan_core::service::MirrorRow;
use serde::{Deserialize, Serialize};

use crate::api::{bad, service, Api, ApiError};
use crate::cli::Client;

/// A `mirror add` request, as typed (also the command's arguments).
#[derive(Clone, Debug, Default, Serialize, Deserialize, clap::Args)]
pub struct MirrorRequest {
    /// The network whose containers' traffic is copied (Docker name or ID prefix).
    #[arg(long)]
    pub network: String,
    /// Where the copies go: container:<name|id> (on the same network here) or
    /// interface:<name> (a host interface, added to the network's bridge).
    #[arg(long)]
    pub to: String,
    /// Only this container's traffic (a container of the network here, by name or ID).
    #[arg(long)]
    pub container: Option<String>,
}

/// `mirror ls` with the names Docker gives networks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MirrorView {
    /// Every mirror of this host.
    pub mirrors: Vec<MirrorRow>,
    /// Network names by ID.
    pub network_names: BTreeMap<String, String>,
}

/// `POST /v1/mirror`: `mirror add`.
pub async fn add(
    State(api): State<Api>,
    Json(r): Json<MirrorRequest>,
) -> Result<Json<Mirror>, ApiError> {
    let to: Target = r.to.parse().map_err(bad)?;
    crate::containers::pass(&api.driver, &api.docker).await;
    let spec = MirrorSpec {
        network: crate::api::network_named(&api, &r.network).await?,
        to,
        container: r.container.clone(),
    };
    Ok(Json(
        api.driver
            .mirrors
            .add(spec, &r.network)
            .await
            .map_err(service)?,
    ))
}

/// `DELETE /v1/mirror/{id}`: `mirror rm`.
pub async fn remove(
    State(api): State<Api>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Mirror>, ApiError> {
    Ok(Json(api.driver.mirrors.remove(&id).await.map_err(service)?))
}

/// `GET /v1/mirror`: `mirror ls`.
pub async fn list(State(api): State<Api>) -> Result<Json<MirrorView>, ApiError> {
    let mirrors = api.driver.mirrors.list().await.map_err(service)?;
    let names = crate::docker::networks(&api.docker, &api.driver.state.settings.docker_driver())
        .await
        .unwrap_or_default();
    Ok(Json(MirrorView {
        mirrors,
        network_names: names.into_iter().map(|(id, n)| (id, n.name)).collect(),
    }))
}

impl Client {
    /// `qingluan mirror add`: prints the new mirror's ID.
    pub async fn mirror_add(&self, r: &MirrorRequest) -> anyhow::Result<()> {
        self.create("/v1/mirror", r).await
    }

    /// `qingluan mirror rm`.
    pub async fn mirror_rm(&self, id: &str) -> anyhow::Result<()> {
        self.call("DELETE", &format!("/v1/mirror/{id}"), None)
            .await?;
        Ok(())
    }

    /// `qingluan mirror ls`.
    pub async fn mirror_ls(&self) -> anyhow::Result<()> {
        let (view, raw): (MirrorView, _) = self.get("/v1/mirror").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        println!(
            "{:<9} {:<16} {:<28} {:<16} {:>7}",
            "ID", "NETWORK", "TO", "PORT", "WATCHED"
        );
        for row in &view.mirrors {
            let m = &row.mirror;
            let mut net = view
                .network_names
                .get(&m.spec.network)
                .cloned()
                .unwrap_or_else(|| head(&m.spec.network, 12).to_string());
            if let Some(c) = &m.spec.container {
                net = format!("{net}:{c}");
            }
            println!(
                "{:<9} {:<16} {:<28} {:<16} {:>7}",
                m.id,
                net,
                m.spec.to.to_string(),
                row.port.as_deref().unwrap_or("(not running)"),
                row.watched
            );
        }
        Ok(())
    }
}
