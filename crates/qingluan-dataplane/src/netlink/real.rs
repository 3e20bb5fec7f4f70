//! The rtnetlink implementation of [`Links`], for the current or another network namespace.
//!
//! A netlink socket acts on the namespace it was created in, whichever thread uses it later;
//! so does the `AF_INET` socket used for ethtool ioctls. Both are created once, inside the
//! target namespace. `/proc/sys/net`, on the other hand, shows the namespace of the thread
//! that opens the file, so sysctls of another namespace are written from a short-lived
//! thread that entered it (never from a pooled thread, which would stay there).

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily as NlFamily, RouteNetlinkMessage};
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::sys::TokioSocket;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};

use super::{
    check_name, sysctl_path, EgressShaping, IngressShaping, LinkError, LinkInfo, Links, Route,
    Vxlan,
};

/// The link group links are moved to just before they are deleted together; no other
/// software is known to use it, and a link found there is one we are deleting anyway.
const DOOMED_GROUP: u32 = 0x716c_6467;

/// Links of one network namespace, over one rtnetlink connection whose task runs on the
/// tokio runtime that created it (so the value must not outlive that runtime).
pub struct NetlinkLinks {
    /// Request handle of the connection task.
    handle: Handle,
    /// Held for each dump: the kernel runs one dump per netlink socket at a time and
    /// refuses another meanwhile (`EBUSY`).
    dumps: tokio::sync::Mutex<()>,
    /// `AF_INET` datagram socket of the namespace, for ethtool ioctls.
    ioctl_sock: Arc<OwnedFd>,
    /// The namespace entered for sysctls; `None` for the current one.
    netns: Option<Arc<Netns>>,
}

/// An open network namespace file.
struct Netns {
    /// Its path, for errors.
    path: PathBuf,
    /// The open file, for `setns`.
    file: File,
}

impl Netns {
    /// Runs `f` on a new thread inside the namespace and waits for it. `setns` moves only the
    /// calling thread, and this one ends with `f`, so nothing else ever runs there.
    fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce() -> Result<T, LinkError> + Send + 'static,
    ) -> Result<T, LinkError> {
        let ns = Arc::clone(self);
        let entered = move || {
            nix::sched::setns(&ns.file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                LinkError::Netns {
                    path: ns.path.clone(),
                    source: e.into(),
                }
            })?;
            f()
        };
        let thread = std::thread::Builder::new()
            .name("qingluan-netns".into())
            .spawn(entered)
            .map_err(|source| LinkError::Netns {
                path: self.path.clone(),
                source,
            })?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl NetlinkLinks {
    /// Opens the links of the current network namespace. Panics outside a tokio runtime.
    pub fn new() -> Result<Self, LinkError> {
        let (netlink, ioctl) = open_sockets()?;
        Ok(Self::start(netlink, ioctl, None))
    }

    /// Opens the links of the network namespace at `path` (e.g. `/run/netns/h1`): the
    /// sockets are created by a thread that entered it, and sysctls are written the same
    /// way. The caller's threads never change namespace. Panics outside a tokio runtime.
    pub fn in_netns(path: &Path) -> Result<Self, LinkError> {
        let file = File::open(path).map_err(|source| LinkError::Netns {
            path: path.to_path_buf(),
            source,
        })?;
        let netns = Arc::new(Netns {
            path: path.to_path_buf(),
            file,
        });
        let (netlink, ioctl) = netns.run(open_sockets)?;
        Ok(Self::start(netlink, ioctl, Some(netns)))
    }

    /// Spawns the connection task on the netlink socket.
    fn start(netlink: OwnedFd, ioctl: OwnedFd, netns: Option<Arc<Netns>>) -> Self {
        // SAFETY: `netlink` is an open netlink socket; its ownership moves to the TokioSocket
        // (which registers it with the runtime's reactor, panicking outside a runtime).
        let socket = unsafe { TokioSocket::from_raw_fd(netlink.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        NetlinkLinks {
            handle,
            dumps: tokio::sync::Mutex::new(()),
            ioctl_sock: Arc::new(ioctl),
            netns,
        }
    }

    /// Sets attributes of a link named in `msg`; `ENODEV` is [`LinkError::NotFound`].
    async fn set(&self, name: &str, action: String, msg: LinkMessage) -> Result<(), LinkError> {
        check_name(name)?;
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Err(LinkError::NotFound(name.into())),
            Err(e) => Err(kernel(action, e)),
        }
    }

    /// Index of an existing link.
    /// The qdiscs of `iface`, as `tc qdisc show` prints them.
    async fn qdiscs(&self, iface: &str) -> Result<String, LinkError> {
        tc(
            &self.netns,
            iface,
            &["tc", "qdisc", "show", "dev", iface],
            None,
        )
        .await
    }

    /// Runs `tc -batch` lines for the shaping of `iface`.
    async fn batch(&self, iface: &str, lines: String) -> Result<(), LinkError> {
        tc(&self.netns, iface, &["tc", "-batch", "-"], Some(lines)).await?;
        Ok(())
    }

    async fn index(&self, name: &str) -> Result<u32, LinkError> {
        self.link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| LinkError::NotFound(name.to_string()))
    }

    /// Address messages of a link.
    async fn address_messages(&self, name: &str) -> Result<Vec<AddressMessage>, LinkError> {
        let index = self.index(name).await?;
        let _dump = self.dumps.lock().await;
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel(format!("list addresses of {name}"), e))
    }

    /// The link `name` as its message, if it exists.
    async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut answers = self.handle.link().get().match_name(name).execute();
        match answers.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(kernel(format!("look up link {name}"), e)),
        }
    }

    /// Creates the VXLAN device `v`, IPv6 off (as on veths), then up.
    async fn create_vxlan(&self, v: &Vxlan) -> Result<(), LinkError> {
        let b = LinkVxlan::new(&v.name, v.vni)
            .port(VXLAN_PORT)
            .learning(false)
            .tos(TOS_INHERIT)
            .mtu(v.mtu);
        let b = match v.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(|e| kernel(format!("create vxlan {} (vni {})", v.name, v.vni), e))?;
        let ready = async {
            self.sysctl(&format!("net.ipv6.conf.{}.disable_ipv6", v.name), "1")
                .await?;
            self.set_up(&v.name).await
        };
        if let Err(e) = ready.await {
            self.delete_link(&v.name).await?;
            return Err(e);
        }
        tracing::debug!(name = %v.name, vni = v.vni, local = %v.local, "vxlan created");
        Ok(())
    }

    /// The forwarding entries of the link with index `index` that name a remote.
    async fn fdb(&self, name: &str, index: u32) -> Result<BTreeSet<Fdb>, LinkError> {
        let _dump = self.dumps.lock().await;
        let all: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(NlFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel(format!("list forwarding entries of {name}"), e))?;
        Ok(all
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let mut mac = None;
                let mut dst = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) => {
                            mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                        }
                        // In an `AF_BRIDGE` message the address comes as bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                            dst = <[u8; 4]>::try_from(b.as_slice())
                                .map(IpAddr::from)
                                .or_else(|_| <[u8; 16]>::try_from(b.as_slice()).map(IpAddr::from))
                                .ok()
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            dst = Some(IpAddr::V4(*ip))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                            dst = Some(IpAddr::V6(*ip))
                        }
                        _ => {}
                    }
                }
                Some((mac?, dst?))
            })
            .collect())
    }

    /// Adds (`add`) or deletes one forwarding entry of the VXLAN device with index `index`;
    /// entries of one MAC with other remotes stay (`bridge fdb append` / `del ... dst`).
    async fn set_fdb(
        &self,
        name: &str,
        index: u32,
        (mac, dst): Fdb,
        add: bool,
    ) -> Result<(), LinkError> {
        let mut m = NeighbourMessage::default();
        m.header.family = NlFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(match dst {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        let (msg, flags) = if add {
            (
                RouteNetlinkMessage::NewNeighbour(m),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
            )
        } else {
            (
                RouteNetlinkMessage::DelNeighbour(m),
                NLM_F_REQUEST | NLM_F_ACK,
            )
        };
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let action = || {
            let mac = mac.map(|b| format!("{b:02x}")).join(":");
            let verb = if add { "add" } else { "delete" };
            format!("{verb} forwarding entry {mac} dst {dst} of {name}")
        };
        let mut answers = self
            .handle
            .clone()
            .request(req)
            .map_err(|e| kernel(action(), e))?;
        while let Some(a) = answers.next().await {
            if let NetlinkPayload::Error(e) = a.payload {
                if e.code.is_some() {
                    return Err(kernel(action(), rtnetlink::Error::NetlinkError(e)));
                }
            }
        }
        Ok(())
    }
}

/// A forwarding entry: a MAC and the underlay address it is behind.
type Fdb = ([u8; 6], IpAddr);

/// The UDP port of VXLAN (IANA).
const VXLAN_PORT: u16 = 4789;
/// `IFLA_VXLAN_TOS` 1: the outer TOS inherited from the inner packet (`tos inherit`).
const TOS_INHERIT: u8 = 1;

/// Creates the netlink and ioctl sockets, in the calling thread's namespace.
fn open_sockets() -> Result<(OwnedFd, OwnedFd), LinkError> {
    let open = |family, protocol: Option<SockProtocol>, what: &str| {
        nix::sys::socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, protocol)
            .map_err(|e| LinkError::Kernel {
                action: format!("open {what} socket"),
                source: e.into(),
            })
    };
    Ok((
        open(
            AddressFamily::Netlink,
            Some(SockProtocol::NetlinkRoute),
            "a netlink",
        )?,
        open(AddressFamily::Inet, None, "an ioctl")?,
    ))
}

/// The errno of a netlink error answer.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// A refused operation; netlink answers become plain OS errors ("File exists (os error 17)").
fn kernel(action: String, e: rtnetlink::Error) -> LinkError {
    let source = match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    };
    LinkError::Kernel { action, source }
}

/// Whether a link message is a VXLAN device with `v`'s VNI and local address.
fn is_vxlan_as(msg: &LinkMessage, v: &Vxlan) -> bool {
    let local = |x: &InfoVxlan| match (x, v.local) {
        (InfoVxlan::Local(a), IpAddr::V4(b)) => *a == b,
        (InfoVxlan::Local6(a), IpAddr::V6(b)) => *a == b,
        _ => false,
    };
    msg.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| {
            matches!(i, NlLinkInfo::Data(InfoData::Vxlan(d))
                if d.contains(&InfoVxlan::Id(v.vni)) && d.iter().any(local))
        }),
        _ => false,
    })
}

/// Our view of a link message.
fn info(msg: &LinkMessage) -> LinkInfo {
    let mut l = LinkInfo {
        name: String::new(),
        index: msg.header.index,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        mac: None,
        kind: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            LinkAttribute::Address(mac) => l.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                l.kind = infos.iter().find_map(|i| match i {
                    NlLinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    l
}

/// The local address of an address message, with its prefix.
fn address(msg: &AddressMessage) -> Option<ipnet::IpNet> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    ipnet::IpNet::new(ip, msg.header.prefix_len).ok()
}

/// `struct ethtool_value` of `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `ETHTOOL_STXCSUM`: sets all TX checksum features at once (`NETIF_F_CSUM_MASK` plus SCTP
/// and FCoE CRC), exactly the set `ethtool -K dev tx off` clears with `ETHTOOL_SFEATURES`.
const ETHTOOL_STXCSUM: u32 = 0x17;

nix::ioctl_readwrite_bad!(siocethtool, libc::SIOCETHTOOL, libc::ifreq);

/// Turns TX checksum offload off with an ethtool ioctl on `sock`.
fn ethtool_tx_off(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: `ifreq` is plain data (a name and a union of integers and pointers), for which
    // all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // `check_name` allows at most 15 bytes: the name stays NUL-terminated.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: `req` names the device and points at `value`, both alive during the call; the
    // kernel reads the `ethtool_value` for ETHTOOL_STXCSUM and writes nothing back.
    unsafe { siocethtool(sock.as_raw_fd(), &mut req) }?;
    Ok(())
}

/// Writes a sysctl file unless it already holds `value`.
fn write_sysctl(key: &str, value: &str) -> Result<(), LinkError> {
    let path = sysctl_path(key)?;
    let err = |source| LinkError::Sysctl {
        key: key.to_string(),
        value: value.to_string(),
        source,
    };
    if std::fs::read_to_string(&path).map_err(err)?.trim() == value.trim() {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(err)
}

/// Runs `cmd` (`tc` or `ip`) for the shaping of `iface`, in `netns` if given, with `input`
/// on its stdin; returns its stdout.
async fn tc(
    netns: &Option<Arc<Netns>>,
    iface: &str,
    cmd: &[&str],
    input: Option<String>,
) -> Result<String, LinkError> {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let iface = iface.to_string();
    blocking(netns.clone(), move || {
        use std::io::Write;
        let failed = |detail: String| LinkError::Shaping {
            iface: iface.clone(),
            detail,
        };
        let mut child = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("{}: {e}", cmd[0])))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        if let Some(text) = input {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| failed(e.to_string()))?;
        }
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(format!(
                "{}: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
}

/// Runs blocking `f` on tokio's blocking pool, inside `netns` if given.
async fn blocking<T: Send + 'static>(
    netns: Option<Arc<Netns>>,
    f: impl FnOnce() -> Result<T, LinkError> + Send + 'static,
) -> Result<T, LinkError> {
    let task = tokio::task::spawn_blocking(move || match netns {
        Some(ns) => ns.run(f),
        None => f(),
    });
    match task.await {
        Ok(r) => r,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(LinkError::Kernel {
                action: "run a blocking task".into(),
                source: io::Error::other(e),
            }),
        },
    }
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
        let mut peer_msg = LinkUnspec::new_with_name(peer).mtu(mtu);
        if let Some(mac) = peer_mac {
            peer_msg = peer_msg.address(mac.to_vec());
        }
        let msg = LinkVeth::new(host, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| kernel(format!("create veth {host}/{peer}"), e))?;
        let ready = async {
            self.sysctl(&format!("net.ipv6.conf.{host}.disable_ipv6"), "1")
                .await?;
            self.set_up(host).await
        };
        if let Err(e) = ready.await {
            self.delete_link(host).await?;
            return Err(e);
        }
        tracing::debug!(host, peer, mtu, "veth created");
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), LinkError> {
        check_name(name)?;
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => {
                tracing::debug!(name, "link deleted");
                Ok(())
            }
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(kernel(format!("delete link {name}"), e)),
        }
    }

    async fn delete_links(&self, names: &[String]) -> Result<(), LinkError> {
        if let [one] = names {
            return self.delete_link(one).await;
        }
        if names.is_empty() {
            return Ok(());
        }
        // Into one link group, then the group deleted in one request: the kernel's batched
        // unregister waits for in-flight packets once.
        for name in names {
            let mut msg = LinkUnspec::new_with_name(name).build();
            msg.attributes.push(LinkAttribute::Group(DOOMED_GROUP));
            match self
                .set(name, format!("move {name} to its deletion group"), msg)
                .await
            {
                Ok(()) | Err(LinkError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(DOOMED_GROUP));
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => {
                tracing::debug!(links = names.len(), "links deleted");
                Ok(())
            }
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(kernel(format!("delete links {}", names.join(", ")), e)),
        }
    }

    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        check_name(name)?;
        Ok(self.link_message(name).await?.as_ref().map(info))
    }

    async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<LinkInfo>, LinkError> {
        let _dump = self.dumps.lock().await;
        let all: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel("list links".into(), e))?;
        Ok(all
            .iter()
            .map(info)
            .filter(|l| l.name.starts_with(prefix))
            .collect())
    }

    async fn set_up(&self, name: &str) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_name(name).up().build();
        self.set(name, format!("set {name} up"), msg).await
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_name(name).mtu(mtu).build();
        self.set(name, format!("set mtu {mtu} on {name}"), msg)
            .await
    }

    async fn addresses(&self, name: &str) -> Result<Vec<ipnet::IpNet>, LinkError> {
        Ok(self
            .address_messages(name)
            .await?
            .iter()
            .filter_map(address)
            .collect())
    }

    async fn add_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError> {
        let index = self.index(name).await?;
        let request = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(kernel(format!("add address {addr} to {name}"), e)),
        }
    }

    async fn del_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError> {
        let Some(msg) = self
            .address_messages(name)
            .await?
            .into_iter()
            .find(|m| address(m) == Some(addr))
        else {
            return Ok(());
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(kernel(format!("delete address {addr} from {name}"), e)),
        }
    }

    async fn routes(&self, name: &str) -> Result<Vec<Route>, LinkError> {
        let index = self.index(name).await?;
        let _dump = self.dumps.lock().await;
        let all: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel(format!("list routes of {name}"), e))?;
        Ok(all.iter().filter_map(|m| route_of(m, index)).collect())
    }

    async fn add_route(&self, name: &str, route: &Route) -> Result<(), LinkError> {
        let index = self.index(name).await?;
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .output_interface(index);
        if let Some(g) = route.gateway {
            b = b.gateway(g);
        }
        if let Some(m) = route.metric {
            b = b.priority(m);
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(|e| kernel(format!("add route {} via {name}", route.dst), e))
    }

    async fn sandbox_route(&self, netns: &Path, route: &Route, add: bool) -> Result<(), LinkError> {
        let inside = NetlinkLinks::in_netns(netns)?;
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len());
        if let Some(g) = route.gateway {
            b = b.gateway(g);
        }
        let what = format!("route {} in {}", route.dst, netns.display());
        let routes = inside.handle.route();
        if add {
            return routes
                .add(b.build())
                .replace()
                .execute()
                .await
                .map_err(|e| kernel(format!("add {what}"), e));
        }
        match routes.del(b.build()).execute().await {
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            r => r.map_err(|e| kernel(format!("delete {what}"), e)),
        }
    }

    async fn netns_mounted(&self, netns: &Path) -> bool {
        nix::sys::statfs::statfs(netns)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    }

    async fn tx_checksum_off(&self, name: &str) -> Result<(), LinkError> {
        check_name(name)?;
        let sock = Arc::clone(&self.ioctl_sock);
        let owned = name.to_string();
        blocking(None, move || {
            ethtool_tx_off(&sock, &owned).map_err(|source| match source.raw_os_error() {
                Some(libc::ENODEV) => LinkError::NotFound(owned.clone()),
                _ => LinkError::Kernel {
                    action: format!("turn tx checksum offload off on {owned}"),
                    source,
                },
            })
        })
        .await
    }

    async fn shape_ingress(&self, s: &IngressShaping) -> Result<(), LinkError> {
        check_name(&s.ifb)?;
        if self.link(&s.ifb).await?.is_none() {
            tc(
                &self.netns,
                &s.iface,
                &["ip", "link", "add", "name", &s.ifb, "type", "ifb"],
                None,
            )
            .await?;
        }
        self.set_up(&s.ifb).await?;
        let qdiscs = self.qdiscs(&s.ifb).await?;
        if !qdiscs.contains("qdisc htb 1:") {
            tc(
                &self.netns,
                &s.iface,
                &[
                    "tc", "qdisc", "replace", "dev", &s.ifb, "root", "handle", "1:", "htb",
                    "default", "10",
                ],
                None,
            )
            .await?;
        }
        self.batch(&s.iface, s.batch()).await
    }

    async fn unshape_ingress(&self, iface: &str, ifb: &str) -> Result<(), LinkError> {
        if self.link(iface).await?.is_some() {
            let qdiscs = self.qdiscs(iface).await?;
            if qdiscs.contains("qdisc ingress ffff:") {
                tc(
                    &self.netns,
                    iface,
                    &["tc", "qdisc", "del", "dev", iface, "ingress"],
                    None,
                )
                .await?;
            }
        }
        self.delete_link(ifb).await
    }

    async fn shape_egress(&self, s: &EgressShaping) -> Result<(), LinkError> {
        self.unshape_egress(&s.iface).await?;
        self.batch(&s.iface, s.batch()).await
    }

    async fn egress_shaped(&self, iface: &str) -> Result<bool, LinkError> {
        let qdiscs = self.qdiscs(iface).await?;
        Ok(qdiscs.contains("qdisc htb 1: root"))
    }

    async fn unshape_egress(&self, iface: &str) -> Result<(), LinkError> {
        if self.link(iface).await?.is_some() && self.egress_shaped(iface).await? {
            tc(
                &self.netns,
                iface,
                &["tc", "qdisc", "del", "dev", iface, "root"],
                None,
            )
            .await?;
        }
        Ok(())
    }

    async fn sync_vxlan(&self, v: &Vxlan) -> Result<usize, LinkError> {
        check_name(&v.name)?;
        let now = match self.link_message(&v.name).await? {
            Some(m) if is_vxlan_as(&m, v) => info(&m),
            other => {
                if other.is_some() {
                    self.delete_link(&v.name).await?;
                }
                self.create_vxlan(v).await?;
                self.link(&v.name)
                    .await?
                    .ok_or_else(|| LinkError::NotFound(v.name.clone()))?
            }
        };
        if now.mtu != v.mtu {
            self.set_mtu(&v.name, v.mtu).await?;
        }
        if !now.up {
            self.set_up(&v.name).await?;
        }
        let have = self.fdb(&v.name, now.index).await?;
        let mut changed = 0;
        for e in have.difference(&v.fdb) {
            self.set_fdb(&v.name, now.index, *e, false).await?;
            changed += 1;
        }
        for e in v.fdb.difference(&have) {
            self.set_fdb(&v.name, now.index, *e, true).await?;
            changed += 1;
        }
        Ok(changed)
    }

    async fn sysctl(&self, key: &str, value: &str) -> Result<(), LinkError> {
        let (key, value) = (key.to_string(), value.to_string());
        blocking(self.netns.clone(), move || write_sysctl(&key, &value)).await
    }
}

/// A main-table unicast IPv4 route through link `index` that is not a connected route.
fn route_of(m: &RouteMessage, index: u32) -> Option<Route> {
    if m.header.table != RouteHeader::RT_TABLE_MAIN
        || m.header.protocol == RouteProtocol::Kernel
        || m.header.kind != RouteType::Unicast
    {
        return None;
    }
    let (mut oif, mut dst, mut gateway, mut metric) = (None, Ipv4Addr::UNSPECIFIED, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    let dst = ipnet::Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?;
    Some(Route {
        dst,
        gateway,
        metric,
    })
}
