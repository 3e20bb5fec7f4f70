//! The uplink: the host's physical interface as a port of an OVS bridge, with the host's
//! addresses and routes moved onto the bridge's internal port.
//!
//! On the userspace datapath OVS routes and encapsulates tunnel packets itself, and only
//! from an address that sits on one of its bridges: the underlay address must live on an
//! OVS internal port, whose bridge carries the physical interface. qingluan arranges this
//! while a network needs it and undoes it when none does:
//!
//! flat and vlan networks put their containers on such a bridge too (one per interface,
//! shared by all flat and vlan networks on it), on the kernel datapath as well.
//!
//! - **plan**: the interface is the one named (flat/vlan `parent`) or the one holding the
//!   underlay address (or, once moved, the bridge's port marked [`UPLINK_NIC`]); the bridge
//!   gets the interface's MAC, so neighbours' ARP caches stay right, and no `fail_mode`, so
//!   it forwards as a plain switch even with no flows (an ovs-vswitchd restart never cuts the
//!   host off).
//! - **migrate** (after the bridge exists): every IPv4 address of the interface is added to
//!   the internal port, then removed from the interface; the routes through the interface
//!   are re-added through the internal port; MTU follows the interface.
//! - **restore** (before a no longer wanted bridge is deleted): the same, backwards.
//!
//! Each step is idempotent, so an interrupted migration completes on the next pass.

use std::collections::BTreeMap;
use std::net::IpAddr;

use qingluan_dataplane::netlink::{LinkError, Links};
use qingluan_dataplane::ovsdb::{BridgeSpec, BridgeState, PortSpec};

use crate::desired::{Nic, UplinkWant, MODE, OWNER, UPLINK_MODE, UPLINK_NIC};

/// Errors of the uplink steps; the text names the object.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// No interface holds the underlay address.
    #[error("the underlay address {0} is on no interface of this host (set cluster.underlay_ip)")]
    NoInterface(IpAddr),
    /// A link operation failed.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The uplink bridges in `snap` that we own, with the interface enslaved to each.
pub fn owned_uplinks<'a>(owner: &str, snap: &'a [BridgeState]) -> Vec<(&'a str, Option<&'a str>)> {
    snap.iter()
        .filter(|b| {
            b.spec.external_ids.get(OWNER).map(String::as_str) == Some(owner)
                && b.spec.external_ids.get(MODE).map(String::as_str) == Some(UPLINK_MODE)
        })
        .map(|b| {
            let nic = b
                .ports
                .iter()
                .find(|p| p.spec.external_ids.contains_key(UPLINK_NIC))
                .map(|p| p.spec.name.as_str());
            (b.spec.name.as_str(), nic)
        })
        .collect()
}

/// The bridge and interface port of a wanted uplink.
pub async fn plan(
    links: &dyn Links,
    owner: &str,
    want: &UplinkWant,
    snap: &[BridgeState],
) -> Result<(BridgeSpec, PortSpec), UplinkError> {
    let known = owned_uplinks(owner, snap)
        .into_iter()
        .find(|(b, _)| *b == want.bridge)
        .and_then(|(_, nic)| nic.map(String::from));
    let nic = match (known, &want.nic) {
        (Some(n), _) => n,
        (None, Nic::Named(n)) => n.clone(),
        (None, Nic::Holding(address)) => find_interface(links, *address, &want.bridge)
            .await?
            .ok_or(UplinkError::NoInterface(*address))?,
    };
    let info = links
        .link(&nic)
        .await?
        .ok_or_else(|| LinkError::NotFound(nic.clone()))?;
    let ids = BTreeMap::from([
        (OWNER.to_string(), owner.to_string()),
        (MODE.to_string(), UPLINK_MODE.to_string()),
    ]);
    let mut other = BTreeMap::new();
    if let Some(mac) = info.mac {
        other.insert("hwaddr".to_string(), crate::model::Mac(mac).to_string());
    }
    let bridge = BridgeSpec {
        name: want.bridge.clone(),
        datapath_type: want.datapath.clone(),
        fail_mode: None,
        external_ids: ids.clone(),
        other_config: other,
        protocols: ["OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15"]
            .map(String::from)
            .to_vec(),
        flow_export: Default::default(),
    };
    let mut port_ids = ids;
    port_ids.insert(UPLINK_NIC.to_string(), "true".to_string());
    let port = PortSpec {
        bridge: want.bridge.clone(),
        name: nic,
        kind: String::new(),
        tag: None,
        external_ids: port_ids,
        mtu_request: None,
        mac: None,
        qos: None,
        options: Default::default(),
    };
    Ok((bridge, port))
}

/// The physical interface behind `address`: the interface holding it, or, when that is one
/// of our uplink bridges, the interface enslaved to it.
pub async fn interface_of(
    links: &dyn Links,
    owner: &str,
    snap: &[BridgeState],
    address: IpAddr,
) -> Result<Option<String>, LinkError> {
    let Some(holder) = find_interface(links, address, "").await? else {
        return Ok(None);
    };
    let enslaved = owned_uplinks(owner, snap)
        .into_iter()
        .find(|(b, _)| *b == holder)
        .and_then(|(_, nic)| nic.map(String::from));
    Ok(Some(enslaved.unwrap_or(holder)))
}

/// The interface holding `address`, if any (never the uplink bridge itself).
async fn find_interface(
    links: &dyn Links,
    address: IpAddr,
    bridge: &str,
) -> Result<Option<String>, LinkError> {
    for l in links.links_with_prefix("").await? {
        if l.name == bridge {
            continue;
        }
        let addrs = links.addresses(&l.name).await?;
        if addrs.iter().any(|a| a.addr() == address) {
            return Ok(Some(l.name));
        }
    }
    Ok(None)
}

/// Moves every IPv4 address and route of `from` to `to` (MTU and up state first), leaving
/// `from` up with none. Nothing to move is fine.
pub async fn move_addresses(links: &dyn Links, from: &str, to: &str) -> Result<bool, LinkError> {
    let addrs: Vec<ipnet::IpNet> = links
        .addresses(from)
        .await?
        .into_iter()
        .filter(|a| a.addr().is_ipv4())
        .collect();
    if addrs.is_empty() {
        return Ok(false);
    }
    let routes = links.routes(from).await?;
    if let Some(info) = links.link(from).await? {
        links.set_mtu(to, info.mtu).await?;
    }
    links.set_up(to).await?;
    for a in &addrs {
        links.add_address(to, *a).await?;
    }
    for a in &addrs {
        links.del_address(from, *a).await?;
    }
    for r in &routes {
        links.add_route(to, r).await?;
    }
    links.set_up(from).await?;
    tracing::info!(%from, %to, addresses = ?addrs, routes = routes.len(), "moved host addresses");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingluan_dataplane::netlink::{FakeLinks, Route};

    #[tokio::test]
    async fn addresses_and_routes_move_and_come_back() {
        let l = FakeLinks::default();
        l.create_veth("eth0", "peer0", 1500, None).await.unwrap();
        l.create_veth("qlul", "peer1", 1500, None).await.unwrap();
        l.add_address("eth0", "10.0.0.11/24".parse().unwrap())
            .await
            .unwrap();
        let default = Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("10.0.0.1".parse().unwrap()),
            metric: None,
        };
        l.add_route("eth0", &default).await.unwrap();
        let want = UplinkWant {
            bridge: "qlul".into(),
            nic: Nic::Holding("10.0.0.11".parse().unwrap()),
            datapath: "netdev".into(),
        };
        let (b, p) = plan(&l, "qingluan", &want, &[]).await.unwrap();
        assert_eq!((b.name.as_str(), p.name.as_str()), ("qlul", "eth0"));
        assert!(b.fail_mode.is_none());
        assert!(b.other_config.contains_key("hwaddr"));

        assert!(move_addresses(&l, "eth0", "qlul").await.unwrap());
        assert!(l.addresses("eth0").await.unwrap().is_empty());
        assert_eq!(l.routes("qlul").await.unwrap(), vec![default.clone()]);
        assert!(
            !move_addresses(&l, "eth0", "qlul").await.unwrap(),
            "idempotent"
        );

        assert!(move_addresses(&l, "qlul", "eth0").await.unwrap());
        assert_eq!(
            l.addresses("eth0").await.unwrap(),
            vec!["10.0.0.11/24".parse::<ipnet::IpNet>().unwrap()]
        );
        assert_eq!(l.routes("eth0").await.unwrap(), vec![default]);

        let named = UplinkWant {
            bridge: "qlueth0".into(),
            nic: Nic::Named("eth0".into()),
            datapath: "netdev".into(),
        };
        let (_, p) = plan(&l, "qingluan", &named, &[]).await.unwrap();
        assert_eq!(p.name, "eth0");
        assert_eq!(
            interface_of(&l, "qingluan", &[], "10.0.0.11".parse().unwrap())
                .await
                .unwrap()
                .as_deref(),
            Some("eth0")
        );

        let gone = UplinkWant {
            bridge: "qlul".into(),
            nic: Nic::Holding("10.9.9.9".parse().unwrap()),
            datapath: "netdev".into(),
        };
        assert_eq!(
            plan(&l, "qingluan", &gone, &[])
                .await
                .unwrap_err()
                .to_string(),
            "the underlay address 10.9.9.9 is on no interface of this host (set cluster.underlay_ip)"
        );
    }
}
