//! Recording fake of the links adapter: an in-memory model of links, addresses and sysctls.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{check_name, sysctl_path, LinkError, LinkInfo, Links, Route};

/// In-memory links of one namespace, with a log of the mutating calls.
///
/// It models what the domain relies on, with the real implementation's error texts: names
/// are checked as the kernel does; creating a veth whose name is taken fails with `EEXIST`;
/// deleting either end of a veth removes both; MTUs outside 68..=65535 fail with `EINVAL`;
/// deletes and address changes are idempotent. Links it did not create are assumed to exist,
/// like the OVS internal ports another adapter makes: configuring one (`set_up`, `set_mtu`,
/// address changes, `tx_checksum_off`) adds it first, while reading one (`link`,
/// `addresses`) reports it absent. Failures can be injected with [`FakeLinks::fail_next`].
#[derive(Default)]
pub struct FakeLinks {
    /// Sysctls written, by key as given.
    pub sysctls: Mutex<BTreeMap<String, String>>,
    /// Interfaces whose ingress is shaped, by name.
    pub shaped: Mutex<BTreeMap<String, super::IngressShaping>>,
    /// Interfaces whose egress is shaped, by name.
    pub shaped_egress: Mutex<BTreeMap<String, super::EgressShaping>>,
    /// VXLAN devices as last synced, by name (a deleted link's entry goes with it).
    pub vxlans: Mutex<BTreeMap<String, super::Vxlan>>,
    /// Mutating calls in order, failed ones included, as text: `create_veth qlv1 qlc1 1500`,
    /// `delete_link qlv1`, `set_up qlb1`, `set_mtu qlb1 1450`, `add_address qlb1 10.0.0.1/24`,
    /// `del_address qlb1 10.0.0.1/24`, `add_route qlul 0.0.0.0/0`, `tx_checksum_off qlc1`,
    /// `sysctl net.ipv4.ip_forward=1`, `sync_vxlan qlx1389 +2 -0`.
    pub calls: Mutex<Vec<String>>,
    /// The links.
    model: Mutex<Model>,
    /// Calls to fail once: a prefix of the call text and the errno to fail with.
    failures: Mutex<Vec<(String, i32)>>,
}

/// The links of the fake namespace.
#[derive(Default)]
struct Model {
    /// Links by name.
    links: BTreeMap<String, FakeLink>,
    /// Last interface index handed out.
    last_index: u32,
}

/// One fake link.
struct FakeLink {
    /// What `link` reports.
    info: LinkInfo,
    /// Its addresses, in the order added.
    addrs: Vec<ipnet::IpNet>,
    /// Routes through it; like the kernel, they go when its last IPv4 address goes.
    routes: Vec<Route>,
    /// The other end, for a veth.
    peer: Option<String>,
}

impl Model {
    /// Adds a link, down with MTU 1500 and a locally administered MAC derived from its index.
    fn insert(&mut self, name: &str, kind: Option<&str>) -> &mut FakeLink {
        self.last_index += 1;
        let [_, _, hi, lo] = self.last_index.to_be_bytes();
        let link = FakeLink {
            info: LinkInfo {
                name: name.to_string(),
                index: self.last_index,
                mtu: 1500,
                up: false,
                mac: Some([0x02, 0, 0, 0, hi, lo]),
                kind: kind.map(str::to_string),
            },
            addrs: Vec::new(),
            routes: Vec::new(),
            peer: None,
        };
        self.links.insert(name.to_string(), link);
        self.links.get_mut(name).expect("just inserted")
    }

    /// The link, added first when unknown.
    fn get_or_add(&mut self, name: &str) -> &mut FakeLink {
        if !self.links.contains_key(name) {
            self.insert(name, None);
        }
        self.links.get_mut(name).expect("present")
    }
}

/// Checks an MTU as the kernel does for veths and OVS ports.
fn check_mtu(mtu: u32) -> io::Result<()> {
    if (68..=65535).contains(&mtu) {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// A refused operation.
fn kernel(action: String) -> impl FnOnce(io::Error) -> LinkError {
    |source| LinkError::Kernel { action, source }
}

impl FakeLinks {
    /// Adds a link as if something else had created it (e.g. an OVS internal port), unless
    /// it exists.
    pub fn add(&self, name: &str) {
        self.model().get_or_add(name);
    }

    /// Makes the next mutating call whose text (as logged in [`FakeLinks::calls`]) starts
    /// with `call` fail with `errno`, e.g. `fail_next("create_veth qlv1", libc::EEXIST)`.
    pub fn fail_next(&self, call: &str, errno: i32) {
        self.failures
            .lock()
            .unwrap()
            .push((call.to_string(), errno));
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap()
    }

    /// Logs a mutating call and fails it if asked to.
    fn record(&self, call: String) -> io::Result<()> {
        let mut failures = self.failures.lock().unwrap();
        let failure = failures
            .iter()
            .position(|(p, _)| call.starts_with(p.as_str()));
        self.calls.lock().unwrap().push(call);
        match failure {
            Some(i) => Err(io::Error::from_raw_os_error(failures.remove(i).1)),
            None => Ok(()),
        }
    }

    /// Logs a configuring call on `name` and applies `f` to the link, added when unknown.
    fn configure(
        &self,
        name: &str,
        call: String,
        action: String,
        f: impl FnOnce(&mut FakeLink) -> io::Result<()>,
    ) -> Result<(), LinkError> {
        check_name(name)?;
        self.record(call).map_err(kernel(action.clone()))?;
        f(self.model().get_or_add(name)).map_err(kernel(action))
    }
}

#[async_trait]
impl Links for FakeLinks {
    async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<(), LinkError> {
        check_name(host)?;
        check_name(peer)?;
        let action = format!("create veth {host}/{peer}");
        self.record(format!("create_veth {host} {peer} {mtu}"))
            .map_err(kernel(action.clone()))?;
        let mut model = self.model();
        if host == peer || model.links.contains_key(host) || model.links.contains_key(peer) {
            return Err(kernel(action)(io::Error::from_raw_os_error(libc::EEXIST)));
        }
        check_mtu(mtu).map_err(kernel(action))?;
        let h = model.insert(host, Some("veth"));
        h.info.mtu = mtu;
        h.info.up = true;
        h.peer = Some(peer.to_string());
        let p = model.insert(peer, Some("veth"));
        p.info.mtu = mtu;
        p.info.mac = peer_mac.or(p.info.mac);
        p.peer = Some(host.to_string());
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), LinkError> {
        check_name(name)?;
        self.record(format!("delete_link {name}"))
            .map_err(kernel(format!("delete link {name}")))?;
        self.vxlans.lock().unwrap().remove(name);
        let mut model = self.model();
        if let Some(peer) = model.links.remove(name).and_then(|l| l.peer) {
            model.links.remove(&peer);
        }
        Ok(())
    }

    async fn delete_links(&self, names: &[String]) -> Result<(), LinkError> {
        for name in names {
            self.delete_link(name).await?;
        }
        Ok(())
    }

    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        check_name(name)?;
        Ok(self.model().links.get(name).map(|l| l.info.clone()))
    }

    async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<LinkInfo>, LinkError> {
        let mut out: Vec<LinkInfo> = self
            .model()
            .links
            .values()
            .filter(|l| l.info.name.starts_with(prefix))
            .map(|l| l.info.clone())
            .collect();
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    async fn set_up(&self, name: &str) -> Result<(), LinkError> {
        self.configure(
            name,
            format!("set_up {name}"),
            format!("set {name} up"),
            |l| {
                l.info.up = true;
                Ok(())
            },
        )
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), LinkError> {
        self.configure(
            name,
            format!("set_mtu {name} {mtu}"),
            format!("set mtu {mtu} on {name}"),
            |l| {
                check_mtu(mtu)?;
                l.info.mtu = mtu;
                Ok(())
            },
        )
    }

    async fn addresses(&self, name: &str) -> Result<Vec<ipnet::IpNet>, LinkError> {
        check_name(name)?;
        self.model()
            .links
            .get(name)
            .map(|l| l.addrs.clone())
            .ok_or_else(|| LinkError::NotFound(name.to_string()))
    }

    async fn add_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError> {
        self.configure(
            name,
            format!("add_address {name} {addr}"),
            format!("add address {addr} to {name}"),
            |l| {
                if !l.addrs.contains(&addr) {
                    l.addrs.push(addr);
                }
                Ok(())
            },
        )
    }

    async fn del_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError> {
        self.configure(
            name,
            format!("del_address {name} {addr}"),
            format!("delete address {addr} from {name}"),
            |l| {
                l.addrs.retain(|a| *a != addr);
                if !l.addrs.iter().any(|a| a.addr().is_ipv4()) {
                    l.routes.clear();
                }
                Ok(())
            },
        )
    }

    async fn routes(&self, name: &str) -> Result<Vec<Route>, LinkError> {
        check_name(name)?;
        self.model()
            .links
            .get(name)
            .map(|l| l.routes.clone())
            .ok_or_else(|| LinkError::NotFound(name.to_string()))
    }

    async fn netns_mounted(&self, _netns: &std::path::Path) -> bool {
        false
    }

    async fn sandbox_route(
        &self,
        netns: &std::path::Path,
        route: &Route,
        add: bool,
    ) -> Result<(), LinkError> {
        let verb = if add { "add" } else { "del" };
        let call = format!("sandbox_route {} {verb} {}", netns.display(), route.dst);
        self.record(call).map_err(kernel(format!(
            "{verb} route {} in {}",
            route.dst,
            netns.display()
        )))
    }

    async fn add_route(&self, name: &str, route: &Route) -> Result<(), LinkError> {
        let r = route.clone();
        self.configure(
            name,
            format!("add_route {name} {}", route.dst),
            format!("add route {} via {name}", route.dst),
            move |l| {
                if !l.addrs.iter().any(|a| a.addr().is_ipv4()) {
                    return Err(io::Error::from_raw_os_error(libc::ENETUNREACH));
                }
                l.routes.retain(|x| x.dst != r.dst);
                l.routes.push(r);
                Ok(())
            },
        )
    }

    async fn tx_checksum_off(&self, name: &str) -> Result<(), LinkError> {
        self.configure(
            name,
            format!("tx_checksum_off {name}"),
            format!("turn tx checksum offload off on {name}"),
            |_| Ok(()),
        )
    }

    async fn shape_ingress(&self, s: &super::IngressShaping) -> Result<(), LinkError> {
        self.record(format!("shape_ingress {} {}", s.iface, s.rate))
            .map_err(|e| LinkError::Shaping {
                iface: s.iface.clone(),
                detail: e.to_string(),
            })?;
        self.shaped
            .lock()
            .unwrap()
            .insert(s.iface.clone(), s.clone());
        Ok(())
    }

    async fn unshape_ingress(&self, iface: &str, _ifb: &str) -> Result<(), LinkError> {
        self.record(format!("unshape_ingress {iface}"))
            .map_err(|e| LinkError::Shaping {
                iface: iface.to_string(),
                detail: e.to_string(),
            })?;
        self.shaped.lock().unwrap().remove(iface);
        Ok(())
    }

    async fn shape_egress(&self, s: &super::EgressShaping) -> Result<(), LinkError> {
        self.record(format!("shape_egress {}", s.iface))
            .map_err(|e| LinkError::Shaping {
                iface: s.iface.clone(),
                detail: e.to_string(),
            })?;
        self.shaped_egress
            .lock()
            .unwrap()
            .insert(s.iface.clone(), s.clone());
        Ok(())
    }

    async fn egress_shaped(&self, iface: &str) -> Result<bool, LinkError> {
        Ok(self.shaped_egress.lock().unwrap().contains_key(iface))
    }

    async fn unshape_egress(&self, iface: &str) -> Result<(), LinkError> {
        self.record(format!("unshape_egress {iface}"))
            .map_err(|e| LinkError::Shaping {
                iface: iface.to_string(),
                detail: e.to_string(),
            })?;
        self.shaped_egress.lock().unwrap().remove(iface);
        Ok(())
    }

    async fn sysctl(&self, key: &str, value: &str) -> Result<(), LinkError> {
        sysctl_path(key)?;
        self.record(format!("sysctl {key}={value}"))
            .map_err(|source| LinkError::Sysctl {
                key: key.to_string(),
                value: value.to_string(),
                source,
            })?;
        self.sysctls
            .lock()
            .unwrap()
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    async fn sync_vxlan(&self, v: &super::Vxlan) -> Result<usize, LinkError> {
        check_name(&v.name)?;
        let mut vxlans = self.vxlans.lock().unwrap();
        let have = {
            let mut m = self.model();
            let known = m.links.get(&v.name).is_some_and(|l| {
                l.info.kind.as_deref() == Some("vxlan")
                    && vxlans
                        .get(&v.name)
                        .is_some_and(|x| x.vni == v.vni && x.local == v.local)
            });
            if !known {
                m.links.remove(&v.name);
                m.insert(&v.name, Some("vxlan"));
            }
            let link = m.links.get_mut(&v.name).expect("present");
            link.info.mtu = v.mtu;
            link.info.up = true;
            vxlans
                .get(&v.name)
                .filter(|_| known)
                .map(|x| x.fdb.clone())
                .unwrap_or_default()
        };
        let added = v.fdb.difference(&have).count();
        let deleted = have.difference(&v.fdb).count();
        self.record(format!("sync_vxlan {} +{added} -{deleted}", v.name))
            .map_err(kernel(format!("sync vxlan {}", v.name)))?;
        vxlans.insert(v.name.clone(), v.clone());
        Ok(added + deleted)
    }
}
