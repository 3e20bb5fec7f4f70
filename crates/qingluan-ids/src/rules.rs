//! The rule parser: turns Suricata rule files into a [`RuleSet`].
//!
//! A syntax error anywhere fails the whole load with a [`LoadError`]. A well-formed rule
//! that needs something outside the supported subset (see the crate docs) is not loaded
//! and is listed in [`RuleSet::unsupported`] instead.

use std::collections::HashMap;

use crate::addr::{AddrSet, PortSet, Vars};
use crate::alert::Direction;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Raise an alert.
    Alert,
    /// Raise an alert and ask the caller to block (qingluan quarantines the container).
    Drop,
}

/// The protocol field of a supported rule header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Ip,
    Tcp,
    Udp,
    Icmp,
}

/// One `content` with its modifiers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Content {
    pub pattern: Vec<u8>,
    pub negated: bool,
    pub nocase: bool,
    pub anchor: Anchor,
    pub endswith: bool,
}

/// Where a content may match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Anchor {
    /// From `offset`, ending within `offset + depth` when `depth` is set.
    Absolute { offset: usize, depth: Option<usize> },
    /// From the previous content's end plus `distance`, ending within `within` bytes of that.
    Relative {
        distance: i64,
        within: Option<usize>,
    },
}

/// A `dsize` test on the packet payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dsize {
    Equal(usize),
    NotEqual(usize),
    Less(usize),
    Greater(usize),
    /// Strictly between the two bounds.
    Between(usize, usize),
}

impl Dsize {
    pub fn matches(self, len: usize) -> bool {
        match self {
            Dsize::Equal(n) => len == n,
            Dsize::NotEqual(n) => len != n,
            Dsize::Less(n) => len < n,
            Dsize::Greater(n) => len > n,
            Dsize::Between(low, high) => low < len && len < high,
        }
    }
}

/// The `flow` keyword: required direction and state, `None` for "any".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FlowMatch {
    pub direction: Option<Direction>,
    pub established: Option<bool>,
}

/// The `threshold` keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Threshold {
    pub kind: ThresholdKind,
    pub track: Track,
    pub count: u32,
    pub seconds: u32,
}

/// `threshold: type ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThresholdKind {
    Limit,
    Threshold,
    Both,
}

/// `threshold: track ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Track {
    BySrc,
    ByDst,
}

/// A loaded, supported rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub action: Action,
    pub proto: Proto,
    pub src: AddrSet,
    pub src_ports: PortSet,
    pub dst: AddrSet,
    pub dst_ports: PortSet,
    pub bidirectional: bool,
    pub msg: String,
    pub sid: u32,
    pub rev: u32,
    pub gid: u32,
    pub category: String,
    pub priority: u8,
    pub contents: Vec<Content>,
    pub dsize: Option<Dsize>,
    pub flow: FlowMatch,
    pub threshold: Option<Threshold>,
}

/// A rule that was well-formed but not loaded because it needs something unsupported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file name passed to [`load`].
    pub file: String,
    /// The line the rule starts on (1-based).
    pub line: usize,
    /// The rule's sid.
    pub sid: u32,
    /// The first unsupported keyword, or `action <name>` / `protocol <name>` for an
    /// unsupported header field.
    pub keyword: String,
}

/// The result of [`load`]: the supported rules and the list of skipped ones.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    /// Rules that were not loaded because they use something outside the subset.
    pub unsupported: Vec<Skipped>,
}

impl RuleSet {
    /// How many rules were loaded.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule was loaded.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// A syntax error in a rule file; displays as `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct LoadError {
    /// The file name passed to [`load`].
    pub file: String,
    /// The line the faulty rule starts on (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Suricata's classification.config: name, description (EVE `category`), priority.
const CLASSTYPES: &[(&str, &str, u8)] = &[
    ("not-suspicious", "Not Suspicious Traffic", 3),
    ("unknown", "Unknown Traffic", 3),
    ("bad-unknown", "Potentially Bad Traffic", 2),
    ("attempted-recon", "Attempted Information Leak", 2),
    ("successful-recon-limited", "Information Leak", 2),
    (
        "successful-recon-largescale",
        "Large Scale Information Leak",
        2,
    ),
    ("attempted-dos", "Attempted Denial of Service", 2),
    ("successful-dos", "Denial of Service", 2),
    ("attempted-user", "Attempted User Privilege Gain", 1),
    ("unsuccessful-user", "Unsuccessful User Privilege Gain", 1),
    ("successful-user", "Successful User Privilege Gain", 1),
    (
        "attempted-admin",
        "Attempted Administrator Privilege Gain",
        1,
    ),
    (
        "successful-admin",
        "Successful Administrator Privilege Gain",
        1,
    ),
    ("rpc-portmap-decode", "Decode of an RPC Query", 2),
    ("shellcode-detect", "Executable code was detected", 1),
    ("string-detect", "A suspicious string was detected", 3),
    (
        "suspicious-filename-detect",
        "A suspicious filename was detected",
        2,
    ),
    (
        "suspicious-login",
        "An attempted login using a suspicious username was detected",
        2,
    ),
    ("system-call-detect", "A system call was detected", 2),
    ("tcp-connection", "A TCP connection was detected", 4),
    ("trojan-activity", "A Network Trojan was detected", 1),
    (
        "unusual-client-port-connection",
        "A client was using an unusual port",
        2,
    ),
    ("network-scan", "Detection of a Network Scan", 3),
    (
        "denial-of-service",
        "Detection of a Denial of Service Attack",
        2,
    ),
    (
        "non-standard-protocol",
        "Detection of a non-standard protocol or event",
        2,
    ),
    (
        "protocol-command-decode",
        "Generic Protocol Command Decode",
        3,
    ),
    (
        "web-application-activity",
        "access to a potentially vulnerable web application",
        2,
    ),
    ("web-application-attack", "Web Application Attack", 1),
    ("misc-activity", "Misc activity", 3),
    ("misc-attack", "Misc Attack", 2),
    ("icmp-event", "Generic ICMP event", 3),
    (
        "inappropriate-content",
        "Inappropriate Content was Detected",
        1,
    ),
    (
        "policy-violation",
        "Potential Corporate Privacy Violation",
        1,
    ),
    (
        "default-login-attempt",
        "Attempt to login by a default username and password",
        2,
    ),
    (
        "targeted-activity",
        "Targeted Malicious Activity was Detected",
        1,
    ),
    ("exploit-kit", "Exploit Kit Activity Detected", 1),
    (
        "external-ip-check",
        "Device Retrieving External IP Address Detected",
        2,
    ),
    ("domain-c2", "Domain Observed Used for C2 Detected", 1),
    ("pup-activity", "Possibly Unwanted Program Detected", 2),
    (
        "credential-theft",
        "Successful Credential Theft Detected",
        1,
    ),
    (
        "social-engineering",
        "Possible Social Engineering Attempted",
        2,
    ),
    ("coin-mining", "Crypto Currency Mining Activity Detected", 2),
    (
        "command-and-control",
        "Malware Command and Control Activity Detected",
        1,
    ),
];

/// The EVE category and priority of a classtype; unknown names give
/// `("Unknown Classtype", 3)` as in Suricata's non-strict mode.
pub(crate) fn classtype(name: &str) -> (&'static str, u8) {
    CLASSTYPES
        .iter()
        .find(|(known, _, _)| *known == name)
        .map(|&(_, description, priority)| (description, priority))
        .unwrap_or(("Unknown Classtype", 3))
}

/// Actions Suricata knows but this crate does not support.
const OTHER_ACTIONS: &[&str] = &["pass", "reject", "rejectsrc", "rejectdst", "rejectboth"];

/// Priority without classtype and `priority` (Suricata's `DETECT_DEFAULT_PRIO`).
const DEFAULT_PRIORITY: u8 = 3;

/// Parses rule files: each is (name used in messages, text).
pub fn load(files: &[(String, String)], vars: &Vars) -> Result<RuleSet, LoadError> {
    let mut set = RuleSet::default();
    let mut first_seen: HashMap<u32, (String, usize)> = HashMap::new();
    for (file, text) in files {
        for (line, rule_text) in rule_lines(text) {
            let error = |message: String| LoadError {
                file: file.clone(),
                line,
                message,
            };
            let parsed = parse_rule(&rule_text, vars).map_err(error)?;
            let sid = parsed.sid();
            if let Some((first_file, first_line)) = first_seen.get(&sid) {
                return Err(error(format!(
                    "duplicate sid {sid} (first defined at {first_file}:{first_line})"
                )));
            }
            first_seen.insert(sid, (file.clone(), line));
            match parsed {
                Parsed::Rule(rule) => set.rules.push(*rule),
                Parsed::Unsupported { sid, keyword } => set.unsupported.push(Skipped {
                    file: file.clone(),
                    line,
                    sid,
                    keyword,
                }),
            }
        }
    }
    Ok(set)
}

/// The rules of a file as (starting line, text), with comments and blank lines skipped and
/// `\` continuations joined.
fn rule_lines(text: &str) -> Vec<(usize, String)> {
    let mut rules = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let (start, mut rule) = match pending.take() {
            Some(started) => started,
            None => {
                if line.is_empty() || line.starts_with(['#', ' ', '\t', '\r']) {
                    continue;
                }
                (index + 1, String::new())
            }
        };
        let trimmed = line.trim_end();
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                rule.push_str(head);
                pending = Some((start, rule));
            }
            None => {
                rule.push_str(trimmed);
                rules.push((start, rule));
            }
        }
    }
    rules.extend(pending);
    rules
}

/// One parsed rule line.
enum Parsed {
    Rule(Box<Rule>),
    Unsupported { sid: u32, keyword: String },
}

impl Parsed {
    fn sid(&self) -> u32 {
        match self {
            Parsed::Rule(rule) => rule.sid,
            Parsed::Unsupported { sid, .. } => *sid,
        }
    }
}

/// Collects the options of one rule while they are parsed.
#[derive(Default)]
struct Options {
    msg: Option<String>,
    sid: Option<u32>,
    rev: Option<u32>,
    gid: Option<u32>,
    classtype: Option<(&'static str, u8)>,
    priority: Option<u8>,
    contents: Vec<Content>,
    dsize: Option<Dsize>,
    flow: Option<FlowMatch>,
    threshold: Option<Threshold>,
    unsupported: Option<String>,
}

fn parse_rule(text: &str, vars: &Vars) -> Result<Parsed, String> {
    let open = text
        .find('(')
        .ok_or("rule options must be enclosed in parentheses")?;
    let options_text = text[open + 1..]
        .trim_end()
        .strip_suffix(')')
        .ok_or("rule options must be enclosed in parentheses")?;
    let fields = split_header(&text[..open])?;
    let [action, proto, src, src_ports, direction, dst, dst_ports] = fields.as_slice() else {
        return Err(format!(
            "expected 7 header fields (action proto src_addr src_port direction dst_addr dst_port), found {}",
            fields.len()
        ));
    };
    let mut unsupported = None;
    let action = match *action {
        "alert" => Action::Alert,
        "drop" => Action::Drop,
        other if OTHER_ACTIONS.contains(&other) => {
            unsupported = Some(format!("action {other}"));
            Action::Alert
        }
        other => return Err(format!("unknown action `{other}`")),
    };
    let proto = match *proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        "ip" => Proto::Ip,
        other if is_keyword(other) => {
            unsupported.get_or_insert(format!("protocol {other}"));
            Proto::Ip
        }
        other => return Err(format!("invalid protocol `{other}`")),
    };
    let bidirectional = match *direction {
        "->" => false,
        "<>" => true,
        other => {
            return Err(format!(
                "invalid direction `{other}`, expected `->` or `<>`"
            ))
        }
    };
    let addr = |text: &str, what: &str| {
        AddrSet::parse(text, vars).map_err(|e| format!("invalid {what} address: {e}"))
    };
    let port = |text: &str, what: &str| {
        PortSet::parse(text, vars).map_err(|e| format!("invalid {what} port: {e}"))
    };
    let src = addr(src, "source")?;
    let src_ports = port(src_ports, "source")?;
    let dst = addr(dst, "destination")?;
    let dst_ports = port(dst_ports, "destination")?;

    let mut options = Options {
        unsupported,
        ..Options::default()
    };
    for option in split_options(options_text)? {
        let (name, value) = match option.split_once(':') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (option.trim(), None),
        };
        if !is_keyword(name) {
            return Err(format!("invalid option name `{name}`"));
        }
        parse_option(&mut options, name, value)?;
    }

    let sid = options.sid.ok_or("rule has no `sid`")?;
    if let Some(keyword) = options.unsupported {
        return Ok(Parsed::Unsupported { sid, keyword });
    }
    let (category, class_priority) = options.classtype.unwrap_or(("", DEFAULT_PRIORITY));
    Ok(Parsed::Rule(Box::new(Rule {
        action,
        proto,
        src,
        src_ports,
        dst,
        dst_ports,
        bidirectional,
        msg: options.msg.unwrap_or_default(),
        sid,
        rev: options.rev.unwrap_or(0),
        gid: options.gid.unwrap_or(1),
        category: category.to_string(),
        priority: options.priority.unwrap_or(class_priority),
        contents: options.contents,
        dsize: options.dsize,
        flow: options.flow.unwrap_or_default(),
        threshold: options.threshold,
    })))
}

/// Whether `text` looks like a keyword or protocol name.
fn is_keyword(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Splits the header on blanks, keeping `[...]` lists (which may hold spaces) together.
fn split_header(header: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let mut level = 0usize;
    let mut start = None;
    for (i, c) in header.char_indices() {
        match c {
            '[' => level += 1,
            ']' => {
                level = level
                    .checked_sub(1)
                    .ok_or("unbalanced brackets in rule header")?
            }
            c if c.is_whitespace() && level == 0 => {
                if let Some(s) = start.take() {
                    fields.push(&header[s..i]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(i);
    }
    if level != 0 {
        return Err("unbalanced brackets in rule header".to_string());
    }
    if let Some(s) = start {
        fields.push(&header[s..]);
    }
    Ok(fields)
}

/// Splits the option text at each `;` that is not escaped by `\`.
fn split_options(text: &str) -> Result<Vec<&str>, String> {
    let mut options = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ';' => {
                options.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        return Err(format!("option `{rest}` is not terminated by `;`"));
    }
    Ok(options)
}

fn parse_option(options: &mut Options, name: &str, value: Option<&str>) -> Result<(), String> {
    let needs_value = || value.ok_or_else(|| format!("`{name}` needs a value"));
    match name {
        "msg" => {
            if options.msg.is_some() {
                return Err("`msg` given twice".to_string());
            }
            options.msg = Some(parse_msg(unquote(name, needs_value()?)?)?);
        }
        "content" => {
            let value = needs_value()?;
            let (negated, quoted) = match value.strip_prefix('!') {
                Some(rest) => (true, rest.trim_start()),
                None => (false, value),
            };
            options.contents.push(Content {
                pattern: parse_content(unquote(name, quoted)?)?,
                negated,
                nocase: false,
                anchor: Anchor::Absolute {
                    offset: 0,
                    depth: None,
                },
                endswith: false,
            });
        }
        "nocase" | "startswith" | "endswith" | "offset" | "depth" | "distance" | "within" => {
            let trust_order = options.unsupported.is_none();
            let index = options
                .contents
                .len()
                .checked_sub(1)
                .ok_or_else(|| format!("`{name}` must follow a content"))?;
            let content = &mut options.contents[index];
            apply_modifier(content, name, value, index > 0 || !trust_order)?;
        }
        "dsize" => options.dsize = Some(parse_dsize(needs_value()?)?),
        "flow" => {
            if options.flow.is_some() {
                return Err("`flow` given twice".to_string());
            }
            match parse_flow(needs_value()?)? {
                Ok(flow) => options.flow = Some(flow),
                Err(keyword) => {
                    options.unsupported.get_or_insert(keyword);
                }
            }
        }
        "sid" => {
            let sid = parse_number::<u32>(name, needs_value()?)?;
            if sid == 0 {
                return Err("`sid` must be > 0".to_string());
            }
            if options.sid.replace(sid).is_some() {
                return Err("`sid` given twice".to_string());
            }
        }
        "rev" => {
            let rev = parse_number::<u32>(name, needs_value()?)?;
            if rev == 0 {
                return Err("`rev` must be > 0".to_string());
            }
            if options.rev.replace(rev).is_some() {
                return Err("`rev` given twice".to_string());
            }
        }
        "gid" => options.gid = Some(parse_number(name, needs_value()?)?),
        "classtype" => options.classtype = Some(classtype(needs_value()?)),
        "priority" => {
            let priority = parse_number::<u8>(name, needs_value()?)?;
            if priority == 0 {
                return Err("`priority` must be between 1 and 255".to_string());
            }
            options.priority = Some(priority);
        }
        "threshold" => match parse_threshold(needs_value()?)? {
            Ok(threshold) => options.threshold = Some(threshold),
            Err(keyword) => {
                options.unsupported.get_or_insert(keyword);
            }
        },
        "metadata" | "reference" | "fast_pattern" | "target" | "rawbytes" => {}
        other => {
            options.unsupported.get_or_insert(other.to_string());
        }
    }
    Ok(())
}

/// Applies a content modifier; `has_previous` tells whether a relative modifier has a
/// content to count from.
fn apply_modifier(
    content: &mut Content,
    name: &str,
    value: Option<&str>,
    has_previous: bool,
) -> Result<(), String> {
    let len = content.pattern.len();
    let number = || -> Result<usize, String> {
        let value = value.ok_or_else(|| format!("`{name}` needs a value"))?;
        parse_number(name, value)
    };
    let mixed = || format!("`{name}` cannot be combined with the content's other modifiers");
    match (name, &mut content.anchor) {
        ("nocase", _) => content.nocase = true,
        ("endswith", _) => content.endswith = true,
        ("startswith", Anchor::Absolute { offset: 0, depth }) if depth.is_none() => {
            *depth = Some(len)
        }
        ("offset", Anchor::Absolute { offset, .. }) if *offset == 0 => *offset = number()?,
        ("depth", Anchor::Absolute { depth, .. }) if depth.is_none() => {
            *depth = Some(number()?.max(len))
        }
        ("distance" | "within", _) if !has_previous => {
            return Err(format!(
                "`{name}` needs a content before the one it modifies"
            ))
        }
        ("distance" | "within", Anchor::Absolute { offset: 0, depth }) if depth.is_none() => {
            content.anchor = Anchor::Relative {
                distance: 0,
                within: None,
            };
            return apply_modifier(content, name, value, has_previous);
        }
        ("distance", Anchor::Relative { distance, .. }) if *distance == 0 => {
            let value = value.ok_or("`distance` needs a value")?;
            *distance = parse_number(name, value)?;
        }
        ("within", Anchor::Relative { within, .. }) if within.is_none() => {
            let w = number()?;
            if w < len {
                return Err(format!(
                    "`within:{w}` is shorter than its content ({len} bytes)"
                ));
            }
            *within = Some(w);
        }
        _ => return Err(mixed()),
    }
    Ok(())
}

fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("invalid number `{value}` for `{name}`"))
}

/// Strips the double quotes around a value.
fn unquote<'a>(name: &str, value: &'a str) -> Result<&'a str, String> {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|_| value.len() >= 2)
        .ok_or_else(|| format!("`{name}` value must be enclosed in double quotes"))
}

/// `msg` text: a backslash escapes any character.
fn parse_msg(text: &str) -> Result<String, String> {
    let mut msg = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => msg.extend(chars.next()),
            '"' => return Err("unescaped `\"` in msg".to_string()),
            c => msg.push(c),
        }
    }
    Ok(msg)
}

/// `content` bytes: text, `|hex|` blocks, and the escapes `\; \" \\ \:`.
fn parse_content(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut in_hex = false;
    let mut high_nibble: Option<u8> = None;
    let mut input = text.bytes();
    while let Some(b) = input.next() {
        if in_hex {
            match b {
                b'|' | b' ' | b',' if high_nibble.is_some() => {
                    return Err("hex byte in content needs two digits".to_string())
                }
                b'|' => in_hex = false,
                b' ' | b',' => {}
                _ => {
                    let digit = (b as char)
                        .to_digit(16)
                        .ok_or_else(|| format!("invalid hex digit `{}` in content", b as char))?
                        as u8;
                    match high_nibble.take() {
                        Some(high) => bytes.push(high << 4 | digit),
                        None => high_nibble = Some(digit),
                    }
                }
            }
            continue;
        }
        match b {
            b'|' => in_hex = true,
            b'\\' => match input.next() {
                Some(escaped @ (b';' | b'"' | b'\\' | b':')) => bytes.push(escaped),
                Some(other) => {
                    return Err(format!("invalid escape `\\{}` in content", other as char))
                }
                None => return Err("content ends with a lone `\\`".to_string()),
            },
            b'"' => return Err("unescaped `\"` in content".to_string()),
            b => bytes.push(b),
        }
    }
    if in_hex {
        return Err("unterminated `|` hex block in content".to_string());
    }
    if bytes.is_empty() {
        return Err("empty content".to_string());
    }
    Ok(bytes)
}

fn parse_dsize(value: &str) -> Result<Dsize, String> {
    let invalid = || format!("invalid dsize `{value}`");
    let number = |text: &str| text.trim().parse::<usize>().map_err(|_| invalid());
    let value = value.trim();
    if let Some((low, high)) = value.split_once("<>") {
        let (low, high) = (number(low)?, number(high)?);
        if low >= high {
            return Err(invalid());
        }
        return Ok(Dsize::Between(low, high));
    }
    if let Some(rest) = value.strip_prefix('<') {
        return Ok(Dsize::Less(number(rest)?));
    }
    if let Some(rest) = value.strip_prefix('>') {
        return Ok(Dsize::Greater(number(rest)?));
    }
    if let Some(rest) = value.strip_prefix('!') {
        return Ok(Dsize::NotEqual(number(rest)?));
    }
    Ok(Dsize::Equal(number(value)?))
}

/// Parses `flow`; `Ok(Err(keyword))` for a valid but unsupported option.
fn parse_flow(value: &str) -> Result<Result<FlowMatch, String>, String> {
    let mut flow = FlowMatch::default();
    let mut stateless = false;
    for option in value.split(',') {
        let option = option.trim().to_ascii_lowercase();
        let (direction, established) = match option.as_str() {
            "to_server" | "from_client" => (Some(Direction::ToServer), None),
            "to_client" | "from_server" => (Some(Direction::ToClient), None),
            "established" => (None, Some(true)),
            "not_established" => (None, Some(false)),
            "stateless" => {
                stateless = true;
                (None, None)
            }
            "only_stream" | "no_stream" | "only_frag" | "no_frag" => {
                return Ok(Err(format!("flow:{option}")))
            }
            other => return Err(format!("invalid flow option `{other}`")),
        };
        if let Some(direction) = direction {
            if flow.direction.replace(direction).is_some() {
                return Err(format!("conflicting flow directions in `{value}`"));
            }
        }
        if let Some(established) = established {
            if flow.established.replace(established).is_some() {
                return Err(format!("conflicting flow states in `{value}`"));
            }
        }
    }
    if stateless && flow.established.is_some() {
        return Err(format!("conflicting flow states in `{value}`"));
    }
    Ok(Ok(flow))
}

/// Parses `threshold`; `Ok(Err(keyword))` for a valid but unsupported type or track.
fn parse_threshold(value: &str) -> Result<Result<Threshold, String>, String> {
    let (mut kind, mut track, mut count, mut seconds) = (None, None, None, None);
    for part in value.split(',') {
        let part = part.trim();
        let (key, arg) = part
            .split_once(char::is_whitespace)
            .map(|(k, a)| (k, a.trim()))
            .ok_or_else(|| format!("invalid threshold option `{part}`"))?;
        match key {
            "type" => {
                kind = Some(match arg {
                    "limit" => ThresholdKind::Limit,
                    "threshold" => ThresholdKind::Threshold,
                    "both" => ThresholdKind::Both,
                    "backoff" => return Ok(Err("threshold:type backoff".to_string())),
                    other => return Err(format!("invalid threshold type `{other}`")),
                })
            }
            "track" => {
                track = Some(match arg {
                    "by_src" => Track::BySrc,
                    "by_dst" => Track::ByDst,
                    "by_both" | "by_rule" | "by_flow" => {
                        return Ok(Err(format!("threshold:track {arg}")))
                    }
                    other => return Err(format!("invalid threshold track `{other}`")),
                })
            }
            "count" => count = Some(parse_number::<u32>("threshold count", arg)?),
            "seconds" => seconds = Some(parse_number::<u32>("threshold seconds", arg)?),
            other => return Err(format!("invalid threshold option `{other}`")),
        }
    }
    match (kind, track, count, seconds) {
        (Some(kind), Some(track), Some(count), Some(seconds)) if count > 0 => Ok(Ok(Threshold {
            kind,
            track,
            count,
            seconds,
        })),
        _ => Err(format!(
            "threshold needs type, track, count > 0 and seconds, got `{value}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_one(text: &str) -> Result<RuleSet, LoadError> {
        load(
            &[("t.rules".to_string(), text.to_string())],
            &Vars::default(),
        )
    }

    fn rule(text: &str) -> Rule {
        let set = load_one(text).unwrap();
        assert_eq!(set.unsupported, vec![], "{text}");
        set.rules.into_iter().next().unwrap()
    }

    fn error(text: &str) -> String {
        load_one(text).unwrap_err().to_string()
    }

    #[test]
    fn header_forms() {
        let r = rule("alert tcp $HOME_NET any -> 10.0.0.1 80 (msg:\"x\"; sid:1;)");
        assert_eq!(
            (r.action, r.proto, r.bidirectional),
            (Action::Alert, Proto::Tcp, false)
        );
        assert!(r.src.contains("10.1.1.1".parse().unwrap()));
        assert!(r.dst_ports.contains(80) && !r.dst_ports.contains(81));
        let r = rule("drop udp any [53, 5353] <> any any (sid:2;)");
        assert_eq!(
            (r.action, r.proto, r.bidirectional),
            (Action::Drop, Proto::Udp, true)
        );
        assert!(r.src_ports.contains(5353));
        assert_eq!(
            rule("alert icmp any any -> any any (sid:3;)").proto,
            Proto::Icmp
        );
        assert_eq!(
            rule("alert ip any any -> any any (sid:4;)").proto,
            Proto::Ip
        );
        let r =
            rule("alert tcp [10.0.0.0/8,!10.0.0.1] ![1:1023] -> !$HOME_NET $HTTP_PORTS (sid:5;)");
        assert!(!r.src.contains("10.0.0.1".parse().unwrap()));
        assert!(r.src_ports.contains(1024) && !r.src_ports.contains(80));
        assert!(r.dst.contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn meta_options() {
        let r = rule(
            "alert tcp any any -> any any (msg:\"a \\\"q\\\" \\; b\"; sid:7; rev:3; gid:2; \
             classtype:trojan-activity; metadata:created_at 2020; reference:url,x.org; target:dest_ip;)",
        );
        assert_eq!(r.msg, "a \"q\" ; b");
        assert_eq!((r.sid, r.rev, r.gid), (7, 3, 2));
        assert_eq!(
            (r.category.as_str(), r.priority),
            ("A Network Trojan was detected", 1)
        );
        let r =
            rule("alert tcp any any -> any any (priority:4; classtype:trojan-activity; sid:8;)");
        assert_eq!(r.priority, 4);
        let r = rule("alert tcp any any -> any any (classtype:no-such-class; sid:9;)");
        assert_eq!((r.category.as_str(), r.priority), ("Unknown Classtype", 3));
        let r = rule("alert tcp any any -> any any (sid:10;)");
        assert_eq!(
            (r.category.as_str(), r.priority, r.rev, r.gid),
            ("", 3, 0, 1)
        );
    }

    #[test]
    fn content_escapes_and_hex() {
        let r = rule(
            "alert tcp any any -> any any (content:\"a|0D 0a|b\\;\\\"\\\\\\:\"; content:!\"|41,42|\"; nocase; sid:1;)",
        );
        assert_eq!(r.contents[0].pattern, b"a\r\nb;\"\\:");
        assert!(!r.contents[0].negated && !r.contents[0].nocase);
        assert_eq!(r.contents[1].pattern, b"AB");
        assert!(r.contents[1].negated && r.contents[1].nocase);
    }

    #[test]
    fn content_modifiers() {
        let r = rule(
            "alert tcp any any -> any any (content:\"ab\"; offset:2; depth:1; content:\"cd\"; distance:-1; \
             within:5; content:\"e\"; startswith; content:\"f\"; endswith; content:\"g\"; within:3; sid:1;)",
        );
        let anchors: Vec<_> = r.contents.iter().map(|c| c.anchor).collect();
        assert_eq!(
            anchors,
            vec![
                Anchor::Absolute {
                    offset: 2,
                    depth: Some(2)
                },
                Anchor::Relative {
                    distance: -1,
                    within: Some(5)
                },
                Anchor::Absolute {
                    offset: 0,
                    depth: Some(1)
                },
                Anchor::Absolute {
                    offset: 0,
                    depth: None
                },
                Anchor::Relative {
                    distance: 0,
                    within: Some(3)
                },
            ]
        );
        assert!(r.contents[3].endswith);
    }

    #[test]
    fn flow_dsize_threshold() {
        let r = rule(
            "alert tcp any any -> any any (flow:Established,to_server; dsize:>10; \
             threshold: count 3,seconds 60 , type both, track by_dst; sid:1;)",
        );
        assert_eq!(r.flow.direction, Some(Direction::ToServer));
        assert_eq!(r.flow.established, Some(true));
        assert_eq!(r.dsize, Some(Dsize::Greater(10)));
        assert_eq!(
            r.threshold,
            Some(Threshold {
                kind: ThresholdKind::Both,
                track: Track::ByDst,
                count: 3,
                seconds: 60
            })
        );
        let r =
            rule("alert udp any any -> any any (flow:stateless,from_server; dsize:2<>5; sid:2;)");
        assert_eq!(
            r.flow,
            FlowMatch {
                direction: Some(Direction::ToClient),
                established: None
            }
        );
        assert!(r.dsize.unwrap().matches(3) && !r.dsize.unwrap().matches(5));
        assert_eq!(
            rule("alert udp any any -> any any (dsize:!4; sid:3;)").dsize,
            Some(Dsize::NotEqual(4))
        );
        assert_eq!(
            rule("alert udp any any -> any any (dsize:<4; sid:4;)").dsize,
            Some(Dsize::Less(4))
        );
        assert_eq!(
            rule("alert udp any any -> any any (dsize:4; sid:5;)").dsize,
            Some(Dsize::Equal(4))
        );
    }

    #[test]
    fn files_comments_and_continuations() {
        let text = "# alert tcp any any -> any any (sid:1;)\n\n  alert tcp (broken\n\
                    alert tcp any any -> any any \\\n  (msg:\"multi\"; \\\n sid:2;)\n\
                    alert udp any any -> any any (sid:3;)\r\n";
        let set = load_one(text).unwrap();
        let sids: Vec<_> = set.rules.iter().map(|r| r.sid).collect();
        assert_eq!(sids, vec![2, 3]);
        assert_eq!(set.rules[0].msg, "multi");
        assert_eq!(set.len(), 2);
        let err = load_one(
            "alert tcp any any -> any any (sid:2;)\n\nalert tcp any any -> any any \\\n (sid:x;)",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "t.rules:3: invalid number `x` for `sid`");
    }

    #[test]
    fn unsupported_rules_are_reported() {
        let text = "alert tcp any any -> any any (msg:\"ok\"; sid:1;)\n\
                    alert http any any -> any any (msg:\"h\"; http.uri; content:\"/x\"; sid:2;)\n\
                    alert tcp any any -> any any (content:\"a\"; pcre:\"/a\\;b/\"; sid:3;)\n\
                    alert tcp any any -> any any (dns.query; content:\"a\"; sid:4;)\n\
                    pass tcp any any -> any any (sid:5;)\n\
                    alert tcp any any -> any any (content:\"a\"; byte_test:1,>,2,0; flowbits:set,x; sid:6;)\n\
                    alert tcp any any -> any any (flow:established,only_stream; sid:7;)\n\
                    alert tcp any any -> any any (isdataat:1; content:\"a\"; distance:0; sid:8;)\n\
                    alert tcp any any -> any any (threshold:type backoff,track by_flow,count 1,multiplier 2; sid:9;)\n";
        let set = load_one(text).unwrap();
        assert_eq!(set.len(), 1);
        let skipped: Vec<_> = set
            .unsupported
            .iter()
            .map(|s| (s.file.as_str(), s.line, s.sid, s.keyword.as_str()))
            .collect();
        assert_eq!(
            skipped,
            vec![
                ("t.rules", 2, 2, "protocol http"),
                ("t.rules", 3, 3, "pcre"),
                ("t.rules", 4, 4, "dns.query"),
                ("t.rules", 5, 5, "action pass"),
                ("t.rules", 6, 6, "byte_test"),
                ("t.rules", 7, 7, "flow:only_stream"),
                ("t.rules", 8, 8, "isdataat"),
                ("t.rules", 9, 9, "threshold:type backoff"),
            ]
        );
    }

    #[test]
    fn syntax_errors() {
        let h = "alert tcp any any -> any any";
        let cases = [
            ("alert tcp any any -> any any sid:1;", "rule options must be enclosed in parentheses"),
            ("alert tcp any any -> any any (sid:1;", "rule options must be enclosed in parentheses"),
            ("alert tcp any any any any (sid:1;)", "expected 7 header fields (action proto src_addr src_port direction dst_addr dst_port), found 6"),
            ("alrt tcp any any -> any any (sid:1;)", "unknown action `alrt`"),
            ("alert t/cp any any -> any any (sid:1;)", "invalid protocol `t/cp`"),
            ("alert tcp any any <- any any (sid:1;)", "invalid direction `<-`, expected `->` or `<>`"),
            ("alert tcp [1.1.1.1 any -> any any (sid:1;)", "unbalanced brackets in rule header"),
            ("alert tcp 1.1.1.x any -> any any (sid:1;)", "invalid source address: invalid address `1.1.1.x`"),
            ("alert tcp any any -> $NOPE any (sid:1;)", "invalid destination address: undefined variable `$NOPE`"),
            ("alert tcp any 99999 -> any any (sid:1;)", "invalid source port: invalid port `99999`"),
            ("alert tcp any any -> any 9:1 (sid:1;)", "invalid destination port: port range `9:1` is reversed"),
        ];
        for (text, message) in cases {
            assert_eq!(error(text), format!("t.rules:1: {message}"), "{text}");
        }
        let option_cases = [
            ("msg:\"x\";", "rule has no `sid`"),
            ("sid:0;", "`sid` must be > 0"),
            ("sid:1; sid:2;", "`sid` given twice"),
            ("sid:abc;", "invalid number `abc` for `sid`"),
            ("msg:\"x\"; sid:1", "option `sid:1` is not terminated by `;`"),
            ("msg:\"x; sid:1;", "`msg` value must be enclosed in double quotes"),
            ("msg:x; sid:1;", "`msg` value must be enclosed in double quotes"),
            ("content:\"a\"b\"; sid:1;", "unescaped `\"` in content"),
            ("content:\"a\\nb\"; sid:1;", "invalid escape `\\n` in content"),
            ("content:\"|4|\"; sid:1;", "hex byte in content needs two digits"),
            ("content:\"|4g|\"; sid:1;", "invalid hex digit `g` in content"),
            ("content:\"|41\"; sid:1;", "unterminated `|` hex block in content"),
            ("content:\"\"; sid:1;", "empty content"),
            ("nocase; sid:1;", "`nocase` must follow a content"),
            ("content:\"a\"; distance:1; sid:1;", "`distance` needs a content before the one it modifies"),
            ("content:\"a\"; content:\"bcd\"; within:2; sid:1;", "`within:2` is shorter than its content (3 bytes)"),
            ("content:\"a\"; content:\"b\"; offset:1; distance:1; sid:1;", "`distance` cannot be combined with the content's other modifiers"),
            ("content:\"a\"; depth:x; sid:1;", "invalid number `x` for `depth`"),
            ("content:\"a\"; depth:1; depth:2; sid:1;", "`depth` cannot be combined with the content's other modifiers"),
            ("dsize:5<>2; sid:1;", "invalid dsize `5<>2`"),
            ("flow:to_server,to_client; sid:1;", "conflicting flow directions in `to_server,to_client`"),
            ("flow:established,stateless; sid:1;", "conflicting flow states in `established,stateless`"),
            ("flow:sideways; sid:1;", "invalid flow option `sideways`"),
            ("threshold:type limit, track by_src, count 1; sid:1;", "threshold needs type, track, count > 0 and seconds, got `type limit, track by_src, count 1`"),
            ("threshold:type sometimes, track by_src, count 1, seconds 1; sid:1;", "invalid threshold type `sometimes`"),
            ("priority:0; sid:1;", "`priority` must be between 1 and 255"),
            ("m$g:\"x\"; sid:1;", "invalid option name `m$g`"),
            ("content; sid:1;", "`content` needs a value"),
        ];
        for (options, message) in option_cases {
            let text = format!("{h} ({options})");
            assert_eq!(error(&text), format!("t.rules:1: {message}"), "{text}");
        }
    }

    #[test]
    fn duplicate_sids_across_files() {
        let files = [
            (
                "a.rules".to_string(),
                "alert tcp any any -> any any (sid:1;)".to_string(),
            ),
            (
                "b.rules".to_string(),
                "\nalert http any any -> any any (sid:1;)".to_string(),
            ),
        ];
        let err = load(&files, &Vars::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "b.rules:2: duplicate sid 1 (first defined at a.rules:1)"
        );
        assert_eq!((err.file.as_str(), err.line), ("b.rules", 2));
    }
}
