//! Recording fake of the links adapter: an in-memory model of links and addresses.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{check_name, LinkError, LinkInfo, Links};

/// In-memory links, addresses and sysctls, with a log of mutating calls.
#[derive(Default)]
pub struct FakeLinks {
    /// Links by name with their addresses.
    pub links: Mutex<BTreeMap<String, (LinkInfo, Vec<ipnet::IpNet>)>>,
    /// Sysctls written.
    pub sysctls: Mutex<BTreeMap<String, String>>,
    /// Mutating calls, as text.
    pub calls: Mutex<Vec<String>>,
}

impl FakeLinks {
    fn log(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }

    /// Adds a link as if something else had created it (e.g. an OVS internal port).
    pub fn add(&self, name: &str) {
        let n = self.links.lock().unwrap().len() as u32 + 1;
        self.links.lock().unwrap().insert(
            name.into(),
            (
                LinkInfo {
                    name: name.into(),
                    index: n,
                    mtu: 1500,
                    up: false,
                    mac: None,
                },
                vec![],
            ),
        );
    }

    fn with<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut (LinkInfo, Vec<ipnet::IpNet>)) -> T,
    ) -> Result<T, LinkError> {
        let mut l = self.links.lock().unwrap();
        if !l.contains_key(name) {
            drop(l);
            self.add(name);
            l = self.links.lock().unwrap();
        }
        Ok(f(l.get_mut(name).expect("just added")))
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
        self.log(format!("create_veth {host} {peer} {mtu}"));
        self.add(host);
        self.add(peer);
        self.with(host, |l| {
            l.0.mtu = mtu;
            l.0.up = true;
        })?;
        self.with(peer, |l| {
            l.0.mtu = mtu;
            l.0.mac = peer_mac;
        })
    }

    async fn delete_link(&self, name: &str) -> Result<(), LinkError> {
        self.log(format!("delete_link {name}"));
        self.links.lock().unwrap().remove(name);
        Ok(())
    }

    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        Ok(self.links.lock().unwrap().get(name).map(|l| l.0.clone()))
    }

    async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<LinkInfo>, LinkError> {
        Ok(self
            .links
            .lock()
            .unwrap()
            .values()
            .filter(|l| l.0.name.starts_with(prefix))
            .map(|l| l.0.clone())
            .collect())
    }

    async fn set_up(&self, name: &str) -> Result<(), LinkError> {
        self.with(name, |l| l.0.up = true)
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), LinkError> {
        self.with(name, |l| l.0.mtu = mtu)
    }

    async fn addresses(&self, name: &str) -> Result<Vec<ipnet::IpNet>, LinkError> {
        self.with(name, |l| l.1.clone())
    }

    async fn add_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError> {
        self.with(name, |l| {
            if !l.1.contains(&addr) {
                l.1.push(addr)
            }
        })
    }

    async fn del_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError> {
        self.with(name, |l| l.1.retain(|a| *a != addr))
    }

    async fn tx_checksum_off(&self, name: &str) -> Result<(), LinkError> {
        self.log(format!("tx_off {name}"));
        Ok(())
    }

    async fn sysctl(&self, key: &str, value: &str) -> Result<(), LinkError> {
        self.sysctls
            .lock()
            .unwrap()
            .insert(key.into(), value.into());
        Ok(())
    }
}
