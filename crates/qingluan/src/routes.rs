//! The host's IPv4 routes of the main table, from `/proc/net/route` (of the namespace the
//! daemon or CLI runs in): for the default route's address, `doctor`'s overlap check and
//! `trace`'s choice of the outgoing interface.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A route: its interface and destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The interface.
    pub iface: String,
    /// The destination (`0.0.0.0/0` for the default route).
    pub dest: Ipv4Net,
}

/// Every IPv4 route of the main table.
pub fn host_routes() -> Vec<Route> {
    parse(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
}

fn parse(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
            let dest = Ipv4Addr::from(hex(f.get(1)?)?);
            let prefix = hex(f.get(7)?)?.count_ones() as u8;
            Some(Route {
                iface: f[0].to_string(),
                dest: Ipv4Net::new(dest, prefix).ok()?.trunc(),
            })
        })
        .collect()
}

/// The interface the host sends `ip` through: the longest prefix that holds it.
pub fn iface_for(ip: Ipv4Addr) -> Option<String> {
    host_routes()
        .into_iter()
        .filter(|r| r.dest.contains(&ip))
        .max_by_key(|r| r.dest.prefix_len())
        .map(|r| r.iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_route_reads_as_routes() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes = parse(text);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].dest, "0.0.0.0/0".parse().unwrap());
        assert_eq!(routes[1].dest, "192.0.2.0/24".parse().unwrap());
        assert_eq!(routes[1].iface, "eth0");
    }
}
