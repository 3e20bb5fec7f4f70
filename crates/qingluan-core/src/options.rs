//! Validation of what `docker network create` and `docker run` pass to the driver.
//!
//! Every option is either understood or refused with an error naming it: nothing Docker
//! passes is silently ignored. The result is a validated value ([`NetworkOptions`]) that the
//! rest of the domain takes as proof that validation happened.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{Mode, PortMapping, Proto};

/// Option errors; the text reaches the user through the Docker CLI.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptionError {
    /// `--opt model=` names no mode.
    #[error("unknown model {0:?} (models: nonat, nat, flat, vlan, vxlan)")]
    UnknownModel(String),
    /// A mode that needs `--opt vni` got none.
    #[error("model {0} needs --opt vni=<{1}> (and the same --ipam-opt vni)")]
    VniMissing(Mode, &'static str),
    /// A VNI or VLAN ID out of range or not a number.
    #[error("invalid vni {value:?} for model {mode}: must be a number from 1 to {max}")]
    InvalidVni { value: String, mode: Mode, max: u32 },
    /// A driver option we do not know for this mode.
    #[error("unknown option {key:?} for model {mode} (valid options: {valid})")]
    UnknownOption {
        key: String,
        mode: Mode,
        valid: String,
    },
    /// A bad MTU.
    #[error("invalid mtu {0:?}: must be a number between 68 and 65535")]
    InvalidMtu(String),
    /// `--opt mtu` and `com.docker.network.driver.mtu` disagree.
    #[error("mtu {0} and com.docker.network.driver.mtu {1} disagree")]
    MtuConflict(u32, u32),
    /// `--opt parent=` that cannot name an interface.
    #[error("invalid parent {0:?}: must be an interface name")]
    InvalidParent(String),
    /// `--opt nat=` other than true or false.
    #[error("invalid nat {0:?}: must be true or false")]
    InvalidNat(String),
    /// A published port we cannot map.
    #[error("invalid port mapping: {0}")]
    InvalidPort(String),
    /// A bad `qos.*` option.
    #[error(transparent)]
    Qos(#[from] crate::qos::QosError),
    /// A bad `acl.*` option.
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
    /// A Join's SandboxKey that is not a namespace file's path.
    #[error("invalid SandboxKey {0:?}: must be the absolute path of a network namespace file, without '..'")]
    InvalidSandboxKey(String),
}

/// Docker's MTU option key.
pub const DOCKER_MTU: &str = "com.docker.network.driver.mtu";

/// Driver options of a network, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkOptions {
    /// The mode.
    pub mode: Mode,
    /// The MTU asked for, if any.
    pub mtu: Option<u32>,
    /// VLAN ID or VNI (vlan, vxlan).
    pub vni: Option<u32>,
    /// `nat=true` (vxlan): a gateway on every host with masquerade and publishing.
    pub nat: bool,
    /// `parent=<nic>` (flat, vlan): the uplink interface.
    pub parent: Option<String>,
    /// `qos.*`: the QoS of every endpoint on the network.
    pub qos: crate::qos::QosSpec,
    /// `acl.default` (every mode): traffic between the network's containers without a rule.
    pub acl_default: crate::acl::Verdict,
}

/// Keys every mode accepts.
const COMMON_KEYS: [&str; 3] = ["model", "mtu", DOCKER_MTU];

/// Validates `-o k=v` options of `docker network create`.
pub fn network_options(
    generic: &BTreeMap<String, String>,
    default_model: &str,
) -> Result<NetworkOptions, OptionError> {
    let model = generic
        .get("model")
        .map(String::as_str)
        .unwrap_or(default_model);
    let mode: Mode = model
        .parse()
        .map_err(|_| OptionError::UnknownModel(model.to_string()))?;
    let mut valid = COMMON_KEYS.to_vec();
    match mode {
        Mode::Nonat | Mode::Nat => valid.push(crate::acl::DEFAULT_KEY),
        Mode::Vxlan => valid.extend(["vni", "nat", crate::acl::DEFAULT_KEY]),
        Mode::Vlan => valid.extend(["vni", "parent", crate::acl::DEFAULT_KEY]),
        Mode::Flat => valid.extend(["parent", crate::acl::DEFAULT_KEY]),
    }
    let qos = crate::qos::spec(generic, "qos.")?;
    if let Some(key) = generic
        .keys()
        .find(|k| !valid.contains(&k.as_str()) && !k.starts_with("qos."))
    {
        return Err(OptionError::UnknownOption {
            key: key.clone(),
            mode,
            valid: valid.join(", "),
        });
    }
    let vni = match (mode, generic.get("vni")) {
        (Mode::Vxlan, None) => return Err(OptionError::VniMissing(mode, "1-16777215")),
        (Mode::Vxlan, Some(v)) => Some(parse_vni(v, mode, 16_777_215)?),
        (Mode::Vlan, None) => return Err(OptionError::VniMissing(mode, "1-4094")),
        (Mode::Vlan, Some(v)) => Some(parse_vni(v, mode, 4094)?),
        _ => None,
    };
    let parse = |v: &String| -> Result<u32, OptionError> {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|m| (68..=65535).contains(m))
            .ok_or_else(|| OptionError::InvalidMtu(v.clone()))
    };
    let a = generic.get("mtu").map(parse).transpose()?;
    let b = generic.get(DOCKER_MTU).map(parse).transpose()?;
    let mtu = match (a, b) {
        (Some(a), Some(b)) if a != b => return Err(OptionError::MtuConflict(a, b)),
        (a, b) => a.or(b),
    };
    let nat = match generic.get("nat").map(|v| v.trim()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(OptionError::InvalidNat(other.to_string())),
    };
    let parent = match generic.get("parent").map(|p| p.trim()) {
        Some(p) if p.is_empty() || p.len() > 15 || p.contains('/') => {
            return Err(OptionError::InvalidParent(p.to_string()))
        }
        p => p.map(String::from),
    };
    Ok(NetworkOptions {
        mode,
        mtu,
        vni,
        nat,
        parent,
        qos,
        acl_default: crate::acl::default_of(generic)?,
    })
}

/// A VNI or VLAN ID: a number from 1 to `max`.
fn parse_vni(v: &str, mode: Mode, max: u32) -> Result<u32, OptionError> {
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| OptionError::InvalidVni {
            value: v.to_string(),
            mode,
            max,
        })
}

/// Checks a Join's SandboxKey: an absolute path (Docker's `<exec-root>/netns/<id>`) of at
/// most 4096 bytes with no `.`/`..` component, so a stored key never points elsewhere.
pub fn sandbox_key(key: &str) -> Result<(), OptionError> {
    let path = std::path::Path::new(key);
    let ok = key.len() <= 4096
        && !key.contains('\0')
        && path.is_absolute()
        && path.file_name().is_some()
        && key.split('/').all(|c| c != ".." && c != ".");
    if ok {
        Ok(())
    } else {
        Err(OptionError::InvalidSandboxKey(
            crate::model::head(key, 64).to_string(),
        ))
    }
}

/// One entry of Docker's `com.docker.network.portmap`, as numbers and strings; numbers
/// are signed so a negative one is refused rather than read as 0.
#[derive(Clone, Debug, PartialEq)]
pub struct RawPort {
    /// IP protocol number.
    pub proto: i64,
    /// Host address, `""` for all.
    pub host_ip: String,
    /// First host port (0 = choose one).
    pub host_port: i64,
    /// Last host port of a range.
    pub host_port_end: i64,
    /// Container port.
    pub port: i64,
}

/// Validates Docker's port map. A host port range maps its first port; host port 0
/// (`-P`) is returned as 0 for the caller to choose a free port.
pub fn port_mappings(raw: &[RawPort]) -> Result<Vec<PortMapping>, OptionError> {
    let mut out = Vec::new();
    for r in raw {
        let proto = u64::try_from(r.proto)
            .ok()
            .and_then(Proto::from_number)
            .ok_or_else(|| {
                OptionError::InvalidPort(format!("unknown protocol number {}", r.proto))
            })?;
        let port = u16::try_from(r.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| OptionError::InvalidPort(format!("container port {}", r.port)))?;
        let host_port = u16::try_from(r.host_port)
            .map_err(|_| OptionError::InvalidPort(format!("host port {}", r.host_port)))?;
        let host_ip = match r.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            s => {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| OptionError::InvalidPort(format!("host address {s:?}")))?;
                if ip.is_ipv6() {
                    if ip.is_unspecified() {
                        continue;
                    }
                    return Err(OptionError::InvalidPort(format!(
                        "host address {ip}: publishing on IPv6 addresses is not supported"
                    )));
                }
                Some(ip)
            }
        };
        let m = PortMapping {
            proto,
            host_ip,
            host_port,
            port,
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out.sort();
    Ok(out)
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
    fn model_defaults_and_parses() {
        assert_eq!(network_options(&opts(&[]), "nat").unwrap().mode, Mode::Nat);
        assert_eq!(
            network_options(&opts(&[("model", "nonat")]), "nat")
                .unwrap()
                .mode,
            Mode::Nonat
        );
    }

    #[test]
    fn bad_options_are_named() {
        assert_eq!(
            network_options(&opts(&[("model", "bogus")]), "nat")
                .unwrap_err()
                .to_string(),
            "unknown model \"bogus\" (models: nonat, nat, flat, vlan, vxlan)"
        );
        assert_eq!(
            network_options(&opts(&[("model", "vlan")]), "nat")
                .unwrap_err()
                .to_string(),
            "model vlan needs --opt vni=<1-4094> (and the same --ipam-opt vni)"
        );
        for bad in ["0", "4095", "ten"] {
            assert_eq!(
                network_options(&opts(&[("model", "vlan"), ("vni", bad)]), "nat")
                    .unwrap_err()
                    .to_string(),
                format!("invalid vni {bad:?} for model vlan: must be a number from 1 to 4094")
            );
        }
        let flat = network_options(&opts(&[("model", "flat"), ("parent", "eth1")]), "nat").unwrap();
        assert_eq!(flat.parent.as_deref(), Some("eth1"));
        assert_eq!(
            network_options(&opts(&[("model", "flat"), ("vni", "10")]), "nat")
                .unwrap_err()
                .to_string(),
            "unknown option \"vni\" for model flat (valid options: model, mtu, com.docker.network.driver.mtu, parent, acl.default)"
        );
        assert_eq!(
            network_options(&opts(&[("model", "vxlan")]), "nat")
                .unwrap_err()
                .to_string(),
            "model vxlan needs --opt vni=<1-16777215> (and the same --ipam-opt vni)"
        );
        for bad in ["0", "16777216", "ten"] {
            assert_eq!(
                network_options(&opts(&[("model", "vxlan"), ("vni", bad)]), "nat")
                    .unwrap_err()
                    .to_string(),
                format!("invalid vni {bad:?} for model vxlan: must be a number from 1 to 16777215")
            );
        }
        assert_eq!(
            network_options(&opts(&[("model", "vxlan"), ("vni", "5001")]), "nat")
                .unwrap()
                .vni,
            Some(5001)
        );
        assert_eq!(
            network_options(
                &opts(&[("model", "vxlan"), ("vni", "1"), ("nat", "yes")]),
                "nat"
            )
            .unwrap_err()
            .to_string(),
            "invalid nat \"yes\": must be true or false"
        );
        assert!(
            network_options(
                &opts(&[("model", "vxlan"), ("vni", "1"), ("nat", "true")]),
                "nat"
            )
            .unwrap()
            .nat
        );
        assert_eq!(
            network_options(&opts(&[("nat", "true")]), "nat").unwrap_err().to_string(),
            "unknown option \"nat\" for model nat (valid options: model, mtu, com.docker.network.driver.mtu, acl.default)"
        );
        assert_eq!(
            network_options(&opts(&[("acl.default", "block")]), "nat")
                .unwrap_err()
                .to_string(),
            "invalid acl.default \"block\": must be allow or deny"
        );
        assert_eq!(
            network_options(
                &opts(&[("model", "vxlan"), ("vni", "1"), ("acl.default", "deny")]),
                "nat"
            )
            .unwrap()
            .acl_default,
            crate::acl::Verdict::Deny
        );
        assert_eq!(
            network_options(
                &opts(&[("model", "vlan"), ("vni", "1"), ("acl.default", "deny")]),
                "nat"
            )
            .unwrap()
            .acl_default,
            crate::acl::Verdict::Deny
        );
        assert_eq!(
            network_options(&opts(&[("colour", "red")]), "nat").unwrap_err().to_string(),
            "unknown option \"colour\" for model nat (valid options: model, mtu, com.docker.network.driver.mtu, acl.default)"
        );
        assert_eq!(
            network_options(&opts(&[("mtu", "abc")]), "nat")
                .unwrap_err()
                .to_string(),
            "invalid mtu \"abc\": must be a number between 68 and 65535"
        );
        assert!(network_options(&opts(&[("mtu", "67")]), "nat").is_err());
        assert_eq!(
            network_options(&opts(&[("mtu", "1400"), (DOCKER_MTU, "1300")]), "nat").unwrap_err(),
            OptionError::MtuConflict(1400, 1300)
        );
        assert_eq!(
            network_options(&opts(&[(DOCKER_MTU, "1400")]), "nat")
                .unwrap()
                .mtu,
            Some(1400)
        );
    }

    #[test]
    fn sandbox_keys() {
        assert!(sandbox_key("/var/run/docker/netns/3c1a9f2b7e01").is_ok());
        for bad in [
            "",
            "netns/x",
            "../../../../proc/1/ns/net",
            "/var/run/docker/netns/../../../proc/1/ns/net",
            "/",
            "/a\0b",
        ] {
            assert!(sandbox_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_parse() {
        let raw = |proto, ip: &str, hp, port| RawPort {
            proto,
            host_ip: ip.into(),
            host_port: hp,
            host_port_end: hp,
            port,
        };
        let m = port_mappings(&[
            raw(6, "", 1080, 80),
            raw(17, "127.0.0.1", 53, 53),
            raw(6, "::", 1080, 80),
        ])
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].to_string(), "1080->80/tcp");
        assert_eq!(m[1].to_string(), "127.0.0.1:53->53/udp");
        assert!(port_mappings(&[raw(99, "", 1, 1)]).is_err());
        assert_eq!(
            port_mappings(&[raw(6, "", -1, 80)])
                .unwrap_err()
                .to_string(),
            port_mappings(&[raw(6, "", 65536, 80)])
                .unwrap_err()
                .to_string()
                .replace("65536", "-1"),
            "a negative host port is refused like any other out of range"
        );
        assert!(port_mappings(&[raw(-6, "", 1, 1)]).is_err());
    }
}
