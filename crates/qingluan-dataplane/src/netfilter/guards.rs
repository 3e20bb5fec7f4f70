//! Guard chains over netlink: the change a new or deleted endpoint makes to the `netdev`
//! guard table, sent to nf_tables as one batch without starting `nft` (a process costs about
//! 5 ms; the batch well under one).
//!
//! A batch is `NFNL_MSG_BATCH_BEGIN`, the table (created when missing), each chain deleted
//! or added, then `NFNL_MSG_BATCH_END`; the kernel commits it whole or not at all and
//! acknowledges every message. The nftables crates wrap libnftnl (a C library) or the `nft`
//! JSON interface, so the few messages are written out here, as in `generation.rs`.

use std::os::fd::AsRawFd;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END`.
const BATCH_BEGIN: u16 = 0x10;
const BATCH_END: u16 = 0x11;
/// `NFNL_SUBSYS_NFTABLES << 8` with `NFT_MSG_NEWTABLE`, `NFT_MSG_NEWCHAIN`, `NFT_MSG_DELCHAIN`.
const NEWTABLE: u16 = 10 << 8;
const NEWCHAIN: u16 = (10 << 8) | 3;
const DELCHAIN: u16 = (10 << 8) | 5;
/// `NFNL_SUBSYS_NFTABLES`, the batch's resource ID.
const SUBSYS_NFTABLES: u16 = 10;
/// `NFPROTO_NETDEV`.
const NETDEV: u8 = 5;
/// Attributes: `NFTA_TABLE_NAME`; `NFTA_CHAIN_TABLE`, `_NAME`, `_HOOK`, `_POLICY`, `_TYPE`;
/// in the hook `NFTA_HOOK_HOOKNUM`, `_PRIORITY`, `_DEV`.
const TABLE_NAME: u16 = 1;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_NUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const HOOK_DEV: u16 = 3;
/// `NLA_F_NESTED`.
const NESTED: u16 = 0x8000;
/// `NF_NETDEV_INGRESS` and `NF_DROP`.
const INGRESS: u32 = 0;
const DROP: u32 = 0;
/// How long to wait for the kernel's acknowledgements.
const ANSWER_WITHIN: libc::time_t = 2;

/// Deletes the chains `gone` from the `netdev` table `table` and adds one chain per device
/// of `new` (named after it, dropping what enters it at ingress, priority 0), creating the
/// table when missing: all or nothing. Blocking; the error is the kernel's.
pub fn change(table: &str, gone: &[&str], new: &[&str]) -> std::io::Result<()> {
    let mut batch = Batch::default();
    batch.message(BATCH_BEGIN, libc::NLM_F_REQUEST as u16, 0, |_| ());
    let create = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE) as u16;
    if !new.is_empty() {
        batch.message(NEWTABLE, create, NETDEV, |m| m.string(TABLE_NAME, table));
    }
    for chain in gone {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        batch.message(DELCHAIN, flags, NETDEV, |m| {
            m.string(CHAIN_TABLE, table);
            m.string(CHAIN_NAME, chain);
        });
    }
    for dev in new {
        batch.message(NEWCHAIN, create, NETDEV, |m| {
            m.string(CHAIN_TABLE, table);
            m.string(CHAIN_NAME, dev);
            m.nested(CHAIN_HOOK, |h| {
                h.u32(HOOK_NUM, INGRESS);
                h.u32(HOOK_PRIORITY, 0);
                h.string(HOOK_DEV, dev);
            });
            m.u32(CHAIN_POLICY, DROP);
            m.string(CHAIN_TYPE, "filter");
        });
    }
    batch.message(BATCH_END, libc::NLM_F_REQUEST as u16, 0, |_| ());
    send(&batch)
}

/// Messages, each with its sequence number; `acks` holds the numbers of those that ask
/// for an acknowledgement.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    seq: u32,
    acks: Vec<u32>,
}

impl Batch {
    /// Appends a message of `kind` with an `nfgenmsg` of `family` and the attributes
    /// `attrs` writes.
    fn message(&mut self, kind: u16, flags: u16, family: u8, attrs: impl FnOnce(&mut Attrs)) {
        self.seq += 1;
        if flags & libc::NLM_F_ACK as u16 != 0 {
            self.acks.push(self.seq);
        }
        let mut a = Attrs(Vec::new());
        attrs(&mut a);
        let len = 16 + 4 + a.0.len();
        let b = &mut self.bytes;
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&self.seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        let res_id = if family == 0 { SUBSYS_NFTABLES } else { 0 };
        b.extend_from_slice(&[family, 0]);
        b.extend_from_slice(&res_id.to_be_bytes());
        b.extend_from_slice(&a.0);
    }
}

/// Netlink attributes, each padded to 4 bytes.
struct Attrs(Vec<u8>);

impl Attrs {
    fn raw(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len() + (4 - len % 4) % 4, 0);
    }

    fn string(&mut self, kind: u16, value: &str) {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.raw(kind, &v);
    }

    fn u32(&mut self, kind: u16, value: u32) {
        self.raw(kind, &value.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs)) {
        let mut a = Attrs(Vec::new());
        inner(&mut a);
        self.raw(kind | NESTED, &a.0);
    }
}

/// Sends `batch` and reads an acknowledgement for each message that asked for one; the
/// first error the kernel reports fails it.
fn send(batch: &Batch) -> std::io::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let timeout = libc::timeval {
        tv_sec: ANSWER_WITHIN,
        tv_usec: 0,
    };
    // SAFETY: a valid socket, and a `timeval` that outlives the call.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.send(&batch.bytes, 0)?;
    let mut waiting: std::collections::BTreeSet<u32> = batch.acks.iter().copied().collect();
    while !waiting.is_empty() {
        let (answer, _) = socket.recv_from_full()?;
        for (seq, errno) in acks(&answer) {
            if errno != 0 {
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            waiting.remove(&seq);
        }
    }
    Ok(())
}

/// The `(sequence number, errno)` of each `NLMSG_ERROR` in `answer` (errno 0: an ack).
fn acks(answer: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 20 <= answer.len() {
        let word = |i: usize| u32::from_ne_bytes(answer[i..i + 4].try_into().expect("4 bytes"));
        let len = word(at) as usize;
        let kind = u16::from_ne_bytes([answer[at + 4], answer[at + 5]]);
        if len < 16 || at + len > answer.len() {
            break;
        }
        if kind == libc::NLMSG_ERROR as u16 {
            let errno = -(word(at + 16) as i32);
            let seq = if len >= 36 { word(at + 16 + 4 + 8) } else { 0 };
            out.push((seq, errno));
        }
        at += (len + 3) & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_nf_tables_reads_them() {
        let mut b = Batch::default();
        b.message(BATCH_BEGIN, libc::NLM_F_REQUEST as u16, 0, |_| ());
        assert_eq!(b.bytes.len(), 20, "a batch marker is headers only");
        assert_eq!(&b.bytes[16..20], &[0, 0, 0, 10], "resource ID: nf_tables");
        b.message(NEWTABLE, 5, NETDEV, |m| m.string(TABLE_NAME, "ab"));
        let table = &b.bytes[20..];
        assert_eq!(table.len(), 20 + 8, "\"ab\\0\" padded to 4 bytes");
        assert_eq!(&table[20..28], &[7, 0, 1, 0, b'a', b'b', 0, 0]);
        assert_eq!(b.acks, vec![2], "only the messages that asked for an ack");
        let mut a = Attrs(Vec::new());
        a.nested(CHAIN_HOOK, |h| h.u32(HOOK_NUM, 1));
        assert_eq!(a.0, vec![12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn the_kernel_takes_the_chains_and_refuses_a_missing_one() {
        let id = std::process::id() % 100_000;
        let (dev, table) = (format!("qltg{id}"), format!("qltguard{id}"));
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let peer = format!("qltp{id}");
        if run(
            "ip",
            &["link", "add", &dev, "type", "veth", "peer", "name", &peer],
        )
        .is_none()
        {
            println!("SKIP: cannot add a veth here (needs root)");
            return;
        }
        let list = || run("nft", &["list", "table", "netdev", &table]).unwrap_or_default();
        let added = change(&table, &[], &[&dev]);
        let listed = list();
        let missing = change(&table, &["qltg-none"], &[]);
        let deleted = change(&table, &[&dev], &[]);
        let after = list();
        run("nft", &["delete", "table", "netdev", &table]);
        run("ip", &["link", "del", &dev]);
        added.unwrap();
        assert!(
            listed.contains(&format!("chain {dev}"))
                && listed.contains(&format!("hook ingress device \"{dev}\""))
                && listed.contains("policy drop;"),
            "{listed}"
        );
        assert_eq!(
            missing.map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOENT)),
            "a chain that is not there"
        );
        deleted.unwrap();
        assert!(!after.contains("chain "), "{after}");
    }

    #[test]
    fn acknowledgements_are_read_with_their_sequence_numbers() {
        let mut answer = Vec::new();
        for (seq, err) in [(2u32, 0i32), (3, -libc::ENOENT)] {
            answer.extend_from_slice(&36u32.to_ne_bytes());
            answer.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
            answer.extend_from_slice(&[0; 10]);
            answer.extend_from_slice(&err.to_ne_bytes());
            answer.extend_from_slice(&36u32.to_ne_bytes());
            answer.extend_from_slice(&[0; 4]);
            answer.extend_from_slice(&seq.to_ne_bytes());
            answer.extend_from_slice(&[0; 4]);
        }
        assert_eq!(acks(&answer), vec![(2, 0), (3, libc::ENOENT)]);
    }
}
