//! The store-backed IPAM: pools, subnets and addresses as compare-and-swap transactions.
//!
//! A local mutex serialises requests of this daemon so "lowest free address" is cheap and
//! deterministic; the store transaction (create-if-absent of the address key) is what makes
//! an allocation unique. On the cluster store other hosts allocate concurrently, so dynamic
//! addresses there come from this host's blocks (`blocks.rs`): no list of the subnet, no
//! wait behind this daemon's other calls, only the address's own create, which races
//! other hosts only for addresses they took inside our blocks (static or borrowed ones).
//! When no block is left a host borrows: it re-reads the taken addresses and tries the
//! next one until its create wins.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use qingluan_store::{create, decode, get_json, list_json, to_json, Compare, Op, Store};
use serde::Serialize;
use tokio::sync::Mutex;

use super::blocks::{block_key, blocks_prefix, unclaimed, Affinity};
use super::*;
use crate::settings::IpamSettings;

/// A pool with the subnets carved from or assigned to it, for `qingluan pool ls`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PoolUsage {
    /// The pool.
    pub pool: Pool,
    /// Its subnets with the number of allocated addresses in each.
    pub subnets: Vec<(Subnet, usize)>,
}

/// The IPAM service.
pub struct Ipam {
    /// This host's store: the `host` domain and its pools.
    store: Arc<dyn Store>,
    /// The cluster store: vlan and vxlan domains and their pools.
    cluster: Arc<dyn Store>,
    /// This host's ID, recorded on the container addresses it allocates in cluster domains.
    host: String,
    /// Serialises this daemon's requests, but for dynamic addresses from its blocks.
    lock: Mutex<()>,
    /// This host's blocks of each cluster subnet, by PoolID (loaded at first use).
    affinity: std::sync::Mutex<BTreeMap<String, Affinity>>,
    /// Serialises loading and claiming blocks.
    claiming: Mutex<()>,
    /// Source of the host's routes, skipped when carving.
    routes: fn() -> Vec<IpNet>,
    /// Pool used when a request names none.
    default_pool: String,
    /// Pools from the configuration, created by [`Ipam::seed`] when missing.
    configured: Vec<Pool>,
}

fn parse_ip(s: &str) -> Result<IpAddr, IpamError> {
    s.parse().map_err(|_| IpamError::Invalid {
        what: "address",
        value: s.to_string(),
    })
}

impl Ipam {
    /// Opens the IPAM on a store and creates the configured pools that do not exist yet;
    /// `routes` lists the host's routes, which carving avoids ([`super::host_routes`]).
    pub async fn with_routes(
        store: Arc<dyn Store>,
        settings: &IpamSettings,
        routes: fn() -> Vec<IpNet>,
    ) -> Result<Ipam, IpamError> {
        let ipam = Self::lazy(store.clone(), store, "local", settings, routes)?;
        ipam.seed().await?;
        Ok(ipam)
    }

    /// Validates the configured pools without touching the store; call [`Ipam::seed`] (and
    /// retry it) to create them. The daemon starts this way so a store that is down at start
    /// only delays the pools.
    pub fn lazy(
        store: Arc<dyn Store>,
        cluster: Arc<dyn Store>,
        host: &str,
        settings: &IpamSettings,
        routes: fn() -> Vec<IpNet>,
    ) -> Result<Ipam, IpamError> {
        let mut configured = Vec::new();
        for (name, p) in &settings.pools {
            let kind = match name.as_str() {
                "vlan" => PoolKind::Vlan,
                "vxlan" => PoolKind::Vxlan,
                "flat" => PoolKind::Flat,
                _ => PoolKind::Host,
            };
            let pool = Pool {
                name: name.clone(),
                subnet: p.subnet.trunc(),
                prefix: p.prefix,
                kind,
            };
            check_pool(&pool)?;
            configured.push(pool);
        }
        Ok(Ipam {
            store,
            cluster,
            host: host.to_string(),
            lock: Mutex::new(()),
            affinity: std::sync::Mutex::default(),
            claiming: Mutex::new(()),
            routes,
            default_pool: settings.default_pool.clone(),
            configured,
        })
    }

    /// Creates the configured pools that do not exist yet (existing ones are kept).
    pub async fn seed(&self) -> Result<(), IpamError> {
        for pool in &self.configured {
            create(
                self.pool_store(pool.kind),
                &format!("{POOLS}{}", pool.name),
                to_json(pool),
            )
            .await?;
        }
        Ok(())
    }

    /// The store of a pool kind's pools.
    fn pool_store(&self, kind: PoolKind) -> &dyn Store {
        match kind {
            PoolKind::Host => &*self.store,
            _ => &*self.cluster,
        }
    }

    /// The store of a routing domain's subnets and addresses.
    fn domain_store(&self, domain: &str) -> &dyn Store {
        if is_cluster_domain(domain) {
            &*self.cluster
        } else {
            &*self.store
        }
    }

    /// Every pool by name: this host's, then the cluster's.
    pub async fn pools(&self) -> Result<Vec<Pool>, IpamError> {
        let mut pools: Vec<Pool> = list_json(&*self.store, POOLS).await?;
        pools.retain(|p| p.kind == PoolKind::Host);
        let mut shared: Vec<Pool> = list_json(&*self.cluster, POOLS).await?;
        shared.retain(|p| p.kind != PoolKind::Host);
        pools.extend(shared);
        Ok(pools)
    }

    async fn pool(&self, name: &str) -> Result<Pool, IpamError> {
        let key = format!("{POOLS}{name}");
        let local: Option<Pool> = get_json(&*self.store, &key).await?;
        let found = match local.filter(|p| p.kind == PoolKind::Host) {
            Some(p) => Some(p),
            None => get_json::<Pool>(&*self.cluster, &key)
                .await?
                .filter(|p| p.kind != PoolKind::Host),
        };
        match found {
            Some(p) => Ok(p),
            None => {
                let known: Vec<String> = self.pools().await?.into_iter().map(|p| p.name).collect();
                Err(IpamError::UnknownPool {
                    name: name.to_string(),
                    known: known.join(", "),
                })
            }
        }
    }

    /// Every subnet: this host's, then the cluster's.
    pub async fn subnets(&self) -> Result<Vec<Subnet>, IpamError> {
        let mut out: Vec<Subnet> = list_json(&*self.store, SUBNETS).await?;
        out.retain(|s| !is_cluster_domain(&s.domain));
        let mut shared: Vec<Subnet> = list_json(&*self.cluster, SUBNETS).await?;
        shared.retain(|s| is_cluster_domain(&s.domain));
        out.extend(shared);
        Ok(out)
    }

    /// Subnets of one routing domain.
    /// Releases this host's subnets (the `host` domain) that no network in `in_use` has
    /// and that were handed out at least `grace_secs` ago: a pool Docker requested for a
    /// network whose creation then failed, when its ReleasePool failed too (a full disk).
    /// Returns the released subnets.
    pub async fn collect_subnets(
        &self,
        in_use: &BTreeSet<IpNet>,
        grace_secs: u64,
    ) -> Result<Vec<IpNet>, IpamError> {
        let now = crate::model::now();
        let mut out = Vec::new();
        for s in self.domain_subnets("host").await? {
            if in_use.contains(&s.cidr) || now.saturating_sub(s.created) < grace_secs {
                continue;
            }
            self.release_pool(&s.id).await?;
            out.push(s.cidr);
        }
        Ok(out)
    }

    /// Releases the dynamic addresses of host subnet `pool_id` that no endpoint is bound
    /// to, none of `used` is, and that were allocated at least `grace_secs` ago: an address
    /// Docker requested when the daemon died before it could answer. Returns them.
    pub async fn collect_addresses(
        &self,
        pool_id: &str,
        used: &BTreeSet<IpAddr>,
        grace_secs: u64,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let (domain, cidr) = parse_pool_id(pool_id)?;
        if is_cluster_domain(&domain) {
            return Ok(Vec::new());
        }
        let now = crate::model::now();
        let _g = self.lock.lock().await;
        let mut out = Vec::new();
        for kv in self.store.list(&addrs_prefix(&domain, cidr)).await? {
            let Ok(a) = serde_json::from_slice::<Addr>(&kv.value) else {
                continue;
            };
            if a.kind != AddrKind::Dynamic
                || a.endpoint.is_some()
                || used.contains(&a.ip)
                || now.saturating_sub(a.since) < grace_secs
            {
                continue;
            }
            if delete_if_unchanged(&*self.store, &kv.key, kv.value).await? {
                out.push(a.ip);
            }
        }
        Ok(out)
    }

    async fn domain_subnets(&self, domain: &str) -> Result<Vec<Subnet>, IpamError> {
        Ok(list_json(self.domain_store(domain), &format!("{SUBNETS}{domain}/")).await?)
    }

    /// Allocated addresses of a subnet.
    pub async fn addresses(&self, subnet: &Subnet) -> Result<Vec<Addr>, IpamError> {
        list_json(
            self.domain_store(&subnet.domain),
            &addrs_prefix(&subnet.domain, subnet.cidr),
        )
        .await
        .map_err(Into::into)
    }

    /// Pools with their subnets and address counts.
    pub async fn usage(&self) -> Result<Vec<PoolUsage>, IpamError> {
        let subnets = self.subnets().await?;
        let mut out = Vec::new();
        for pool in self.pools().await? {
            let mut mine = Vec::new();
            for s in subnets.iter().filter(|s| s.pool == pool.name) {
                mine.push((s.clone(), self.addresses(s).await?.len()));
            }
            out.push(PoolUsage {
                pool,
                subnets: mine,
            });
        }
        Ok(out)
    }

    /// Creates a pool (`qingluan pool create`).
    pub async fn create_pool(&self, pool: Pool) -> Result<(), IpamError> {
        check_pool(&pool)?;
        let key = format!("{POOLS}{}", pool.name);
        if self.pool(&pool.name).await.is_ok() {
            return Err(IpamError::PoolRule(format!(
                "pool {} already exists",
                pool.name
            )));
        }
        let ok = create(self.pool_store(pool.kind), &key, to_json(&pool)).await?;
        if !ok {
            return Err(IpamError::PoolRule(format!(
                "pool {} already exists",
                pool.name
            )));
        }
        Ok(())
    }

    /// Removes a pool no subnet uses (`qingluan pool rm`).
    pub async fn remove_pool(&self, name: &str) -> Result<(), IpamError> {
        let _g = self.lock.lock().await;
        let pool = self.pool(name).await?;
        let used: Vec<String> = self
            .subnets()
            .await?
            .into_iter()
            .filter(|s| s.pool == name)
            .map(|s| s.cidr.to_string())
            .collect();
        if !used.is_empty() {
            return Err(IpamError::PoolRule(format!(
                "pool {name} is in use by {} subnet(s): {}",
                used.len(),
                used.join(", ")
            )));
        }
        self.pool_store(pool.kind)
            .txn(vec![], vec![Op::Delete(format!("{POOLS}{name}"))])
            .await?;
        Ok(())
    }

    /// RequestPool: a subnet given with `--subnet`, or one carved from the named pool.
    pub async fn request_pool(
        &self,
        subnet: &str,
        range: &str,
        options: &BTreeMap<String, String>,
        v6: bool,
    ) -> Result<Subnet, IpamError> {
        let mut pool_name = self.default_pool.clone();
        let mut vni = None;
        for (k, v) in options {
            match k.as_str() {
                "pool" => pool_name = v.clone(),
                "vni" => {
                    vni = Some(v.parse::<u32>().map_err(|_| IpamError::InvalidOption {
                        key: "vni".into(),
                        reason: format!("{v:?} is not a number"),
                    })?)
                }
                _ => return Err(IpamError::UnknownOption { key: k.clone() }),
            }
        }
        let pool = self.pool(&pool_name).await?;
        let domain = domain(pool.kind, vni, subnet)?;
        let _g = self.lock.lock().await;
        let existing = self.domain_subnets(&domain).await?;
        if is_cluster_domain(&domain) {
            if let Some(joined) = join_domain(&domain, &existing, subnet, range)? {
                return Ok(joined);
            }
        }
        let (cidr, carved) = if subnet.is_empty() {
            if v6 {
                return Err(IpamError::InvalidOption {
                    key: "subnet".into(),
                    reason: "ipv6 networks need an explicit IPv6 --subnet".into(),
                });
            }
            let mut used: Vec<IpNet> = existing.iter().map(|s| s.cidr).collect();
            if pool.kind == PoolKind::Host {
                used.extend((self.routes)());
            } else {
                // Other domains may overlap, but carving distinct subnets is kinder.
                let store = self.pool_store(pool.kind);
                let all: Vec<Subnet> = list_json(store, SUBNETS).await?;
                used.extend(all.iter().filter(|s| s.pool == pool.name).map(|s| s.cidr));
            }
            let cidr = carve(pool.subnet, pool.prefix, &used).ok_or(IpamError::PoolExhausted {
                pool: pool.name.clone(),
                supernet: pool.subnet,
                prefix: pool.prefix,
            })?;
            (cidr, true)
        } else {
            let cidr: IpNet = subnet.parse().map_err(|_| IpamError::Invalid {
                what: "subnet",
                value: subnet.to_string(),
            })?;
            let cidr = cidr.trunc();
            check_prefix(cidr)?;
            if let Some(other) = existing.iter().find(|s| overlaps(s.cidr, cidr)) {
                return Err(IpamError::Overlap {
                    subnet: cidr,
                    other: other.cidr,
                    domain: if domain == "host" {
                        "nat or nonat".into()
                    } else {
                        domain.clone()
                    },
                });
            }
            (cidr, false)
        };
        let range = if range.is_empty() {
            None
        } else {
            let r: IpNet = range.parse().map_err(|_| IpamError::Invalid {
                what: "ip-range",
                value: range.to_string(),
            })?;
            if !cidr.contains(&r) {
                return Err(IpamError::RangeOutside {
                    range: r,
                    subnet: cidr,
                });
            }
            Some(r.trunc())
        };
        let rec = Subnet {
            id: pool_id(&domain, cidr),
            pool: pool.name,
            domain: domain.clone(),
            cidr,
            range,
            carved,
            created: crate::model::now(),
        };
        let key = subnet_key(&domain, cidr);
        let ok = create(self.domain_store(&domain), &key, to_json(&rec)).await?;
        if !ok {
            return Err(IpamError::Overlap {
                subnet: cidr,
                other: cidr,
                domain,
            });
        }
        Ok(rec)
    }

    /// ReleasePool: forgets the subnet and every address in it; unknown IDs are fine. A
    /// cluster domain's subnet stays while its cluster network exists (another host still
    /// has it): this host only detaches.
    pub async fn release_pool(&self, id: &str) -> Result<(), IpamError> {
        let Ok((domain, cidr)) = parse_pool_id(id) else {
            return Ok(());
        };
        let _g = self.lock.lock().await;
        let guard = if is_cluster_domain(&domain) {
            vec![Compare::Absent(format!(
                "{}{domain}",
                crate::cluster::NETWORKS
            ))]
        } else {
            vec![]
        };
        let done = self
            .domain_store(&domain)
            .txn(
                guard,
                vec![
                    Op::DeletePrefix(addrs_prefix(&domain, cidr)),
                    Op::DeletePrefix(blocks_prefix(&domain, cidr)),
                    Op::Delete(subnet_key(&domain, cidr)),
                ],
            )
            .await?;
        if !done.succeeded {
            // Other hosts keep the network: this host's blocks are theirs to claim now.
            self.release_blocks_in(&blocks_prefix(&domain, cidr), &self.host)
                .await?;
        }
        self.cache().remove(id);
        Ok(())
    }

    /// Forgets a cluster domain's subnet and addresses (`qingluan network rm`).
    pub async fn drop_domain(&self, domain: &str) -> Result<(), IpamError> {
        let _g = self.lock.lock().await;
        self.domain_store(domain)
            .txn(
                vec![],
                vec![
                    Op::DeletePrefix(format!("{ADDRS}{domain}/")),
                    Op::DeletePrefix(format!("{BLOCKS}{domain}/")),
                    Op::DeletePrefix(format!("{SUBNETS}{domain}/")),
                ],
            )
            .await?;
        let of_domain = format!("ql/{domain}/");
        self.cache().retain(|id, _| !id.starts_with(&of_domain));
        Ok(())
    }

    /// The subnet behind a PoolID.
    pub async fn subnet(&self, id: &str) -> Result<Subnet, IpamError> {
        Ok(self.subnet_at(id).await?.0)
    }

    /// The subnet behind a PoolID and its record's revision in the store.
    async fn subnet_at(&self, id: &str) -> Result<(Subnet, u64), IpamError> {
        let (domain, cidr) = parse_pool_id(id)?;
        let kv = self
            .domain_store(&domain)
            .get(&subnet_key(&domain, cidr))
            .await?
            .ok_or_else(|| IpamError::UnknownPoolId(id.to_string()))?;
        Ok((decode(&kv)?, kv.mod_revision))
    }

    /// RequestAddress: the given address, or the lowest free one; returned with the
    /// subnet's prefix length. In a cluster domain, asking again for the gateway the network
    /// already has succeeds (another host joining), and container addresses name this host.
    pub async fn request_address(
        &self,
        pool_id: &str,
        address: &str,
        gateway: bool,
    ) -> Result<IpNet, IpamError> {
        let (domain, cidr) = parse_pool_id(pool_id)?;
        let shared = is_cluster_domain(&domain);
        let with_prefix = |ip| IpNet::new(ip, cidr.prefix_len()).expect("prefix of a valid subnet");
        if address.is_empty() && !gateway && shared {
            if let Some(ip) = self.allocate_in_blocks(pool_id).await? {
                return Ok(with_prefix(ip));
            }
        }
        let subnet = self.subnet(pool_id).await?;
        let store = self.domain_store(&domain);
        let prefix = addrs_prefix(&domain, cidr);
        let record = |ip, kind| Addr {
            ip,
            kind,
            host: (shared && kind != AddrKind::Gateway).then(|| self.host.clone()),
            since: crate::model::now(),
            endpoint: None,
        };
        if address.is_empty() && !gateway {
            let _g = self.lock.lock().await;
            let scope = subnet.range.unwrap_or(cidr);
            let scope_name = || match subnet.range {
                Some(r) => format!("ip-range {r} of {cidr}"),
                None => cidr.to_string(),
            };
            for _ in 0..ALLOCATION_ATTEMPTS {
                let taken: BTreeSet<IpAddr> = store
                    .list(&prefix)
                    .await?
                    .iter()
                    .filter_map(|kv| kv.key[prefix.len()..].parse().ok())
                    .collect();
                let start = if shared { host_offset(&self.host) } else { 0 };
                let ip = free_from(cidr, scope, &taken, start).ok_or_else(|| {
                    IpamError::NoFreeAddress {
                        scope: scope_name(),
                    }
                })?;
                let rec = record(ip, AddrKind::Dynamic);
                if create(store, &format!("{prefix}{ip}"), to_json(&rec)).await? {
                    crash_point!("request-address-allocated");
                    self.note(pool_id, ip, true);
                    return Ok(with_prefix(ip));
                }
            }
            return Err(IpamError::Contended {
                scope: scope_name(),
            });
        }
        let (ip, kind) = if address.is_empty() {
            if subnet.domain.starts_with("flat-") {
                return Err(IpamError::FlatNeeds("--gateway"));
            }
            let ip = first_host(cidr).ok_or_else(|| IpamError::NoFreeAddress {
                scope: cidr.to_string(),
            })?;
            (ip, AddrKind::Gateway)
        } else {
            let ip = parse_ip(address)?;
            if !cidr.contains(&ip) {
                return Err(if gateway {
                    IpamError::GatewayOutside {
                        addr: ip,
                        subnet: cidr,
                    }
                } else {
                    IpamError::AddressOutside {
                        addr: ip,
                        subnet: cidr,
                    }
                });
            }
            if !usable(cidr, ip) {
                return Err(IpamError::AddressReserved {
                    addr: ip,
                    subnet: cidr,
                });
            }
            let kind = if gateway {
                AddrKind::Gateway
            } else {
                AddrKind::Static
            };
            (ip, kind)
        };
        let _g = self.lock.lock().await;
        let key = format!("{prefix}{ip}");
        if create(store, &key, to_json(&record(ip, kind))).await? {
            self.note(pool_id, ip, true);
            return Ok(with_prefix(ip));
        }
        if shared && kind == AddrKind::Gateway {
            let held: Option<Addr> = get_json(store, &key).await?;
            if held.is_some_and(|a| a.kind == AddrKind::Gateway) {
                return Ok(with_prefix(ip));
            }
        }
        Err(IpamError::AddressInUse {
            addr: ip,
            subnet: cidr,
        })
    }

    /// ReleaseAddress; unknown pools and addresses are fine. In a cluster domain only this
    /// host's container addresses are released: the gateway belongs to the network, and
    /// another host's address is not ours to free. An address bound to an endpoint that
    /// still has its record stays, and so does an unbound cluster address an endpoint
    /// record of this host uses (a cluster CreateEndpoint that stopped between its record
    /// and its binding): freeing it would let another endpoint take it while that record
    /// is still published. The collector releases it with the record, and the cluster
    /// agent frees it once no endpoint uses it.
    pub async fn release_address(&self, pool_id: &str, address: &str) -> Result<(), IpamError> {
        let Ok((domain, cidr)) = parse_pool_id(pool_id) else {
            return Ok(());
        };
        let Ok(ip) = parse_ip(address.split('/').next().unwrap_or_default()) else {
            return Ok(());
        };
        let _g = self.lock.lock().await;
        let key = format!("{}{ip}", addrs_prefix(&domain, cidr));
        let store = self.domain_store(&domain);
        let Some((held, value)) = self.held(store, &key).await? else {
            return Ok(());
        };
        if is_cluster_domain(&domain) && held.host.as_deref() != Some(self.host.as_str()) {
            return Ok(());
        }
        if let Some(ep) = &held.endpoint {
            let key = crate::records::key::<crate::model::Endpoint>(ep);
            if self.store.get(&key).await?.is_some() {
                tracing::info!(address = %ip, endpoint = %crate::model::head(ep, 12),
                    "release of an address its endpoint still has: kept until the endpoint goes");
                return Ok(());
            }
        } else if is_cluster_domain(&domain) && self.recorded(&domain, ip).await? {
            tracing::info!(address = %ip, %domain,
                "release of an address an unbound endpoint record uses: kept until the record goes");
            return Ok(());
        }
        if delete_if_unchanged(store, &key, value).await? {
            self.note(pool_id, ip, false);
        }
        Ok(())
    }

    /// Whether an endpoint record of this host has address `ip` on a network of cluster
    /// domain `domain`.
    async fn recorded(&self, domain: &str, ip: IpAddr) -> Result<bool, IpamError> {
        use crate::model::{Endpoint, Network};
        for ep in crate::records::list::<Endpoint>(&*self.store).await? {
            if IpAddr::V4(ep.address.addr()) != ip {
                continue;
            }
            let net = crate::records::get::<Network>(&*self.store, &ep.network_id).await?;
            if net.is_none_or(|n| n.cluster.as_deref() == Some(domain)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The store and key of address `ip` of pool `pool_id`.
    fn addr_at(&self, pool_id: &str, ip: IpAddr) -> Result<(&dyn Store, String), IpamError> {
        let (domain, cidr) = parse_pool_id(pool_id)?;
        let key = format!("{}{ip}", addrs_prefix(&domain, cidr));
        Ok((self.domain_store(&domain), key))
    }

    /// The address record at `key` and its stored bytes.
    async fn held(
        &self,
        store: &dyn Store,
        key: &str,
    ) -> Result<Option<(Addr, Vec<u8>)>, IpamError> {
        let Some(kv) = store.get(key).await? else {
            return Ok(None);
        };
        Ok(Some((stored_addr(key, &kv.value)?, kv.value)))
    }

    /// Binds `ip` to `endpoint` (at CreateEndpoint): the address must be free, unbound, or
    /// bound to that endpoint already; a free one is taken (an address Docker allocated and
    /// a crash released). Compare-and-swap, so a concurrent release cannot slip in between.
    /// `with` is written in the same transaction, in the store the address lives in: the
    /// endpoint's record for a host network's address, its cluster entry for a cluster
    /// address.
    ///
    /// The first try takes no IPAM mutex: the compare-and-swap decides, so a CreateEndpoint
    /// does not wait for other calls' allocations to become durable. When the address
    /// changed between the read and the swap, it tries once more under the mutex.
    pub async fn bind(
        &self,
        pool_id: &str,
        ip: IpAddr,
        endpoint: &str,
        with: Vec<Op>,
    ) -> Result<(), IpamError> {
        if self.try_bind(pool_id, ip, endpoint, with.clone()).await? {
            return Ok(());
        }
        let _g = self.lock.lock().await;
        match self.try_bind(pool_id, ip, endpoint, with).await? {
            true => Ok(()),
            false => Err(IpamError::AddressInUse {
                addr: ip,
                subnet: parse_pool_id(pool_id)?.1,
            }),
        }
    }

    /// One try of [`Ipam::bind`]; `false` when the address changed before the swap.
    async fn try_bind(
        &self,
        pool_id: &str,
        ip: IpAddr,
        endpoint: &str,
        with: Vec<Op>,
    ) -> Result<bool, IpamError> {
        let (domain, cidr) = parse_pool_id(pool_id)?;
        let store = self.domain_store(&domain);
        let key = format!("{}{ip}", addrs_prefix(&domain, cidr));
        let shared = is_cluster_domain(&domain);
        let found = match self.written(pool_id, ip, &key)? {
            Some(written) => Some(written),
            None => self.held(store, &key).await?,
        };
        let (rec, compare) = match found {
            None => (
                Some(Addr {
                    ip,
                    kind: AddrKind::Dynamic,
                    host: shared.then(|| self.host.clone()),
                    since: crate::model::now(),
                    endpoint: Some(endpoint.to_string()),
                }),
                Compare::Absent(key.clone()),
            ),
            Some((held, value)) => {
                let ours = !shared || held.host.as_deref() == Some(self.host.as_str());
                let free = held.endpoint.as_deref().is_none_or(|e| e == endpoint);
                if !ours || !free || held.kind == AddrKind::Gateway {
                    return Err(IpamError::AddressInUse {
                        addr: ip,
                        subnet: cidr,
                    });
                }
                let rec = held.endpoint.is_none().then(|| Addr {
                    endpoint: Some(endpoint.to_string()),
                    ..held
                });
                (rec, Compare::Value(key.clone(), value))
            }
        };
        let mut ops: Vec<Op> = rec.map(|r| Op::Put(key, to_json(&r))).into_iter().collect();
        ops.extend(with);
        if ops.is_empty() {
            return Ok(true);
        }
        if !store.txn(vec![compare], ops).await?.succeeded {
            return Ok(false);
        }
        self.note(pool_id, ip, true);
        Ok(true)
    }

    /// The record this host created for `ip` and has not bound yet, as stored, taken out
    /// of the block cache: the binding compares against it without reading it first, and
    /// reads it when that swap fails.
    fn written(
        &self,
        pool_id: &str,
        ip: IpAddr,
        key: &str,
    ) -> Result<Option<(Addr, Vec<u8>)>, IpamError> {
        let Some(value) = self
            .cache()
            .get_mut(pool_id)
            .and_then(|a| a.written.remove(&ip))
        else {
            return Ok(None);
        };
        Ok(Some((stored_addr(key, &value)?, value)))
    }

    /// Undoes [`Ipam::bind`] for a CreateEndpoint that failed: the address stays allocated
    /// (Docker releases it next) but no longer names `endpoint`.
    pub async fn unbind(&self, pool_id: &str, ip: IpAddr, endpoint: &str) -> Result<(), IpamError> {
        let (store, key) = self.addr_at(pool_id, ip)?;
        let _g = self.lock.lock().await;
        let Some((held, value)) = self.held(store, &key).await? else {
            return Ok(());
        };
        if held.endpoint.as_deref() != Some(endpoint) {
            return Ok(());
        }
        let rec = Addr {
            endpoint: None,
            ..held
        };
        store
            .txn(
                vec![Compare::Value(key.clone(), value)],
                vec![Op::Put(key, to_json(&rec))],
            )
            .await?;
        Ok(())
    }

    /// Releases `ip` for `endpoint`, which is gone (garbage collection): only while the
    /// address is still that endpoint's, bound to it or allocated before it was created and
    /// never bound, so an address handed out again meanwhile stays with its new holder.
    pub async fn release_for(
        &self,
        pool_id: &str,
        ip: IpAddr,
        endpoint: &str,
        created: u64,
    ) -> Result<(), IpamError> {
        let (store, key) = self.addr_at(pool_id, ip)?;
        let _g = self.lock.lock().await;
        let Some((held, value)) = self.held(store, &key).await? else {
            return Ok(());
        };
        let mine = match &held.endpoint {
            Some(e) => e == endpoint,
            None => held.since <= created && held.kind != AddrKind::Gateway,
        };
        if mine && delete_if_unchanged(store, &key, value).await? {
            self.note(pool_id, ip, false);
        }
        Ok(())
    }

    /// Makes sure this host holds `ip` in a cluster subnet (an endpoint it still has after
    /// a restart or an outage): takes it again when free, and reports the host holding it
    /// otherwise.
    pub async fn claim(&self, pool_id: &str, ip: IpAddr) -> Result<Claim, IpamError> {
        let (domain, cidr) = parse_pool_id(pool_id)?;
        let store = self.domain_store(&domain);
        let key = format!("{}{ip}", addrs_prefix(&domain, cidr));
        let rec = self.dynamic_here(ip);
        let _g = self.lock.lock().await;
        if create(store, &key, to_json(&rec)).await? {
            self.note(pool_id, ip, true);
            return Ok(Claim::Taken);
        }
        let held: Option<Addr> = get_json(store, &key).await?;
        Ok(match held {
            Some(a) if a.host.as_deref() == Some(self.host.as_str()) => Claim::Held,
            Some(a) => Claim::HeldBy(a.host.unwrap_or_else(|| "the network (gateway)".into())),
            None => Claim::Held,
        })
    }

    /// Every container address in cluster domains with its store key (for reclaiming a dead
    /// host's addresses and releasing this host's leftovers).
    pub async fn cluster_addresses(&self) -> Result<Vec<(String, Addr, Vec<u8>)>, IpamError> {
        let mut out = Vec::new();
        for kv in self.cluster.list(ADDRS).await? {
            if let Ok(a) = serde_json::from_slice::<Addr>(&kv.value) {
                if a.host.is_some() {
                    out.push((kv.key, a, kv.value));
                }
            }
        }
        Ok(out)
    }

    /// Deletes a cluster address if it still is exactly `value` (compare-and-swap).
    pub async fn forget_if_unchanged(&self, key: &str, value: Vec<u8>) -> Result<bool, IpamError> {
        let gone = delete_if_unchanged(&*self.cluster, key, value).await?;
        if let (true, Some((pool_id, ip))) = (gone, parse_addr_key(key)) {
            self.note(&pool_id, ip, false);
        }
        Ok(gone)
    }

    /// Releases the blocks `host` holds in every cluster subnet (a dead host whose addresses
    /// were reclaimed), so live hosts can claim them; returns how many.
    pub async fn release_blocks_of(&self, host: &str) -> Result<usize, IpamError> {
        self.release_blocks_in(BLOCKS, host).await
    }

    /// Releases the blocks under `prefix` that `host` holds; returns how many.
    async fn release_blocks_in(&self, prefix: &str, host: &str) -> Result<usize, IpamError> {
        let mut released = 0;
        for kv in self.cluster.list(prefix).await? {
            let Ok(b) = serde_json::from_slice::<Block>(&kv.value) else {
                continue;
            };
            if b.host == host && delete_if_unchanged(&*self.cluster, &kv.key, kv.value).await? {
                released += 1;
            }
        }
        Ok(released)
    }

    /// A new record of a dynamic address this host holds in a cluster subnet.
    fn dynamic_here(&self, ip: IpAddr) -> Addr {
        Addr {
            ip,
            kind: AddrKind::Dynamic,
            host: Some(self.host.clone()),
            since: crate::model::now(),
            endpoint: None,
        }
    }

    /// This host's block cache.
    fn cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Affinity>> {
        self.affinity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the block cache whether `ip` of `pool_id` is held in the store now.
    fn note(&self, pool_id: &str, ip: IpAddr, held: bool) {
        if let Some(a) = self.cache().get_mut(pool_id) {
            a.note(ip, held);
        }
    }

    /// A dynamic address from this host's blocks of a cluster subnet, claiming a block when
    /// they are full; `None` when every block is another host's, or its blocks keep holding
    /// addresses others took (the caller borrows). The subnet comes from the block cache: the
    /// address's create also checks that the subnet record is still the one the cache was
    /// loaded for, so an allocation costs one round trip to the cluster store.
    async fn allocate_in_blocks(&self, pool_id: &str) -> Result<Option<IpAddr>, IpamError> {
        let mut missed = 0;
        for _ in 0..ALLOCATION_ATTEMPTS {
            let (subnet, revision, ip) = match self.reserve(pool_id) {
                Reserved::Address(subnet, revision, ip) => (subnet, revision, ip),
                Reserved::Exhausted => return Ok(None),
                Reserved::Full => {
                    if self.grow(pool_id, false).await? {
                        continue;
                    }
                    return Ok(None);
                }
            };
            let reservation = Reservation {
                ipam: self,
                pool_id,
                ip,
                settled: false,
            };
            let (domain, cidr) = (&subnet.domain, subnet.cidr);
            let key = format!("{}{ip}", addrs_prefix(domain, cidr));
            let value = to_json(&self.dynamic_here(ip));
            let made = self
                .cluster
                .txn(
                    vec![
                        Compare::ModRevision(subnet_key(domain, cidr), revision),
                        Compare::Absent(key.clone()),
                    ],
                    vec![Op::Put(key, value.clone())],
                )
                .await
                .map(|r| r.succeeded);
            // Created, or held by someone else (a static address in our block): taken either
            // way. A failed write leaves it free here; the create decides next time.
            reservation.settle(made.is_ok());
            if made? {
                crash_point!("request-address-allocated");
                if let Some(a) = self.cache().get_mut(pool_id) {
                    a.written.insert(ip, value);
                }
                return Ok(Some(ip));
            }
            // The subnet record changed (removed, or made again): load it again, or fail
            // with an unknown PoolID when it is gone.
            if self.subnet_at(pool_id).await?.1 != revision {
                self.cache().remove(pool_id);
                continue;
            }
            // Others took addresses in our blocks: read them before trying more.
            missed += 1;
            if missed == STALE_MISSES {
                missed = 0;
                if !self.grow(pool_id, true).await? {
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    /// Reserves the lowest free address of this host's blocks of a subnet in its cache.
    fn reserve(&self, pool_id: &str) -> Reserved {
        let mut cache = self.cache();
        let Some(a) = cache.get_mut(pool_id) else {
            return Reserved::Full;
        };
        let Some((subnet, revision)) = a.subnet.clone() else {
            return Reserved::Full;
        };
        match a.reserve(subnet.cidr) {
            Some(ip) => Reserved::Address(subnet, revision, ip),
            None if a.exhausted() => Reserved::Exhausted,
            None => Reserved::Full,
        }
    }

    /// Loads this host's blocks of a subnet, and the subnet, with the addresses taken in
    /// them from the store, and claims a free block when they are full. False when no block
    /// is left to claim. Without `reload`, a cache with room is taken as it is.
    async fn grow(&self, pool_id: &str, reload: bool) -> Result<bool, IpamError> {
        let _g = self.claiming.lock().await;
        if !reload
            && self.cache().get(pool_id).is_some_and(|a| {
                a.subnet
                    .as_ref()
                    .is_some_and(|(subnet, _)| a.has_room(subnet.cidr))
            })
        {
            return Ok(true);
        }
        let (subnet, revision) = self.subnet_at(pool_id).await?;
        let (domain, cidr) = (&subnet.domain, subnet.cidr);
        let scope = subnet.range.unwrap_or(cidr);
        let held: Vec<Block> = list_json(&*self.cluster, &blocks_prefix(domain, cidr)).await?;
        let prefix = addrs_prefix(domain, cidr);
        let mut taken: BTreeSet<IpAddr> = self
            .cluster
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|kv| kv.key[prefix.len()..].parse().ok())
            .collect();
        let mut mine: Vec<IpNet> = held
            .iter()
            .filter(|b| b.host == self.host && scope.contains(&b.cidr))
            .map(|b| b.cidr)
            .collect();
        let mut seen: BTreeSet<IpNet> = held.iter().map(|b| b.cidr).collect();
        let room = |b: &IpNet, taken: &BTreeSet<IpAddr>| lowest_free(cidr, *b, taken).is_some();
        let pending = self
            .cache()
            .get(pool_id)
            .map(|a| a.pending.clone())
            .unwrap_or_default();
        taken.extend(pending);
        let mut grown = mine.iter().any(|b| room(b, &taken));
        while !grown {
            let Some(b) = unclaimed(cidr, scope, &seen, &taken, host_offset(&self.host)) else {
                break;
            };
            let rec = Block {
                cidr: b,
                host: self.host.clone(),
                since: crate::model::now(),
            };
            if create(&*self.cluster, &block_key(domain, cidr, b), to_json(&rec)).await? {
                tracing::debug!(subnet = %cidr, block = %b, "claimed an address block");
                mine.push(b);
                grown = true;
            }
            seen.insert(b);
        }
        let mut cache = self.cache();
        let a = cache.entry(pool_id.to_string()).or_default();
        taken.extend(a.pending.iter().copied());
        a.subnet = Some((subnet, revision));
        a.exhausted = (!grown).then(std::time::Instant::now);
        a.blocks = mine;
        a.taken = taken;
        Ok(grown)
    }
}

/// The address record stored at `key` as `value`.
fn stored_addr(key: &str, value: &[u8]) -> Result<Addr, IpamError> {
    serde_json::from_slice(value).map_err(|e| {
        qingluan_store::StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// Deletes `key` from `store` if it still holds exactly `value` (compare-and-swap); returns
/// whether it did.
async fn delete_if_unchanged(
    store: &dyn Store,
    key: &str,
    value: Vec<u8>,
) -> Result<bool, IpamError> {
    Ok(store
        .txn(
            vec![Compare::Value(key.to_string(), value)],
            vec![Op::Delete(key.to_string())],
        )
        .await?
        .succeeded)
}

/// Outcome of [`Ipam::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This host held it already.
    Held,
    /// It was free and is this host's again.
    Taken,
    /// Another host holds it now.
    HeldBy(String),
}

/// Attempts of a dynamic allocation racing other hosts before giving up.
const ALLOCATION_ATTEMPTS: usize = 64;

/// Creates in a row that find the address held by another host before the block cache is
/// read again.
const STALE_MISSES: usize = 8;

/// What [`Ipam::reserve`] found in the block cache.
enum Reserved {
    /// A free address, now reserved, with the subnet and its record's revision.
    Address(Subnet, u64, IpAddr),
    /// No room in this host's blocks (or none loaded yet).
    Full,
    /// No room, and no block was left to claim a moment ago.
    Exhausted,
}

/// An address reserved in the block cache while its create is in flight. Settled with the
/// create's outcome; dropped unsettled (the call was cancelled), the address is free again.
struct Reservation<'a> {
    ipam: &'a Ipam,
    pool_id: &'a str,
    ip: IpAddr,
    settled: bool,
}

impl Reservation<'_> {
    /// Records whether the address is held in the store now.
    fn settle(mut self, held: bool) {
        self.ipam.note(self.pool_id, self.ip, held);
        self.settled = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.ipam.note(self.pool_id, self.ip, false);
        }
    }
}

/// A RequestPool in a cluster domain that already has its subnet: the same definition (or
/// none) joins it, another is refused; `None` when the domain is still empty.
fn join_domain(
    domain: &str,
    existing: &[Subnet],
    subnet: &str,
    range: &str,
) -> Result<Option<Subnet>, IpamError> {
    let Some(have) = existing.first() else {
        return Ok(None);
    };
    let taken = || IpamError::DomainTaken {
        domain: domain.to_string(),
        existing: have.cidr,
    };
    if !subnet.is_empty() {
        let asked: IpNet = subnet.parse().map_err(|_| IpamError::Invalid {
            what: "subnet",
            value: subnet.to_string(),
        })?;
        if asked.trunc() != have.cidr {
            return Err(taken());
        }
    }
    if !range.is_empty() {
        let asked: IpNet = range.parse().map_err(|_| IpamError::Invalid {
            what: "ip-range",
            value: range.to_string(),
        })?;
        if Some(asked.trunc()) != have.range {
            return Err(IpamError::PoolRule(format!(
                "{domain} has ip-range {}: a network joining it must use the same --ip-range",
                have.range.map_or("none".to_string(), |r| r.to_string())
            )));
        }
    }
    Ok(Some(have.clone()))
}

fn check_pool(pool: &Pool) -> Result<(), IpamError> {
    let max = match pool.subnet {
        IpNet::V4(_) => 30,
        IpNet::V6(_) => 126,
    };
    if pool.prefix < pool.subnet.prefix_len() || pool.prefix > max {
        return Err(IpamError::PoolRule(format!(
            "pool {}: prefix /{} must be between /{} and /{max}",
            pool.name,
            pool.prefix,
            pool.subnet.prefix_len()
        )));
    }
    if pool.name.is_empty()
        || !pool
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(IpamError::PoolRule(format!(
            "invalid pool name {:?}: use letters, digits, '-' and '_'",
            pool.name
        )));
    }
    Ok(())
}
