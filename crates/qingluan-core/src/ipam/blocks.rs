//! Per-host address blocks in cluster subnets: the arithmetic and this host's cache.
//!
//! A cluster subnet (a vlan or vxlan domain) is cut into blocks of 64 addresses (a /26 in
//! IPv4, a /122 in IPv6, or the whole scope when it is smaller). A host claims a block with
//! one create-if-absent of `ipam/blocks/<domain>/<cidr>/<block>` and from then on allocates
//! from its own blocks without listing the subnet or racing other hosts: its [`Affinity`]
//! knows which addresses of its blocks are taken. Each address is still one create-if-absent
//! of its own key, so uniqueness never rests on the cache: a static address, or one another
//! host borrowed, inside our block only makes that create fail, and the allocation moves to
//! the next address. When every block is claimed a host borrows a free address anywhere in
//! the scope, as before blocks existed. A dead host's blocks go with its addresses when they
//! are reclaimed; a removed network's go with its subnet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{cidr_key, lowest_free, Subnet};
use crate::model::nth_host;

/// Store key prefix of blocks (`ipam/blocks/<domain>/<cidr>/<block>`).
pub const BLOCKS: &str = "ipam/blocks/";

/// A block has 2^BLOCK_BITS addresses.
const BLOCK_BITS: u8 = 6;

/// How long after finding no block left to claim a host borrows at once, without looking
/// for a free block again.
const RETRY_CLAIM: Duration = Duration::from_secs(2);

/// A claimed block of a cluster subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The block.
    pub cidr: IpNet,
    /// The host that allocates from it.
    pub host: String,
    /// When it was claimed (seconds since the epoch).
    pub since: u64,
}

/// Store key prefix of a subnet's blocks.
pub fn blocks_prefix(domain: &str, cidr: IpNet) -> String {
    format!("{BLOCKS}{domain}/{}/", cidr_key(cidr))
}

/// Store key of one block of a subnet.
pub fn block_key(domain: &str, cidr: IpNet, block: IpNet) -> String {
    format!("{}{}", blocks_prefix(domain, cidr), cidr_key(block))
}

/// Prefix length of the blocks of `scope`.
fn block_len(scope: IpNet) -> u8 {
    scope
        .prefix_len()
        .max(scope.max_prefix_len().saturating_sub(BLOCK_BITS))
}

/// The `n`-th block of `scope`.
fn nth_block(scope: IpNet, n: u128) -> Option<IpNet> {
    let len = block_len(scope);
    let first = nth_host(
        scope,
        n.checked_shl(u32::from(scope.max_prefix_len() - len))?,
    )?;
    IpNet::new(first, len).ok()
}

/// The first block of `scope` at or after its `start`-th (wrapping around) that is not in
/// `held` and has a usable address of `cidr` not in `taken`.
pub fn unclaimed(
    cidr: IpNet,
    scope: IpNet,
    held: &BTreeSet<IpNet>,
    taken: &BTreeSet<IpAddr>,
    start: u128,
) -> Option<IpNet> {
    let bits = u32::from(block_len(scope) - scope.prefix_len());
    let count = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
    let start = start % count;
    (start..count)
        .chain(0..start)
        .filter_map(|n| nth_block(scope, n))
        .find(|b| !held.contains(b) && lowest_free(cidr, *b, taken).is_some())
}

/// This host's blocks of one cluster subnet and the addresses taken in them.
#[derive(Debug, Default)]
pub struct Affinity {
    /// The subnet record it was loaded for, with that record's revision in the store. An
    /// allocation writes its address only while the record is still at that revision, so a
    /// subnet removed (and maybe made again under the same PoolID) meanwhile fails the write
    /// and the entry is loaded again.
    pub subnet: Option<(Subnet, u64)>,
    /// When the last load found no block left to claim.
    pub exhausted: Option<Instant>,
    /// Blocks this host holds, in the order it allocates from them.
    pub blocks: Vec<IpNet>,
    /// Addresses known to be taken (in the store, or reserved by a call in flight).
    pub taken: BTreeSet<IpAddr>,
    /// Addresses reserved by calls whose store write has not answered yet.
    pub pending: BTreeSet<IpAddr>,
    /// The records this host created for addresses not bound yet, as stored: the binding
    /// compares against them instead of reading the record first.
    pub written: BTreeMap<IpAddr, Vec<u8>>,
}

impl Affinity {
    /// Reserves the lowest free address of this host's blocks.
    pub fn reserve(&mut self, cidr: IpNet) -> Option<IpAddr> {
        let ip = self
            .blocks
            .iter()
            .find_map(|b| lowest_free(cidr, *b, &self.taken))?;
        self.taken.insert(ip);
        self.pending.insert(ip);
        Some(ip)
    }

    /// Whether no block was left to claim a moment ago: the caller borrows at once.
    pub fn exhausted(&self) -> bool {
        self.exhausted.is_some_and(|t| t.elapsed() < RETRY_CLAIM)
    }

    /// Whether a block of this host has a free address.
    pub fn has_room(&self, cidr: IpNet) -> bool {
        self.blocks
            .iter()
            .any(|b| lowest_free(cidr, *b, &self.taken).is_some())
    }

    /// Records whether `ip` is held in the store now; ends its reservation if it had one.
    pub fn note(&mut self, ip: IpAddr, held: bool) {
        self.pending.remove(&ip);
        if held {
            self.taken.insert(ip);
        } else {
            self.taken.remove(&ip);
            self.written.remove(&ip);
        }
    }
}
