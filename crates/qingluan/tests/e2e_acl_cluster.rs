//! ACL rules of a vxlan network across two hosts of the multi-host test bed (tests/bed):
//! a rule added on one host is kept in the cluster store and holds on both, with selectors
//! that name containers of either host; connections stay stateful although each direction
//! crosses two trackers; a host whose daemon was down applies the current rules when it
//! returns. Prints how long a rule takes to hold on the other hosts (three in all). Group
//! connections of vxlan networks and of container pairs hold across hosts.

mod bed;

use std::time::{Duration, Instant};

use bed::{enabled, strs, text, wait_until, Bed, IMAGE};

/// Starts `name` on host `h`, network `net`, serving `hi` over HTTP on port 80, with `labels`.
fn start_web(bed: &Bed, h: usize, name: &str, net: &str, labels: &[&str]) -> String {
    let mut args = vec!["run", "-d", "--name", name, "--net", net];
    for l in labels {
        args.extend(["--label", l]);
    }
    let script = "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www";
    args.extend([IMAGE, "sh", "-c", script]);
    bed.docker_ok(h, &args);
    bed.address(h, name)
}

/// Whether `from` on host `h` gets the page of `ip` (one try, 3 s).
fn fetches(bed: &Bed, h: usize, from: &str, ip: &str) -> bool {
    let script = format!("timeout 3 wget -q -O - http://{ip}/");
    let o = bed.docker(h, &["exec", from, "sh", "-c", &script]);
    o.status.success() && text(&o).contains("hi")
}

/// The rules host `h` enforces, as `acl ls --json` shows them.
fn rules(bed: &Bed, h: usize) -> Vec<serde_json::Value> {
    bed.ql_json(h, &["acl", "ls"])["rules"]
        .as_array()
        .unwrap()
        .clone()
}

/// Whether host `h` has the flows of rule `id` on its overlay bridge (cookie: the ACL
/// feature and the rule's ID; the bits between are the reconciler's).
fn has_flows(bed: &Bed, h: usize, id: &str) -> bool {
    let cookie = format!("0x07000000{}/0xff000000ffffffff", &id[..8]);
    let o = bed.exec(
        h,
        &format!("ovs-ofctl -O OpenFlow15 dump-flows qlov cookie={cookie}"),
    );
    text(&o).contains("priority=")
}

#[test]
fn vxlan_rules_hold_on_every_host() {
    if !enabled("vxlan_rules_hold_on_every_host") {
        return;
    }
    let mut bed = Bed::start(3, "");
    bed.docker_ok(
        1,
        &strs(&Bed::vxlan_args(
            "web",
            5301,
            &["--opt", "acl.default=deny"],
        )),
    );
    wait_until(20, "web on h2 and h3", || {
        bed.has_network(2, "web") && bed.has_network(3, "web")
    });
    let c1 = start_web(&bed, 1, "qlt-c1", "web", &["tier=frontend"]);
    let s2 = start_web(&bed, 2, "qlt-s2", "web", &["tier=backend"]);
    let x2 = start_web(&bed, 2, "qlt-x2", "web", &[]);

    // Default deny across hosts; the positive control is the rule below.
    assert!(!bed.ping_once(1, "qlt-c1", &s2), "default deny");
    assert!(!fetches(&bed, 1, "qlt-c1", &s2), "default deny");

    // A label rule added on h1 names a container of h2: it holds on both hosts.
    let allow = bed.acl_add(
        1,
        &[
            "--network",
            "web",
            "--from",
            "label:tier=frontend",
            "--to",
            "label:tier=backend",
            "--proto",
            "tcp",
            "--port",
            "80",
            "--allow",
        ],
    );
    let t = Instant::now();
    let mut held: Vec<(usize, u128)> = Vec::new();
    wait_until(5, "the rule's flows on h2 and h3", || {
        for h in [2, 3] {
            if !held.iter().any(|(x, _)| *x == h) && has_flows(&bed, h, &allow) {
                held.push((h, t.elapsed().as_millis()));
            }
        }
        held.len() == 2
    });
    for (h, ms) in &held {
        println!("rule holds on h{h} {ms} ms after acl add returned on h1");
    }
    let listed = rules(&bed, 2);
    let row = listed
        .iter()
        .find(|r| r["id"] == allow.as_str())
        .unwrap_or_else(|| panic!("h2 does not list {allow}: {listed:?}"));
    assert_eq!(row["scope"], "cluster", "{row}");
    assert!(
        fetches(&bed, 1, "qlt-c1", &s2),
        "frontend on h1 reaches backend on h2"
    );
    assert!(
        !fetches(&bed, 1, "qlt-c1", &x2),
        "a container without the label stays isolated"
    );
    assert!(!bed.ping_once(1, "qlt-c1", &s2), "only tcp/80 is allowed");
    assert!(
        !fetches(&bed, 2, "qlt-s2", &c1),
        "the reverse direction is not allowed"
    );
    let hits = |h: usize| {
        rules(&bed, h)
            .iter()
            .find(|r| r["id"] == allow.as_str())
            .map(|r| r["hits"].as_u64().unwrap())
            .unwrap()
    };
    assert!(
        hits(1) > 0 && hits(2) > 0,
        "both hosts count the rule: {} {}",
        hits(1),
        hits(2)
    );

    // A container deny added on h2 for h1's container cuts it; removed on h1, it is gone.
    let deny = bed.acl_add(
        2,
        &[
            "--network",
            "web",
            "--from",
            "container:qlt-c1",
            "--deny",
            "--priority",
            "300",
        ],
    );
    wait_until(5, "the deny's flows on h1", || has_flows(&bed, 1, &deny));
    assert!(!fetches(&bed, 1, "qlt-c1", &s2), "the deny holds");
    let o = bed.ql(1, &["acl", "rm", &deny]);
    assert!(o.status.success(), "acl rm on h1: {}", text(&o));
    wait_until(5, "the deny gone from h2", || !has_flows(&bed, 2, &deny));
    assert!(fetches(&bed, 1, "qlt-c1", &s2), "allowed again");

    // A host whose daemon was down applies the rules it missed when it returns: one added
    // and one removed meanwhile.
    let gone = bed.acl_add(
        1,
        &[
            "--network",
            "web",
            "--from",
            "cidr:10.199.0.9/32",
            "--proto",
            "tcp",
            "--port",
            "81",
            "--allow",
        ],
    );
    wait_until(5, "the rule's flows on h2", || has_flows(&bed, 2, &gone));
    bed.stop_daemon(2);
    let o = bed.ql(1, &["acl", "rm", &gone]);
    assert!(o.status.success(), "acl rm on h1: {}", text(&o));
    let missed = bed.acl_add(
        1,
        &[
            "--network",
            "web",
            "--from",
            "label:tier=frontend",
            "--proto",
            "icmp",
            "--allow",
        ],
    );
    bed.start_daemon(2);
    wait_until(10, "h2 applies the rules it missed", || {
        has_flows(&bed, 2, &missed) && !has_flows(&bed, 2, &gone)
    });
    assert!(
        bed.ping_once(1, "qlt-c1", &s2),
        "icmp allowed on both hosts"
    );
    assert!(fetches(&bed, 1, "qlt-c1", &s2), "earlier rules still hold");

    // A rule of a nat network is its host's alone: listed there as such, not on the others.
    bed.docker_ok(1, &strs(&Bed::network_args("nat", "qlt-loc", &[])));
    let local = bed.acl_add(1, &["--network", "qlt-loc", "--proto", "icmp", "--deny"]);
    let here = rules(&bed, 1);
    let row = here.iter().find(|r| r["id"] == local.as_str());
    assert_eq!(
        row.map(|r| r["scope"].clone()),
        Some("host".into()),
        "{here:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    for h in [2, 3] {
        let there = rules(&bed, h);
        assert!(
            there.iter().all(|r| r["id"] != local.as_str()),
            "h{h} lists h1's host rule: {there:?}"
        );
    }
    bed.docker_ok(1, &["network", "rm", "qlt-loc"]);

    // Rules go with the network's cluster definition (removed on every host): a network
    // made again with the same VNI starts without them.
    bed.docker_ok(1, &["rm", "-f", "qlt-c1"]);
    bed.docker_ok(2, &["rm", "-f", "qlt-s2", "qlt-x2"]);
    for h in [3, 2, 1] {
        bed.docker_ok(h, &["network", "rm", "web"]);
    }
    wait_until(20, "web gone from every host", || {
        (1..=3).all(|h| !bed.has_network(h, "web"))
    });
    bed.docker_ok(1, &strs(&Bed::vxlan_args("web", 5301, &[])));
    assert_eq!(rules(&bed, 1), Vec::<serde_json::Value>::new());
    std::thread::sleep(Duration::from_secs(1));
    bed.docker_ok(1, &["network", "rm", "web"]);
}

/// `qingluan connect|disconnect A B` on host `h`.
fn connect(bed: &Bed, h: usize, verb: &str, a: &str, b: &str) {
    let o = bed.ql(h, &[verb, a, b]);
    assert!(o.status.success(), "h{h}: {verb} {a} {b}: {}", text(&o));
}

/// The connections host `h` makes, as `connect ls --json` shows them.
fn connections(bed: &Bed, h: usize) -> Vec<serde_json::Value> {
    bed.ql_json(h, &["connect", "ls"])["connections"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn vxlan_networks_connect_across_hosts() {
    if !enabled("vxlan_networks_connect_across_hosts") {
        return;
    }
    let mut bed = Bed::start(2, "");
    let nat = ["--opt", "nat=true"];
    let deny = ["--opt", "nat=true", "--opt", "acl.default=deny"];
    bed.docker_ok(1, &strs(&Bed::vxlan_args("va", 5311, &deny)));
    bed.docker_ok(1, &strs(&Bed::vxlan_args("vb", 5312, &nat)));
    wait_until(20, "va and vb on h2", || {
        bed.has_network(2, "va") && bed.has_network(2, "vb")
    });
    let a1 = start_web(&bed, 1, "qlt-a1", "va", &[]);
    let b1 = start_web(&bed, 1, "qlt-b1", "vb", &[]);
    let a2 = start_web(&bed, 2, "qlt-a2", "va", &[]);
    let b2 = start_web(&bed, 2, "qlt-b2", "vb", &[]);

    // Isolated until connected; each network works within itself.
    assert!(bed.ping_once(1, "qlt-b1", &b2), "vb spans the hosts");
    assert!(!bed.ping_once(1, "qlt-a1", &b2), "networks are isolated");
    assert!(!bed.ping_once(1, "qlt-a1", &b1), "networks are isolated");

    connect(&bed, 1, "connect", "va", "vb");
    let t = Instant::now();
    wait_until(5, "h2 makes the connection", || {
        connections(&bed, 2)
            .iter()
            .any(|c| c["scope"] == "cluster" && !c["pair"]["networks"].is_null())
    });
    println!(
        "connection made on h2 {} ms after connect returned on h1",
        t.elapsed().as_millis()
    );
    wait_until(5, "a1 reaches b2 across hosts", || {
        bed.ping_once(1, "qlt-a1", &b2)
    });
    assert!(fetches(&bed, 1, "qlt-a1", &b2), "tcp across hosts");
    assert!(fetches(&bed, 2, "qlt-b2", &a1), "and back, started on h2");
    assert!(fetches(&bed, 1, "qlt-a1", &b1), "on one host");
    assert!(fetches(&bed, 2, "qlt-a2", &b2), "on the other host");
    // Each host routes between its own segments: a1 and b1 (both on h1) talk without a
    // datagram on the underlay, while a1 → b2 crosses it (the capture's positive control).
    let seen = bed.capture("udp port 4789", || {
        assert!(bed.ping_once(1, "qlt-a1", &b1), "ping on one host");
        assert!(fetches(&bed, 1, "qlt-a1", &b1), "tcp on one host");
        assert!(bed.ping_once(1, "qlt-a1", &b2), "ping across hosts");
    });
    let between = |x: &str, y: &str| {
        let names = |l: &str, ip: &str| {
            [" ", ".", ":", ","]
                .iter()
                .any(|e| l.contains(&format!("{ip}{e}")))
        };
        seen.lines().filter(|l| names(l, x) && names(l, y)).count()
    };
    assert!(between(&a1, &b2) > 0, "the capture sees the tunnel: {seen}");
    assert_eq!(between(&a1, &b1), 0, "no hairpin through h2: {seen}");
    assert!(
        !bed.ping_once(1, "qlt-a1", &a2),
        "va's default deny still holds within va"
    );
    let o = bed.ql(2, &["connect", "vb", "va"]);
    assert!(
        !o.status.success() && text(&o).contains("connected already"),
        "a second connect is refused: {}",
        text(&o)
    );
    // Overlapping subnets cannot be routed between, so `connect` would refuse them; they
    // never get that far: two networks with their gateway on the host may not overlap, and
    // the second is refused when created.
    let va_subnet = bed.docker_ok(
        1,
        &[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            "va",
        ],
    );
    let overlap = ["--opt", "nat=true", "--subnet", va_subnet.trim()];
    bed.docker_refused(
        1,
        &Bed::vxlan_args("vo", 5313, &overlap),
        "which this host already routes",
    );

    // Not masqueraded: a deny on vb naming a1 holds on both hosts, a2 is still let in.
    let cut = bed.acl_add(
        2,
        &["--network", "vb", "--from", "container:qlt-a1", "--deny"],
    );
    wait_until(5, "the deny's flows on h1", || has_flows(&bed, 1, &cut));
    assert!(!fetches(&bed, 1, "qlt-a1", &b2), "deny across hosts");
    assert!(!fetches(&bed, 1, "qlt-a1", &b1), "deny on one host");
    assert!(fetches(&bed, 2, "qlt-a2", &b2), "a2 is not denied");
    let o = bed.ql(1, &["acl", "rm", &cut]);
    assert!(o.status.success(), "acl rm: {}", text(&o));

    // A host whose daemon was down when the connection went drops it when it returns.
    bed.stop_daemon(2);
    connect(&bed, 1, "disconnect", "va", "vb");
    bed.start_daemon(2);
    wait_until(10, "h2 drops the connection it missed", || {
        connections(&bed, 2).is_empty()
    });
    wait_until(5, "a2 isolated from vb on h2", || {
        !bed.ping_once(2, "qlt-a2", &b2)
    });
    assert!(
        bed.ping_once(2, "qlt-b2", &b1),
        "positive control: vb across hosts"
    );

    // Disconnected from the other host: isolated again everywhere.
    connect(&bed, 1, "connect", "va", "vb");
    wait_until(5, "h2 makes the connection again", || {
        !connections(&bed, 2).is_empty()
    });
    wait_until(5, "a2 reaches b2 again", || bed.ping_once(2, "qlt-a2", &b2));
    connect(&bed, 2, "disconnect", "va", "vb");
    wait_until(5, "h1 drops the connection", || {
        connections(&bed, 1).is_empty()
    });
    assert!(!bed.ping_once(1, "qlt-a1", &b2), "isolated again");
    assert!(!bed.ping_once(2, "qlt-a2", &b2), "isolated again");
    assert!(bed.ping_once(1, "qlt-b1", &b2), "vb itself still works");

    // Container pairs with a container on each host are the cluster's, made by both: one
    // on va (whose default denies), one across va and vb.
    connect(&bed, 1, "connect", "qlt-a1", "qlt-a2");
    connect(&bed, 1, "connect", "qlt-b2", "qlt-a1");
    wait_until(5, "h2 makes both pairs", || {
        let pairs = connections(&bed, 2);
        pairs.len() == 2
            && pairs
                .iter()
                .all(|c| c["scope"] == "cluster" && !c["pair"]["containers"].is_null())
    });
    wait_until(5, "a1 reaches a2 across hosts", || {
        bed.ping_once(1, "qlt-a1", &a2)
    });
    assert!(fetches(&bed, 2, "qlt-a2", &a1), "the pair on va, both ways");
    assert!(fetches(&bed, 1, "qlt-a1", &b2), "the pair across networks");
    assert!(fetches(&bed, 2, "qlt-b2", &a1), "both ways");
    assert!(
        !bed.ping_once(1, "qlt-a1", &b1),
        "a1 reaches no other container"
    );
    assert!(!bed.ping_once(2, "qlt-a2", &b2), "a2 is in no pair with b2");
    connect(&bed, 2, "disconnect", "qlt-a2", "qlt-a1");
    connect(&bed, 2, "disconnect", "qlt-a1", "qlt-b2");
    wait_until(5, "h1 drops both pairs", || connections(&bed, 1).is_empty());
    assert!(!bed.ping_once(1, "qlt-a1", &a2), "isolated again");
    assert!(!bed.ping_once(1, "qlt-a1", &b2), "isolated again");

    // A connection goes with either network's cluster definition.
    connect(&bed, 1, "connect", "va", "vb");
    bed.docker_ok(1, &["rm", "-f", "qlt-a1", "qlt-b1"]);
    bed.docker_ok(2, &["rm", "-f", "qlt-a2", "qlt-b2"]);
    bed.docker_ok(2, &["network", "rm", "va"]);
    bed.docker_ok(1, &["network", "rm", "va"]);
    wait_until(20, "va gone from both hosts", || {
        !bed.has_network(1, "va") && !bed.has_network(2, "va")
    });
    bed.docker_ok(1, &strs(&Bed::vxlan_args("va", 5311, &nat)));
    assert_eq!(connections(&bed, 1), Vec::<serde_json::Value>::new());
    std::thread::sleep(Duration::from_secs(1));
    bed.docker_ok(1, &["network", "rm", "va"]);
    bed.docker_ok(1, &["network", "rm", "vb"]);
}
