//! The rtnetlink implementation of [`Links`], in the daemon's network namespace.

use async_trait::async_trait;
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

use super::{check_name, LinkError, LinkInfo, Links};

/// Links over one rtnetlink connection.
pub struct NetlinkLinks {
    handle: Handle,
}

impl NetlinkLinks {
    /// Opens a netlink connection in the current namespace; needs a tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(NetlinkLinks { handle })
    }

    async fn index(&self, name: &str) -> Result<u32, LinkError> {
        self.link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| LinkError::NotFound(name.to_string()))
    }

    async fn set(&self, op: &'static str, name: &str, msg: LinkMessage) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl(op, name, e))
    }
}

fn nl(op: &'static str, name: &str, e: rtnetlink::Error) -> LinkError {
    LinkError::Netlink {
        op,
        name: name.to_string(),
        reason: e.to_string(),
    }
}

fn info(msg: &LinkMessage) -> LinkInfo {
    let mut l = LinkInfo {
        name: String::new(),
        index: msg.header.index,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        mac: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(mac);
                l.mac = Some(m);
            }
            _ => {}
        }
    }
    l
}

fn is_enodev(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV)
}

fn addr_of(msg: &AddressMessage) -> Option<ipnet::IpNet> {
    let ip = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = ip.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    ipnet::IpNet::new(ip, msg.header.prefix_len).ok()
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    pad: [u8; 16],
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;

fn tx_off_blocking(name: &str) -> std::io::Result<()> {
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value as *mut EthtoolValue as *mut libc::c_void,
        pad: [0; 16],
    };
    for (i, b) in name.bytes().enumerate() {
        req.name[i] = b as libc::c_char;
    }
    // SAFETY: a plain datagram socket; the ioctl reads `req` and the ethtool_value it points
    // to, both alive for the duration of the call; the fd is closed right after.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r < 0 {
            return Err(err);
        }
    }
    Ok(())
}

#[async_trait]
impl Links for NetlinkLinks {
    async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<(), LinkError> {
        check_name(host)?;
        check_name(peer)?;
        let shown = format!("veth {host}/{peer}");
        self.handle
            .link()
            .add(LinkVeth::new(host, peer).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(|e| nl("create", &shown, e))?;
        let mut b = LinkUnspec::new_with_name(peer).mtu(mtu);
        if let Some(mac) = peer_mac {
            b = b.address(mac.to_vec());
        }
        self.set("configure", peer, b.build()).await
    }

    async fn delete_link(&self, name: &str) -> Result<(), LinkError> {
        let Some(l) = self.link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(l.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_enodev(&e) => Ok(()),
            Err(e) => Err(nl("delete", name, e)),
        }
    }

    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        check_name(name)?;
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(info(&m))),
            Ok(None) => Ok(None),
            Err(e) if is_enodev(&e) => Ok(None),
            Err(e) => Err(nl("look up", name, e)),
        }
    }

    async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<LinkInfo>, LinkError> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(|e| nl("list", "links", e))? {
            let l = info(&m);
            if l.name.starts_with(prefix) {
                out.push(l);
            }
        }
        Ok(out)
    }

    async fn set_up(&self, name: &str) -> Result<(), LinkError> {
        let l = self
            .link(name)
            .await?
            .ok_or_else(|| LinkError::NotFound(name.into()))?;
        if l.up {
            return Ok(());
        }
        self.set(
            "set up",
            name,
            LinkUnspec::new_with_index(l.index).up().build(),
        )
        .await
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), LinkError> {
        let l = self
            .link(name)
            .await?
            .ok_or_else(|| LinkError::NotFound(name.into()))?;
        if l.mtu == mtu {
            return Ok(());
        }
        self.set(
            "set mtu on",
            name,
            LinkUnspec::new_with_index(l.index).mtu(mtu).build(),
        )
        .await
    }

    async fn addresses(&self, name: &str) -> Result<Vec<ipnet::IpNet>, LinkError> {
        let idx = self.index(name).await?;
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(idx)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| nl("list addresses of", name, e))?
        {
            if m.header.index == idx {
                out.extend(addr_of(&m));
            }
        }
        Ok(out)
    }

    async fn add_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError> {
        if self.addresses(name).await?.contains(&addr) {
            return Ok(());
        }
        let idx = self.index(name).await?;
        self.handle
            .address()
            .add(idx, addr.addr(), addr.prefix_len())
            .execute()
            .await
            .map_err(|e| nl("add address to", name, e))
    }

    async fn del_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError> {
        let idx = self.index(name).await?;
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(idx)
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| nl("list addresses of", name, e))?
        {
            if m.header.index == idx && addr_of(&m) == Some(addr) {
                return self
                    .handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| nl("delete address from", name, e));
            }
        }
        Ok(())
    }

    async fn tx_checksum_off(&self, name: &str) -> Result<(), LinkError> {
        check_name(name)?;
        let n = name.to_string();
        tokio::task::spawn_blocking(move || tx_off_blocking(&n))
            .await
            .map_err(|e| LinkError::Netlink {
                op: "turn tx checksum offload off on",
                name: name.into(),
                reason: e.to_string(),
            })?
            .map_err(|e| LinkError::Netlink {
                op: "turn tx checksum offload off on",
                name: name.into(),
                reason: e.to_string(),
            })
    }

    async fn sysctl(&self, key: &str, value: &str) -> Result<(), LinkError> {
        let err = |reason: String| LinkError::Sysctl {
            key: key.into(),
            value: value.into(),
            reason,
        };
        if key.contains('/') || key.contains("..") {
            return Err(err("invalid key".into()));
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        if std::fs::read_to_string(&path)
            .map(|v| v.trim() == value)
            .unwrap_or(false)
        {
            return Ok(());
        }
        std::fs::write(&path, value).map_err(|e| err(e.to_string()))
    }
}
