//! CreateEndpoint, Join, Leave, DeleteEndpoint and EndpointOperInfo.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use qingluan_store::{to_json, Op};

use super::publishing::may_publish;
use super::{address_pool, on_network, short, CreateEndpoint, ServiceError};
use crate::cluster;
use crate::ipam::IpamError;
use crate::model::{self, Endpoint, Mac, Network};
use crate::modes::{self, JoinInfo};
use crate::options::{self, OptionError, RawPort};
use crate::reconcile::ReconcileError;
use crate::records;

/// How long a network's next deletion waits at most for dockerd to unmount the sandbox the
/// previous one left.
const SANDBOX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often that wait looks.
const SANDBOX_POLL: std::time::Duration = std::time::Duration::from_millis(5);

handle! {
    /// CreateEndpoint, Join, Leave, DeleteEndpoint and EndpointOperInfo.
    Endpoints
}

impl Endpoints {
    /// CreateEndpoint; returns the MAC to report when Docker sent none. Answers once the
    /// address binding and the record are durable, without the call lock: no other call
    /// writes an endpoint's record before its CreateEndpoint answered. On a host network
    /// the binding and the record are one compare-and-swap in this host's store. A cluster
    /// network's record comes first, then the binding and the cluster entry in one
    /// compare-and-swap in the cluster store; the record goes again when that fails. In
    /// that order the cluster agent, which lists this host's entries before it reads the
    /// records and removes the entries without one, always finds the record of an entry it
    /// listed. A crash between the two leaves a record without an entry or a binding: the
    /// agent's next pass publishes it (its address is this host's already, and
    /// ReleaseAddress keeps it while the record uses it), and the collector removes it
    /// once Docker does not know the endpoint; an entry the agent published from a record
    /// removed here again goes at its next pass.
    ///
    /// Making the veth pair and the endpoint's pass start here, side by side, and its Join
    /// waits for both (Docker moves the pair's peer into the container after Join). dockerd
    /// creates one network's endpoints one at a time, holding that network's lock, and
    /// Joins under the container's own: so one network's containers wait for the kernel and
    /// ovs-vswitchd together rather than in a row.
    pub async fn create(&self, req: CreateEndpoint) -> Result<Option<Mac>, ServiceError> {
        let net = self.network(&req.network_id).await?;
        if let Some(k) = req.driver_opts.keys().find(|k| !k.starts_with("qos.")) {
            return Err(ServiceError::Invalid(format!(
                "unknown endpoint option {k:?} (--driver-opt takes {})",
                crate::qos::KEYS.map(|k| format!("qos.{k}")).join(", ")
            )));
        }
        let qos = crate::qos::spec(&req.driver_opts, "qos.").map_err(OptionError::from)?;
        qos.no_aggregate("qos.aggregate.rate")
            .map_err(OptionError::from)?;
        let address: Ipv4Net = req.address.parse().map_err(|_| {
            ServiceError::Invalid(format!("missing or bad IPv4 address {:?}", req.address))
        })?;
        if !net.subnet.contains(&address.addr()) {
            return Err(IpamError::AddressOutside {
                addr: IpAddr::V4(address.addr()),
                subnet: IpNet::V4(net.subnet),
            }
            .into());
        }
        let address_v6 = match req.address_v6.as_str() {
            "" => None,
            s => Some(
                s.parse::<Ipv6Net>()
                    .map_err(|_| ServiceError::Invalid(format!("bad IPv6 address {s:?}")))?,
            ),
        };
        if let (Some(a), Some((subnet, _))) = (address_v6, net.ipv6) {
            if !subnet.contains(&a.addr()) {
                return Err(IpamError::AddressOutside {
                    addr: IpAddr::V6(a.addr()),
                    subnet: IpNet::V6(subnet),
                }
                .into());
            }
        }
        let ports = options::port_mappings(&req.ports)?;
        may_publish(&net, &ports)?;
        let (mac, report) = match req.mac.as_str() {
            "" => (Mac::from_ipv4(address.addr()), true),
            s => (s.parse::<Mac>().map_err(ServiceError::Invalid)?, false),
        };
        let (veth, peer) = model::veth_names(&self.settings.prefix, &req.endpoint_id);
        let ep = Endpoint {
            id: req.endpoint_id.clone(),
            network_id: net.id.clone(),
            veth,
            peer,
            address,
            address_v6,
            mac,
            ports: Vec::new(),
            joined: false,
            sandbox: None,
            left: None,
            created: model::now(),
            conflict: None,
            qos,
            container: None,
        };
        let mut lap = crate::reconcile::Lap::start();
        let (pool, ip) = (address_pool(&net), IpAddr::V4(address.addr()));
        let with = match net.cluster {
            None => vec![records::put(&ep)],
            Some(_) => {
                self.store.txn(vec![], vec![records::put(&ep)]).await?;
                lap.mark("record");
                let ckey = cluster::endpoint_key(&self.host, &ep.id);
                vec![Op::Put(ckey, to_json(&self.cluster_endpoint(&net, &ep)))]
            }
        };
        if let Err(e) = self.ipam.bind(&pool, ip, &ep.id, with).await {
            if net.cluster.is_some() {
                self.store
                    .txn(vec![], vec![records::delete::<Endpoint>(&ep.id)])
                    .await?;
            }
            return Err(e.into());
        }
        lap.mark("bind");
        crash_point!("create-endpoint-bound");
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.settling
            .lock()
            .expect("settling lock")
            .insert(ep.id.clone(), rx);
        tracing::debug!(endpoint = %short(&ep.id), steps = %lap, "create endpoint");
        let me = self.clone();
        tokio::spawn(async move {
            let mut lap = crate::reconcile::Lap::start();
            let (veth, pass) = tokio::join!(me.create_veth(&net, &ep), me.sync_after_write());
            lap.mark("veth and pass");
            tracing::debug!(endpoint = %short(&ep.id), steps = %lap, "endpoint settled");
            let _ = tx.send(veth.and(pass));
        });
        crash_point!("create-endpoint-committed");
        Ok(report.then_some(mac))
    }

    /// Creates a new endpoint's veth pair beside its pass, outside the pass lock (a pass
    /// that listed the links first makes it too, while it holds that lock).
    async fn create_veth(&self, net: &Network, ep: &Endpoint) -> Result<(), ServiceError> {
        let facts = self.facts().await?;
        let nets = self.networks().await?;
        let v = modes::endpoint_veth(&self.settings, &facts, &nets, net, ep);
        self.reconciler
            .create_veth(&v)
            .await
            .map_err(|e| ReconcileError(vec![e.to_string()]))?;
        Ok(())
    }

    /// Takes back a CreateEndpoint whose veth or pass failed: its record, cluster entry and
    /// address binding go (the address stays allocated: Docker releases it next), then a
    /// pass removes what the failed one left.
    async fn undo_create(&self, net: &Network, ep: &Endpoint) -> Result<(), ServiceError> {
        self.settling.lock().expect("settling lock").remove(&ep.id);
        let guard = self.lock.lock().await;
        if net.cluster.is_some() {
            let ckey = cluster::endpoint_key(&self.host, &ep.id);
            self.cluster.txn(vec![], vec![Op::Delete(ckey)]).await?;
        }
        self.store
            .txn(vec![], vec![records::delete::<Endpoint>(&ep.id)])
            .await?;
        let ip = IpAddr::V4(ep.address.addr());
        self.ipam.unbind(&address_pool(net), ip, &ep.id).await?;
        drop(guard);
        if let Err(e) = self.sync_after_write().await {
            tracing::warn!(error = %e, endpoint = %short(&ep.id), "reconcile after undo failed");
        }
        Ok(())
    }

    /// Waits for the pair and the pass CreateEndpoint started for `ep` (an endpoint created
    /// before this process started gets a pass of its own); undoes the endpoint when either
    /// failed.
    async fn settle(&self, net: &Network, ep: &Endpoint) -> Result<(), ServiceError> {
        let pending = self.settling.lock().expect("settling lock").remove(&ep.id);
        let outcome = match pending {
            Some(rx) => match rx.await {
                Ok(outcome) => outcome,
                Err(_) => self.sync_after_write().await,
            },
            None => self.sync_after_write().await,
        };
        if let Err(e) = outcome {
            self.undo_create(net, ep).await?;
            return Err(e);
        }
        Ok(())
    }

    /// Join: what Docker needs to plug the interface in. Answers once the endpoint's veth
    /// pair and pass (started by its CreateEndpoint) are done, so the peer exists and the
    /// container's first packet finds its port, flows and guard; when either failed, the
    /// endpoint is undone and Join fails with the error (Docker then deletes the endpoint
    /// and releases the address).
    pub async fn join(
        &self,
        network_id: &str,
        endpoint_id: &str,
        sandbox: &str,
        ports: &[RawPort],
    ) -> Result<JoinInfo, ServiceError> {
        let net = self.network(network_id).await?;
        options::sandbox_key(sandbox)?;
        let ep = self.endpoint(endpoint_id).await?;
        on_network(&ep, &net)?;
        may_publish(&net, &options::port_mappings(ports)?)?;
        let mut lap = crate::reconcile::Lap::start();
        self.settle(&net, &ep).await?;
        lap.mark("settle");
        let _g = self.lock.lock().await;
        let mut ep = self.endpoint(endpoint_id).await?;
        ep.joined = true;
        ep.sandbox = Some(sandbox.to_string());
        self.store.txn(vec![], vec![records::put(&ep)]).await?;
        self.joined.notify_one();
        lap.mark("record");
        tracing::debug!(endpoint = %short(&ep.id), steps = %lap, "join");
        let mut info = modes::driver(net.mode).join(&net, &ep);
        if net.mode == crate::model::Mode::Nonat {
            let connections = self.made_connections().await?;
            let nets = self.networks().await?;
            let world = crate::acl::World::new(&nets, std::slice::from_ref(&ep));
            info.routes = crate::connect::routes(&world, &ep, &connections);
        }
        Ok(info)
    }

    /// Leave: the interface goes back to the host; the endpoint stays until deleted.
    pub async fn leave(&self, endpoint_id: &str) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        if let Some(mut ep) = records::get::<Endpoint>(&*self.store, endpoint_id).await? {
            if let Some(sandbox) = ep.sandbox.take() {
                ep.left = Some(sandbox);
            }
            self.store.txn(vec![], vec![records::put(&ep)]).await?;
        }
        Ok(())
    }

    /// DeleteEndpoint; unknown endpoints are fine. Answers once the deletion is durable:
    /// the endpoint's port, flows, veth and netfilter chain go in a shared pass after the
    /// answer (a pass that fails leaves them to the next one: nothing of a deleted endpoint
    /// is wanted any more). A cluster network's endpoint's cluster entry goes first (an
    /// endpoint without a record has no entry: the entry is written after the record and
    /// removed before it, and the cluster agent removes any it published from a record
    /// that went meanwhile). A host network's endpoint's entry, which the cluster agent
    /// publishes some time after its CreateEndpoint (for `endpoint ls --all` and the
    /// hosts' endpoint counts), goes right after the answer, beside the pass: the answer
    /// does not wait for a second durable write. Deleted before its Join,
    /// the endpoint's pass waits for the pair and pass its CreateEndpoint started, so the
    /// pair goes with it even when that task made it late.
    ///
    /// One network's deletions answer one at a time, each once dockerd is done with the
    /// previous one. After our answer dockerd releases the address and decrements the
    /// network's endpoint count; two decrements of one network at once lose one
    /// (moby/moby#42119: they share a cached object), and `docker network rm` then refuses
    /// the emptied network ("has active endpoints") until dockerd restarts. dockerd
    /// unmounts the container's sandbox right after the decrement, so the next deletion
    /// waits for that, at most `SANDBOX_WAIT` (a `docker network disconnect` keeps the
    /// sandbox).
    pub async fn delete(&self, network_id: &str, endpoint_id: &str) -> Result<(), ServiceError> {
        let settling = self
            .settling
            .lock()
            .expect("settling lock")
            .remove(endpoint_id);
        let mut lap = crate::reconcile::Lap::start();
        let turn = self.deletions.on(network_id).lock_owned().await;
        lap.mark("turn");
        let guard = self.lock.lock().await;
        lap.mark("lock");
        let Some(ep) = records::get::<Endpoint>(&*self.store, endpoint_id).await? else {
            return Ok(());
        };
        let on_host = self
            .network(&ep.network_id)
            .await
            .is_ok_and(|net| net.cluster.is_none());
        let ckey = cluster::endpoint_key(&self.host, endpoint_id);
        if !on_host {
            if let Err(e) = self
                .cluster
                .txn(vec![], vec![Op::Delete(ckey.clone())])
                .await
            {
                tracing::warn!(error = %e, endpoint = %short(endpoint_id), "cluster record stays until the store is back");
            }
        }
        self.store
            .txn(vec![], vec![records::delete::<Endpoint>(endpoint_id)])
            .await?;
        crash_point!("delete-endpoint-recorded");
        drop(guard);
        lap.mark("record");
        tracing::debug!(endpoint = %short(endpoint_id), steps = %lap, "delete endpoint");
        if let Some(sandbox) = ep.left {
            let state = self.s.clone();
            tokio::spawn(async move {
                let _turn = turn;
                let links = state.reconciler.adapters().links.clone();
                let until = tokio::time::Instant::now() + SANDBOX_WAIT;
                let path = std::path::Path::new(&sandbox);
                while links.netns_mounted(path).await && tokio::time::Instant::now() < until {
                    tokio::time::sleep(SANDBOX_POLL).await;
                }
            });
        }
        let state = self.s.clone();
        let endpoint = short(endpoint_id);
        tokio::spawn(async move {
            if on_host {
                if let Err(e) = state.cluster.txn(vec![], vec![Op::Delete(ckey)]).await {
                    tracing::warn!(error = %e, %endpoint, "cluster record stays until the cluster agent's next pass");
                }
            }
            if let Some(rx) = settling {
                let _ = rx.await;
            }
            if let Err(e) = state.sync_after_write().await {
                tracing::warn!(error = %e, %endpoint, "the deleted endpoint's dataplane goes with the next pass");
            }
        });
        Ok(())
    }

    /// EndpointOperInfo: what we know about an endpoint.
    pub async fn info(&self, endpoint_id: &str) -> Result<serde_json::Value, ServiceError> {
        let ep = self.endpoint(endpoint_id).await?;
        Ok(serde_json::json!({
            "ip": ep.address.to_string(),
            "mac": ep.mac.to_string(),
            "veth": ep.host_veth(),
            "ports": ep.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        }))
    }
}
