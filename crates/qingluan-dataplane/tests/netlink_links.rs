//! The rtnetlink links adapter against the real kernel. Each test works in a network
//! namespace of its own (`qlt-nl-<pid>-<n>`, deleted by a guard even on panic) through
//! `NetlinkLinks::in_netns`, and cross-checks with `ip`, `ethtool` and `sysctl` run inside
//! it; the host namespace is never touched. Skipped visibly when not root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use qingluan_dataplane::netlink::{LinkError, Links, NetlinkLinks, Vxlan};
use serde_json::Value;

/// A network namespace of the test's own, deleted on drop.
struct Netns(String);

impl Netns {
    /// Creates a fresh namespace, or `None` (after printing why) when the test cannot run.
    fn new(test: &str) -> Option<Netns> {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: {test}: needs root");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "qlt-nl-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        Some(Netns(name))
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }

    /// Runs a command inside the namespace and returns its stdout; panics on failure.
    fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.0];
        all.extend(args);
        run("ip", &all)
    }

    /// `ip -d -j link show dev NAME` inside the namespace.
    fn ip_link(&self, name: &str) -> Value {
        let out = run(
            "ip",
            &["-n", &self.0, "-d", "-j", "link", "show", "dev", name],
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    /// Addresses of a link as `ip -j addr` shows them, `addr/prefix`.
    fn ip_addrs(&self, name: &str) -> Vec<String> {
        let out = run("ip", &["-n", &self.0, "-j", "addr", "show", "dev", name]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    fn links(&self) -> NetlinkLinks {
        NetlinkLinks::in_netns(&self.path()).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs a command and returns its stdout; panics with its stderr on failure.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether the host namespace has a link of this name.
fn in_host(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[tokio::test]
async fn veth_is_created_configured_and_deleted() {
    let Some(ns) = Netns::new("veth_is_created_configured_and_deleted") else {
        return;
    };
    let l = ns.links();
    let mac = [0x02, 0x42, 0x0a, 0xf0, 0x00, 0x02];
    l.create_veth("qltva", "qltca", 1400, Some(mac))
        .await
        .unwrap();
    assert!(
        !in_host("qltva") && !in_host("qltca"),
        "host namespace untouched"
    );

    let a = l.link("qltva").await.unwrap().unwrap();
    let b = l.link("qltca").await.unwrap().unwrap();
    assert_eq!((a.mtu, b.mtu), (1400, 1400));
    assert!(a.up && !b.up, "host end up, peer down");
    assert_eq!(
        ns.exec(&["cat", "/proc/sys/net/ipv6/conf/qltva/disable_ipv6"])
            .trim(),
        "1",
        "no IPv6 on the host end"
    );
    assert_eq!(b.mac, Some(mac));
    assert_eq!(a.kind.as_deref(), Some("veth"));
    let ip = ns.ip_link("qltca");
    assert_eq!(ip["mtu"], 1400);
    assert_eq!(ip["address"], "02:42:0a:f0:00:02");
    assert_eq!(ip["ifindex"], b.index);
    assert_eq!(ip["linkinfo"]["info_kind"], "veth");
    let ip = ns.ip_link("qltva");
    assert!(
        ip["flags"].as_array().unwrap().contains(&"UP".into()),
        "{ip}"
    );

    let e = l
        .create_veth("qltva", "qltca", 1400, None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot create veth qltva/qltca: File exists (os error 17)"
    );
    assert!(matches!(e, LinkError::Kernel { ref source, .. } if source.raw_os_error() == Some(17)));

    l.create_veth("qltvb", "qltcb", 1500, None).await.unwrap();
    let names = |v: Vec<qingluan_dataplane::netlink::LinkInfo>| {
        let mut n: Vec<String> = v.into_iter().map(|x| x.name).collect();
        n.sort();
        n
    };
    assert_eq!(
        names(l.links_with_prefix("qltv").await.unwrap()),
        ["qltva", "qltvb"]
    );
    assert_eq!(names(l.links_with_prefix("qlt").await.unwrap()).len(), 4);
    for (v, c) in [("qltvx", "qltcx"), ("qltvy", "qltcy"), ("qltvz", "qltcz")] {
        l.create_veth(v, c, 1500, None).await.unwrap();
    }
    let doomed = ["qltvx", "qltvy", "qltvgone"].map(String::from);
    l.delete_links(&doomed).await.unwrap();
    l.delete_links(&doomed).await.unwrap();
    assert_eq!(
        names(l.links_with_prefix("qltv").await.unwrap()),
        ["qltva", "qltvb", "qltvz"],
        "both named veths deleted with their peers, nothing else"
    );
    assert!(l.link("qltcx").await.unwrap().is_none());
    l.delete_link("qltvz").await.unwrap();

    l.set_up("qltca").await.unwrap();
    l.set_up("qltca").await.unwrap();
    l.set_mtu("qltca", 1300).await.unwrap();
    l.set_mtu("qltca", 1300).await.unwrap();
    let b = l.link("qltca").await.unwrap().unwrap();
    assert!(b.up);
    assert_eq!(b.mtu, 1300);
    assert_eq!(ns.ip_link("qltca")["mtu"], 1300);
    let e = l.set_mtu("qltca", 70000).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot set mtu 70000 on qltca: Invalid argument (os error 22)"
    );
    assert_eq!(
        l.set_mtu("qltnope", 1500).await.unwrap_err().to_string(),
        "link qltnope not found"
    );
    assert_eq!(
        l.set_up("qltnope").await.unwrap_err().to_string(),
        "link qltnope not found"
    );

    l.delete_link("qltva").await.unwrap();
    l.delete_link("qltva").await.unwrap();
    assert!(l.link("qltva").await.unwrap().is_none());
    assert!(
        l.link("qltca").await.unwrap().is_none(),
        "deleting one end removes the pair"
    );
    assert_eq!(
        names(l.links_with_prefix("qlt").await.unwrap()),
        ["qltcb", "qltvb"]
    );
}

#[tokio::test]
async fn addresses_are_idempotent() {
    let Some(ns) = Netns::new("addresses_are_idempotent") else {
        return;
    };
    run(
        "ip",
        &[
            "-n", &ns.0, "link", "add", "qltd", "type", "veth", "peer", "qltp",
        ],
    );
    let l = ns.links();
    l.set_up("qltd").await.unwrap();
    let v4: ipnet::IpNet = "10.251.77.1/24".parse().unwrap();
    let v6: ipnet::IpNet = "fd00:77::1/64".parse().unwrap();
    for a in [v4, v4, v6, v6] {
        l.add_address("qltd", a).await.unwrap();
    }
    let got = l.addresses("qltd").await.unwrap();
    assert!(got.contains(&v4) && got.contains(&v6), "{got:?}");
    let ip = ns.ip_addrs("qltd");
    assert!(
        ip.contains(&"10.251.77.1/24".to_string()) && ip.contains(&"fd00:77::1/64".to_string()),
        "{ip:?}"
    );
    assert_eq!(
        ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", "qltd"])
            .lines()
            .count(),
        1,
        "added once"
    );

    for a in [v4, v4, v6, v6] {
        l.del_address("qltd", a).await.unwrap();
    }
    let got = l.addresses("qltd").await.unwrap();
    assert!(!got.contains(&v4) && !got.contains(&v6), "{got:?}");
    assert!(!ns
        .ip_addrs("qltd")
        .iter()
        .any(|a| a.starts_with("10.251.77.1")));

    for e in [
        l.addresses("qltnope").await.unwrap_err(),
        l.add_address("qltnope", v4).await.unwrap_err(),
        l.del_address("qltnope", v4).await.unwrap_err(),
    ] {
        assert_eq!(e.to_string(), "link qltnope not found");
    }
}

#[tokio::test]
async fn tx_checksum_off_matches_ethtool() {
    let Some(ns) = Netns::new("tx_checksum_off_matches_ethtool") else {
        return;
    };
    let l = ns.links();
    l.create_veth("qltva", "qltca", 1500, None).await.unwrap();
    l.create_veth("qltvb", "qltcb", 1500, None).await.unwrap();
    let features = |name: &str| {
        let out = ns.exec(&["ethtool", "-k", name]);
        out.lines().skip(1).collect::<Vec<_>>().join("\n")
    };
    assert!(features("qltca").contains("tx-checksumming: on"));

    l.tx_checksum_off("qltca").await.unwrap();
    ns.exec(&["ethtool", "-K", "qltcb", "tx", "off"]);
    let ours = features("qltca");
    assert!(ours.contains("tx-checksumming: off"), "{ours}");
    assert!(
        ours.contains("tx-tcp-segmentation: off [requested on]"),
        "the kernel drops TSO without checksum offload: {ours}"
    );
    assert_eq!(
        ours,
        features("qltcb"),
        "same features as `ethtool -K tx off`"
    );
    l.tx_checksum_off("qltca").await.unwrap();

    assert_eq!(
        l.tx_checksum_off("qltnope").await.unwrap_err().to_string(),
        "link qltnope not found"
    );
}

const PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

#[tokio::test]
async fn sysctls_are_written_in_the_namespace() {
    let Some(ns) = Netns::new("sysctls_are_written_in_the_namespace") else {
        return;
    };
    let host_port_start = std::fs::read_to_string(PORT_START).unwrap();
    run(
        "ip",
        &[
            "-n", &ns.0, "link", "add", "qlt.d1", "type", "veth", "peer", "qlt.p1",
        ],
    );
    let l = ns.links();
    let read = |key: &str| ns.exec(&["sysctl", "-n", key]).trim().to_string();

    // A harmless per-namespace knob first: should it leak, the host barely notices.
    l.sysctl("net.ipv4.ip_unprivileged_port_start", "1000")
        .await
        .unwrap();
    assert_eq!(read("net.ipv4.ip_unprivileged_port_start"), "1000");
    assert_eq!(
        std::fs::read_to_string(PORT_START).unwrap(),
        host_port_start,
        "host namespace untouched"
    );

    for v in ["0", "1", "1"] {
        l.sysctl("net.ipv4.ip_forward", v).await.unwrap();
        assert_eq!(read("net.ipv4.ip_forward"), v);
    }
    l.sysctl("net.ipv4.conf.qlt.d1.route_localnet", "1")
        .await
        .unwrap();
    assert_eq!(read("net/ipv4/conf/qlt.d1/route_localnet"), "1");
    l.sysctl("net/ipv4/conf/qlt.d1/route_localnet", "0")
        .await
        .unwrap();
    assert_eq!(read("net/ipv4/conf/qlt.d1/route_localnet"), "0");

    let e = l
        .sysctl("net.ipv4.conf.qltnope.route_localnet", "1")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot set sysctl net.ipv4.conf.qltnope.route_localnet=1: No such file or directory (os error 2)"
    );
    let e = l.sysctl("net/../kernel/hostname", "x").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid sysctl key \"net/../kernel/hostname\": empty, '.' or '..' component"
    );
}

#[tokio::test]
async fn bad_names_and_namespaces_are_clear_errors() {
    let Some(ns) = Netns::new("bad_names_and_namespaces_are_clear_errors") else {
        return;
    };
    let l = ns.links();
    let e = l
        .create_veth("qlv0123456789abc", "qlc1", 1500, None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid interface name \"qlv0123456789abc\": longer than 15 bytes"
    );
    l.create_veth("qlv0123456789ab", "qlc1", 1500, None)
        .await
        .unwrap();
    assert_eq!(
        l.link("a/b").await.unwrap_err().to_string(),
        "invalid interface name \"a/b\": contains '/', ':' or whitespace"
    );
    let host = NetlinkLinks::new().unwrap();
    let lo = host.link("lo").await.unwrap().unwrap();
    assert_eq!((lo.index, lo.kind), (1, None), "read-only look at the host");
    assert!(host.link("qlv0123456789ab").await.unwrap().is_none());
    let e = NetlinkLinks::in_netns(Path::new("/run/netns/qlt-nl-absent"))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "cannot enter network namespace /run/netns/qlt-nl-absent: No such file or directory (os error 2)"
    );
}

#[tokio::test]
async fn routes_are_listed_added_and_follow_addresses() {
    let Some(ns) = Netns::new("routes_are_listed_added_and_follow_addresses") else {
        return;
    };
    let l = ns.links();
    l.create_veth("qltra", "qltrb", 1500, None).await.unwrap();
    l.set_up("qltrb").await.unwrap();
    l.add_address("qltra", "10.9.8.1/24".parse().unwrap())
        .await
        .unwrap();
    assert!(
        l.routes("qltra").await.unwrap().is_empty(),
        "the connected route is not listed"
    );
    ns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.9.8.254",
        "dev",
        "qltra",
    ]);
    ns.exec(&[
        "ip",
        "route",
        "add",
        "10.50.0.0/16",
        "via",
        "10.9.8.253",
        "metric",
        "7",
    ]);
    let mut r = l.routes("qltra").await.unwrap();
    r.sort_by_key(|r| r.dst);
    use qingluan_dataplane::netlink::Route;
    let default = Route {
        dst: "0.0.0.0/0".parse().unwrap(),
        gateway: Some("10.9.8.254".parse().unwrap()),
        metric: None,
    };
    let lab = Route {
        dst: "10.50.0.0/16".parse().unwrap(),
        gateway: Some("10.9.8.253".parse().unwrap()),
        metric: Some(7),
    };
    assert_eq!(r, vec![default.clone(), lab.clone()]);

    // Moving them to another link, as the uplink migration does.
    l.add_address("qltrb", "10.9.7.1/24".parse().unwrap())
        .await
        .unwrap();
    l.del_address("qltra", "10.9.8.1/24".parse().unwrap())
        .await
        .unwrap();
    assert!(
        l.routes("qltra").await.unwrap().is_empty(),
        "gone with the address"
    );
    l.add_address("qltrb", "10.9.8.1/24".parse().unwrap())
        .await
        .unwrap();
    l.add_route("qltrb", &default).await.unwrap();
    l.add_route("qltrb", &lab).await.unwrap();
    l.add_route("qltrb", &lab).await.unwrap();
    let shown = ns.exec(&["ip", "-4", "route", "show", "dev", "qltrb"]);
    assert!(shown.contains("default via 10.9.8.254"), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("10.50.0.0/16 via 10.9.8.253") && l.contains("metric 7")),
        "{shown}"
    );
    assert_eq!(l.routes("qltrb").await.unwrap().len(), 2);
}

#[tokio::test]
async fn vxlan_devices_keep_exactly_their_forwarding_entries() {
    let Some(ns) = Netns::new("vxlan_devices_keep_exactly_their_forwarding_entries") else {
        return;
    };
    ns.exec(&[
        "ip", "link", "add", "qlt.u", "type", "veth", "peer", "qlt.w",
    ]);
    ns.exec(&["ip", "addr", "add", "10.9.0.1/24", "dev", "qlt.u"]);
    ns.exec(&["ip", "link", "set", "qlt.u", "up"]);
    let l = ns.links();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let mac = [2, 0x42, 10, 0, 0, 7];
    let mut v = Vxlan {
        name: "qlt.x1".into(),
        vni: 5001,
        local: ip("10.9.0.1"),
        mtu: 1450,
        fdb: [
            ([0; 6], ip("10.9.0.2")),
            ([0; 6], ip("10.9.0.3")),
            (mac, ip("10.9.0.2")),
        ]
        .into(),
    };
    let fdb = |ns: &Netns| {
        let mut lines: Vec<String> = ns
            .exec(&["bridge", "fdb", "show", "dev", "qlt.x1"])
            .lines()
            .map(|l| l.split(" self").next().unwrap().to_string())
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(l.sync_vxlan(&v).await.unwrap(), 3);
    let shown = ns.ip_link("qlt.x1");
    assert_eq!(shown["mtu"], 1450);
    assert!(shown["flags"].to_string().contains("UP"), "{shown}");
    let data = &shown["linkinfo"]["info_data"];
    assert_eq!(data["id"], 5001, "{data}");
    assert_eq!(data["local"], "10.9.0.1", "{data}");
    assert_eq!(data["port"], 4789, "{data}");
    assert_eq!(data["learning"], false, "{data}");
    assert_eq!(data["tos"], "0x1", "inherited: {data}");
    assert_eq!(
        fdb(&ns),
        [
            "00:00:00:00:00:00 dst 10.9.0.2",
            "00:00:00:00:00:00 dst 10.9.0.3",
            "02:42:0a:00:00:07 dst 10.9.0.2",
        ]
    );
    assert_eq!(l.sync_vxlan(&v).await.unwrap(), 0, "nothing to change");

    // A host leaves, a MAC moves to another host: only those entries change.
    v.fdb = [([0; 6], ip("10.9.0.2")), (mac, ip("10.9.0.4"))].into();
    v.mtu = 1400;
    assert_eq!(l.sync_vxlan(&v).await.unwrap(), 3);
    assert_eq!(
        fdb(&ns),
        [
            "00:00:00:00:00:00 dst 10.9.0.2",
            "02:42:0a:00:00:07 dst 10.9.0.4",
        ]
    );
    assert_eq!(ns.ip_link("qlt.x1")["mtu"], 1400);

    // Another VNI under the same name: the device is made again.
    v.vni = 5002;
    assert_eq!(l.sync_vxlan(&v).await.unwrap(), 2);
    assert_eq!(ns.ip_link("qlt.x1")["linkinfo"]["info_data"]["id"], 5002);
    l.delete_link("qlt.x1").await.unwrap();
    assert!(l.link("qlt.x1").await.unwrap().is_none());
}
