//! CreateNetwork and DeleteNetwork.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{short, CreateNetwork, ServiceError, VXLAN_OVERHEAD};
use crate::cluster::{self, ClusterNetwork};
use crate::ipam::IpamError;
use crate::model::{self, Endpoint, Mode, Network};
use crate::qos::QosOverride;
use crate::{modes, options, records};

handle! {
    /// CreateNetwork and DeleteNetwork.
    Networks
}

impl Networks {
    /// CreateNetwork.
    pub async fn create(&self, req: CreateNetwork) -> Result<(), ServiceError> {
        let opts = options::network_options(&req.generic, &self.settings.default_model)?;
        let [v4] = req.v4.as_slice() else {
            return Err(ServiceError::Invalid(format!(
                "a {} network needs exactly one IPv4 subnet, got {}",
                opts.mode,
                req.v4.len()
            )));
        };
        let subnet: Ipv4Net = v4
            .pool
            .parse()
            .map_err(|_| ServiceError::Invalid(format!("bad IPv4 pool {:?}", v4.pool)))?;
        let gateway: Ipv4Net = v4.gateway.parse().map_err(|_| {
            ServiceError::Invalid(format!("missing or bad IPv4 gateway {:?}", v4.gateway))
        })?;
        if !subnet.contains(&gateway.addr()) {
            return Err(IpamError::GatewayOutside {
                addr: IpAddr::V4(gateway.addr()),
                subnet: IpNet::V4(subnet),
            }
            .into());
        }
        let ipv6 = match req.v6.as_slice() {
            [] => None,
            [v6] => {
                let s: Ipv6Net = v6
                    .pool
                    .parse()
                    .map_err(|_| ServiceError::Invalid(format!("bad IPv6 pool {:?}", v6.pool)))?;
                let g: Ipv6Net = v6.gateway.parse().map_err(|_| {
                    ServiceError::Invalid(format!("missing or bad IPv6 gateway {:?}", v6.gateway))
                })?;
                Some((s, g.addr()))
            }
            more => {
                return Err(ServiceError::Invalid(format!(
                    "only one IPv6 subnet is supported, got {}",
                    more.len()
                )))
            }
        };
        if opts.nat && req.internal {
            return Err(ServiceError::InternalNat);
        }
        let (bridge, mtu, uplink) = match opts.mode {
            Mode::Vxlan => (
                modes::overlay_bridge(&self.settings.prefix),
                self.settings.mtu.saturating_sub(VXLAN_OVERHEAD),
                None,
            ),
            Mode::Flat | Mode::Vlan => {
                let (bridge, nic, mtu) = self.physical_uplink(opts.parent.as_deref()).await?;
                (bridge, mtu, Some(nic))
            }
            Mode::Nat | Mode::Nonat => (
                model::bridge_name(&self.settings.prefix, &req.id),
                self.settings.mtu,
                None,
            ),
        };
        let net = Network {
            id: req.id.clone(),
            mode: opts.mode,
            bridge,
            internal: req.internal,
            mtu: opts.mtu.unwrap_or(mtu),
            subnet: subnet.trunc(),
            gateway: gateway.addr(),
            ipv6,
            options: req.generic.clone(),
            created: model::now(),
            vni: opts.vni,
            cluster: cluster::network_key(opts.mode, opts.vni, subnet),
            gateway_port: opts
                .nat
                .then(|| model::bridge_name(&self.settings.prefix, &req.id)),
            uplink,
            qos: opts.qos.clone(),
            acl_default: opts.acl_default,
            zone: 0,
        };
        let _g = self.lock.lock().await;
        if let Some(have) = records::get::<Network>(&*self.store, &net.id).await? {
            let same = Network {
                created: have.created,
                zone: have.zone,
                ..net.clone()
            };
            return if have == same {
                Ok(())
            } else {
                Err(ServiceError::NetworkExists(short(&net.id)))
            };
        }
        self.check_routed(&net).await?;
        let taken = crate::acl::zones(&self.networks().await?)
            .into_values()
            .collect();
        let net = Network {
            zone: crate::acl::free_zone(&taken, &net.id),
            ..net
        };
        let created = match &net.cluster {
            Some(k) => Some(self.declare(&net, k).await?),
            None => None,
        };
        if created.is_some() {
            // The network may have existed before under the same key, with rules and
            // connections that went with it: apply what the cluster holds now, not what
            // the cluster agent last read.
            self.refresh_cluster_intent().await?;
        }
        let done = self
            .commit(
                vec![records::put(&net)],
                vec![records::delete::<Network>(&net.id)],
            )
            .await;
        if let (Err(_), Some(k)) = (&done, &net.cluster) {
            if created == Some(true) {
                cluster::detach(&*self.cluster, k, &self.host).await?;
            }
        }
        done?;
        crash_point!("create-network-committed");
        Ok(())
    }

    /// The uplink of a flat or vlan network: its bridge, its interface (`--opt parent`, else
    /// `network.uplink`, else the underlay's) and that interface's MTU. The underlay's
    /// interface keeps the bridge vxlan uses (`<prefix>ul`); any other gets its own.
    async fn physical_uplink(
        &self,
        parent: Option<&str>,
    ) -> Result<(String, String, u32), ServiceError> {
        let a = self.reconciler.adapters();
        let link_err =
            |e: qingluan_dataplane::netlink::LinkError| ServiceError::Invalid(e.to_string());
        let underlay = match self.settings.underlay_ip {
            Some(ip) => {
                let snap = a
                    .ovs
                    .snapshot()
                    .await
                    .map_err(|e| ServiceError::Ovs(e.to_string()))?;
                crate::uplink::interface_of(&*a.links, &self.settings.name, &snap, ip)
                    .await
                    .map_err(link_err)?
            }
            None => None,
        };
        let nic = parent
            .map(String::from)
            .or_else(|| self.settings.uplink.clone())
            .or_else(|| underlay.clone())
            .ok_or(ServiceError::NoUplink)?;
        let info = a
            .links
            .link(&nic)
            .await
            .map_err(link_err)?
            .ok_or_else(|| ServiceError::ParentMissing(nic.clone()))?;
        let bridge = if underlay.as_deref() == Some(nic.as_str()) {
            modes::uplink_bridge(&self.settings.prefix)
        } else {
            model::nic_bridge(&self.settings.prefix, &nic)
        };
        Ok((bridge, nic, info.mtu))
    }

    /// Refuses a network whose gateway would sit on this host (nat, nonat, vxlan with
    /// `nat=true`) when its subnet overlaps one this host already routes: the host's routing
    /// table can hold only one of them. The IPAM keeps nat and nonat subnets apart already;
    /// vxlan subnets live in their own domains and meet the host's only here.
    async fn check_routed(&self, net: &Network) -> Result<(), ServiceError> {
        if net.host_gateway().is_none() {
            return Ok(());
        }
        let clash = self.networks().await?.into_iter().find(|n| {
            n.id != net.id
                && n.host_gateway().is_some()
                && crate::ipam::overlaps(IpNet::V4(n.subnet), IpNet::V4(net.subnet))
        });
        match clash {
            Some(n) => Err(ServiceError::RoutedOverlap {
                subnet: net.subnet,
                other: n.subnet,
                network: short(&n.id),
            }),
            None => Ok(()),
        }
    }

    /// Records a cluster network for this host: checks that the IPAM subnet belongs to the
    /// same cluster key (`--opt vni` and `--ipam-opt vni` agree), then joins or creates the
    /// definition. Returns whether it was created.
    async fn declare(&self, net: &Network, key: &str) -> Result<bool, ServiceError> {
        let pool_id = crate::ipam::pool_id(key, IpNet::V4(net.subnet));
        let subnet = self.ipam.subnet(&pool_id).await.map_err(|e| match e {
            IpamError::UnknownPoolId(_) => ServiceError::Invalid(format!(
                "subnet {} is not a qingluanIpam subnet of {key}: use --ipam-driver {}Ipam \
                 --ipam-opt pool={}{}",
                net.subnet,
                self.settings.name,
                net.mode,
                match net.vni {
                    Some(v) => format!(" --ipam-opt vni={v} (the same VNI as --opt vni)"),
                    None => String::new(),
                }
            )),
            other => other.into(),
        })?;
        let def = ClusterNetwork {
            key: key.to_string(),
            name: None,
            mode: net.mode,
            vni: net.vni,
            subnet: net.subnet,
            gateway: net.gateway,
            ip_range: subnet.range.and_then(|r| match r {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            }),
            pool: subnet.pool,
            options: net.options.clone(),
            internal: net.internal,
            created_by: self.host.clone(),
            created: model::now(),
        };
        Ok(cluster::declare(&*self.cluster, &def, &self.host, &net.id).await?)
    }

    /// DeleteNetwork: the network, any endpoint left on it and its QoS overrides.
    pub async fn delete(&self, id: &str) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        let Some(net) = records::get::<Network>(&*self.store, id).await? else {
            return Ok(());
        };
        let (mut ops, mut undo) = (
            vec![records::delete::<Network>(id)],
            vec![records::put(&net)],
        );
        for ep in self
            .endpoints()
            .await?
            .into_iter()
            .filter(|e| e.network_id == id)
        {
            ops.push(records::delete::<Endpoint>(&ep.id));
            undo.push(records::put(&ep));
        }
        let prefix = format!("{id}/");
        for o in records::list::<QosOverride>(&*self.store)
            .await?
            .into_iter()
            .filter(|o| o.id.starts_with(&prefix))
        {
            ops.push(records::delete::<QosOverride>(&o.id));
            undo.push(records::put(&o));
        }
        let routes = self.sandbox_routes().await?;
        for c in self.connections().await?.into_iter().filter(
            |c| matches!(&c.pair, crate::connect::Pair::Networks(a, b) if a == id || b == id),
        ) {
            ops.push(records::delete::<crate::connect::Connection>(&c.id));
            undo.push(records::put(&c));
        }
        for r in self
            .acl_rules()
            .await?
            .into_iter()
            .filter(|r| r.spec.network == id)
        {
            ops.push(records::delete::<crate::acl::AclRule>(&r.id));
            undo.push(records::put(&r));
        }
        for m in self
            .mirrors()
            .await?
            .into_iter()
            .filter(|m| m.spec.network == id)
        {
            ops.push(records::delete::<crate::mirror::Mirror>(&m.id));
            undo.push(records::put(&m));
        }
        let watched = records::get::<crate::ids::IdsWatch>(&*self.store, id).await?;
        if let Some(w) = &watched {
            ops.push(records::delete::<crate::ids::IdsWatch>(&w.network));
            undo.push(records::put(w));
        }
        self.commit(ops.clone(), undo.clone()).await?;
        self.update_sandbox_routes(routes).await?;
        if watched.is_some() {
            if let Err(e) = super::Ids::new(self.s.clone()).ensure_captures().await {
                tracing::warn!(error = %e, "cannot remove the detector's capture port");
            }
        }
        if let Some(k) = &net.cluster {
            let detached = async {
                if cluster::networks(&*self.cluster)
                    .await?
                    .iter()
                    .any(|d| &d.key == k)
                {
                    cluster::detach(&*self.cluster, k, &self.host).await?;
                }
                Ok::<_, ServiceError>(())
            };
            if let Err(e) = detached.await {
                self.commit(undo, ops).await?;
                return Err(e);
            }
            if let Err(e) = self.refresh_cluster_intent().await {
                tracing::warn!(error = %e, "cannot re-read the cluster's rules and connections");
            }
        }
        Ok(())
    }
}
