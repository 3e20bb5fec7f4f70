//! Links adapter: veth pairs, addresses, MTU, link state, TX checksum offload and sysctls.
//!
//! For every endpoint the daemon creates a veth pair in the host namespace: the host end is
//! an OVS port, the peer is handed to Docker, which moves it into the container (the
//! container's namespace does not exist yet at Join, so we never enter it). Gateways are
//! addresses on the bridges' internal ports. The real implementation speaks rtnetlink; TX
//! checksum offload is an `SIOCETHTOOL` ioctl (`ethtool -K dev tx off`), needed on the
//! userspace datapath without TSO; sysctls are files under `/proc/sys`.

mod fake;
mod real;

pub use fake::FakeLinks;
pub use real::NetlinkLinks;

use async_trait::async_trait;

/// One link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
}

/// Link errors, each naming the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A Linux interface name longer than 15 bytes or empty.
    #[error("invalid interface name {0:?}: 1 to 15 characters")]
    BadName(String),
    /// The link does not exist.
    #[error("link {0} not found")]
    NotFound(String),
    /// A netlink request failed.
    #[error("cannot {op} {name}: {reason}")]
    Netlink {
        op: &'static str,
        name: String,
        reason: String,
    },
    /// A sysctl could not be written.
    #[error("cannot set sysctl {key}={value}: {reason}")]
    Sysctl {
        key: String,
        value: String,
        reason: String,
    },
}

/// Checks a Linux interface name.
pub fn check_name(name: &str) -> Result<(), LinkError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains('/')
        || name.contains(char::is_whitespace)
    {
        return Err(LinkError::BadName(name.to_string()));
    }
    Ok(())
}

/// Links, addresses and sysctls of one network namespace.
#[async_trait]
pub trait Links: Send + Sync {
    /// Creates a veth pair, host end up, both ends with `mtu`, the peer with `peer_mac`.
    async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<(), LinkError>;
    /// Deletes a link; absent is fine.
    async fn delete_link(&self, name: &str) -> Result<(), LinkError>;
    /// One link, if it exists.
    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError>;
    /// Every link whose name starts with `prefix`.
    async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<LinkInfo>, LinkError>;
    /// Sets a link up (no-op when it is).
    async fn set_up(&self, name: &str) -> Result<(), LinkError>;
    /// Sets a link's MTU (no-op when it has it).
    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), LinkError>;
    /// Addresses of a link.
    async fn addresses(&self, name: &str) -> Result<Vec<ipnet::IpNet>, LinkError>;
    /// Adds an address; present is fine.
    async fn add_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError>;
    /// Removes an address; absent is fine.
    async fn del_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError>;
    /// Turns TX checksum offload off, like `ethtool -K name tx off`.
    async fn tx_checksum_off(&self, name: &str) -> Result<(), LinkError>;
    /// Writes a sysctl given with dots (`net.ipv4.conf.qlb1.route_localnet`); the parts are
    /// path components, so interface names must not contain dots.
    async fn sysctl(&self, key: &str, value: &str) -> Result<(), LinkError>;
}
