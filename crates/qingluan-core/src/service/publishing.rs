//! ProgramExternalConnectivity and RevokeExternalConnectivity, and the one rule for `-p`.

use super::{on_network, ServiceError};
use crate::model::{Endpoint, Mode, Network, PortMapping};
use crate::modes;
use crate::options::{self, RawPort};
use crate::records;

handle! {
    /// ProgramExternalConnectivity and RevokeExternalConnectivity.
    Publishing
}

impl Publishing {
    /// ProgramExternalConnectivity: publish the container's ports through this endpoint.
    pub async fn program(
        &self,
        network_id: &str,
        endpoint_id: &str,
        ports: &[RawPort],
    ) -> Result<(), ServiceError> {
        let net = self.network(network_id).await?;
        let mut wanted = options::port_mappings(ports)?;
        if wanted.is_empty() {
            return Ok(());
        }
        may_publish(&net, &wanted)?;
        let _g = self.lock.lock().await;
        let ep = self.endpoint(endpoint_id).await?;
        on_network(&ep, &net)?;
        let others: Vec<Endpoint> = self
            .endpoints()
            .await?
            .into_iter()
            .filter(|e| e.id != ep.id)
            .collect();
        let taken = |m: &PortMapping| {
            others.iter().find_map(|o| {
                o.ports
                    .iter()
                    .any(|p| {
                        p.proto == m.proto
                            && p.host_port == m.host_port
                            && (p.host_ip.is_none()
                                || m.host_ip.is_none()
                                || p.host_ip == m.host_ip)
                    })
                    .then(|| o.short_id().to_string())
            })
        };
        let mut next = 49153u16;
        for i in 0..wanted.len() {
            if wanted[i].host_port == 0 {
                loop {
                    let mut probe = wanted[i].clone();
                    probe.host_port = next;
                    next = next
                        .checked_add(1)
                        .ok_or_else(|| ServiceError::Invalid("no free host port left".into()))?;
                    if taken(&probe).is_none()
                        && !wanted
                            .iter()
                            .any(|w| w.proto == probe.proto && w.host_port == probe.host_port)
                    {
                        wanted[i] = probe;
                        break;
                    }
                }
            }
            if let Some(owner) = taken(&wanted[i]) {
                return Err(ServiceError::PortInUse {
                    port: wanted[i].host_port,
                    proto: wanted[i].proto.as_str(),
                    owner,
                });
            }
        }
        let before = ep.clone();
        let mut after = ep;
        after.ports = wanted;
        self.commit(vec![records::put(&after)], vec![records::put(&before)])
            .await
    }

    /// RevokeExternalConnectivity: unpublish.
    pub async fn revoke(&self, endpoint_id: &str) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        let Some(before) = records::get::<Endpoint>(&*self.store, endpoint_id).await? else {
            return Ok(());
        };
        if before.ports.is_empty() {
            return Ok(());
        }
        let after = Endpoint {
            ports: Vec::new(),
            ..before.clone()
        };
        self.commit(vec![records::put(&after)], vec![records::put(&before)])
            .await
    }
}

/// The one rule for `-p`: ports may be published only where the network's mode allows it.
pub(crate) fn may_publish(net: &Network, ports: &[PortMapping]) -> Result<(), ServiceError> {
    if ports.is_empty() || modes::driver(net.mode).allows_publishing(net) {
        Ok(())
    } else {
        Err(ServiceError::PublishingRefused(refusal(net)))
    }
}

/// Why a network's mode refuses `-p`.
fn refusal(net: &Network) -> &'static str {
    match net.mode {
        Mode::Nonat => "nonat networks: they have no route out",
        Mode::Vxlan if !net.internal => {
            "vxlan networks without --opt nat=true: they have no route out"
        }
        Mode::Flat | Mode::Vlan => {
            "flat and vlan networks: containers are on the physical network, reach them at their own address"
        }
        _ => "internal networks: they have no route out",
    }
}
