//! Doctor checks of addressing: subnets of routed networks that overlap a host route (their
//! containers cannot reach what that route leads to), and the underlay MTU against the
//! vxlan networks' MTU plus the 50 bytes of VXLAN encapsulation.

use qingluan_core::model::{Mode, Network};

use super::{Check, Records};
use crate::config::Config;
use crate::routes::Route;

/// VXLAN over IPv4 adds this much to every frame.
const VXLAN_OVERHEAD: u32 = 50;

/// Whether a network is routed through a gateway on this host.
pub(crate) fn routed(n: &Network) -> bool {
    n.host_gateway().is_some()
}

/// Every addressing check.
pub fn checks(config: &Config, records: Option<&Records>) -> Vec<Check> {
    let Some(records) = records else {
        return vec![
            Check::skip("subnets", "no records to check"),
            Check::skip("underlay MTU", "no records to check"),
        ];
    };
    vec![
        subnets(
            &records.networks,
            &crate::routes::host_routes()
                .into_iter()
                .filter(|r| r.dest.prefix_len() > 0)
                .collect::<Vec<_>>(),
        ),
        underlay_mtu(config, &records.networks),
    ]
}

fn subnets(networks: &[Network], routes: &[Route]) -> Check {
    const NAME: &str = "subnets";
    let ours: Vec<&str> = networks
        .iter()
        .flat_map(|n| [Some(n.bridge.as_str()), n.gateway_port.as_deref()])
        .flatten()
        .collect();
    let mut clashes = Vec::new();
    for n in networks.iter().filter(|n| routed(n)) {
        for r in routes.iter().filter(|r| !ours.contains(&r.iface.as_str())) {
            if n.subnet.contains(&r.dest.network()) || r.dest.contains(&n.subnet.network()) {
                clashes.push(format!(
                    "{} ({}) overlaps the route to {} on {}",
                    n.subnet,
                    &n.id[..12.min(n.id.len())],
                    r.dest,
                    r.iface
                ));
            }
        }
    }
    let count = networks.iter().filter(|n| routed(n)).count();
    if clashes.is_empty() {
        Check::pass(
            NAME,
            format!("{count} routed networks, none overlaps a host route"),
        )
    } else {
        Check::fail(
            NAME,
            clashes.join("; "),
            "its containers cannot reach what that route leads to: recreate the network from \
             a pool outside the host's routes (qingluan pool create ... --subnet)",
        )
    }
}

/// The interface holding `ip` and its MTU.
fn mtu_of(ip: std::net::IpAddr) -> Option<(String, u32)> {
    let iface = nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let addr = a.address?;
        let found = match ip {
            std::net::IpAddr::V4(v4) => addr.as_sockaddr_in().map(|s| s.ip()) == Some(v4),
            std::net::IpAddr::V6(v6) => addr.as_sockaddr_in6().map(|s| s.ip()) == Some(v6),
        };
        found.then_some(a.interface_name)
    })?;
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((iface, mtu))
}

fn underlay_mtu(config: &Config, networks: &[Network]) -> Check {
    const NAME: &str = "underlay MTU";
    let vxlan: Vec<&Network> = networks.iter().filter(|n| n.mode == Mode::Vxlan).collect();
    let Some(widest) = vxlan.iter().map(|n| n.mtu).max() else {
        return Check::skip(NAME, "no vxlan networks here");
    };
    let Some(ip) = config
        .cluster
        .underlay_ip
        .or_else(crate::daemon::default_route_address)
    else {
        return Check::fail(
            NAME,
            "no underlay address: no cluster.underlay_ip and no default route",
            "set cluster.underlay_ip to the address other hosts reach this one at",
        );
    };
    let Some((iface, mtu)) = mtu_of(ip) else {
        return Check::fail(
            NAME,
            format!("no interface holds the underlay address {ip}"),
            "set cluster.underlay_ip to an address of this host",
        );
    };
    if mtu >= widest + VXLAN_OVERHEAD {
        Check::pass(
            NAME,
            format!(
                "{iface} ({ip}) has MTU {mtu}: room for vxlan networks' MTU {widest} + {VXLAN_OVERHEAD}"
            ),
        )
    } else {
        Check::fail(
            NAME,
            format!(
                "{iface} ({ip}) has MTU {mtu}, less than a vxlan network's MTU {widest} + \
                 {VXLAN_OVERHEAD} bytes of encapsulation: large packets are dropped"
            ),
            format!(
                "raise {iface}'s MTU to {} or create vxlan networks with --opt mtu={}",
                widest + VXLAN_OVERHEAD,
                mtu.saturating_sub(VXLAN_OVERHEAD)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use ipnet::Ipv4Net;

    use super::*;

    fn net(mode: Mode, subnet: &str, bridge: &str) -> Network {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        Network {
            id: format!("{bridge}0000000000000"),
            mode,
            bridge: bridge.into(),
            internal: false,
            mtu: 1500,
            subnet,
            gateway: subnet.hosts().next().unwrap(),
            ipv6: None,
            options: Default::default(),
            created: 0,
            vni: None,
            cluster: None,
            gateway_port: None,
            uplink: None,
            qos: Default::default(),
            acl_default: Default::default(),
            zone: 0,
        }
    }

    fn route(iface: &str, dest: &str) -> Route {
        Route {
            iface: iface.into(),
            dest: dest.parse().unwrap(),
        }
    }

    #[test]
    fn a_routed_subnet_inside_or_around_a_host_route_fails() {
        let nat = net(Mode::Nat, "10.1.0.0/24", "qlb1");
        let routes = [
            route("qlb1", "10.1.0.0/24"),
            route("eth0", "192.168.1.0/24"),
        ];
        assert_eq!(
            subnets(std::slice::from_ref(&nat), &routes).outcome,
            super::super::Outcome::Pass
        );
        for wide_or_narrow in ["10.0.0.0/8", "10.1.0.128/25"] {
            let routes = [route("qlb1", "10.1.0.0/24"), route("eth1", wide_or_narrow)];
            let c = subnets(std::slice::from_ref(&nat), &routes);
            assert_eq!(c.outcome, super::super::Outcome::Fail);
            assert!(c.detail.contains(wide_or_narrow) && c.detail.contains("eth1"));
        }
    }

    #[test]
    fn flat_networks_share_their_physical_route_without_failing() {
        let flat = net(Mode::Flat, "192.168.1.0/24", "qlbf");
        let routes = [route("eth0", "192.168.1.0/24")];
        assert_eq!(
            subnets(&[flat], &routes).outcome,
            super::super::Outcome::Pass
        );
    }
}
