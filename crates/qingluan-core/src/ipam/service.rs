//! The store-backed IPAM: pools, subnets and addresses as compare-and-swap transactions.
//!
//! A local mutex serialises requests of this daemon so "lowest free address" is cheap and
//! deterministic; the store transaction (create-if-absent of the address key) is what makes
//! an allocation unique, so the same code stays correct on a shared cluster store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use qingluan_store::{create, get_json, list_json, to_json, Op, Store};
use serde::Serialize;
use tokio::sync::Mutex;

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
    /// Where pools, subnets and addresses live.
    store: Arc<dyn Store>,
    /// Serialises this daemon's requests.
    lock: Mutex<()>,
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
        let ipam = Self::lazy(store, settings, routes)?;
        ipam.seed().await?;
        Ok(ipam)
    }

    /// Validates the configured pools without touching the store; call [`Ipam::seed`] (and
    /// retry it) to create them. The daemon starts this way so a store that is down at start
    /// only delays the pools.
    pub fn lazy(
        store: Arc<dyn Store>,
        settings: &IpamSettings,
        routes: fn() -> Vec<IpNet>,
    ) -> Result<Ipam, IpamError> {
        let mut configured = Vec::new();
        for (name, p) in &settings.pools {
            let kind = match name.as_str() {
                "vlan" => PoolKind::Vlan,
                "vxlan" => PoolKind::Vxlan,
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
            lock: Mutex::new(()),
            routes,
            default_pool: settings.default_pool.clone(),
            configured,
        })
    }

    /// Creates the configured pools that do not exist yet (existing ones are kept).
    pub async fn seed(&self) -> Result<(), IpamError> {
        for pool in &self.configured {
            create(
                &*self.store,
                &format!("{POOLS}{}", pool.name),
                to_json(pool),
            )
            .await?;
        }
        Ok(())
    }

    /// Every pool by name.
    pub async fn pools(&self) -> Result<Vec<Pool>, IpamError> {
        list_json(&*self.store, POOLS).await.map_err(Into::into)
    }

    async fn pool(&self, name: &str) -> Result<Pool, IpamError> {
        match get_json(&*self.store, &format!("{POOLS}{name}")).await? {
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

    /// Every subnet.
    pub async fn subnets(&self) -> Result<Vec<Subnet>, IpamError> {
        list_json(&*self.store, SUBNETS).await.map_err(Into::into)
    }

    /// Allocated addresses of a subnet.
    pub async fn addresses(&self, subnet: &Subnet) -> Result<Vec<Addr>, IpamError> {
        list_json(&*self.store, &addrs_prefix(&subnet.domain, subnet.cidr))
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
        let ok = create(&*self.store, &key, to_json(&pool)).await?;
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
        self.pool(name).await?;
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
        self.store
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
        let domain = domain(pool.kind, vni)?;
        let _g = self.lock.lock().await;
        let existing: Vec<Subnet> = self
            .subnets()
            .await?
            .into_iter()
            .filter(|s| s.domain == domain)
            .collect();
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
        };
        let key = subnet_key(&domain, cidr);
        let ok = create(&*self.store, &key, to_json(&rec)).await?;
        if !ok {
            return Err(IpamError::Overlap {
                subnet: cidr,
                other: cidr,
                domain,
            });
        }
        Ok(rec)
    }

    /// ReleasePool: forgets the subnet and every address in it; unknown IDs are fine.
    pub async fn release_pool(&self, id: &str) -> Result<(), IpamError> {
        let Ok((domain, cidr)) = parse_pool_id(id) else {
            return Ok(());
        };
        let _g = self.lock.lock().await;
        self.store
            .txn(
                vec![],
                vec![
                    Op::DeletePrefix(addrs_prefix(&domain, cidr)),
                    Op::Delete(subnet_key(&domain, cidr)),
                ],
            )
            .await?;
        Ok(())
    }

    /// The subnet behind a PoolID.
    pub async fn subnet(&self, id: &str) -> Result<Subnet, IpamError> {
        let (domain, cidr) = parse_pool_id(id)?;
        get_json(&*self.store, &subnet_key(&domain, cidr))
            .await?
            .ok_or_else(|| IpamError::UnknownPoolId(id.to_string()))
    }

    /// RequestAddress: the given address, or the lowest free one; returned with the
    /// subnet's prefix length.
    pub async fn request_address(
        &self,
        pool_id: &str,
        address: &str,
        gateway: bool,
    ) -> Result<IpNet, IpamError> {
        let subnet = self.subnet(pool_id).await?;
        let cidr = subnet.cidr;
        let prefix = addrs_prefix(&subnet.domain, cidr);
        let _g = self.lock.lock().await;
        let (ip, kind) = if !address.is_empty() {
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
            (
                ip,
                if gateway {
                    AddrKind::Gateway
                } else {
                    AddrKind::Static
                },
            )
        } else if gateway {
            let ip = first_host(cidr).ok_or_else(|| IpamError::NoFreeAddress {
                scope: cidr.to_string(),
            })?;
            (ip, AddrKind::Gateway)
        } else {
            let taken: BTreeSet<IpAddr> = self
                .store
                .list(&prefix)
                .await?
                .iter()
                .filter_map(|kv| kv.key[prefix.len()..].parse().ok())
                .collect();
            let scope = subnet.range.unwrap_or(cidr);
            let ip = lowest_free(cidr, scope, &taken).ok_or_else(|| IpamError::NoFreeAddress {
                scope: match subnet.range {
                    Some(r) => format!("ip-range {r} of {cidr}"),
                    None => cidr.to_string(),
                },
            })?;
            (ip, AddrKind::Dynamic)
        };
        let key = format!("{prefix}{ip}");
        let rec = Addr { ip, kind };
        let ok = create(&*self.store, &key, to_json(&rec)).await?;
        if !ok {
            return Err(IpamError::AddressInUse {
                addr: ip,
                subnet: cidr,
            });
        }
        Ok(IpNet::new(ip, cidr.prefix_len()).expect("prefix of a valid subnet"))
    }

    /// ReleaseAddress; unknown pools and addresses are fine.
    pub async fn release_address(&self, pool_id: &str, address: &str) -> Result<(), IpamError> {
        let Ok((domain, cidr)) = parse_pool_id(pool_id) else {
            return Ok(());
        };
        let Ok(ip) = parse_ip(address.split('/').next().unwrap_or_default()) else {
            return Ok(());
        };
        let _g = self.lock.lock().await;
        self.store
            .txn(
                vec![],
                vec![Op::Delete(format!("{}{ip}", addrs_prefix(&domain, cidr)))],
            )
            .await?;
        Ok(())
    }
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
