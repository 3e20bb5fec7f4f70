//! Address and port sets of a rule header, and the `$VARS` they may refer to.
//!
//! Both kinds of set share one grammar: `any`, a single atom (an address or CIDR for
//! addresses; a port or range `a:b`, `a:`, `:b` for ports), `!x` negation, `[a,b,...]`
//! lists that may nest, and `$NAME` variables. A list matches when any of its positive
//! members matches (or it has none) and none of its negated members matches, so a list of
//! only negations means "everything minus those".

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// How deep variables may refer to other variables (guards against `A: $B`, `B: $A`).
const MAX_VAR_DEPTH: usize = 16;

/// An address or port set could not be parsed; the text says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SetError(String);

/// Rule variables (`$HOME_NET`, `$HTTP_PORTS`, ...): name without `$` → set text.
///
/// The defaults are Suricata's, with one deliberate difference: `EXTERNAL_NET` is `any`
/// instead of `!$HOME_NET`. qingluan watches container-to-container traffic, which lies
/// entirely inside `HOME_NET`, so a rule written for `$EXTERNAL_NET -> $HOME_NET` would
/// never match with Suricata's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vars {
    values: HashMap<String, String>,
}

impl Default for Vars {
    fn default() -> Self {
        let defaults = [
            ("HOME_NET", "[192.168.0.0/16,10.0.0.0/8,172.16.0.0/12]"),
            ("EXTERNAL_NET", "any"),
            ("HTTP_SERVERS", "$HOME_NET"),
            ("SMTP_SERVERS", "$HOME_NET"),
            ("SQL_SERVERS", "$HOME_NET"),
            ("DNS_SERVERS", "$HOME_NET"),
            ("TELNET_SERVERS", "$HOME_NET"),
            ("HTTP_PORTS", "80"),
            ("ORACLE_PORTS", "1521"),
            ("SSH_PORTS", "22"),
            ("SHELLCODE_PORTS", "!80"),
            ("FILE_DATA_PORTS", "[$HTTP_PORTS,110,143]"),
            ("FTP_PORTS", "21"),
        ];
        Vars {
            values: defaults
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        }
    }
}

impl Vars {
    /// The defaults, with each entry of `overrides` (name without `$` → set text) replacing
    /// or adding a variable.
    pub fn with_overrides(overrides: &HashMap<String, String>) -> Self {
        let mut vars = Vars::default();
        for (name, value) in overrides {
            vars.set(name, value);
        }
        vars
    }

    /// Sets variable `name` (without `$`) to the set text `value`.
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_string(), value.to_string());
    }

    /// The text of variable `name` (without `$`), if defined.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// One parsed set expression over atoms of type `A`.
#[derive(Debug, Clone, PartialEq)]
enum Node<A> {
    Any,
    Atom(A),
    Not(Box<Node<A>>),
    List(Vec<Node<A>>),
}

impl<A> Node<A> {
    fn matches(&self, atom_matches: &impl Fn(&A) -> bool) -> bool {
        match self {
            Node::Any => true,
            Node::Atom(atom) => atom_matches(atom),
            Node::Not(inner) => !inner.matches(atom_matches),
            Node::List(items) => {
                let mut has_positive = false;
                let mut positive_hit = false;
                for item in items {
                    match item {
                        Node::Not(inner) => {
                            if inner.matches(atom_matches) {
                                return false;
                            }
                        }
                        other => {
                            has_positive = true;
                            positive_hit = positive_hit || other.matches(atom_matches);
                        }
                    }
                }
                positive_hit || !has_positive
            }
        }
    }
}

/// Parses `text` into a set, resolving `$VARS` from `vars` and atoms with `atom`.
fn parse_node<A>(
    text: &str,
    vars: &Vars,
    depth: usize,
    atom: &impl Fn(&str) -> Result<A, SetError>,
) -> Result<Node<A>, SetError> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('!') {
        let inner = parse_node(rest, vars, depth, atom)?;
        if matches!(inner, Node::Any) {
            return Err(SetError("`!any` matches nothing".to_string()));
        }
        return Ok(Node::Not(Box::new(inner)));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let inner = rest
            .strip_suffix(']')
            .ok_or_else(|| SetError(format!("unbalanced brackets in `{text}`")))?;
        let items = split_top_level(inner)
            .ok_or_else(|| SetError(format!("unbalanced brackets in `{text}`")))?;
        let nodes = items
            .into_iter()
            .map(|item| parse_node(item, vars, depth, atom))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Node::List(nodes));
    }
    if let Some(name) = text.strip_prefix('$') {
        if depth >= MAX_VAR_DEPTH {
            return Err(SetError(format!("variable `${name}` refers to itself")));
        }
        let value = vars
            .get(name)
            .ok_or_else(|| SetError(format!("undefined variable `${name}`")))?;
        return parse_node(value, vars, depth + 1, atom);
    }
    if text.is_empty() {
        return Err(SetError("empty address or port".to_string()));
    }
    if text.contains([']', ',']) {
        return Err(SetError(format!("unbalanced brackets in `{text}`")));
    }
    if text == "any" {
        return Ok(Node::Any);
    }
    atom(text).map(Node::Atom)
}

/// Splits a list body at the commas that are not inside nested brackets; `None` if the
/// brackets are unbalanced.
fn split_top_level(text: &str) -> Option<Vec<&str>> {
    let mut items = Vec::new();
    let mut level = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '[' => level += 1,
            ']' => level = level.checked_sub(1)?,
            ',' if level == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if level != 0 {
        return None;
    }
    items.push(&text[start..]);
    Some(items)
}

/// A set of IP addresses from a rule header.
#[derive(Debug, Clone, PartialEq)]
pub struct AddrSet(Node<IpNet>);

impl AddrSet {
    /// Parses an address field such as `any`, `10.0.0.0/8`, `![1.2.3.4,$HOME_NET]`.
    pub fn parse(text: &str, vars: &Vars) -> Result<Self, SetError> {
        parse_node(text, vars, 0, &parse_net).map(AddrSet)
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.matches(&|net: &IpNet| net.contains(&ip))
    }
}

fn parse_net(text: &str) -> Result<IpNet, SetError> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| SetError(format!("invalid address `{text}`")))
}

/// A set of TCP/UDP ports from a rule header.
#[derive(Debug, Clone, PartialEq)]
pub struct PortSet(Node<(u16, u16)>);

impl PortSet {
    /// Parses a port field such as `any`, `80`, `1024:`, `[80:100,!99]`, `$HTTP_PORTS`.
    pub fn parse(text: &str, vars: &Vars) -> Result<Self, SetError> {
        parse_node(text, vars, 0, &parse_range).map(PortSet)
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.0
            .matches(&|&(low, high): &(u16, u16)| (low..=high).contains(&port))
    }

    /// Whether the set is `any` (the only port set a packet without ports matches).
    pub fn is_any(&self) -> bool {
        matches!(self.0, Node::Any)
    }
}

fn parse_range(text: &str) -> Result<(u16, u16), SetError> {
    let port = |s: &str, default: u16| -> Result<u16, SetError> {
        if s.is_empty() {
            return Ok(default);
        }
        s.parse::<u16>()
            .map_err(|_| SetError(format!("invalid port `{s}`")))
    };
    match text.split_once(':') {
        None => port(text, 0).map(|p| (p, p)),
        Some((low, high)) => {
            if low.is_empty() && high.is_empty() {
                return Err(SetError("invalid port range `:`".to_string()));
            }
            let (low, high) = (port(low, 0)?, port(high, u16::MAX)?);
            if low > high {
                return Err(SetError(format!("port range `{text}` is reversed")));
            }
            Ok((low, high))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> AddrSet {
        AddrSet::parse(text, &Vars::default()).unwrap()
    }

    fn ports(text: &str) -> PortSet {
        PortSet::parse(text, &Vars::default()).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn single_addresses_and_cidrs() {
        assert!(addr("any").contains(ip("1.2.3.4")));
        assert!(addr("any").contains(ip("::1")));
        assert!(addr("1.2.3.4").contains(ip("1.2.3.4")));
        assert!(!addr("1.2.3.4").contains(ip("1.2.3.5")));
        assert!(addr("10.0.0.0/8").contains(ip("10.9.8.7")));
        assert!(addr("10.1.2.3/8").contains(ip("10.9.8.7")));
        assert!(addr("fd00::/8").contains(ip("fd12::1")));
        assert!(!addr("fd00::/8").contains(ip("10.0.0.1")));
        assert!(addr("2001:db8::1").contains(ip("2001:db8::1")));
    }

    #[test]
    fn negation_and_nested_lists() {
        assert!(!addr("!10.0.0.0/8").contains(ip("10.0.0.1")));
        assert!(addr("!10.0.0.0/8").contains(ip("11.0.0.1")));
        let set = addr("[10.0.0.0/24,!10.0.0.5]");
        assert!(set.contains(ip("10.0.0.4")));
        assert!(!set.contains(ip("10.0.0.5")));
        assert!(!set.contains(ip("10.0.1.4")));
        let only_negations = addr("[!1.1.1.1, !1.1.1.2]");
        assert!(only_negations.contains(ip("8.8.8.8")));
        assert!(!only_negations.contains(ip("1.1.1.2")));
        let nested = addr("[10.0.0.0/8,![10.1.0.0/16,!10.1.2.0/24]]");
        assert!(nested.contains(ip("10.2.0.1")));
        assert!(!nested.contains(ip("10.1.3.1")));
        assert!(nested.contains(ip("10.1.2.1")));
        assert!(!addr("![1.1.1.1,1.1.1.2]").contains(ip("1.1.1.1")));
    }

    #[test]
    fn variables_resolve_recursively() {
        let home = addr("$HOME_NET");
        assert!(home.contains(ip("172.17.0.2")));
        assert!(!home.contains(ip("8.8.8.8")));
        assert!(addr("$EXTERNAL_NET").contains(ip("10.0.0.1")));
        assert!(addr("$HTTP_SERVERS").contains(ip("192.168.1.1")));
        let mut vars = Vars::default();
        vars.set("HOME_NET", "[172.18.0.0/16]");
        let set = AddrSet::parse("[$HOME_NET,!172.18.0.1]", &vars).unwrap();
        assert!(set.contains(ip("172.18.0.2")));
        assert!(!set.contains(ip("172.18.0.1")));
        assert!(!set.contains(ip("192.168.0.1")));
    }

    #[test]
    fn overrides_replace_defaults() {
        let overrides = HashMap::from([("HTTP_PORTS".to_string(), "[80,8080]".to_string())]);
        let vars = Vars::with_overrides(&overrides);
        let set = PortSet::parse("$FILE_DATA_PORTS", &vars).unwrap();
        assert!(set.contains(8080));
        assert!(set.contains(143));
        assert!(!set.contains(81));
    }

    #[test]
    fn port_forms() {
        assert!(ports("any").contains(0) && ports("any").is_any());
        assert!(ports("80").contains(80) && !ports("80").contains(81));
        assert!(ports("1024:").contains(65535) && !ports("1024:").contains(1023));
        assert!(ports(":1023").contains(0) && !ports(":1023").contains(1024));
        assert!(ports("10:20").contains(15) && !ports("10:20").contains(21));
        let list = ports("[80:100,!99]");
        assert!(list.contains(98) && !list.contains(99));
        let nested = ports("[1:80,![2,4]]");
        assert!(nested.contains(3) && !nested.contains(4));
        assert!(ports("$SHELLCODE_PORTS").contains(81));
        assert!(!ports("$SHELLCODE_PORTS").contains(80));
        assert!(ports("[!22]").contains(23));
    }

    #[test]
    fn errors() {
        let vars = Vars::default();
        let err = |text: &str| AddrSet::parse(text, &vars).unwrap_err().to_string();
        assert_eq!(err("!any"), "`!any` matches nothing");
        assert_eq!(err("[1.1.1.1"), "unbalanced brackets in `[1.1.1.1`");
        assert_eq!(err("[1.1.1.1]]"), "unbalanced brackets in `[1.1.1.1]]`");
        assert_eq!(err("$NOPE"), "undefined variable `$NOPE`");
        assert_eq!(err("1.2.3.256"), "invalid address `1.2.3.256`");
        assert_eq!(err("[1.1.1.1,]"), "empty address or port");
        let mut looping = Vars::default();
        looping.set("A", "$B");
        looping.set("B", "$A");
        assert_eq!(
            AddrSet::parse("$A", &looping).unwrap_err().to_string(),
            "variable `$A` refers to itself"
        );
        let perr = |text: &str| PortSet::parse(text, &vars).unwrap_err().to_string();
        assert_eq!(perr("20:10"), "port range `20:10` is reversed");
        assert_eq!(perr("65536"), "invalid port `65536`");
        assert_eq!(perr(":"), "invalid port range `:`");
    }
}
