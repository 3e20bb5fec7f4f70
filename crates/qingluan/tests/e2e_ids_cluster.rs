//! The detector on a vxlan network across two hosts of the multi-host test bed
//! (tests/bed): `ids enable` on h1 watches the network on both hosts, and h2 runs the rule
//! set h1 loaded; a signature between two containers of h2 is reported by h2, one from a
//! container of h1 to one of h2 by both hosts with both containers' names; in IPS mode a
//! scan on h2 quarantines the scanner on every host, and `ids release` on h1 lifts it.

mod bed;

use bed::{enabled, strs, text, wait_until, Bed, IMAGE};

const SID: u64 = 1_000_101;

/// Host `h`'s alerts with signature `sid` (`ids alerts --json`).
fn alerts(bed: &Bed, h: usize, sid: u64) -> Vec<serde_json::Value> {
    let o = bed.ql(h, &["--json", "ids", "alerts"]);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("an EVE line"))
        .filter(|a| a["alert"]["signature_id"] == sid)
        .collect()
}

/// Whether host `h`'s detector reads the watched network's capture port with `rules`
/// rules.
fn inspecting(bed: &Bed, h: usize, rules: u64) -> bool {
    let s = bed.ql_json(h, &["ids", "status"]);
    s["watches"][0]["inspecting"] == true && s["rules"]["count"] == rules
}

/// Whether `container` is quarantined as host `h` sees it.
fn quarantined(bed: &Bed, h: usize, container: &str) -> bool {
    bed.ql_json(h, &["ids", "status"])["quarantined"]
        .as_array()
        .is_some_and(|q| q.iter().any(|q| q["container"] == container))
}

/// `timeout 3 wget` of `http://ip/path` from `from` on host `h`.
fn fetch(bed: &Bed, h: usize, from: &str, ip: &str, path: &str) {
    let script = format!("timeout 3 wget -q -O - http://{ip}/{path}");
    let o = bed.docker(h, &["exec", from, "sh", "-c", &script]);
    assert!(o.status.success(), "the request goes through: {}", text(&o));
}

#[test]
fn a_watch_of_a_vxlan_network_holds_on_every_host() {
    if !enabled("a_watch_of_a_vxlan_network_holds_on_every_host") {
        return;
    }
    let bed = Bed::start(2, "");
    bed.docker_ok(1, &strs(&Bed::vxlan_args("web", 5401, &[])));
    wait_until(20, "web on h2", || bed.has_network(2, "web"));
    let c1 = bed.sleeper(1, "qlt-c1", "web");
    let c2 = bed.sleeper(2, "qlt-c2", "web");
    let script = "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www";
    bed.docker_ok(
        2,
        &[
            "run", "-d", "--name", "qlt-s2", "--net", "web", IMAGE, "sh", "-c", script,
        ],
    );
    let s2 = bed.address(2, "qlt-s2");
    wait_until(20, "h1 knows h2's containers", || {
        bed.ping_once(1, "qlt-c1", &s2)
    });

    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("web.rules");
    std::fs::write(
        &rules,
        format!(
            "alert tcp any any -> any 80 (msg:\"QLT cluster marker\"; flow:to_server,established; content:\"qlt-cluster-marker\"; sid:{SID}; rev:1;)\n"
        ),
    )
    .unwrap();
    let o = bed.ql(
        1,
        &[
            "ids",
            "enable",
            "--network",
            "web",
            "--rules",
            rules.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // h2 applies the watch and runs the rules h1 loaded.
    wait_until(20, "both hosts inspect web with the rule", || {
        inspecting(&bed, 1, 1) && inspecting(&bed, 2, 1)
    });

    // Between two containers of h2: h2 reports it.
    fetch(&bed, 2, "qlt-c2", &s2, "?q=qlt-cluster-marker-1");
    wait_until(10, "h2's alert", || !alerts(&bed, 2, SID).is_empty());
    let a = &alerts(&bed, 2, SID)[0];
    assert_eq!(a["src_ip"], c2.as_str(), "{a}");
    assert_eq!(a["qingluan"]["src_container"], "qlt-c2", "{a}");
    assert_eq!(a["qingluan"]["dest_container"], "qlt-s2", "{a}");
    assert!(
        alerts(&bed, 1, SID).is_empty(),
        "h1 does not see h2's own traffic"
    );

    // From h1 to h2: each host inspects its own container's side; both name both.
    fetch(&bed, 1, "qlt-c1", &s2, "?q=qlt-cluster-marker-2");
    wait_until(10, "the alerts of both hosts", || {
        !alerts(&bed, 1, SID).is_empty() && alerts(&bed, 2, SID).len() >= 2
    });
    for h in [1, 2] {
        let a = alerts(&bed, h, SID).pop().unwrap();
        assert_eq!(a["src_ip"], c1.as_str(), "h{h}: {a}");
        assert_eq!(a["qingluan"]["src_container"], "qlt-c1", "h{h}: {a}");
        assert_eq!(a["qingluan"]["dest_container"], "qlt-s2", "h{h}: {a}");
        assert_eq!(a["qingluan"]["network"], "web", "h{h}: {a}");
    }

    // IPS: a scan on h2 quarantines the scanner on both hosts; release on h1 lifts it.
    let o = bed.ql(1, &["ids", "enable", "--network", "web", "--mode", "ips"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(20, "h2 in IPS mode", || {
        bed.ql_json(2, &["ids", "status"])["watches"][0]["mode"] == "ips"
    });
    assert!(bed.ping_once(1, "qlt-c1", &c2), "before the scan");
    let scan = format!(
        "for p in $(seq 2000 2199); do nc -w1 {s2} $p </dev/null; \
         ping -c 1 -W 1 {s2} >/dev/null || break; done"
    );
    bed.docker_ok(2, &["exec", "-d", "qlt-c2", "sh", "-c", &scan]);
    wait_until(20, "the scanner quarantined on both hosts", || {
        quarantined(&bed, 1, "qlt-c2") && quarantined(&bed, 2, "qlt-c2")
    });
    assert!(!bed.ping_once(1, "qlt-c1", &c2), "cut off across hosts");
    assert!(!bed.ping_once(2, "qlt-c2", &s2), "cut off on its host");
    assert!(bed.ping_once(1, "qlt-c1", &s2), "the others still talk");
    let o = bed.ql(1, &["ids", "release", "qlt-c2"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(10, "released on both hosts", || {
        bed.ping_once(1, "qlt-c1", &c2) && bed.ping_once(2, "qlt-c2", &s2)
    });

    // Disable on h2 stops the watch on h1 too.
    let o = bed.ql(2, &["ids", "disable", "--network", "web"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(20, "no watch on h1", || {
        bed.ql_json(1, &["ids", "status"])["watches"] == serde_json::json!([])
    });
}
