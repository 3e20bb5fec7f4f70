//! `qingluan connect|disconnect`: the routes (`/v1/connect`) and the commands.
//!
//! The daemon resolves what the user typed: two qingluan networks (Docker names or ID
//! prefixes), else two containers that Docker has or another host has on a cluster network
//! (kept as typed, resolved at every reconcile).
//! `disconnect` of two containers does not need them to exist any more.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use qingluan_core::connect::{ConnectError, Pair};
use qingluan_core::model::head;
use qingluan_core::service::ConnectionRow;
use serde::{Deserialize, Serialize};

use crate::api::{bad, service, Api, ApiError};
use crate::cli::Client;

/// A `connect` or `disconnect` request: both sides as typed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// One side.
    pub a: String,
    /// The other.
    pub b: String,
}

/// `connect ls` with the names Docker gives networks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectView {
    /// Every connection this host makes.
    pub connections: Vec<ConnectionRow>,
    /// Network names by ID.
    pub network_names: BTreeMap<String, String>,
}

/// The pair a request names, and the networks' names as typed by ID; `existing`:
/// containers must exist (connect).
async fn pair(
    api: &Api,
    r: &ConnectRequest,
    existing: bool,
) -> Result<(Pair, BTreeMap<String, String>), ApiError> {
    let nets = (
        crate::api::network_named(api, &r.a).await,
        crate::api::network_named(api, &r.b).await,
    );
    if let (Ok(a), Ok(b)) = nets {
        let pair = Pair::networks(&a, &b);
        return Ok((pair, BTreeMap::from([(a, r.a.clone()), (b, r.b.clone())])));
    }
    let known = crate::api::container_known;
    if !existing || (known(api, &r.a).await && known(api, &r.b).await) {
        return Ok((Pair::containers(&r.a, &r.b), BTreeMap::new()));
    }
    Err(bad(ConnectError::Mixed(r.a.clone(), r.b.clone())))
}

/// `POST /v1/connect`: `connect A B`.
pub async fn connect(
    State(api): State<Api>,
    Json(r): Json<ConnectRequest>,
) -> Result<Json<ConnectionRow>, ApiError> {
    let (p, names) = pair(&api, &r, true).await?;
    Ok(Json(
        api.driver
            .connect
            .connect(p, (&r.a, &r.b), &names)
            .await
            .map_err(service)?,
    ))
}

/// `DELETE /v1/connect`: `disconnect A B`.
pub async fn disconnect(
    State(api): State<Api>,
    Json(r): Json<ConnectRequest>,
) -> Result<Json<ConnectionRow>, ApiError> {
    let (p, _) = pair(&api, &r, false).await?;
    Ok(Json(
        api.driver
            .connect
            .disconnect(p, (&r.a, &r.b))
            .await
            .map_err(service)?,
    ))
}

/// `GET /v1/connect`: `connect ls`.
pub async fn list(State(api): State<Api>) -> Result<Json<ConnectView>, ApiError> {
    let connections = api.driver.connect.list().await.map_err(service)?;
    let names = crate::docker::networks(&api.docker, &api.driver.state.settings.docker_driver())
        .await
        .unwrap_or_default();
    Ok(Json(ConnectView {
        connections,
        network_names: names.into_iter().map(|(id, n)| (id, n.name)).collect(),
    }))
}

impl Client {
    /// `qingluan connect A B` or `qingluan disconnect A B`.
    pub async fn connect(&self, a: &str, b: &str, on: bool) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&ConnectRequest {
            a: a.into(),
            b: b.into(),
        })?;
        let method = if on { "POST" } else { "DELETE" };
        self.call(method, "/v1/connect", Some(body)).await?;
        Ok(())
    }

    /// `qingluan connect ls`.
    pub async fn connect_ls(&self) -> anyhow::Result<()> {
        let (view, raw): (ConnectView, _) = self.get("/v1/connect").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        let name = |id: &str| {
            view.network_names
                .get(id)
                .cloned()
                .unwrap_or_else(|| head(id, 12).to_string())
        };
        println!(
            "{:<9} {:<10} {:<8} {:<24} {:<24}",
            "ID", "KIND", "SCOPE", "A", "B"
        );
        for row in &view.connections {
            let c = &row.connection;
            let (kind, a, b) = match &c.pair {
                Pair::Networks(a, b) => ("networks", name(a), name(b)),
                Pair::Containers(a, b) => ("containers", a.clone(), b.clone()),
            };
            println!(
                "{:<9} {:<10} {:<8} {:<24} {:<24}",
                c.id, kind, row.scope, a, b
            );
        }
        Ok(())
    }
}
