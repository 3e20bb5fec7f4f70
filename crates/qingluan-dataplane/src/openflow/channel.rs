//! One OpenFlow 1.4 connection to a bridge's management socket, and the operations of the
//! adapter on it: replace a table as one bundle, read flow statistics, set meters.
//!
//! The connection is used by one operation at a time (the caller holds it), so requests and
//! their replies are matched by reading in order; echo requests from the switch are answered
//! whenever we read, and messages nobody asked for (port status) are skipped. Errors the
//! switch returns are collected by transaction ID until a barrier (or the bundle's commit
//! reply) shows that everything before it was processed.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::codec::{self, kind, multipart, FlowModHead, MsgHeader};
use super::{Flow, FlowStats, Meter, PortStats, FINGERPRINT_BITS};

/// Largest message we accept from the switch.
const MAX_MESSAGE: usize = 1 << 16;

/// Why an operation failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The switch refused it (nothing was applied).
    Refused(String),
    /// A flow names a port the switch does not have.
    UnknownPort(String),
    /// The connection broke or carried something unreadable.
    Broken(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Broken(e.to_string())
    }
}

/// An open connection.
pub(crate) struct Channel {
    io: BufReader<UnixStream>,
    xid: u32,
    bundle: u32,
}

/// The fingerprint of an encoded flow, placed in the adapter's cookie bits: FNV-1a folded
/// to 24 bits.
fn fingerprint(parts: &[&[u8]]) -> u64 {
    let h = crate::fnv1a(parts.iter().flat_map(|p| p.iter()));
    ((h ^ (h >> 24) ^ (h >> 48)) & 0x00ff_ffff) << 32
}

/// A wanted flow's identity on the switch: table, priority, cookie with fingerprint.
type Key = (u8, u16, u64);

/// The key under which to want a flow encoded as `e`, or `None` when the very same flow is
/// wanted already. Two different flows whose fingerprints collide (24 bits) get the next
/// one salted, so neither is lost.
fn unique_key<T>(
    wanted: &HashMap<Key, (Encoded, T)>,
    table: u8,
    priority: u16,
    cookie: u64,
    e: &Encoded,
) -> Option<Key> {
    let (t, p, c) = ([table], priority.to_be_bytes(), cookie.to_be_bytes());
    let mut salt = 0u8;
    loop {
        let salted = [salt];
        let mut parts: Vec<&[u8]> = vec![&t, &p, &c, &e.matches, &e.instructions];
        if salt > 0 {
            parts.push(&salted);
        }
        let key = (
            table,
            priority,
            (cookie & !FINGERPRINT_BITS) | fingerprint(&parts),
        );
        match wanted.get(&key) {
            None => return Some(key),
            Some((have, _)) if have == e => return None,
            Some(_) => salt = salt.wrapping_add(1),
        }
    }
}

/// A flow ready for the wire.
#[derive(PartialEq, Eq)]
struct Encoded {
    matches: Vec<u8>,
    instructions: Vec<u8>,
}

impl Channel {
    /// Connects to `path` and agrees on OpenFlow 1.4.
    pub(crate) async fn connect(path: &Path) -> Result<Channel, Failure> {
        let stream = UnixStream::connect(path).await?;
        let mut ch = Channel {
            io: BufReader::new(stream),
            xid: 0,
            bundle: 0,
        };
        let xid = ch.next_xid();
        ch.send(&codec::hello(xid)).await?;
        loop {
            let (h, body) = ch.recv().await?;
            match h.kind {
                kind::HELLO if codec::hello_accepts(&h, &body) => return Ok(ch),
                kind::HELLO => {
                    return Err(Failure::Refused(
                        "the bridge does not allow OpenFlow 1.4 (see its protocols column)".into(),
                    ))
                }
                kind::ERROR => return Err(Failure::Refused(codec::describe_error(&body))),
                _ => {}
            }
        }
    }

    fn next_xid(&mut self) -> u32 {
        self.xid = self.xid.checked_add(1).unwrap_or(1);
        self.xid
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let s = self.io.get_mut();
        s.write_all(bytes).await?;
        s.flush().await?;
        Ok(())
    }

    /// The next message that is not an echo request (those are answered here).
    async fn recv(&mut self) -> Result<(MsgHeader, Vec<u8>), Failure> {
        loop {
            let mut head = [0u8; 8];
            self.io.read_exact(&mut head).await?;
            let h = MsgHeader::parse(&head);
            let len = h.length as usize;
            if !(8..=MAX_MESSAGE).contains(&len) {
                return Err(Failure::Broken(format!("message of length {len}")));
            }
            let mut body = vec![0u8; len - 8];
            self.io.read_exact(&mut body).await?;
            if h.kind == kind::ECHO_REQUEST {
                self.send(&codec::message(kind::ECHO_REPLY, h.xid, &body))
                    .await?;
                continue;
            }
            return Ok((h, body));
        }
    }

    /// Sends `msgs` and a barrier; returns the errors the switch raised for them, by xid.
    async fn send_checked(&mut self, msgs: Vec<u8>) -> Result<Vec<(u32, String)>, Failure> {
        let barrier = self.next_xid();
        let mut out = msgs;
        out.extend(codec::message(kind::BARRIER_REQUEST, barrier, &[]));
        self.send(&out).await?;
        let mut errors = Vec::new();
        loop {
            let (h, body) = self.recv().await?;
            match h.kind {
                kind::BARRIER_REPLY if h.xid == barrier => return Ok(errors),
                kind::ERROR => errors.push((h.xid, codec::describe_error(&body))),
                _ => {}
            }
        }
    }

    /// A multipart request of `ty`; the bodies of all its replies, concatenated.
    async fn multipart(&mut self, ty: u16, body: &[u8]) -> Result<Vec<u8>, Failure> {
        let [out] = self.multiparts([(ty, body)]).await?;
        Ok(out)
    }

    /// Multipart requests sent together, so they cost one round trip; the bodies of each
    /// one's replies, concatenated, in the order of the requests.
    async fn multiparts<const N: usize>(
        &mut self,
        requests: [(u16, &[u8]); N],
    ) -> Result<[Vec<u8>; N], Failure> {
        let mut xids = [0u32; N];
        let mut out = Vec::new();
        for (i, (ty, body)) in requests.iter().enumerate() {
            xids[i] = self.next_xid();
            out.extend(codec::multipart_request(xids[i], *ty, body));
        }
        self.send(&out).await?;
        let mut bodies: [Vec<u8>; N] = std::array::from_fn(|_| Vec::new());
        let mut open = N;
        while open > 0 {
            let (h, b) = self.recv().await?;
            let Some(i) = xids.iter().position(|x| *x == h.xid) else {
                continue;
            };
            match h.kind {
                kind::MULTIPART_REPLY => {
                    let (_, flags, part) = codec::multipart_reply(&b).map_err(Failure::Broken)?;
                    bodies[i].extend_from_slice(part);
                    if flags & multipart::REPLY_MORE == 0 {
                        open -= 1;
                    }
                }
                kind::ERROR => return Err(Failure::Refused(codec::describe_error(&b))),
                _ => {}
            }
        }
        Ok(bodies)
    }

    /// Makes the switch's table exactly `flows`: deletes what is not wanted, adds what is
    /// missing, in one atomic bundle; nothing is sent when they are equal.
    pub(crate) async fn replace(&mut self, flows: &[Flow]) -> Result<usize, Failure> {
        let [ports, installed] = self
            .multiparts([
                (multipart::PORT_DESC, &[]),
                (multipart::FLOW, &codec::flow_request(0, 0)),
            ])
            .await?;
        let ports: HashMap<String, u32> = codec::parse_port_desc(&ports)
            .map_err(Failure::Broken)?
            .into_iter()
            .collect();
        let resolve = |name: &str| ports.get(name).copied();
        let mut wanted: HashMap<(u8, u16, u64), (Encoded, &Flow)> = HashMap::new();
        for f in flows {
            let matches =
                codec::encode_match(&f.matches, &resolve).map_err(Failure::UnknownPort)?;
            let instructions =
                codec::encode_instructions(&f.actions, &resolve).map_err(Failure::UnknownPort)?;
            let e = Encoded {
                matches,
                instructions,
            };
            if let Some(key) = unique_key(&wanted, f.table, f.priority, f.cookie, &e) {
                wanted.insert(key, (e, f));
            }
        }
        let installed = codec::parse_flow_stats(&installed).map_err(Failure::Broken)?;

        let mut kept = HashSet::new();
        let mut msgs = Vec::new();
        let mut what: HashMap<u32, String> = HashMap::new();
        let id = self.next_bundle();
        for f in &installed {
            let key = (f.table, f.priority, f.cookie);
            if wanted.contains_key(&key) && kept.insert(key) {
                continue;
            }
            let xid = self.next_xid();
            let head = FlowModHead {
                command: codec::command::DELETE_STRICT,
                table: f.table,
                priority: f.priority,
                cookie: 0,
                cookie_mask: 0,
            };
            msgs.push((xid, codec::flow_mod(xid, head, &f.matches, &[])));
            what.insert(
                xid,
                format!(
                    "deleting table={},priority={},cookie={:#x}",
                    f.table, f.priority, f.cookie
                ),
            );
        }
        let mut adds: Vec<_> = wanted.iter().filter(|(k, _)| !kept.contains(*k)).collect();
        adds.sort_by_key(|(k, _)| **k);
        for (&(table, priority, cookie), (e, flow)) in adds {
            let xid = self.next_xid();
            let head = FlowModHead {
                command: codec::command::ADD,
                table,
                priority,
                cookie,
                cookie_mask: 0,
            };
            msgs.push((xid, codec::flow_mod(xid, head, &e.matches, &e.instructions)));
            what.insert(xid, format!("adding {}", flow.render()));
        }
        let changed = msgs.len();
        if changed > 0 {
            self.bundle(id, msgs, &what).await?;
        }
        Ok(changed)
    }

    fn next_bundle(&mut self) -> u32 {
        self.bundle = self.bundle.wrapping_add(1);
        self.bundle
    }

    /// Opens bundle `id`, adds `msgs`, and commits it if the switch took every message;
    /// otherwise discards it. `what` names each message for the error.
    async fn bundle(
        &mut self,
        id: u32,
        msgs: Vec<(u32, Vec<u8>)>,
        what: &HashMap<u32, String>,
    ) -> Result<(), Failure> {
        let open = self.next_xid();
        let mut out = codec::bundle_control(open, id, codec::bundle::OPEN);
        for (xid, m) in &msgs {
            out.extend(codec::bundle_add(*xid, id, m));
        }
        let describe = |errors: Vec<(u32, String)>| {
            let text: Vec<String> = errors
                .into_iter()
                .map(|(xid, e)| match what.get(&xid) {
                    Some(w) => format!("{e} ({w})"),
                    None => e,
                })
                .collect();
            Failure::Refused(text.join("; "))
        };
        let errors = self.send_checked(out).await?;
        if !errors.is_empty() {
            let discard = self.next_xid();
            let undo = codec::bundle_control(discard, id, codec::bundle::DISCARD);
            // The bundle may not even be open; either way nothing was applied.
            let _ = self.send_checked(undo).await?;
            return Err(describe(errors));
        }
        let commit = self.next_xid();
        self.send(&codec::bundle_control(commit, id, codec::bundle::COMMIT))
            .await?;
        let mut errors = Vec::new();
        loop {
            let (h, body) = self.recv().await?;
            match h.kind {
                kind::BUNDLE_CONTROL
                    if h.xid == commit
                        && codec::bundle_reply_type(&body) == Some(codec::bundle::COMMIT_REPLY) =>
                {
                    return Ok(())
                }
                kind::ERROR => {
                    errors.push((h.xid, codec::describe_error(&body)));
                    if h.xid == commit {
                        // The inner message's own error, if any, comes first and says more.
                        errors.sort_by_key(|(x, _)| *x == commit);
                        return Err(describe(errors));
                    }
                }
                _ => {}
            }
        }
    }

    /// Counters of flows whose cookie matches `cookie` under `mask` (fingerprints ignored).
    pub(crate) async fn stats(
        &mut self,
        cookie: u64,
        mask: u64,
    ) -> Result<Vec<FlowStats>, Failure> {
        let mask = mask & !FINGERPRINT_BITS;
        let body = self
            .multipart(multipart::FLOW, &codec::flow_request(cookie & mask, mask))
            .await?;
        Ok(codec::parse_flow_stats(&body)
            .map_err(Failure::Broken)?
            .into_iter()
            .map(|f| FlowStats {
                table: f.table,
                priority: f.priority,
                cookie: f.cookie & !FINGERPRINT_BITS,
                packets: f.packets,
                bytes: f.bytes,
                age: std::time::Duration::new(u64::from(f.duration_sec), f.duration_nsec),
            })
            .collect())
    }

    /// Counters of every port, by name.
    pub(crate) async fn port_stats(&mut self) -> Result<Vec<PortStats>, Failure> {
        let names: HashMap<u32, String> = self
            .ports()
            .await?
            .into_iter()
            .map(|(name, no)| (no, name))
            .collect();
        let body = self
            .multipart(multipart::PORT_STATS, &codec::port_request())
            .await?;
        Ok(codec::parse_port_stats(&body)
            .map_err(Failure::Broken)?
            .into_iter()
            .filter_map(|(no, p)| {
                Some(PortStats {
                    name: names.get(&no)?.clone(),
                    ..p
                })
            })
            .collect())
    }

    /// Name and number of every port of the switch.
    async fn ports(&mut self) -> Result<Vec<(String, u32)>, Failure> {
        let body = self.multipart(multipart::PORT_DESC, &[]).await?;
        codec::parse_port_desc(&body).map_err(Failure::Broken)
    }

    /// Number of flows whose cookie matches `cookie` under `mask` (fingerprints ignored).
    pub(crate) async fn count(&mut self, cookie: u64, mask: u64) -> Result<u64, Failure> {
        let mask = mask & !FINGERPRINT_BITS;
        let body = self
            .multipart(
                multipart::AGGREGATE,
                &codec::flow_request(cookie & mask, mask),
            )
            .await?;
        codec::parse_aggregate(&body).map_err(Failure::Broken)
    }

    /// Adds meter `m`, or modifies it when it exists.
    pub(crate) async fn set_meter(&mut self, m: Meter) -> Result<(), Failure> {
        let xid = self.next_xid();
        let errors = self
            .send_checked(codec::meter_mod(xid, codec::meter::ADD, m))
            .await?;
        match errors.first() {
            None => Ok(()),
            Some((_, e)) if e == "OFPMMFC_METER_EXISTS" => {
                let xid = self.next_xid();
                let errors = self
                    .send_checked(codec::meter_mod(xid, codec::meter::MODIFY, m))
                    .await?;
                match errors.into_iter().next() {
                    None => Ok(()),
                    Some((_, e)) => Err(Failure::Refused(e)),
                }
            }
            Some((_, e)) => Err(Failure::Refused(e.clone())),
        }
    }

    /// Every meter of the switch.
    pub(crate) async fn meters(&mut self) -> Result<Vec<Meter>, Failure> {
        let body = self
            .multipart(multipart::METER_CONFIG, &codec::meter_config_request())
            .await?;
        codec::parse_meter_config(&body).map_err(Failure::Broken)
    }

    /// Deletes meter `id`.
    pub(crate) async fn delete_meter(&mut self, id: u32) -> Result<(), Failure> {
        let xid = self.next_xid();
        let m = Meter {
            id,
            rate_kbps: 0,
            burst_kbits: 0,
        };
        let errors = self
            .send_checked(codec::meter_mod(xid, codec::meter::DELETE, m))
            .await?;
        match errors
            .into_iter()
            .find(|(_, e)| e != "OFPMMFC_UNKNOWN_METER")
        {
            None => Ok(()),
            Some((_, e)) => Err(Failure::Refused(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(m: u8) -> Encoded {
        Encoded {
            matches: vec![0, 1, 0, 4, m, 0, 0, 0],
            instructions: vec![],
        }
    }

    #[test]
    fn colliding_fingerprints_lose_no_flow_and_duplicates_collapse() {
        let mut wanted: HashMap<Key, (Encoded, ())> = HashMap::new();
        let a = unique_key(&wanted, 0, 100, 0x0200_0000_0000_0001, &encoded(1)).unwrap();
        assert_eq!(a.2 & !FINGERPRINT_BITS, 0x0200_0000_0000_0001);
        // Another flow that landed on the same key (a fingerprint collision).
        wanted.insert(a, (encoded(2), ()));
        let b = unique_key(&wanted, 0, 100, 0x0200_0000_0000_0001, &encoded(1)).unwrap();
        assert_ne!(a, b, "salted to a key of its own");
        assert_eq!(b.2 & !FINGERPRINT_BITS, 0x0200_0000_0000_0001);
        // The very same flow twice is wanted once.
        wanted.insert(b, (encoded(1), ()));
        assert_eq!(
            unique_key(&wanted, 0, 100, 0x0200_0000_0000_0001, &encoded(1)),
            None
        );
    }
}
