//! qingluan's intrusion detection engine: Suricata-style signatures plus anomaly detectors
//! over raw Ethernet frames.
//!
//! The crate does no I/O. The caller (the qingluan daemon) loads rule files with [`load`],
//! builds a [`Detector`], feeds it the frames read from an OVS mirror port with
//! [`Detector::inspect`], and writes each returned [`Alert`] as a Suricata EVE JSON line
//! with [`Alert::eve_line`].
//!
//! Modules: [`addr`] (address/port sets and `$VARS`), [`rules`] (the parser), `flow`
//! (flow table, `flow` flags, TCP reassembly), `engine` (prefilter, verification,
//! thresholds), [`anomaly`] (scan/flood/ARP detectors), [`alert`] (alerts and EVE),
//! [`detector`] (frame decoding and the [`Detector`]).
//!
//! # Supported rule subset
//!
//! Suricata's semantics apply wherever a keyword is supported.
//!
//! | Part | Supported | Semantics |
//! |---|---|---|
//! | action | `alert`, `drop` | `drop` alerts with [`Action::Drop`]; EVE says `blocked` only when [`EveNames::ips`] is set |
//! | protocol | `tcp`, `udp`, `icmp` (v4 and v6), `ip` (any) | |
//! | addresses | `any`, IPv4/IPv6, CIDR, `!x`, nested `[..]`, `$VAR` | a list of only negations is "everything minus those"; see [`Vars`] for the defaults |
//! | ports | `any`, `N`, `a:b`, `a:`, `:b`, `!x`, nested `[..]`, `$VAR` | a packet without ports (ICMP, other IP) only matches `any` |
//! | direction | `->`, `<>` | matched against the packet's source and destination |
//! | `msg`, `sid` (required, unique in the set), `rev`, `gid` | yes | |
//! | `classtype`, `priority` | yes | built-in classification.config; unknown classtype = "Unknown Classtype", priority 3; `priority` wins |
//! | `content` | text, `\|hex\|`, escapes `\; \" \\ \:`, `!` negation | case-sensitive unless `nocase` |
//! | `nocase`, `offset`, `depth`, `startswith` | yes | window `[offset, offset+depth)`; a too small depth is raised to the content length |
//! | `distance`, `within` | yes | counted from the end of the previous content's match; later occurrences are retried (bounded backtracking) |
//! | `endswith` | yes | the match ends at the end of the inspected buffer |
//! | `dsize` | `N`, `!N`, `<N`, `>N`, `A<>B` (exclusive) | on the packet's payload length |
//! | `flow` | `to_server`/`from_client`, `to_client`/`from_server`, `established`, `not_established`, `stateless` | see below |
//! | `threshold` | `type limit\|threshold\|both`, `track by_src\|by_dst`, `count`, `seconds`, any order | one counter per (gid, sid, tracked address) |
//! | ignored | `metadata`, `reference`, `fast_pattern`, `target`, `rawbytes` | accepted, no effect |
//!
//! Anything else that is well-formed is reported in [`RuleSet::unsupported`] as a
//! [`Skipped`] (with the first unsupported keyword) and not loaded: other actions (`pass`,
//! `reject`...), app-layer protocols (`http`, `dns`, `tls`...), sticky buffers (`http.uri`,
//! `dns.query`, `tls.sni`, `file.data`...), `pcre`, `byte_test`, `byte_jump`, `isdataat`,
//! `bsize`, `flowbits`, `flow:only_stream`-style options, `threshold` types/tracks other
//! than the ones above, and every other keyword. A syntax error fails the whole
//! [`load`] with a [`LoadError`] displaying as `file:line: message`.
//!
//! # Matching model
//!
//! * **Buffers.** For TCP, contents are matched against the direction's reassembled stream
//!   from its first byte (so `offset`/`depth`/`startswith` count from the start of the
//!   connection's data in that direction, and `endswith` from the end of what arrived so
//!   far), up to `Config::stream_depth` bytes. For UDP, ICMP and other IP protocols they
//!   are matched against the packet payload (after the UDP/ICMP header). Rules with
//!   contents are only evaluated on packets that add inspectable bytes; a content that
//!   spans two TCP segments, or arrives out of order, is found when the gap fills.
//! * **Once per flow and direction.** A signature alerts at most once per flow and
//!   direction; later matches in that flow direction are not reported (thresholds count
//!   these first matches).
//! * **Flows.** The client is the sender of the first packet seen. TCP packets are
//!   `established` after the three-way handshake (the handshake-completing ACK only if it
//!   carries data); a TCP flow first seen without a SYN is picked up midstream and is
//!   established at once. UDP/ICMP/other flows are established once both directions were
//!   seen (the first reply included; ICMP errors do not count).
//! * **Not handled:** IP fragments (ignored), app-layer parsing, IP options.
//!
//! # Anomaly detectors
//!
//! Anomaly alerts have gid 1, rev 1, action [`Action::Alert`] and these reserved sids:
//!
//! | sid | msg | trigger (defaults in [`Config`]) | classtype |
//! |---|---|---|---|
//! | 9000001 ([`anomaly::SID_PORT_SCAN`]) | QINGLUAN port scan | ≥ 50 distinct destination ports (TCP SYN without ACK, or the first UDP packets of a flow) from one source within 10 s; once per source per window | attempted-recon (2) |
//! | 9000002 ([`anomaly::SID_SYN_FLOOD`]) | QINGLUAN SYN flood | ≥ 500 SYNs to one destination within one second; once per second | attempted-dos (2) |
//! | 9000003 ([`anomaly::SID_ICMP_FLOOD`]) | QINGLUAN ICMP flood | ≥ 200 ICMP echo requests from one source within one second; once per second | attempted-dos (2) |
//! | 9000004 ([`anomaly::SID_ARP_SPOOF`]) | QINGLUAN ARP spoofing | an ARP packet whose sender IPv4 is bound (see [`Detector::set_bindings`]) to another MAC; once per address and MAC per minute | bad-unknown (2) |
#![deny(missing_docs)]

pub mod addr;
pub mod alert;
pub mod anomaly;
pub mod detector;
mod engine;
mod flow;
pub mod rules;

pub use addr::{AddrSet, PortSet, SetError, Vars};
pub use alert::{format_timestamp, Alert, Direction, EveNames};
pub use detector::{Config, Detector, Stats};
pub use rules::{load, Action, LoadError, RuleSet, Skipped};
#[cfg(test)]
mod test_frames;
