//! System adapters: everything that touches OVS, the kernel's links and netfilter.
//!
//! Each adapter sits behind a trait with a recording fake, so the domain crate can plan and
//! test without root. The real implementations talk to the real thing: a native OVSDB
//! JSON-RPC client, our own OpenFlow 1.4 channel, rtnetlink for links and addresses,
//! and `nft` for netfilter. `vswitchd` asks ovs-vswitchd itself (version, packet traces) on
//! its control socket.

pub mod netfilter;
pub mod netlink;
pub mod openflow;
pub mod ovsdb;
pub mod vswitchd;

/// FNV-1a over `bytes`: a small hash that stays the same across runs and builds (flow
/// fingerprints, netfilter names, ACL rule-set generations).
pub fn fnv1a<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
