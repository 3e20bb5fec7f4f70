//! The flow table: per-5-tuple state, `flow` keyword flags and TCP stream reassembly.
//!
//! Both directions of a 5-tuple share one flow; its client is the sender of the first
//! packet seen. TCP payload is reassembled per direction from sequence numbers: in-order
//! bytes are appended to the direction's stream (up to `stream_depth`), out-of-order
//! segments wait (at most [`MAX_PENDING_SEGMENTS`]) until the gap fills, and bytes already
//! in the stream are never appended twice.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::alert::Direction;

/// Out-of-order segments held per direction until the gap before them fills.
pub(crate) const MAX_PENDING_SEGMENTS: usize = 64;

/// Flow ids are masked to 51 bits like Suricata's.
const FLOW_ID_MASK: u64 = 0x7_ffff_ffff_ffff;

/// How often (in packet time) expired flows are swept out.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// TCP header fields the flow table needs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TcpInfo {
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// A decoded IP packet.
#[derive(Debug, Clone)]
pub(crate) struct Packet<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub tcp: Option<TcpInfo>,
    pub icmp_type: Option<u8>,
    pub payload: &'a [u8],
}

impl Packet<'_> {
    /// Whether this is an ICMP error message, which does not count as a reply.
    fn is_icmp_error(&self) -> bool {
        match (self.proto, self.icmp_type) {
            (1, Some(t)) => matches!(t, 3 | 4 | 5 | 11 | 12),
            (58, Some(t)) => t < 128,
            _ => false,
        }
    }
}

/// Limits and timeouts of the flow table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowLimits {
    pub stream_depth: usize,
    pub max_flows: usize,
    pub tcp_timeout: Duration,
    pub other_timeout: Duration,
    pub closed_timeout: Duration,
}

/// Both directions of a 5-tuple map to the same key (endpoints in sorted order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    proto: u8,
    low: (IpAddr, u16),
    high: (IpAddr, u16),
}

impl FlowKey {
    fn of(packet: &Packet) -> Self {
        let src = (packet.src, packet.src_port.unwrap_or(0));
        let dst = (packet.dst, packet.dst_port.unwrap_or(0));
        FlowKey {
            proto: packet.proto,
            low: src.min(dst),
            high: src.max(dst),
        }
    }
}

/// Where a TCP flow is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Only the client's SYN was seen.
    SynSent,
    /// The server's SYN/ACK was seen; the client's ACK completes the handshake.
    SynAckSeen,
    /// Handshake complete, or the flow was picked up midstream.
    Done,
}

/// One direction's reassembled TCP byte stream.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    data: Vec<u8>,
    next_seq: Option<u32>,
    pending: Vec<(u32, Vec<u8>)>,
}

impl Stream {
    /// The reassembled bytes so far (from the first byte after the SYN, or the first
    /// segment seen midstream).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Adds a segment; returns the stream length before it, so new bytes are
    /// `data()[returned..]`.
    fn add(&mut self, seq: u32, payload: &[u8], depth: usize) -> usize {
        let before = self.data.len();
        if payload.is_empty() || before >= depth {
            return before;
        }
        let next = *self.next_seq.get_or_insert(seq);
        let ahead = seq.wrapping_sub(next) as i32;
        if ahead > 0 {
            let duplicate = self.pending.iter().any(|(s, _)| *s == seq);
            if !duplicate && self.pending.len() < MAX_PENDING_SEGMENTS {
                self.pending.push((seq, payload.to_vec()));
            }
            return before;
        }
        self.append(seq, payload, depth);
        while let Some(index) = self
            .pending
            .iter()
            .position(|(s, _)| self.next_seq.is_some_and(|n| s.wrapping_sub(n) as i32 <= 0))
        {
            let (seq, segment) = self.pending.swap_remove(index);
            self.append(seq, &segment, depth);
        }
        if self.data.len() >= depth {
            self.pending.clear();
        }
        before
    }

    /// Appends the part of a segment starting at or before `next_seq` that is not yet in
    /// the stream.
    fn append(&mut self, seq: u32, payload: &[u8], depth: usize) {
        let Some(next) = self.next_seq else { return };
        let already = next.wrapping_sub(seq) as usize;
        if already >= payload.len() {
            return;
        }
        let room = depth.saturating_sub(self.data.len());
        let fresh = &payload[already..];
        let fresh = &fresh[..fresh.len().min(room)];
        self.data.extend_from_slice(fresh);
        self.next_seq = Some(next.wrapping_add(fresh.len() as u32));
    }
}

/// State of one flow.
#[derive(Debug)]
pub(crate) struct Flow {
    /// Flow id (51 bits), the same for every alert of the flow.
    pub id: u64,
    client: (IpAddr, u16),
    last_seen: SystemTime,
    handshake: Option<Handshake>,
    closing: bool,
    seen: [bool; 2],
    /// Per direction (index [`dir_index`]): the reassembled TCP stream.
    pub streams: [Stream; 2],
    /// Per direction: (gid, sid) of the signatures that already alerted.
    pub alerted: [HashSet<(u32, u32)>; 2],
}

/// Index of a direction in per-direction arrays.
pub(crate) fn dir_index(direction: Direction) -> usize {
    match direction {
        Direction::ToServer => 0,
        Direction::ToClient => 1,
    }
}

/// What the flow table learned about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observation {
    pub direction: Direction,
    pub established: bool,
    /// For TCP: the stream length before this packet (new bytes follow it).
    pub new_from: usize,
}

impl Flow {
    /// A new flow for `key` whose first packet is `packet`; `serial` makes its id unique.
    fn new(key: FlowKey, serial: u64, packet: &Packet, now: SystemTime) -> Self {
        let mut hasher = DefaultHasher::new();
        (key, now, serial).hash(&mut hasher);
        let handshake = packet.tcp.map(|tcp| {
            if tcp.syn && !tcp.ack {
                Handshake::SynSent
            } else {
                Handshake::Done
            }
        });
        Flow {
            id: hasher.finish() & FLOW_ID_MASK,
            client: (packet.src, packet.src_port.unwrap_or(0)),
            last_seen: now,
            handshake,
            closing: false,
            seen: [false, false],
            streams: Default::default(),
            alerted: Default::default(),
        }
    }

    fn timeout(&self, limits: &FlowLimits) -> Duration {
        match self.handshake {
            Some(_) if self.closing => limits.closed_timeout,
            Some(_) => limits.tcp_timeout,
            None => limits.other_timeout,
        }
    }

    fn expired(&self, now: SystemTime, limits: &FlowLimits) -> bool {
        now.duration_since(self.last_seen).unwrap_or_default() > self.timeout(limits)
    }

    /// Updates TCP handshake state; returns whether the packet counts as established.
    fn update_tcp(&mut self, direction: Direction, tcp: TcpInfo, has_payload: bool) -> bool {
        let before = self.handshake;
        let established = match (before, direction) {
            (Some(Handshake::Done), _) => true,
            (Some(Handshake::SynSent), Direction::ToClient) if tcp.syn && tcp.ack => {
                self.handshake = Some(Handshake::SynAckSeen);
                false
            }
            (Some(Handshake::SynAckSeen), Direction::ToServer) if tcp.ack && !tcp.syn => {
                self.handshake = Some(Handshake::Done);
                has_payload
            }
            _ => false,
        };
        if tcp.fin || tcp.rst {
            self.closing = true;
        }
        established
    }
}

/// All flows, bounded in number and expired after idle timeouts.
#[derive(Debug)]
pub(crate) struct FlowTable {
    flows: HashMap<FlowKey, Flow>,
    /// Flow keys and ids in creation order, for evicting the oldest.
    order: VecDeque<(FlowKey, u64)>,
    limits: FlowLimits,
    last_sweep: Option<SystemTime>,
    created: u64,
}

impl FlowTable {
    pub fn new(limits: FlowLimits) -> Self {
        FlowTable {
            flows: HashMap::new(),
            order: VecDeque::new(),
            limits,
            last_sweep: None,
            created: 0,
        }
    }

    /// Number of flows held.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Finds or creates the packet's flow and updates it.
    pub fn observe(&mut self, packet: &Packet, now: SystemTime) -> (&mut Flow, Observation) {
        self.sweep(now);
        let key = FlowKey::of(packet);
        let restart = self.flows.get(&key).is_some_and(|flow| {
            let new_syn = packet.tcp.is_some_and(|t| t.syn && !t.ack) && flow.closing;
            new_syn || flow.expired(now, &self.limits)
        });
        if restart {
            self.flows.remove(&key);
        }
        if !self.flows.contains_key(&key) {
            self.make_room();
        }
        let limits = self.limits;
        let (created, order) = (&mut self.created, &mut self.order);
        let flow = self.flows.entry(key).or_insert_with(|| {
            *created += 1;
            let flow = Flow::new(key, *created, packet, now);
            order.push_back((key, flow.id));
            flow
        });
        flow.last_seen = now;
        let from = (packet.src, packet.src_port.unwrap_or(0));
        let direction = if from == flow.client {
            Direction::ToServer
        } else {
            Direction::ToClient
        };
        let index = dir_index(direction);
        let mut new_from = 0;
        let established = match packet.tcp {
            Some(tcp) => {
                let established = flow.update_tcp(direction, tcp, !packet.payload.is_empty());
                let stream = &mut flow.streams[index];
                if tcp.syn {
                    stream.next_seq.get_or_insert(tcp.seq.wrapping_add(1));
                    new_from = stream.data.len();
                } else {
                    new_from = stream.add(tcp.seq, packet.payload, limits.stream_depth);
                }
                established
            }
            None => {
                if !packet.is_icmp_error() {
                    flow.seen[index] = true;
                }
                flow.seen == [true, true]
            }
        };
        let observation = Observation {
            direction,
            established,
            new_from,
        };
        (flow, observation)
    }

    /// Evicts the oldest flows until there is room for one more.
    fn make_room(&mut self) {
        while self.flows.len() >= self.limits.max_flows {
            let Some((old_key, old_id)) = self.order.pop_front() else {
                break;
            };
            if self.flows.get(&old_key).is_some_and(|f| f.id == old_id) {
                self.flows.remove(&old_key);
            }
        }
    }

    /// Drops expired flows, at most once per [`SWEEP_INTERVAL`] of packet time.
    fn sweep(&mut self, now: SystemTime) {
        let due = self
            .last_sweep
            .is_none_or(|last| now.duration_since(last).unwrap_or_default() >= SWEEP_INTERVAL);
        if !due {
            return;
        }
        self.last_sweep = Some(now);
        let limits = self.limits;
        self.flows.retain(|_, flow| !flow.expired(now, &limits));
        let flows = &self.flows;
        self.order
            .retain(|(key, id)| flows.get(key).is_some_and(|f| f.id == *id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn limits() -> FlowLimits {
        FlowLimits {
            stream_depth: 1 << 20,
            max_flows: 100,
            tcp_timeout: Duration::from_secs(300),
            other_timeout: Duration::from_secs(60),
            closed_timeout: Duration::from_secs(10),
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn tcp<'a>(from_client: bool, flags: &str, seq: u32, payload: &'a [u8]) -> Packet<'a> {
        let (src, dst, sp, dp) = if from_client {
            (ip(1), ip(2), 40000, 80)
        } else {
            (ip(2), ip(1), 80, 40000)
        };
        Packet {
            src,
            dst,
            proto: 6,
            src_port: Some(sp),
            dst_port: Some(dp),
            tcp: Some(TcpInfo {
                seq,
                syn: flags.contains('S'),
                ack: flags.contains('A'),
                fin: flags.contains('F'),
                rst: flags.contains('R'),
            }),
            icmp_type: None,
            payload,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1000 + secs)
    }

    #[test]
    fn tcp_handshake_states() {
        let mut table = FlowTable::new(limits());
        let steps = [
            (tcp(true, "S", 100, b""), Direction::ToServer, false),
            (tcp(false, "SA", 500, b""), Direction::ToClient, false),
            (tcp(true, "A", 101, b""), Direction::ToServer, false),
            (tcp(true, "A", 101, b"GET"), Direction::ToServer, true),
            (tcp(false, "A", 501, b"OK"), Direction::ToClient, true),
            (tcp(true, "FA", 104, b""), Direction::ToServer, true),
        ];
        let mut id = None;
        for (packet, direction, established) in steps {
            let (flow, obs) = table.observe(&packet, at(0));
            assert_eq!((obs.direction, obs.established), (direction, established));
            assert_eq!(*id.get_or_insert(flow.id), flow.id);
            assert!(flow.id <= FLOW_ID_MASK);
        }
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn third_ack_with_data_is_established() {
        let mut table = FlowTable::new(limits());
        table.observe(&tcp(true, "S", 100, b""), at(0));
        table.observe(&tcp(false, "SA", 500, b""), at(0));
        let (_, obs) = table.observe(&tcp(true, "A", 101, b"x"), at(0));
        assert!(obs.established);
    }

    #[test]
    fn udp_established_from_first_reply() {
        let mut table = FlowTable::new(limits());
        let mut udp = tcp(true, "", 0, b"q");
        udp.proto = 17;
        udp.tcp = None;
        let mut reply = udp.clone();
        (reply.src, reply.dst, reply.src_port, reply.dst_port) =
            (udp.dst, udp.src, udp.dst_port, udp.src_port);
        assert!(!table.observe(&udp, at(0)).1.established);
        assert!(!table.observe(&udp, at(0)).1.established);
        let (_, obs) = table.observe(&reply, at(0));
        assert_eq!(
            (obs.direction, obs.established),
            (Direction::ToClient, true)
        );
        assert!(table.observe(&udp, at(0)).1.established);
    }

    #[test]
    fn reassembly_in_order_out_of_order_and_retransmitted() {
        let mut table = FlowTable::new(limits());
        table.observe(&tcp(true, "S", 99, b""), at(0));
        let (flow, obs) = table.observe(&tcp(true, "A", 100, b"abc"), at(0));
        assert_eq!((obs.new_from, flow.streams[0].data()), (0, &b"abc"[..]));
        let (flow, obs) = table.observe(&tcp(true, "A", 106, b"ghi"), at(0));
        assert_eq!((obs.new_from, flow.streams[0].data()), (3, &b"abc"[..]));
        let (flow, obs) = table.observe(&tcp(true, "A", 102, b"cdef"), at(0));
        assert_eq!(
            (obs.new_from, flow.streams[0].data()),
            (3, &b"abcdefghi"[..])
        );
        let (flow, obs) = table.observe(&tcp(true, "A", 100, b"abcdefghi"), at(0));
        assert_eq!((obs.new_from, flow.streams[0].data().len()), (9, 9));
    }

    #[test]
    fn stream_depth_and_sequence_wrap() {
        let mut table = FlowTable::new(FlowLimits {
            stream_depth: 5,
            ..limits()
        });
        table.observe(&tcp(true, "S", u32::MAX - 1, b""), at(0));
        table.observe(&tcp(true, "A", u32::MAX, b"ab"), at(0));
        let (flow, _) = table.observe(&tcp(true, "A", 1, b"cdef"), at(0));
        assert_eq!(flow.streams[0].data(), b"abcde");
        let (_, obs) = table.observe(&tcp(true, "A", 5, b"zz"), at(0));
        assert_eq!(obs.new_from, 5);
    }

    #[test]
    fn pending_segments_are_bounded() {
        let mut stream = Stream::default();
        stream.add(0, b"a", 1 << 20);
        for i in 0..200u32 {
            stream.add(10 + i * 2, b"x", 1 << 20);
        }
        assert_eq!(stream.pending.len(), MAX_PENDING_SEGMENTS);
    }

    #[test]
    fn expiry_eviction_and_reuse() {
        let mut table = FlowTable::new(FlowLimits {
            max_flows: 2,
            ..limits()
        });
        let mut udp = tcp(true, "", 0, b"q");
        udp.proto = 17;
        udp.tcp = None;
        let first = table.observe(&udp, at(0)).0.id;
        assert_eq!(table.observe(&udp, at(60)).0.id, first);
        assert_ne!(table.observe(&udp, at(121)).0.id, first);
        for port in 1..=3 {
            udp.src_port = Some(port);
            table.observe(&udp, at(122));
        }
        assert_eq!(table.len(), 2);
        table.observe(&udp, at(200));
        assert_eq!(table.len(), 1);
        let closed = table.observe(&tcp(true, "S", 0, b""), at(300)).0.id;
        table.observe(&tcp(false, "R", 0, b""), at(301));
        assert_ne!(table.observe(&tcp(true, "S", 0, b""), at(302)).0.id, closed);
        table.observe(&tcp(false, "R", 0, b""), at(302));
        let (_, obs) = table.observe(&tcp(true, "A", 1, b""), at(315));
        assert!(obs.established);
    }
}
