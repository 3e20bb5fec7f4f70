//! The links adapter's recording fake and its pure helpers (name checks, sysctl paths); no
//! root needed.

use std::path::Path;

use qingluan_dataplane::netlink::{check_name, sysctl_path, FakeLinks, LinkError, Links};

#[test]
fn names_are_checked_like_the_kernel_does() {
    for ok in ["qlv1a2b3c4d5e6f", "eth0.100", "qlb-1234", "a"] {
        check_name(ok).unwrap();
    }
    for (bad, reason) in [
        ("", "empty"),
        ("qlv1a2b3c4d5e6f7", "longer than 15 bytes"),
        ("..", "reserved"),
        ("a:b", "contains '/', ':' or whitespace"),
        ("a b", "contains '/', ':' or whitespace"),
        ("a/b", "contains '/', ':' or whitespace"),
    ] {
        let e = check_name(bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid interface name {bad:?}: {reason}")
        );
    }
}

#[test]
fn sysctl_keys_map_to_proc_sys() {
    for (key, path) in [
        ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
        (
            "net.ipv4.conf.qlb-1234.route_localnet",
            "/proc/sys/net/ipv4/conf/qlb-1234/route_localnet",
        ),
        (
            "net.ipv4.conf.eth0.100.rp_filter",
            "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
        ),
        (
            "net.ipv6.conf.all.forwarding",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ),
        (
            "net.ipv4.neigh.a.b.c.gc_stale_time",
            "/proc/sys/net/ipv4/neigh/a.b.c/gc_stale_time",
        ),
        (
            "net/ipv4/conf/eth0.100/rp_filter",
            "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
        ),
        ("net.core.somaxconn", "/proc/sys/net/core/somaxconn"),
    ] {
        assert_eq!(sysctl_path(key).unwrap(), Path::new(path), "{key}");
    }
    for bad in [
        "",
        "net..ip_forward",
        "net/../kernel/hostname",
        "net.ipv4.conf..rp_filter",
        "net/ipv4/conf/./rp_filter",
        "/net/ipv4/ip_forward",
    ] {
        assert!(
            matches!(sysctl_path(bad), Err(LinkError::InvalidSysctl { .. })),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn fake_models_veths_addresses_and_sysctls() {
    let f = FakeLinks::default();
    f.create_veth("qlv1", "qlc1", 1400, Some([2, 0x42, 0, 0, 0, 2]))
        .await
        .unwrap();
    let (h, p) = (
        f.link("qlv1").await.unwrap().unwrap(),
        f.link("qlc1").await.unwrap().unwrap(),
    );
    assert_eq!((h.mtu, p.mtu, h.up, p.up), (1400, 1400, true, false));
    assert_eq!(p.mac, Some([2, 0x42, 0, 0, 0, 2]));
    assert_eq!(h.kind.as_deref(), Some("veth"));
    assert_ne!(h.index, p.index);
    assert_eq!(
        f.create_veth("qlv2", "qlc1", 1400, None)
            .await
            .unwrap_err()
            .to_string(),
        "cannot create veth qlv2/qlc1: File exists (os error 17)"
    );
    assert!(matches!(
        f.create_veth("qlv0123456789abcd", "qlc2", 1500, None).await,
        Err(LinkError::InvalidName { .. })
    ));
    assert_eq!(
        f.set_mtu("qlv1", 70000).await.unwrap_err().to_string(),
        "cannot set mtu 70000 on qlv1: Invalid argument (os error 22)"
    );

    // Links made elsewhere (OVS internal ports) appear when configured.
    assert!(f.link("qlb1").await.unwrap().is_none());
    f.set_mtu("qlb1", 1450).await.unwrap();
    let a: ipnet::IpNet = "10.240.0.1/24".parse().unwrap();
    f.add_address("qlb1", a).await.unwrap();
    f.add_address("qlb1", a).await.unwrap();
    f.set_up("qlb1").await.unwrap();
    assert_eq!(f.addresses("qlb1").await.unwrap(), [a]);
    f.del_address("qlb1", a).await.unwrap();
    f.del_address("qlb1", a).await.unwrap();
    assert!(f.addresses("qlb1").await.unwrap().is_empty());
    assert_eq!(
        f.addresses("qlnope").await.unwrap_err().to_string(),
        "link qlnope not found"
    );
    let names: Vec<String> = f
        .links_with_prefix("ql")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["qlv1", "qlc1", "qlb1"], "index order");

    f.tx_checksum_off("qlc1").await.unwrap();
    f.sysctl("net.ipv4.ip_forward", "1").await.unwrap();
    assert!(f.sysctl("net/../x", "1").await.is_err());
    assert_eq!(
        f.sysctls
            .lock()
            .unwrap()
            .get("net.ipv4.ip_forward")
            .map(String::as_str),
        Some("1")
    );

    f.delete_link("qlc1").await.unwrap();
    f.delete_link("qlc1").await.unwrap();
    assert!(
        f.link("qlv1").await.unwrap().is_none(),
        "deleting one end removes the pair"
    );
    assert_eq!(
        *f.calls.lock().unwrap(),
        [
            "create_veth qlv1 qlc1 1400",
            "create_veth qlv2 qlc1 1400",
            "set_mtu qlv1 70000",
            "set_mtu qlb1 1450",
            "add_address qlb1 10.240.0.1/24",
            "add_address qlb1 10.240.0.1/24",
            "set_up qlb1",
            "del_address qlb1 10.240.0.1/24",
            "del_address qlb1 10.240.0.1/24",
            "tx_checksum_off qlc1",
            "sysctl net.ipv4.ip_forward=1",
            "delete_link qlc1",
            "delete_link qlc1",
        ]
    );
}

#[tokio::test]
async fn fake_fails_calls_on_request() {
    let f = FakeLinks::default();
    f.fail_next("create_veth qlv1", libc::ENOMEM);
    f.fail_next("sysctl net.ipv4.ip_forward", libc::EACCES);
    assert_eq!(
        f.create_veth("qlv1", "qlc1", 1500, None)
            .await
            .unwrap_err()
            .to_string(),
        "cannot create veth qlv1/qlc1: Cannot allocate memory (os error 12)"
    );
    assert!(f.link("qlv1").await.unwrap().is_none());
    f.create_veth("qlv1", "qlc1", 1500, None).await.unwrap();
    assert_eq!(
        f.sysctl("net.ipv4.ip_forward", "1")
            .await
            .unwrap_err()
            .to_string(),
        "cannot set sysctl net.ipv4.ip_forward=1: Permission denied (os error 13)"
    );
    f.sysctl("net.ipv4.ip_forward", "1").await.unwrap();
}
