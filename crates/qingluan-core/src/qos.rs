//! Traffic scheduling (QoS): rates, bursts and priority classes as users write them, where
//! each limit of an endpoint comes from, and what the dataplane makes of them.
//!
//! Limits come from five places, the first that sets a value wins, value by value:
//! `qingluan qos set` on the container (or endpoint), `--driver-opt qos.*` at connect time,
//! the container's `qingluan.qos.*` labels, `qingluan qos set --network`, and the network's
//! `--opt qos.*`. A source is validated as a whole when it is given ([`spec`]); a burst
//! needs a rate in the same source.
//!
//! The dataplane (see `pipeline/qos.rs` and `docs/qos.md`): the egress limit (container →
//! network) is an OpenFlow meter on the endpoint's traffic in the `QOS` stage, whose bucket
//! is never smaller than half a second of the rate (a policer with a smaller bucket collapses
//! TCP on this datapath, measured); the ingress limit (network → container) is an HTB class
//! on the endpoint's OVS port (OVS `linux-htb` QoS). A priority class marks the endpoint's
//! IPv4 and IPv6 packets with its DSCP value.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use qingluan_dataplane::netlink::{IngressShaping, Select, ShapedClass, ShapedGroup};
use qingluan_dataplane::ovsdb::{PortQos, QosKind, QueueSpec};
use serde::{Deserialize, Serialize};

use crate::model::{Endpoint, Network};

/// Errors in QoS options, labels and commands; the text reaches the user.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QosError {
    /// A `qos.` key we do not know.
    #[error("unknown QoS option {key:?} (valid: {valid})")]
    UnknownOption {
        /// The key as given.
        key: String,
        /// The keys that are valid here.
        valid: String,
    },
    /// A rate that does not parse.
    #[error(
        "invalid rate {value:?} for {key}: give a positive number with one of the units \
         bit, kbit, mbit, gbit (e.g. 100mbit), at most 100gbit"
    )]
    BadRate {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
    },
    /// A burst that does not parse.
    #[error(
        "invalid burst {value:?} for {key}: give a positive size with one of the units \
         b, kb, mb (e.g. 256kb), at most 1gb"
    )]
    BadBurst {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
    },
    /// A burst without a rate in the same source.
    #[error("{0} needs a rate in the same place (an egress or ingress rate)")]
    BurstWithoutRate(String),
    /// A priority name that does not exist.
    #[error("unknown priority {0:?} (priorities: high, normal, low)")]
    BadPriority(String),
    /// Nothing to set.
    #[error("nothing to set: give at least one of {0}")]
    Empty(&'static str),
    /// An aggregate limit given for one endpoint.
    #[error(
        "{0} limits a whole network: give it with docker network create --opt \
         qos.aggregate.rate or qingluan qos set --network N --aggregate-rate"
    )]
    AggregateOfNetwork(String),
}

/// A rate in bit/s, written like tc writes it: `100mbit`, `1gbit`, `512kbit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

/// Units of rates (decimal, like tc).
const RATE_UNITS: [(&str, u64); 4] = [
    ("gbit", 1_000_000_000),
    ("mbit", 1_000_000),
    ("kbit", 1_000),
    ("bit", 1),
];

/// The largest rate accepted: 100 Gbit/s.
const MAX_RATE: u64 = 100_000_000_000;

/// Units of sizes (binary, like tc).
const SIZE_UNITS: [(&str, u64); 4] = [("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10), ("b", 1)];

/// The largest burst accepted: 1 GiB.
const MAX_BURST: u64 = 1 << 30;

/// `number` (digits with at most one `.`) times `scale`, if exact enough and positive.
fn scaled(number: &str, scale: u64) -> Option<u64> {
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value = number.parse::<f64>().ok()? * scale as f64;
    (value >= 1.0 && value <= u64::MAX as f64).then_some(value.round() as u64)
}

/// Splits `s` into a number and one of `units`, the longest unit that ends it.
fn with_unit(s: &str, units: &[(&str, u64)]) -> Option<u64> {
    let s = s.to_ascii_lowercase();
    units
        .iter()
        .find_map(|(u, scale)| scaled(s.strip_suffix(u)?, *scale))
}

impl Rate {
    /// Parses a rate given for `key`.
    pub fn parse(key: &str, value: &str) -> Result<Rate, QosError> {
        with_unit(value, &RATE_UNITS)
            .filter(|r| *r <= MAX_RATE)
            .map(Rate)
            .ok_or_else(|| QosError::BadRate {
                key: key.to_string(),
                value: value.to_string(),
            })
    }
}

/// The largest unit that writes `n` exactly.
fn write_units(f: &mut fmt::Formatter<'_>, n: u64, units: &[(&str, u64)]) -> fmt::Result {
    let (unit, scale) = units
        .iter()
        .find(|(_, s)| n.is_multiple_of(*s))
        .copied()
        .unwrap_or(units[units.len() - 1]);
    write!(f, "{}{unit}", n / scale)
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_units(f, self.0, &RATE_UNITS)
    }
}

/// A size in bytes, written like tc writes it: `256kb`, `1mb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

impl Bytes {
    /// Parses a burst given for `key`.
    pub fn parse(key: &str, value: &str) -> Result<Bytes, QosError> {
        with_unit(value, &SIZE_UNITS)
            .filter(|b| *b <= MAX_BURST)
            .map(Bytes)
            .ok_or_else(|| QosError::BadBurst {
                key: key.to_string(),
                value: value.to_string(),
            })
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_units(f, self.0, &SIZE_UNITS)
    }
}

macro_rules! as_string {
    ($t:ty, $parse:expr) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

as_string!(Rate, |s: &str| Rate::parse("rate", s));
as_string!(Bytes, |s: &str| Bytes::parse("burst", s));

/// A priority class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Latency-sensitive traffic.
    High,
    /// Everything else (the default).
    Normal,
    /// Bulk traffic.
    Low,
}

impl Priority {
    /// Every class, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The class's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = QosError;
    fn from_str(s: &str) -> Result<Self, QosError> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| QosError::BadPriority(s.to_string()))
    }
}

/// What one source says about an endpoint's (or a network's) QoS; unset values fall through
/// to the next source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QosSpec {
    /// Container → network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Rate>,
    /// Network → container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Rate>,
    /// Bucket size of both directions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<Bytes>,
    /// Priority class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// A network's total of what leaves the host through its gateway, shared by the
    /// priority classes (networks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Rate>,
}

/// The QoS option names, after their prefix.
pub const KEYS: [&str; 5] = [
    "egress.rate",
    "ingress.rate",
    "burst",
    "priority",
    "aggregate.rate",
];

impl QosSpec {
    /// Whether this source sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == QosSpec::default()
    }

    /// Checks what must hold within one source: a burst needs a rate; `what` names the
    /// burst as the user wrote it.
    pub fn check(&self, what: &str) -> Result<(), QosError> {
        if self.burst.is_some() && self.egress.is_none() && self.ingress.is_none() {
            return Err(QosError::BurstWithoutRate(what.to_string()));
        }
        Ok(())
    }

    /// `other` over `self`: the values `other` sets replace these.
    pub fn merged(&self, other: &QosSpec) -> QosSpec {
        QosSpec {
            egress: other.egress.or(self.egress),
            ingress: other.ingress.or(self.ingress),
            burst: other.burst.or(self.burst),
            priority: other.priority.or(self.priority),
            aggregate: other.aggregate.or(self.aggregate),
        }
    }

    /// Refuses an aggregate limit in a source that is not a network's; `what` names it.
    pub fn no_aggregate(&self, what: &str) -> Result<(), QosError> {
        match self.aggregate {
            Some(_) => Err(QosError::AggregateOfNetwork(what.to_string())),
            None => Ok(()),
        }
    }
}

/// The QoS of the options in `opts` whose keys start with `prefix` (`qos.` for driver
/// options, `qingluan.qos.` for labels); other keys are not looked at. A key with the prefix
/// that is not one of [`KEYS`] is an error.
pub fn spec(opts: &BTreeMap<String, String>, prefix: &str) -> Result<QosSpec, QosError> {
    let mut s = QosSpec::default();
    for (key, value) in opts {
        let Some(name) = key.strip_prefix(prefix) else {
            continue;
        };
        match name {
            "egress.rate" => s.egress = Some(Rate::parse(key, value)?),
            "ingress.rate" => s.ingress = Some(Rate::parse(key, value)?),
            "burst" => s.burst = Some(Bytes::parse(key, value)?),
            "priority" => s.priority = Some(value.parse()?),
            "aggregate.rate" => s.aggregate = Some(Rate::parse(key, value)?),
            _ => {
                return Err(QosError::UnknownOption {
                    key: key.clone(),
                    valid: KEYS.map(|k| format!("{prefix}{k}")).join(", "),
                })
            }
        }
    }
    s.check(&format!("{prefix}burst"))?;
    Ok(s)
}

/// Where an effective value came from, in precedence order (first wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `qingluan qos set` on the container or endpoint.
    Set,
    /// `--driver-opt qos.*` at connect time.
    DriverOpt,
    /// The container's `qingluan.qos.*` labels.
    Label,
    /// `qingluan qos set --network`.
    NetworkSet,
    /// The network's `--opt qos.*`.
    Network,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Set => "set",
            Source::DriverOpt => "driver-opt",
            Source::Label => "label",
            Source::NetworkSet => "network-set",
            Source::Network => "network",
        })
    }
}

/// A value and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Its source.
    pub source: Source,
}

/// An endpoint's QoS after precedence, value by value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    /// Container → network.
    pub egress: Option<Sourced<Rate>>,
    /// Network → container.
    pub ingress: Option<Sourced<Rate>>,
    /// Bucket size.
    pub burst: Option<Sourced<Bytes>>,
    /// Priority class; `None`: normal, unmarked.
    pub priority: Option<Sourced<Priority>>,
}

/// The effective QoS of `layers`, given in precedence order.
pub fn effective(layers: &[(Source, &QosSpec)]) -> Effective {
    fn first<T: Copy>(
        layers: &[(Source, &QosSpec)],
        get: impl Fn(&QosSpec) -> Option<T>,
    ) -> Option<Sourced<T>> {
        layers.iter().find_map(|(source, s)| {
            get(s).map(|value| Sourced {
                value,
                source: *source,
            })
        })
    }
    Effective {
        egress: first(layers, |s| s.egress),
        ingress: first(layers, |s| s.ingress),
        burst: first(layers, |s| s.burst),
        priority: first(layers, |s| s.priority),
    }
}

/// What `qingluan qos set` applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The network's defaults.
    Network,
    /// A container, whatever its endpoint (it outlives restarts).
    Container(String),
    /// One endpoint (a container the daemon could not name).
    Endpoint(String),
}

/// A `qingluan qos set` override, kept until `qingluan qos rm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosOverride {
    /// [`override_id`] of its network and target.
    pub id: String,
    /// What it sets.
    pub spec: QosSpec,
}

/// The ID of the override of `target` on network `network_id`: `<network>/network`,
/// `<network>/container/<id>` or `<network>/endpoint/<id>`.
pub fn override_id(network_id: &str, target: &Target) -> String {
    match target {
        Target::Network => format!("{network_id}/network"),
        Target::Container(id) => format!("{network_id}/container/{id}"),
        Target::Endpoint(id) => format!("{network_id}/endpoint/{id}"),
    }
}

/// The QoS the labels of `ep`'s container ask for (empty when it has none, or before its
/// container is known).
pub fn labels(ep: &Endpoint) -> Result<QosSpec, QosError> {
    let Some(c) = &ep.container else {
        return Ok(QosSpec::default());
    };
    let s = spec(&c.labels, LABEL_PREFIX)?;
    s.no_aggregate(&format!("{LABEL_PREFIX}aggregate.rate"))?;
    Ok(s)
}

/// The aggregate limit of `net`: `qingluan qos set --network` over its `--opt`.
pub fn aggregate_of(net: &Network, overrides: &BTreeMap<String, QosSpec>) -> Option<Rate> {
    overrides
        .get(&override_id(&net.id, &Target::Network))
        .and_then(|s| s.aggregate)
        .or(net.qos.aggregate)
}

/// The prefix of QoS container labels.
pub const LABEL_PREFIX: &str = "qingluan.qos.";

/// The effective QoS of `ep` on `net`, given every override by ID; labels that do not
/// parse count as none (`qingluan qos ls` shows why).
pub fn of_endpoint(
    net: &Network,
    ep: &Endpoint,
    overrides: &BTreeMap<String, QosSpec>,
) -> Effective {
    let get = |t: &Target| overrides.get(&override_id(&net.id, t)).cloned();
    let by_container = ep
        .container
        .as_ref()
        .and_then(|c| get(&Target::Container(c.id.clone())))
        .unwrap_or_default();
    let set = by_container.merged(&get(&Target::Endpoint(ep.id.clone())).unwrap_or_default());
    let label = labels(ep).unwrap_or_default();
    let network_set = get(&Target::Network).unwrap_or_default();
    effective(&[
        (Source::Set, &set),
        (Source::DriverOpt, &ep.qos),
        (Source::Label, &label),
        (Source::NetworkSet, &network_set),
        (Source::Network, &net.qos),
    ])
}

/// QoS settings (`[qos]` in the config).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QosSettings {
    /// DSCP value each priority class marks its packets with.
    pub dscp: ClassValues,
    /// Share (percent) of an aggregate limit each priority class is guaranteed.
    pub shares: ClassValues,
}

/// One value per priority class.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassValues {
    /// `high`.
    pub high: u8,
    /// `normal`.
    pub normal: u8,
    /// `low`.
    pub low: u8,
}

impl ClassValues {
    /// The value of class `p`.
    pub fn of(&self, p: Priority) -> u8 {
        match p {
            Priority::High => self.high,
            Priority::Normal => self.normal,
            Priority::Low => self.low,
        }
    }
}

impl Default for QosSettings {
    fn default() -> Self {
        QosSettings {
            dscp: ClassValues {
                high: 34,
                normal: 0,
                low: 8,
            },
            shares: ClassValues {
                high: 60,
                normal: 30,
                low: 10,
            },
        }
    }
}

impl QosSettings {
    /// Checks the settings; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        for p in Priority::ALL {
            if self.dscp.of(p) > 63 {
                return Err(format!(
                    "qos.dscp.{p} = {} is not a DSCP value (0 to 63)",
                    self.dscp.of(p)
                ));
            }
            if self.shares.of(p) == 0 {
                return Err(format!("qos.shares.{p} must be 1 (percent) or more"));
            }
        }
        let (d, s) = (self.dscp, self.shares);
        if d.high == d.normal || d.high == d.low || d.normal == d.low {
            return Err("qos.dscp values must differ: the classes are told apart by them".into());
        }
        let total = u32::from(s.high) + u32::from(s.normal) + u32::from(s.low);
        if total > 100 {
            return Err(format!(
                "qos.shares add up to {total} %: the guaranteed shares cannot exceed 100 %"
            ));
        }
        Ok(())
    }

    /// What `net`'s aggregate limit `rate` (leaving through `iface`) is in the kernel.
    /// What `net`'s aggregate limit `rate` is where it leaves through its gateway `iface`
    /// (what the gateway receives: the network's own frames).
    pub fn aggregate(
        &self,
        prefix: &str,
        iface: &str,
        net: &Network,
        rate: Rate,
    ) -> IngressShaping {
        let (total, classes) = self.classes(rate, u64::from(net.mtu) + 14, net.mtu);
        IngressShaping {
            iface: iface.to_string(),
            ifb: ifb_of(prefix, iface),
            rate: total,
            classes,
        }
    }

    /// What `net`'s aggregate limit `rate` is on the uplink it leaves through: its packets
    /// picked out by `select`; each frame carries `overhead` bytes more than the network's
    /// own (the tunnel's headers).
    pub fn uplink_group(
        &self,
        select: Select,
        net: &Network,
        overhead: u32,
        rate: Rate,
    ) -> ShapedGroup {
        let frame = u64::from(net.mtu + overhead) + 14;
        let (total, classes) = self.classes(rate, frame, net.mtu);
        ShapedGroup {
            select,
            rate: total,
            classes,
        }
    }

    /// The total in frames of `frame` bytes for `rate` of TCP payload in packets of `mtu`,
    /// and the classes sharing it: normal first (it takes the unmarked), high, low.
    fn classes(&self, rate: Rate, frame: u64, mtu: u32) -> (u64, Vec<ShapedClass>) {
        let payload = u64::from(mtu.saturating_sub(TCP_IP_HEADERS)).max(1);
        let total = rate.0.saturating_mul(frame) / payload;
        let class = |p: Priority, prio| ShapedClass {
            min_rate: total * u64::from(self.shares.of(p)) / 100,
            prio,
            dscp: self.dscp.of(p),
        };
        (
            total,
            vec![
                class(Priority::Normal, 1),
                class(Priority::High, 0),
                class(Priority::Low, 2),
            ],
        )
    }
}

/// The smallest meter bucket, in seconds of the rate: a policer whose bucket cannot hold
/// TCP's bursts (with userspace TSO one packet is up to 64 KB) collapses TCP.
const METER_BUCKET_SECS: f64 = 0.5;

/// The IFB device of gateway `iface` (`<prefix>b<id>` → `<prefix>q<id>`).
pub fn ifb_of(prefix: &str, iface: &str) -> String {
    format!("{prefix}q{}", &iface[(prefix.len() + 1).min(iface.len())..])
}

/// The gateway of an IFB device (the inverse of [`ifb_of`]).
pub fn gateway_of_ifb(prefix: &str, ifb: &str) -> String {
    format!("{prefix}b{}", &ifb[(prefix.len() + 1).min(ifb.len())..])
}

/// IPv4 and TCP headers with timestamps, in bytes: a frame of MTU `m` carries `m` − 52 of
/// what applications send (what iperf3 reports and users mean by a rate).
const TCP_IP_HEADERS: u32 = 52;

/// What the dataplane does for one endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shaping {
    /// The egress meter: rate and bucket in kbit/s and kbit.
    pub meter: Option<(u32, u32)>,
    /// The DSCP mark of its IPv4 and IPv6 packets.
    pub dscp: Option<u8>,
    /// The HTB shaping of its port (ingress).
    pub port: Option<PortQos>,
}

impl Effective {
    /// What the dataplane does to apply this, with `settings`.
    ///
    /// Meters and HTB classes count frames, rates count TCP payload: the HTB class is set
    /// a full frame (`mtu` + 14) per payload (`mtu` − 52) above the rate; so is the meter
    /// when the endpoint sends frames of its MTU (`segments`: no TSO, as on vxlan), while
    /// with TSO it sees 64 KB packets whose headers do not count.
    pub fn shaping(&self, settings: &QosSettings, mtu: u32, segments: bool) -> Shaping {
        let frames = |rate: u64| {
            let payload = u64::from(mtu.saturating_sub(TCP_IP_HEADERS)).max(1);
            rate.saturating_mul(u64::from(mtu) + 14) / payload
        };
        let burst_bits = self.burst.map(|b| b.value.0.saturating_mul(8));
        let meter = self.egress.map(|r| {
            let rate = if segments {
                frames(r.value.0)
            } else {
                r.value.0
            };
            let floor = (rate as f64 * METER_BUCKET_SECS) as u64;
            let bucket = burst_bits.unwrap_or(0).max(floor);
            (kbit(rate), kbit(bucket))
        });
        let port = self.ingress.map(|r| {
            let rate = frames(r.value.0);
            PortQos {
                kind: QosKind::Htb,
                max_rate: rate,
                queues: vec![QueueSpec {
                    max_rate: rate,
                    burst: burst_bits,
                    ..Default::default()
                }],
            }
        });
        Shaping {
            meter,
            dscp: self.priority.map(|p| settings.dscp.of(p.value)),
            port,
        }
    }
}

/// `bits` in kbit, at least 1, at most what a meter holds.
fn kbit(bits: u64) -> u32 {
    u32::try_from(bits.div_ceil(1000).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rates_and_sizes_parse_like_tc() {
        assert_eq!(Rate::parse("k", "100mbit"), Ok(Rate(100_000_000)));
        assert_eq!(Rate::parse("k", "1.5Mbit"), Ok(Rate(1_500_000)));
        assert_eq!(Rate::parse("k", "64kbit"), Ok(Rate(64_000)));
        assert_eq!(Rate::parse("k", "100gbit"), Ok(Rate(MAX_RATE)));
        for bad in [
            "10 mbps", "10mbps", "0mbit", "-1mbit", "mbit", "10", "101gbit", "1e3bit",
        ] {
            assert!(Rate::parse("k", bad).is_err(), "{bad}");
        }
        assert_eq!(Bytes::parse("k", "256kb"), Ok(Bytes(262_144)));
        assert_eq!(Bytes::parse("k", "1mb"), Ok(Bytes(1 << 20)));
        for bad in ["1 mb", "0b", "2gb", "1mbit"] {
            assert!(Bytes::parse("k", bad).is_err(), "{bad}");
        }
        assert_eq!(Rate(100_000_000).to_string(), "100mbit");
        assert_eq!(Rate(1_500_000).to_string(), "1500kbit");
        assert_eq!(Bytes(262_144).to_string(), "256kb");
    }

    #[test]
    fn a_source_is_checked_as_a_whole() {
        let s = spec(
            &opts(&[
                ("qos.egress.rate", "10mbit"),
                ("qos.priority", "low"),
                ("model", "nat"),
            ]),
            "qos.",
        )
        .unwrap();
        assert_eq!(s.egress, Some(Rate(10_000_000)));
        assert_eq!(s.priority, Some(Priority::Low));
        let err = |kv: &[(&str, &str)]| spec(&opts(kv), "qos.").unwrap_err().to_string();
        assert_eq!(
            err(&[("qos.egres.rate", "1mbit")]),
            "unknown QoS option \"qos.egres.rate\" (valid: qos.egress.rate, qos.ingress.rate, \
             qos.burst, qos.priority, qos.aggregate.rate)"
        );
        assert_eq!(
            err(&[("qos.burst", "1mb")]),
            "qos.burst needs a rate in the same place (an egress or ingress rate)"
        );
        assert_eq!(
            err(&[("qos.priority", "urgent")]),
            "unknown priority \"urgent\" (priorities: high, normal, low)"
        );
        assert!(err(&[("qos.egress.rate", "10 mbps")]).starts_with("invalid rate \"10 mbps\""));
        let label = spec(
            &opts(&[("qingluan.qos.ingress.rate", "20mbit")]),
            "qingluan.qos.",
        )
        .unwrap();
        assert_eq!(label.ingress, Some(Rate(20_000_000)));
    }

    #[test]
    fn precedence_is_value_by_value() {
        let set = QosSpec {
            egress: Some(Rate(5_000_000)),
            ..Default::default()
        };
        let opt = QosSpec {
            egress: Some(Rate(10_000_000)),
            priority: Some(Priority::Low),
            ..Default::default()
        };
        let net = QosSpec {
            ingress: Some(Rate(200_000_000)),
            egress: Some(Rate(100_000_000)),
            burst: Some(Bytes(1 << 20)),
            ..Default::default()
        };
        let e = effective(&[
            (Source::Set, &set),
            (Source::DriverOpt, &opt),
            (Source::Network, &net),
        ]);
        assert_eq!(
            e.egress,
            Some(Sourced {
                value: Rate(5_000_000),
                source: Source::Set
            })
        );
        assert_eq!(e.ingress.unwrap().source, Source::Network);
        assert_eq!(e.priority.unwrap().source, Source::DriverOpt);
        assert_eq!(e.burst.unwrap().source, Source::Network);
    }

    #[test]
    fn shaping_keeps_a_meter_bucket_of_half_a_second() {
        let e = effective(&[(
            Source::Network,
            &QosSpec {
                egress: Some(Rate(100_000_000)),
                ingress: Some(Rate(50_000_000)),
                burst: Some(Bytes(1 << 20)),
                priority: Some(Priority::High),
                aggregate: None,
            },
        )]);
        let s = e.shaping(&QosSettings::default(), 1500, false);
        assert_eq!(s.meter, Some((100_000, 50_000)));
        assert_eq!(s.dscp, Some(34));
        let q = s.port.unwrap();
        assert_eq!(
            q.max_rate, 52_279_005,
            "50mbit of TCP payload in full frames"
        );
        assert_eq!(q.queues[0].burst, Some(8 << 20));
        let big = effective(&[(
            Source::Set,
            &QosSpec {
                egress: Some(Rate(1_000_000)),
                burst: Some(Bytes(1 << 20)),
                ..Default::default()
            },
        )]);
        assert_eq!(
            big.shaping(&QosSettings::default(), 1500, false).meter,
            Some((1_000, 8_389))
        );
        assert_eq!(
            Effective::default().shaping(&QosSettings::default(), 1500, false),
            Shaping::default()
        );
    }

    #[test]
    fn an_aggregate_is_shared_by_the_classes() {
        let settings = QosSettings::default();
        let mut net = crate::fixtures::net("1234abcd", crate::model::Mode::Nat, "10.0.0.0/24");
        let s = settings.aggregate("ql", "qlb1234abcd", &net, Rate(100_000_000));
        assert_eq!(
            s.rate, 104_558_011,
            "in full frames of 1448 bytes of payload"
        );
        net.mtu = 1450;
        let g = settings.uplink_group(Select::Vlan(10), &net, 50, Rate(100_000_000));
        let egress = qingluan_dataplane::netlink::EgressShaping {
            iface: "eth1".into(),
            groups: vec![g.clone()],
        };
        let batch = egress.batch();
        assert!(
            batch.contains("bpf bytecode \"7,40 0 0 12,21 0 4 33024,40 0 0 14,84 0 0 4095,21 0 1 10,6 0 0 4294967295,6 0 0 0\" flowid 1:100"),
            "tagged 10: {batch}"
        );
        assert!(
            batch.contains("48 0 0 19,84 0 0 252,21 0 1 136,"),
            "AF41 under the tag: {batch}"
        );
        assert_eq!(
            g.rate, 108_297_567,
            "1398 bytes of payload in 1514 on the wire"
        );
        assert_eq!(s.ifb, "qlq1234abcd");
        assert_eq!(gateway_of_ifb("ql", &s.ifb), "qlb1234abcd");
        let guaranteed: Vec<(u8, u64)> = s.classes.iter().map(|c| (c.dscp, c.min_rate)).collect();
        let total = s.rate;
        assert_eq!(
            guaranteed,
            [
                (0, total * 30 / 100),
                (34, total * 60 / 100),
                (8, total * 10 / 100)
            ],
            "normal first (it takes the unmarked), then high and low"
        );
        let batch = s.batch();
        assert!(
            batch.contains("match ip tos 0x88 0xfc flowid 1:11"),
            "{batch}"
        );
        assert!(
            batch.contains("action mirred egress redirect dev qlq1234abcd"),
            "{batch}"
        );
        let mut bad = QosSettings::default();
        bad.shares.high = 80;
        assert_eq!(
            bad.check().unwrap_err(),
            "qos.shares add up to 120 %: the guaranteed shares cannot exceed 100 %"
        );
        bad = QosSettings::default();
        bad.dscp.low = 34;
        assert!(bad.check().unwrap_err().contains("must differ"));
        let opts = BTreeMap::from([("qos.aggregate.rate".to_string(), "1gbit".to_string())]);
        assert_eq!(
            spec(&opts, "qos.").unwrap().aggregate,
            Some(Rate(1_000_000_000))
        );
        assert!(spec(&opts, "qos.")
            .unwrap()
            .no_aggregate("qos.aggregate.rate")
            .is_err());
    }
}
