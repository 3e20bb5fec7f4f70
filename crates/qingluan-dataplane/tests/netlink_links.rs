//! The rtnetlink links adapter against the real kernel, on `qlt`-prefixed links of its own
//! (removed by a guard even on panic). Skipped visibly when not root.

use std::process::Command;

use qingluan_dataplane::netlink::{Links, NetlinkLinks};

struct Cleanup(&'static [&'static str]);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for l in self.0 {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
    }
}

fn out(cmd: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new(cmd).args(args).output().unwrap().stdout).into_owned()
}

#[tokio::test]
async fn veths_addresses_offload_and_sysctls() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP: veths_addresses_offload_and_sysctls: needs root");
        return;
    }
    let _g = Cleanup(&["qltnla", "qltnlb"]);
    let l = NetlinkLinks::new().unwrap();
    l.create_veth("qltnla", "qltnlb", 1400, Some([2, 0x42, 1, 2, 3, 4]))
        .await
        .unwrap();
    let a = l.link("qltnla").await.unwrap().unwrap();
    let b = l.link("qltnlb").await.unwrap().unwrap();
    assert_eq!((a.mtu, b.mtu), (1400, 1400));
    assert!(a.up && !b.up);
    assert_eq!(b.mac, Some([2, 0x42, 1, 2, 3, 4]));
    let e = l
        .create_veth("qltnla", "qltnlb", 1400, None)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot create veth qltnla/qltnlb:"),
        "{e}"
    );
    let names: Vec<String> = l
        .links_with_prefix("qltnl")
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    l.set_up("qltnlb").await.unwrap();
    l.set_mtu("qltnlb", 1300).await.unwrap();
    assert_eq!(l.link("qltnlb").await.unwrap().unwrap().mtu, 1300);
    let addr: ipnet::IpNet = "10.251.77.1/30".parse().unwrap();
    l.add_address("qltnla", addr).await.unwrap();
    l.add_address("qltnla", addr).await.unwrap();
    let v4 = |v: Vec<ipnet::IpNet>| {
        v.into_iter()
            .filter(|a| a.addr().is_ipv4())
            .collect::<Vec<_>>()
    };
    assert_eq!(v4(l.addresses("qltnla").await.unwrap()), vec![addr]);
    l.del_address("qltnla", addr).await.unwrap();
    l.del_address("qltnla", addr).await.unwrap();
    assert!(v4(l.addresses("qltnla").await.unwrap()).is_empty());

    l.tx_checksum_off("qltnlb").await.unwrap();
    let k = out("ethtool", &["-k", "qltnlb"]);
    assert!(k.contains("tx-checksumming: off"), "{k}");

    l.sysctl("net.ipv4.conf.qltnla.route_localnet", "1")
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/qltnla/route_localnet")
            .unwrap()
            .trim(),
        "1"
    );
    assert!(l.sysctl("net/../x", "1").await.is_err());

    let e = l
        .create_veth("qltnl-much-too-long", "qltnlc", 1500, None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid interface name \"qltnl-much-too-long\": 1 to 15 characters"
    );
    l.delete_link("qltnla").await.unwrap();
    l.delete_link("qltnla").await.unwrap();
    assert!(
        l.link("qltnlb").await.unwrap().is_none(),
        "deleting one end removes the pair"
    );
}
