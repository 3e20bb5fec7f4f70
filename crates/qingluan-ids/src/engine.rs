//! Signature matching: the prefilter, rule verification and thresholds.
//!
//! Every positive content of every rule goes into one ASCII-case-insensitive Aho-Corasick
//! automaton. For each packet it scans the bytes that became inspectable (for TCP, the
//! newly reassembled stream bytes plus the previous `longest pattern - 1` bytes, so a
//! content spanning two segments is found, and only matches ending in the new bytes
//! count, so it is found once). A rule whose content was hit, or which has no positive
//! content, is a candidate and is verified exactly: header, `flow`, `dsize`, then all
//! contents with backtracking. Content positions are relative to the start of the
//! direction's reassembled stream for TCP and to the datagram payload otherwise.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::alert::{printable, Alert};
use crate::flow::{dir_index, Flow, Observation, Packet};
use crate::rules::{Anchor, Content, Proto, Rule, ThresholdKind, Track};

/// How many content positions one rule may try before giving up (bounds backtracking).
const MAX_MATCH_STEPS: usize = 10_000;

/// Threshold counters kept before expired ones are pruned.
const MAX_THRESHOLD_ENTRIES: usize = 65_536;

/// One threshold counter: window start and matches seen in it.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: SystemTime,
    length: Duration,
    count: u32,
}

/// Compiled rules plus threshold state.
#[derive(Debug)]
pub(crate) struct Engine {
    rules: Vec<Rule>,
    prefilter: Option<AhoCorasick>,
    /// Pattern id → rules that contain that pattern.
    pattern_rules: Vec<Vec<usize>>,
    /// Longest pattern length minus one: how far back a scan must start.
    overlap: usize,
    /// Rules without a positive content: candidates for every packet.
    header_only: Vec<usize>,
    thresholds: HashMap<(u32, u32, IpAddr), Window>,
}

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut pattern_ids: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut pattern_rules: Vec<Vec<usize>> = Vec::new();
        let mut header_only = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let mut positive = rule.contents.iter().filter(|c| !c.negated).peekable();
            if positive.peek().is_none() {
                header_only.push(index);
            }
            for content in positive {
                let key = content.pattern.to_ascii_lowercase();
                let id = *pattern_ids.entry(key.clone()).or_insert_with(|| {
                    patterns.push(key);
                    pattern_rules.push(Vec::new());
                    patterns.len() - 1
                });
                if pattern_rules[id].last() != Some(&index) {
                    pattern_rules[id].push(index);
                }
            }
        }
        let overlap = patterns.iter().map(Vec::len).max().unwrap_or(1) - 1;
        let prefilter = if patterns.is_empty() {
            None
        } else {
            let built = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&patterns);
            if built.is_err() {
                // Too large to build: verify every rule on every packet instead (slow but
                // complete).
                header_only = (0..rules.len()).collect();
            }
            built.ok()
        };
        Engine {
            rules,
            prefilter,
            pattern_rules,
            overlap,
            header_only,
            thresholds: HashMap::new(),
        }
    }

    /// Matches a packet against the rules; returns the alerts that pass thresholds.
    pub fn inspect(
        &mut self,
        packet: &Packet,
        flow: &mut Flow,
        observation: Observation,
        now: SystemTime,
    ) -> Vec<Alert> {
        let index = dir_index(observation.direction);
        let (buffer, new_from) = match packet.tcp {
            Some(_) => (flow.streams[index].data(), observation.new_from),
            None => (packet.payload, 0),
        };
        let has_new_bytes = buffer.len() > new_from;
        let mut candidates = self.header_only.clone();
        if let (Some(prefilter), true) = (&self.prefilter, has_new_bytes) {
            let scan_from = new_from.saturating_sub(self.overlap);
            for hit in prefilter.find_overlapping_iter(&buffer[scan_from..]) {
                if scan_from + hit.end() > new_from {
                    candidates.extend(&self.pattern_rules[hit.pattern().as_usize()]);
                }
            }
            candidates.sort_unstable();
            candidates.dedup();
        }
        let mut alerts = Vec::new();
        for rule_index in candidates {
            let rule = &self.rules[rule_index];
            let key = (rule.gid, rule.sid);
            let contents_match = || {
                rule.contents.is_empty()
                    || (has_new_bytes && contents_match(&rule.contents, buffer))
            };
            if flow.alerted[index].contains(&key)
                || !header_matches(rule, packet)
                || !flow_matches(rule, observation)
                || !rule.dsize.is_none_or(|d| d.matches(packet.payload.len()))
                || !contents_match()
            {
                continue;
            }
            flow.alerted[index].insert(key);
            if !threshold_allows(&mut self.thresholds, rule, packet, now) {
                continue;
            }
            alerts.push(Alert {
                timestamp: now,
                gid: rule.gid,
                sid: rule.sid,
                rev: rule.rev,
                msg: rule.msg.clone(),
                category: rule.category.clone(),
                priority: rule.priority,
                action: rule.action,
                src_ip: packet.src,
                src_port: packet.src_port,
                dest_ip: packet.dst,
                dest_port: packet.dst_port,
                proto: packet.proto,
                src_mac: None,
                flow_id: Some(flow.id),
                direction: Some(observation.direction),
                payload_printable: (!packet.payload.is_empty()).then(|| printable(packet.payload)),
            });
        }
        alerts
    }
}

fn header_matches(rule: &Rule, packet: &Packet) -> bool {
    let proto = match rule.proto {
        Proto::Ip => true,
        Proto::Tcp => packet.proto == 6,
        Proto::Udp => packet.proto == 17,
        Proto::Icmp => packet.proto == 1 || packet.proto == 58,
    };
    let port_in = |set: &crate::addr::PortSet, port: Option<u16>| match port {
        Some(port) => set.contains(port),
        None => set.is_any(),
    };
    let forward = rule.src.contains(packet.src)
        && port_in(&rule.src_ports, packet.src_port)
        && rule.dst.contains(packet.dst)
        && port_in(&rule.dst_ports, packet.dst_port);
    let backward = || {
        rule.src.contains(packet.dst)
            && port_in(&rule.src_ports, packet.dst_port)
            && rule.dst.contains(packet.src)
            && port_in(&rule.dst_ports, packet.src_port)
    };
    proto && (forward || (rule.bidirectional && backward()))
}

fn flow_matches(rule: &Rule, observation: Observation) -> bool {
    rule.flow
        .direction
        .is_none_or(|d| d == observation.direction)
        && rule
            .flow
            .established
            .is_none_or(|e| e == observation.established)
}

/// Applies the rule's threshold (if any) to one match; returns whether to alert.
fn threshold_allows(
    windows: &mut HashMap<(u32, u32, IpAddr), Window>,
    rule: &Rule,
    packet: &Packet,
    now: SystemTime,
) -> bool {
    let Some(threshold) = rule.threshold else {
        return true;
    };
    let ip = match threshold.track {
        Track::BySrc => packet.src,
        Track::ByDst => packet.dst,
    };
    let expired = |w: &Window| now.duration_since(w.start).unwrap_or_default() > w.length;
    if windows.len() >= MAX_THRESHOLD_ENTRIES {
        windows.retain(|_, w| !expired(w));
        if windows.len() >= MAX_THRESHOLD_ENTRIES {
            windows.clear();
        }
    }
    let fresh = Window {
        start: now,
        length: Duration::from_secs(threshold.seconds.into()),
        count: 0,
    };
    let window = windows.entry((rule.gid, rule.sid, ip)).or_insert(fresh);
    if expired(window) {
        *window = fresh;
    }
    window.count += 1;
    match threshold.kind {
        ThresholdKind::Limit => window.count <= threshold.count,
        ThresholdKind::Both => window.count == threshold.count,
        ThresholdKind::Threshold => {
            let reached = window.count >= threshold.count;
            if reached {
                window.count = 0;
            }
            reached
        }
    }
}

/// Whether all contents match `buffer`, trying later occurrences of a content when a
/// content relative to it fails.
pub(crate) fn contents_match(contents: &[Content], buffer: &[u8]) -> bool {
    let mut steps = MAX_MATCH_STEPS;
    match_from(contents, buffer, 0, &mut steps)
}

fn match_from(contents: &[Content], buffer: &[u8], prev_end: usize, steps: &mut usize) -> bool {
    let Some((content, rest)) = contents.split_first() else {
        return true;
    };
    let later_relative = rest
        .iter()
        .any(|c| matches!(c.anchor, Anchor::Relative { .. }));
    let mut positions = occurrences(content, buffer, prev_end);
    if content.negated {
        return positions.next().is_none() && match_from(rest, buffer, prev_end, steps);
    }
    for position in positions {
        if *steps == 0 {
            return false;
        }
        *steps -= 1;
        if match_from(rest, buffer, position + content.pattern.len(), steps) {
            return true;
        }
        if !later_relative {
            return false;
        }
    }
    false
}

/// The start positions where `content` matches inside its window.
fn occurrences<'a>(
    content: &'a Content,
    buffer: &'a [u8],
    prev_end: usize,
) -> impl Iterator<Item = usize> + 'a {
    let len = content.pattern.len();
    let signed = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let (start, end) = match content.anchor {
        Anchor::Absolute { offset, depth } => {
            let start = signed(offset);
            (start, depth.map(|d| start.saturating_add(signed(d))))
        }
        Anchor::Relative { distance, within } => {
            let start = signed(prev_end).saturating_add(distance);
            (start, within.map(|w| start.saturating_add(signed(w))))
        }
    };
    let start = usize::try_from(start.max(0)).unwrap_or(usize::MAX);
    let end = end.map_or(buffer.len(), |e| {
        usize::try_from(e.max(0))
            .unwrap_or(usize::MAX)
            .min(buffer.len())
    });
    let last_start = end.checked_sub(len).filter(|&last| last >= start);
    let range = match last_start {
        Some(last) if content.endswith => (end == buffer.len()).then_some(last..last + 1),
        Some(last) => Some(start..last + 1),
        None => None,
    };
    range
        .into_iter()
        .flatten()
        .filter(move |&pos| bytes_equal(&buffer[pos..pos + len], &content.pattern, content.nocase))
}

fn bytes_equal(a: &[u8], b: &[u8], nocase: bool) -> bool {
    if nocase {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Vars;
    use crate::rules::load;

    fn contents(options: &str) -> Vec<Content> {
        let text = format!("alert tcp any any -> any any ({options} sid:1;)");
        let set = load(&[("t".to_string(), text)], &Vars::default()).unwrap();
        set.rules[0].contents.clone()
    }

    fn check(options: &str, buffer: &[u8]) -> bool {
        contents_match(&contents(options), buffer)
    }

    #[test]
    fn offset_and_depth() {
        assert!(check("content:\"bc\"; offset:1;", b"abc"));
        assert!(!check("content:\"ab\"; offset:1;", b"abc"));
        assert!(check("content:\"ab\"; depth:2;", b"abc"));
        assert!(!check("content:\"bc\"; depth:2;", b"abc"));
        assert!(check("content:\"cd\"; offset:2; depth:2;", b"abcde"));
        assert!(!check("content:\"de\"; offset:2; depth:2;", b"abcde"));
        assert!(!check("content:\"ab\"; offset:10;", b"abc"));
    }

    #[test]
    fn distance_and_within() {
        assert!(check("content:\"a\"; content:\"c\"; distance:1;", b"abc"));
        assert!(!check("content:\"a\"; content:\"b\"; distance:1;", b"abc"));
        assert!(check("content:\"a\"; content:\"b\"; within:1;", b"abc"));
        assert!(!check("content:\"a\"; content:\"c\"; within:1;", b"abc"));
        assert!(check(
            "content:\"b\"; content:\"a\"; distance:-2; within:1;",
            b"abc"
        ));
        assert!(check(
            "content:\"x\"; content:\"y\"; distance:1; within:1;",
            b"x.y"
        ));
        assert!(!check(
            "content:\"x\"; content:\"y\"; distance:1; within:1;",
            b"x..y"
        ));
    }

    #[test]
    fn backtracking_tries_later_occurrences() {
        assert!(check("content:\"a\"; content:\"b\"; within:1;", b"a-a-ab"));
        assert!(check(
            "content:\"GET\"; content:\"/x\"; distance:1; within:2; content:\"H\"; distance:0;",
            b"GET /y GET /x H"
        ));
        assert!(!check(
            "content:\"a\"; content:\"b\"; within:1;",
            b"a-a-a-b"
        ));
    }

    #[test]
    fn nocase_negation_startswith_endswith() {
        assert!(check("content:\"GeT\"; nocase;", b"get /"));
        assert!(!check("content:\"GeT\";", b"get /"));
        assert!(check("content:!\"evil\";", b"good"));
        assert!(!check("content:!\"evil\";", b"so evil"));
        assert!(check("content:\"a\"; content:!\"b\"; within:1;", b"acb"));
        assert!(!check("content:\"a\"; content:!\"b\"; within:1;", b"abc"));
        assert!(check("content:\"ab\"; startswith;", b"abc"));
        assert!(!check("content:\"bc\"; startswith;", b"abc"));
        assert!(check("content:\"bc\"; endswith;", b"abc"));
        assert!(!check("content:\"ab\"; endswith;", b"abc"));
        assert!(check("content:\"ab\"; startswith; endswith;", b"ab"));
        assert!(check(
            "content:\"x\"; content:\"c\"; distance:0; endswith;",
            b"xcac"
        ));
    }

    /// Sends one matching UDP datagram per new flow (distinct source ports) at each time in
    /// `times`, from `src` to 10.0.0.2; returns at which of them an alert came out.
    fn alerting(rule: &str, sends: &[(f64, [u8; 4])]) -> Vec<usize> {
        use crate::test_frames::{at, detector, udp, SERVER};
        let mut d = detector(rule);
        let mut port = 1000;
        let mut alerted = Vec::new();
        for (i, &(secs, src)) in sends.iter().enumerate() {
            port += 1;
            if !d
                .inspect(&udp(src, port, SERVER, 53, b"hit"), at(secs))
                .is_empty()
            {
                alerted.push(i + 1);
            }
        }
        alerted
    }

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 3];

    fn rule(threshold: &str) -> String {
        format!("alert udp any any -> any any (content:\"hit\"; threshold:{threshold}; sid:1;)")
    }

    #[test]
    fn threshold_limit() {
        let sends = [
            (0.0, A),
            (1.0, A),
            (2.0, A),
            (3.0, B),
            (9.0, A),
            (10.5, A),
            (11.0, A),
        ];
        let limit = rule("type limit, track by_src, count 2, seconds 10");
        assert_eq!(alerting(&limit, &sends), vec![1, 2, 4, 6, 7]);
        let by_dst = rule("track by_dst,type limit,seconds 10,count 2");
        assert_eq!(alerting(&by_dst, &sends), vec![1, 2, 6, 7]);
    }

    #[test]
    fn threshold_threshold() {
        let sends = [
            (0.0, A),
            (1.0, A),
            (2.0, A),
            (3.0, A),
            (4.0, A),
            (10.5, A),
            (11.0, A),
        ];
        let every_second = rule("type threshold, track by_src, count 2, seconds 10");
        assert_eq!(alerting(&every_second, &sends), vec![2, 4, 7]);
    }

    #[test]
    fn threshold_both() {
        let sends = [(0.0, A), (1.0, A), (2.0, A), (3.0, A), (10.5, A), (11.0, A)];
        let both = rule("type both, track by_src, count 2, seconds 10");
        assert_eq!(alerting(&both, &sends), vec![2, 6]);
    }

    #[test]
    fn alerts_once_per_flow_and_direction() {
        use crate::test_frames::{at, detector, udp, CLIENT, SERVER};
        let mut d = detector("alert udp any any -> any any (content:\"x\"; sid:1;)");
        let query = udp(CLIENT, 1, SERVER, 2, b"x");
        let reply = udp(SERVER, 2, CLIENT, 1, b"x");
        assert_eq!(d.inspect(&query, at(0.0)).len(), 1);
        assert_eq!(d.inspect(&query, at(0.1)).len(), 0);
        assert_eq!(d.inspect(&reply, at(0.2)).len(), 1);
        assert_eq!(d.inspect(&reply, at(0.3)).len(), 0);
    }
}
