//! Learning which container each endpoint belongs to. Docker never tells a network driver;
//! the Engine API does once the container's sandbox is connected, which happens after Join
//! returns. So after each Join the daemon asks, every 250 ms for at most 10 s, about the
//! joined endpoints whose container it does not know yet, and records each container with
//! its labels (a QoS source, see `qingluan_core::qos`). Once a minute it tries once more
//! for any still unknown (the daemon restarted, dockerd was busy). Commands that name a
//! container (`mirror add`, `ids enable --container`) run a pass first.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qingluan_core::service::Driver;

/// How long after a Join the daemon keeps asking.
const AFTER_JOIN: Duration = Duration::from_secs(10);
/// Between two questions.
const PAUSE: Duration = Duration::from_millis(250);
/// Between passes without a Join.
const PERIOD: Duration = Duration::from_secs(60);

/// Runs until the daemon stops.
pub async fn learn(driver: Arc<Driver>, socket: PathBuf) {
    loop {
        let joined = tokio::select! {
            _ = driver.state.joined.notified() => true,
            _ = tokio::time::sleep(PERIOD) => false,
        };
        let deadline = tokio::time::Instant::now() + AFTER_JOIN;
        while pass(&driver, &socket).await && joined && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(PAUSE).await;
        }
    }
}

/// One pass; returns whether an endpoint's container is still unknown. Also run before a
/// command that names a container, so that one started a moment ago is known.
pub(crate) async fn pass(driver: &Driver, socket: &std::path::Path) -> bool {
    let missing: Vec<_> = match driver.state.endpoints().await {
        Ok(eps) => eps
            .into_iter()
            .filter(|e| e.joined && e.container.is_none())
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "listing endpoints");
            return false;
        }
    };
    let mut unknown = false;
    let mut networks = std::collections::BTreeMap::new();
    for ep in &missing {
        if !networks.contains_key(&ep.network_id) {
            let found = crate::docker::network_containers(socket, &ep.network_id)
                .await
                .unwrap_or_default();
            networks.insert(ep.network_id.clone(), found);
        }
        let Some(c) = networks[&ep.network_id].get(&ep.id) else {
            unknown = true;
            continue;
        };
        let learnt = match crate::docker::container(socket, &c.id).await {
            Ok(container) => driver.qos.learn_container(&ep.id, container).await,
            Err(e) => {
                tracing::debug!(error = %e, container = %c.id, "inspecting container");
                unknown = true;
                continue;
            }
        };
        if let Err(e) = learnt {
            tracing::warn!(error = %e, endpoint = %ep.short_id(), "recording the endpoint's container");
        }
    }
    unknown
}
