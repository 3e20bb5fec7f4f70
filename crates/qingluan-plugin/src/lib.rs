//! The libnetwork remote-driver protocol: wire types and routes for the NetworkDriver and
//! IpamDriver interfaces, each served on its own unix socket, or both on one (a managed
//! plugin has one socket).
//!
//! Rules (see `shared/docs/libnetwork-protocol.md`): Docker sends no Content-Type and empty
//! bodies for argument-less calls, so bodies are parsed by hand and leniently; every reply
//! carries a JSON body; every failure is HTTP 500 with `{"Err": ...}` — the ONE place in the
//! code where errors become protocol — because a 200 with `Err` counts as success for IPAM.
//! Unknown methods get 404. Each call's handling time is recorded for `qingluan status`. A
//! panic in a call is caught and answered 500 + `Err` like any failure (the daemon's panic
//! hook logs it with a backtrace).

mod stats;
mod wire;

pub use stats::{CallStats, MethodStats};

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::FutureExt;
use qingluan_core::ipam::Ipam;
use qingluan_core::service::Driver;
use serde_json::{json, Value};

/// What the routes need.
#[derive(Clone)]
pub struct Plugin {
    /// The network driver service.
    pub driver: Arc<Driver>,
    /// The IPAM service.
    pub ipam: Arc<Ipam>,
    /// Called on every `Plugin.Activate`: a new dockerd instance is talking to us.
    pub on_activate: Arc<dyn Fn() + Send + Sync>,
    /// Per-method handling times.
    pub stats: Arc<CallStats>,
}

/// Which interface a socket serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    /// `NetworkDriver` on `<name>.sock`.
    Network,
    /// `IpamDriver` on `<name>Ipam.sock`.
    Ipam,
    /// Both on one socket (a managed plugin), told apart by the method's prefix.
    Both,
}

/// The router of one socket.
pub fn router(plugin: Plugin, iface: Interface) -> Router {
    Router::new().fallback(handle).with_state((plugin, iface))
}

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    State((plugin, iface)): State<(Plugin, Interface)>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let method = uri.path().trim_start_matches('/').to_string();
    let started = std::time::Instant::now();
    let call = std::panic::AssertUnwindSafe(dispatch(&plugin, iface, &method, &body));
    let result = call.catch_unwind().await.unwrap_or_else(|_| {
        Err(format!(
            "internal error in {method}: the daemon hit a defect (its log has the details)"
        ))
    });
    plugin.stats.record(&method, started.elapsed());
    match result {
        Ok(Some(v)) => {
            tracing::debug!(%method, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "ok");
            reply(StatusCode::OK, v)
        }
        Ok(None) => reply(
            StatusCode::NOT_FOUND,
            json!({"Err": format!("unknown method {method}")}),
        ),
        Err(msg) => {
            // Named by the IDs the call carries: Docker tells drivers no names.
            let ids = serde_json::from_slice::<Value>(&body).unwrap_or_default();
            let id =
                |k: &str| qingluan_core::model::head(ids[k].as_str().unwrap_or(""), 12).to_string();
            tracing::warn!(%method, network = %id("NetworkID"), endpoint = %id("EndpointID"),
                pool = %id("PoolID"), error = %msg, "refused");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"Err": msg, "Error": msg}),
            )
        }
    }
}

/// Runs one call; `Ok(None)` means the method is not ours.
async fn dispatch(
    p: &Plugin,
    iface: Interface,
    method: &str,
    body: &[u8],
) -> Result<Option<Value>, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let v = match (iface, method) {
        (Interface::Network, "Plugin.Activate") => {
            (p.on_activate)();
            json!({"Implements": ["NetworkDriver"]})
        }
        (Interface::Ipam, "Plugin.Activate") => json!({"Implements": ["IpamDriver"]}),
        (Interface::Both, "Plugin.Activate") => {
            (p.on_activate)();
            json!({"Implements": ["NetworkDriver", "IpamDriver"]})
        }
        (Interface::Both, m) if m.starts_with("IpamDriver.") => {
            return Box::pin(dispatch(p, Interface::Ipam, m, body)).await
        }
        (Interface::Both, m) => return Box::pin(dispatch(p, Interface::Network, m, body)).await,
        (Interface::Network, m) => match wire::network(p, m, body).await {
            Ok(v) => return Ok(v),
            Err(err) => return Err(e(&err)),
        },
        (Interface::Ipam, m) => match wire::ipam(p, m, body).await {
            Ok(v) => return Ok(v),
            Err(err) => return Err(e(&err)),
        },
    };
    Ok(Some(v))
}
