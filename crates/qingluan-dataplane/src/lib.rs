//! System adapters: everything that touches OVS, the kernel's links and netfilter.
//!
//! Each adapter sits behind a trait with a recording fake, so the domain crate can plan and
//! test without root. The real implementations talk to the real thing: a native OVSDB
//! JSON-RPC client, our own OpenFlow 1.4 channel, rtnetlink for links and addresses,
//! and `nft` for netfilter.

pub mod netfilter;
pub mod netlink;
pub mod openflow;
pub mod ovsdb;
