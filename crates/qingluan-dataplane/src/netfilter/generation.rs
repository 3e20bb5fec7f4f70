//! The nf_tables ruleset generation: a number the kernel bumps on every committed change to
//! any table (ours, Docker's through iptables-nft, anyone's). A full pass that found our
//! tables intact at one generation need not list them again while it is unchanged.
//!
//! One `NFT_MSG_GETGEN` request on a `NETLINK_NETFILTER` socket. The nftables crates wrap
//! libnftnl for rule building and offer no plain query of this, so it is written out here:
//! a 20-byte request and the `NFTA_GEN_ID` attribute of the answer.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN`.
const GETGEN: u16 = (10 << 8) | 16;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN`, the answer.
const NEWGEN: u16 = (10 << 8) | 15;
/// `NFTA_GEN_ID`.
const GEN_ID: u16 = 1;
/// `nlmsghdr` and `nfgenmsg`.
const HEADERS: usize = 16 + 4;

/// The current generation, or `None` when the kernel could not be asked (the caller then
/// lists the tables as it would without this).
pub fn current() -> Option<u32> {
    let mut socket = Socket::new(NETLINK_NETFILTER).ok()?;
    socket.bind_auto().ok()?;
    socket.connect(&SocketAddr::new(0, 0)).ok()?;
    socket.send(&request(1), 0).ok()?;
    let (answer, _) = socket.recv_from_full().ok()?;
    parse(&answer)
}

/// The request with sequence number `seq`.
fn request(seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADERS);
    m.extend_from_slice(&(HEADERS as u32).to_ne_bytes());
    m.extend_from_slice(&GETGEN.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource ID 0.
    m.extend_from_slice(&[0, 0, 0, 0]);
    m
}

/// The generation in an answer.
fn parse(answer: &[u8]) -> Option<u32> {
    let u16_at = |i: usize| Some(u16::from_ne_bytes(answer.get(i..i + 2)?.try_into().ok()?));
    if u16_at(4)? != NEWGEN {
        return None;
    }
    let len = u32::from_ne_bytes(answer.get(0..4)?.try_into().ok()?) as usize;
    let mut at = HEADERS;
    while at + 4 <= len.min(answer.len()) {
        let (size, kind) = (u16_at(at)? as usize, u16_at(at + 2)?);
        if size < 4 {
            return None;
        }
        if kind & 0x3fff == GEN_ID && size >= 8 {
            return Some(u32::from_be_bytes(
                answer.get(at + 4..at + 8)?.try_into().ok()?,
            ));
        }
        at += (size + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_generation_attribute() {
        let mut answer = Vec::new();
        let attrs: [(u16, &[u8]); 2] =
            [(2, &7u32.to_be_bytes()), (1, &0x0102_0304u32.to_be_bytes())];
        let len = HEADERS + attrs.len() * 8;
        answer.extend_from_slice(&(len as u32).to_ne_bytes());
        answer.extend_from_slice(&NEWGEN.to_ne_bytes());
        answer.extend_from_slice(&[0; 10]);
        answer.extend_from_slice(&[0; 4]);
        for (kind, value) in attrs {
            answer.extend_from_slice(&8u16.to_ne_bytes());
            answer.extend_from_slice(&kind.to_ne_bytes());
            answer.extend_from_slice(value);
        }
        assert_eq!(parse(&answer), Some(0x0102_0304));
        assert_eq!(request(9).len(), HEADERS);
        answer[4] ^= 1;
        assert_eq!(parse(&answer), None, "not a NEWGEN message");
    }

    #[test]
    fn the_kernel_answers_and_counts_changes() {
        let Some(before) = current() else {
            println!("SKIP: no NETLINK_NETFILTER here (needs root)");
            return;
        };
        assert_eq!(current(), Some(before), "nothing changed in between");
        let table = format!("qltgen{}", std::process::id());
        let nft = |args: &[&str]| {
            std::process::Command::new("nft")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !nft(&["add", "table", "inet", &table]) {
            println!("SKIP: nft cannot add a table here");
            return;
        }
        let after = current();
        nft(&["delete", "table", "inet", &table]);
        assert!(after.is_some_and(|g| g != before), "{before} {after:?}");
    }
}
