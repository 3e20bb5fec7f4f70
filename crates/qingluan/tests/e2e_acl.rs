//! ACL control end to end on the real dockerd: a connectivity matrix (ping, and TCP against
//! busybox httpd) with positive controls around every refusal. A network with
//! `acl.default=deny` isolates its containers from each other; rules allow and deny by each
//! selector kind (network, container by name or ID, label, CIDR, any), statefully
//! (replies pass, the reverse direction does not), by priority (at the same one a deny
//! wins), leaving no flow when removed; a deny cuts an open connection within 1 s; a label
//! rule covers a container started after it; rules and connections hold across a daemon
//! kill -9 and an ovs-vswitchd restart; hits, drops and the spoof guard's drops (forged
//! addresses and MACs) are counted; bad input is refused with a clear error and changes
//! nothing.

mod common;

use std::time::Duration;

use common::*;

/// Starts `name` on `network` serving `hi` over HTTP on `port`, with `labels`.
fn start_web(network: &str, name: &str, port: u16, labels: &[&str]) {
    let mut args = vec![
        "run",
        "-d",
        "--cap-add",
        "NET_ADMIN",
        "--name",
        name,
        "--net",
        network,
    ];
    for l in labels {
        args.extend(["--label", l]);
    }
    let script =
        format!("mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p {port} -h /www");
    args.extend([IMAGE, "sh", "-c", &script]);
    docker(&args);
}

/// Whether `from` gets the page of `ip:port` (one try, 3 s).
fn fetches(from: &str, ip: &str, port: u16) -> bool {
    let (ok, out) = exec(from, &format!("timeout 3 wget -q -O - http://{ip}:{port}/"));
    ok && out.contains("hi")
}

/// Whether `from` can ping `ip` (one try, 1 s): for refusals, where [`pings`] would wait twice.
fn ping_once(from: &str, ip: &str) -> bool {
    exec(from, &format!("ping -c 1 -W 1 {ip}")).0
}

/// Whether a datagram from `from` to `ip:port` is echoed back by a UDP echo server in the
/// namespace of `to` (python3, since busybox nc has no `-u`). The client sends again every
/// 0.2 s for 2 s, so the server's start needs no wait.
fn udp_echoes(from: &str, to: &str, ip: &str, port: u16) -> bool {
    let server = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('0.0.0.0',{port}))\ns.settimeout(4)\n\
         while True:\n d,a=s.recvfrom(100)\n s.sendto(d,a)\n"
    );
    let client = format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.settimeout(0.2)\n\
         for i in range(10):\n s.sendto(b'hi',('{ip}',{port}))\n try:\n  \
         sys.exit(0 if s.recvfrom(100)[0]==b'hi' else 1)\n except socket.timeout:\n  pass\n\
         sys.exit(1)\n"
    );
    let in_ns = |c: &str, code: &str| {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.args(["-t", &pid_of(c), "-n", "python3", "-c", code]);
        cmd
    };
    let mut srv = in_ns(to, &server).spawn().expect("nsenter python3");
    let ok = in_ns(from, &client)
        .status()
        .expect("nsenter python3")
        .success();
    let _ = srv.kill();
    let _ = srv.wait();
    ok
}

/// `qingluan acl add ...`: the new rule's ID.
fn add(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["acl", "add"];
    all.extend_from_slice(args);
    env.qingluan(&all).trim().to_string()
}

/// The `acl ls --json` row of rule `id`.
fn row(env: &Env, id: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["--json", "acl", "ls"])).unwrap();
    v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("rule {id} not in acl ls: {v}"))
}

/// How many flows of ACL rule `id` the bridge of network `net_id` has (cookie: the ACL
/// feature and the rule's ID; the bits between are the reconciler's).
fn rule_flows(env: &Env, net_id: &str, id: &str) -> usize {
    let bridge = format!("{}b{}", env.prefix, &net_id[..8]);
    let cookie = format!("cookie=0x07000000{}/0xff000000ffffffff", &id[..8]);
    ok(
        "ovs-ofctl",
        &["-O", "OpenFlow15", "dump-flows", &bridge, &cookie],
    )
    .lines()
    .filter(|l| l.contains("priority="))
    .count()
}

#[test]
fn rules_allow_and_deny_by_each_selector_statefully() {
    if !enabled("rules_allow_and_deny_by_each_selector_statefully") {
        return;
    }
    let env = Env::new();
    let net_id = env.create_network(
        "qlt-acl",
        &["--opt", "model=nat", "--opt", "acl.default=deny"],
    );
    start_web("qlt-acl", "qlt-aw", 80, &["tier=frontend"]);
    start_web("qlt-acl", "qlt-ad", 5432, &["tier=backend"]);
    start_web("qlt-acl", "qlt-ax", 80, &[]);
    let (w, d, x) = (
        ip_of("qlt-aw", "qlt-acl"),
        ip_of("qlt-ad", "qlt-acl"),
        ip_of("qlt-ax", "qlt-acl"),
    );
    let gw = env.gateway_of("qlt-acl");

    // Default deny between the network's containers; the gateway stays reachable.
    assert!(pings("qlt-aw", &gw), "the gateway is reachable");
    assert!(!ping_once("qlt-aw", &d), "default deny between containers");
    assert!(
        !fetches("qlt-aw", &d, 5432),
        "default deny between containers"
    );

    // Labels: frontend → backend on 5432 only, one way.
    let by_label = add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            "label:tier=frontend",
            "--to",
            "label:tier=backend",
            "--proto",
            "tcp",
            "--port",
            "5432",
            "--allow",
        ],
    );
    assert!(
        fetches("qlt-aw", &d, 5432),
        "label rule allows frontend → backend"
    );
    assert!(!fetches("qlt-ax", &d, 5432), "no label, no access");
    assert!(!ping_once("qlt-aw", &d), "only tcp/5432 is allowed");
    assert!(
        !fetches("qlt-ad", &w, 80),
        "the reverse direction stays closed"
    );

    // Containers: x may ping d, and the replies come back; d may not ping x.
    add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            "container:qlt-ax",
            "--to",
            "container:qlt-ad",
            "--proto",
            "icmp",
            "--allow",
        ],
    );
    assert!(
        pings("qlt-ax", &d),
        "container rule allows x → d (and replies)"
    );
    assert!(!ping_once("qlt-ad", &x), "and not d → x");

    // UDP: x may send to d's port 5353, and d's answers come back; no other port, not d → x.
    add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            "container:qlt-ax",
            "--to",
            "container:qlt-ad",
            "--proto",
            "udp",
            "--port",
            "5353",
            "--allow",
        ],
    );
    assert!(udp_echoes("qlt-ax", "qlt-ad", &d, 5353), "udp x → d:5353");
    assert!(
        !udp_echoes("qlt-ax", "qlt-ad", &d, 5354),
        "not another port"
    );
    assert!(!udp_echoes("qlt-ad", "qlt-ax", &x, 5353), "not d → x");

    // The network itself: every container may ping every other, at a low priority.
    let by_net = add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            "qlt-acl",
            "--to",
            "qlt-acl",
            "--proto",
            "icmp",
            "--priority",
            "10",
            "--allow",
        ],
    );
    assert!(pings("qlt-ad", &x), "network rule allows d → x");

    // A network deny above the network allow beats it, and the container allow above both
    // still holds; `acl rm` gives the allow back and leaves no flow of the rule.
    let net_deny = add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            "qlt-acl",
            "--to",
            "qlt-acl",
            "--proto",
            "icmp",
            "--priority",
            "20",
            "--deny",
        ],
    );
    assert!(rule_flows(&env, &net_id, &net_deny) > 0, "the rule's flows");
    assert!(!ping_once("qlt-ad", &x), "the network deny beats the allow");
    assert!(
        pings("qlt-ax", &d),
        "the container allow at 100 beats the deny"
    );
    env.qingluan(&["acl", "rm", &net_deny]);
    assert!(pings("qlt-ad", &x), "the network allow holds again");
    assert_eq!(rule_flows(&env, &net_id, &net_deny), 0, "no flow left");

    // From any to a CIDR: x (no label) reaches d's 5432 until the rule goes.
    let to_cidr = add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            "any",
            "--to",
            &format!("cidr:{d}/32"),
            "--proto",
            "tcp",
            "--port",
            "5432",
            "--allow",
        ],
    );
    assert!(fetches("qlt-ax", &d, 5432), "any → cidr allows x → d:5432");
    env.qingluan(&["acl", "rm", &to_cidr]);
    assert!(!fetches("qlt-ax", &d, 5432), "closed again after acl rm");

    // A port list and a container by ID prefix; at the same priority a deny beats an allow.
    let x_id = docker(&["inspect", "-f", "{{.Id}}", "qlt-ax"]);
    let to_w = add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            &format!("container:{}", &x_id.trim()[..12]),
            "--to",
            "container:qlt-aw",
            "--proto",
            "tcp",
            "--port",
            "8080,80",
            "--allow",
        ],
    );
    assert!(fetches("qlt-ax", &w, 80), "the port list allows x → w:80");
    let same = add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            "container:qlt-ax",
            "--to",
            &format!("cidr:{w}/32"),
            "--proto",
            "tcp",
            "--port",
            "80",
            "--deny",
        ],
    );
    assert!(
        !fetches("qlt-ax", &w, 80),
        "a deny beats an allow at the same priority"
    );
    env.qingluan(&["acl", "rm", &same]);
    assert!(fetches("qlt-ax", &w, 80), "the allow holds again");
    env.qingluan(&["acl", "rm", &to_w]);

    // A CIDR deny at a higher priority beats both allows: w loses the gateway and d.
    let by_cidr = add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            "container:qlt-aw",
            "--to",
            &format!("cidr:{gw}/32"),
            "--deny",
            "--priority",
            "500",
        ],
    );
    let w_out = add(
        &env,
        &[
            "--network",
            "qlt-acl",
            "--from",
            "container:qlt-aw",
            "--to",
            "any",
            "--proto",
            "tcp",
            "--deny",
            "--priority",
            "500",
        ],
    );
    assert!(!ping_once("qlt-aw", &gw), "cidr deny holds");
    assert!(
        !fetches("qlt-aw", &d, 5432),
        "deny beats allow at a higher priority"
    );
    assert!(
        pings("qlt-ad", &gw),
        "positive control: d still reaches the gateway"
    );
    assert!(pings("qlt-aw", &x), "positive control: w may still ping x");

    // Counted: hits of allows, drops of denies.
    let r = row(&env, &by_label);
    assert!(r["hits"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["drops"], 0, "{r}");
    let r = row(&env, &by_cidr);
    assert!(r["drops"].as_u64().unwrap() > 0, "{r}");
    assert!(row(&env, &by_net)["hits"].as_u64().unwrap() > 0);
    let metrics = ok(
        "curl",
        &[
            "-sf",
            "--max-time",
            "10",
            &format!("http://{}/metrics", env.metrics),
        ],
    );
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("qingluan_acl_rule_packets_total{")
                && l.contains(&format!("rule=\"{by_cidr}\""))
        })
        .unwrap_or_else(|| panic!("no counter of rule {by_cidr} in /metrics:\n{metrics}"));
    assert!(
        line.contains("verdict=\"deny\"") && !line.ends_with(" 0"),
        "{line}"
    );
    let table = env.qingluan(&["acl", "ls", "--network", "qlt-acl"]);
    assert!(table.contains("label:tier=frontend"), "{table}");
    assert!(table.contains("tcp/5432"), "{table}");
    assert!(table.contains(&format!("cidr:{gw}/32")), "{table}");

    // Survives a daemon kill -9 and an ovs-vswitchd restart, allows and denies alike.
    let mut env = env;
    env.kill();
    env.start();
    assert!(
        !fetches("qlt-ax", &d, 5432),
        "default deny after the daemon restart"
    );
    assert!(
        !ping_once("qlt-aw", &gw),
        "the deny after the daemon restart"
    );
    assert!(pings("qlt-ax", &d), "the allow after the daemon restart");
    restart_by_pidfile("/run/openvswitch/ovs-vswitchd.pid", || {
        run("ovs-appctl", &["version"]).status.success()
    });
    assert!(
        wait_for(Duration::from_secs(15), || pings("qlt-ax", &d)),
        "the container rule is back after the ovs-vswitchd restart"
    );
    assert!(!ping_once("qlt-aw", &gw), "the deny is back too");
    assert!(!fetches("qlt-ax", &d, 5432), "and the default deny");

    // Removing the denies gives w back what the allows say.
    env.qingluan(&["acl", "rm", &by_cidr]);
    env.qingluan(&["acl", "rm", &w_out]);
    assert!(pings("qlt-aw", &gw));
    assert!(fetches("qlt-aw", &d, 5432));

    // Nothing is left when the network goes: no rule, no conntrack flow.
    docker(&["rm", "-f", "qlt-aw", "qlt-ad", "qlt-ax"]);
    docker(&["network", "rm", "qlt-acl"]);
    let v: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["--json", "acl", "ls"])).unwrap();
    assert_eq!(v["rules"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn a_deny_cuts_open_connections_and_labels_follow_new_containers() {
    if !enabled("a_deny_cuts_open_connections_and_labels_follow_new_containers") {
        return;
    }
    let env = Env::new();
    env.create_network("qlt-acl2", &["--opt", "model=nat"]);
    start_sleepers("qlt-acl2", &["qlt-ca", "qlt-cb"]);
    let b = ip_of("qlt-cb", "qlt-acl2");
    assert!(pings("qlt-ca", &b), "default allow");

    // A connection that sends 10 lines a second, open before the rule (busybox nc closes
    // the connection when its stdin ends, so the listener's stdin is a pipe that stays open).
    docker(&[
        "exec",
        "-d",
        "qlt-cb",
        "sh",
        "-c",
        "sleep 600 | nc -l -p 7000 > /tmp/got",
    ]);
    assert!(wait_for(Duration::from_secs(5), || {
        exec("qlt-cb", "netstat -ltn").1.contains(":7000")
    }));
    let sender = format!("while true; do echo x; sleep 0.1; done | nc {b} 7000");
    docker(&["exec", "-d", "qlt-ca", "sh", "-c", &sender]);
    let got = || {
        exec("qlt-cb", "wc -c < /tmp/got")
            .1
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(5), || got() > 10),
        "the connection carries data"
    );
    let deny = add(
        &env,
        &[
            "--network",
            "qlt-acl2",
            "--from",
            "container:qlt-ca",
            "--to",
            "container:qlt-cb",
            "--proto",
            "tcp",
            "--port",
            "7000",
            "--deny",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let at_1s = got();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(got(), at_1s, "data still flows 1 s after the deny");
    assert!(
        pings("qlt-ca", &b),
        "positive control: only tcp/7000 is denied"
    );
    assert!(row(&env, &deny)["drops"].as_u64().unwrap() > 0);

    // A label rule made before its container exists covers it once it starts.
    add(
        &env,
        &[
            "--network",
            "qlt-acl2",
            "--from",
            "label:role=intruder",
            "--to",
            "any",
            "--deny",
        ],
    );
    docker(&[
        "run",
        "-d",
        "--name",
        "qlt-cc",
        "--net",
        "qlt-acl2",
        "--label",
        "role=intruder",
        IMAGE,
        "sleep",
        "600",
    ]);
    assert!(
        wait_for(Duration::from_secs(5), || !ping_once("qlt-cc", &b)),
        "the label rule covers the new container"
    );
    assert!(
        pings("qlt-ca", &b),
        "positive control: others still reach b"
    );

    docker(&["rm", "-f", "qlt-ca", "qlt-cb", "qlt-cc"]);
    docker(&["network", "rm", "qlt-acl2"]);
}

#[test]
fn bad_input_is_refused_and_spoofing_is_counted() {
    if !enabled("bad_input_is_refused_and_spoofing_is_counted") {
        return;
    }
    let env = Env::new();
    env.create_network("qlt-acl3", &["--opt", "model=nat"]);
    start_sleepers("qlt-acl3", &["qlt-ba", "qlt-bb"]);
    let first = add(
        &env,
        &[
            "--network",
            "qlt-acl3",
            "--proto",
            "tcp",
            "--port",
            "80",
            "--allow",
        ],
    );
    let before = env.qingluan(&["--json", "acl", "ls"]);
    let refused = |args: &[&str], want: &str| {
        let mut all = vec!["acl", "add"];
        all.extend_from_slice(args);
        let o = env.cli(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    refused(
        &["--network", "nope", "--allow"],
        "network \"nope\" is not a qingluan network",
    );
    refused(
        &["--network", "qlt-acl3", "--from", "nope", "--allow"],
        "--from: network \"nope\"",
    );
    refused(
        &[
            "--network",
            "qlt-acl3",
            "--to",
            "container:qlt-none",
            "--allow",
        ],
        "--to: no container \"qlt-none\"",
    );
    refused(
        &[
            "--network",
            "qlt-acl3",
            "--to",
            "cidr:10.0.0.300/8",
            "--allow",
        ],
        "invalid CIDR \"10.0.0.300/8\"",
    );
    for p in ["0", "70000"] {
        refused(
            &[
                "--network",
                "qlt-acl3",
                "--proto",
                "tcp",
                "--port",
                p,
                "--allow",
            ],
            &format!("invalid port \"{p}\""),
        );
    }
    refused(
        &[
            "--network",
            "qlt-acl3",
            "--proto",
            "icmp",
            "--port",
            "80",
            "--allow",
        ],
        "--port needs --proto tcp or udp (not icmp)",
    );
    refused(
        &[
            "--network",
            "qlt-acl3",
            "--proto",
            "tcp",
            "--port",
            "80",
            "--allow",
        ],
        &format!("the same rule exists already as {first}"),
    );
    refused(
        &["--network", "qlt-acl3", "--priority", "1001", "--allow"],
        "invalid priority",
    );
    refused(
        &["--network", "qlt-acl3"],
        "give exactly one of --allow and --deny",
    );
    refused(
        &["--network", "qlt-acl3", "--proto", "sctp", "--allow"],
        "invalid protocol",
    );
    let o = env.cli(&["acl", "rm", "ffffffff"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no ACL rule ffffffff"));
    let err = env.create_network_fails(
        "qlt-acl4",
        &["--opt", "model=nat", "--opt", "acl.default=maybe"],
    );
    assert!(err.contains("invalid acl.default \"maybe\""), "{err}");
    let strip = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
        v["spoofed"] = serde_json::Value::Null;
        v
    };
    assert_eq!(
        strip(&env.qingluan(&["--json", "acl", "ls"])),
        strip(&before),
        "refused input changed nothing"
    );

    // The spoof guard's drops are a line of their own.
    let b = ip_of("qlt-bb", "qlt-acl3");
    let spoof = b.rsplit_once('.').map(|(n, _)| format!("{n}.200")).unwrap();
    exec("qlt-ba", &format!("ip addr add {spoof}/24 dev eth0"));
    assert!(!exec("qlt-ba", &format!("ping -c 2 -W 1 -I {spoof} {b}")).0);
    let table = env.qingluan(&["acl", "ls"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("spoof guard:"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(!line.starts_with("spoof guard: 0 "), "{line}");

    // A forged source MAC is dropped and counted too; the own MAC works again.
    let spoofed = || -> u64 {
        let table = env.qingluan(&["acl", "ls"]);
        table
            .lines()
            .find_map(|l| l.strip_prefix("spoof guard: "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{table}"))
    };
    let before = spoofed();
    let mac = exec("qlt-ba", "cat /sys/class/net/eth0/address").1;
    exec("qlt-ba", &format!("ip addr del {spoof}/24 dev eth0"));
    exec("qlt-ba", "ip link set eth0 address 02:00:00:00:aa:01");
    assert!(!ping_once("qlt-ba", &b), "a forged MAC gets nowhere");
    assert!(spoofed() > before, "and is counted");
    exec(
        "qlt-ba",
        &format!("ip link set eth0 address {}", mac.trim()),
    );
    assert!(pings("qlt-ba", &b), "positive control: the own MAC");

    docker(&["rm", "-f", "qlt-ba", "qlt-bb"]);
    docker(&["network", "rm", "qlt-acl3"]);
}

#[test]
fn connect_lets_networks_and_container_pairs_talk_until_disconnect() {
    if !enabled("connect_lets_networks_and_container_pairs_talk_until_disconnect") {
        return;
    }
    let env = Env::new();
    env.create_network("qlt-cn1", &["--opt", "model=nat"]);
    env.create_network("qlt-cn2", &["--opt", "model=nat"]);
    env.create_network(
        "qlt-cn3",
        &["--opt", "model=nat", "--opt", "acl.default=deny"],
    );
    env.create_network("qlt-cn4", &["--opt", "model=nat", "--internal"]);
    start_web("qlt-cn1", "qlt-k1", 80, &[]);
    start_sleepers("qlt-cn1", &["qlt-k3"]);
    start_web("qlt-cn2", "qlt-k2", 80, &[]);
    start_sleepers("qlt-cn3", &["qlt-k4", "qlt-k5"]);
    let (k1, k2) = (ip_of("qlt-k1", "qlt-cn1"), ip_of("qlt-k2", "qlt-cn2"));
    let k5 = ip_of("qlt-k5", "qlt-cn3");
    assert!(
        pings("qlt-k1", &env.gateway_of("qlt-cn1")),
        "positive control"
    );
    assert!(!ping_once("qlt-k1", &k2), "networks start isolated");

    // Two networks: routed between their gateways, both ways, with real source addresses.
    env.qingluan(&["connect", "qlt-cn1", "qlt-cn2"]);
    assert!(pings("qlt-k1", &k2), "cn1 → cn2 after connect");
    assert!(pings("qlt-k3", &k2), "every container of cn1");
    assert!(fetches("qlt-k2", &k1, 80), "cn2 → cn1 after connect");
    add(
        &env,
        &[
            "--network",
            "qlt-cn2",
            "--from",
            "container:qlt-k3",
            "--to",
            "any",
            "--deny",
        ],
    );
    assert!(
        !ping_once("qlt-k3", &k2),
        "a rule on cn2 sees k3's own address (not masqueraded)"
    );
    assert!(
        pings("qlt-k1", &k2),
        "positive control: k1 still reaches k2"
    );
    let ls = env.qingluan(&["connect", "ls"]);
    assert!(
        ls.contains("networks") && ls.contains("qlt-cn1") && ls.contains("qlt-cn2"),
        "{ls}"
    );

    // What connect refuses, with its reason, keeping nothing.
    let kept = env.qingluan(&["--json", "connect", "ls"]);
    let refused = |a: &str, b: &str, want: &str| {
        let o = env.cli(&["connect", a, b]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "connect {a} {b}: {err}"
        );
    };
    refused(
        "qlt-cn1",
        "qlt-cn2",
        "qlt-cn1 and qlt-cn2 are connected already",
    );
    refused("qlt-cn1", "qlt-cn1", "cannot connect qlt-cn1 to itself");
    refused(
        "qlt-cn1",
        "qlt-cn4",
        "network qlt-cn4 has no gateway on the host (--internal)",
    );
    refused(
        "qlt-cn1",
        "qlt-k2",
        "must be two qingluan networks or two containers",
    );
    refused(
        "qlt-cn1",
        "nope",
        "must be two qingluan networks or two containers",
    );
    assert_eq!(env.qingluan(&["--json", "connect", "ls"]), kept);

    env.qingluan(&["disconnect", "qlt-cn1", "qlt-cn2"]);
    assert!(!ping_once("qlt-k1", &k2), "isolated again after disconnect");
    assert!(
        pings("qlt-k1", &env.gateway_of("qlt-cn1")),
        "positive control"
    );

    // A container pair across networks: only the pair.
    env.qingluan(&["connect", "qlt-k1", "qlt-k2"]);
    assert!(pings("qlt-k1", &k2), "the pair talks");
    assert!(fetches("qlt-k2", &k1, 80), "both ways");
    assert!(!ping_once("qlt-k3", &k2), "the rest of cn1 does not");
    // The pair follows a container through a restart (a new endpoint).
    docker(&["restart", "-t", "0", "qlt-k2"]);
    let k2 = ip_of("qlt-k2", "qlt-cn2");
    assert!(
        wait_for(Duration::from_secs(10), || ping_once("qlt-k1", &k2)),
        "the pair talks again after k2 restarted"
    );
    env.qingluan(&["disconnect", "qlt-k2", "qlt-k1"]);
    assert!(!ping_once("qlt-k1", &k2), "the pair is isolated again");

    // A pair on one network whose default is deny.
    assert!(!ping_once("qlt-k4", &k5), "default deny");
    env.qingluan(&["connect", "qlt-k4", "qlt-k5"]);
    assert!(pings("qlt-k4", &k5), "the pair talks on its network");

    // Connections survive a daemon kill -9 and an ovs-vswitchd restart.
    env.qingluan(&["connect", "qlt-cn1", "qlt-cn2"]);
    assert!(pings("qlt-k1", &k2), "connected again");
    let mut env = env;
    env.kill();
    env.start();
    assert!(
        pings("qlt-k1", &k2),
        "the networks after the daemon restart"
    );
    assert!(pings("qlt-k4", &k5), "the pair after the daemon restart");
    assert!(!ping_once("qlt-k3", &k2), "and the deny on cn2");
    restart_by_pidfile("/run/openvswitch/ovs-vswitchd.pid", || {
        run("ovs-appctl", &["version"]).status.success()
    });
    assert!(
        wait_for(Duration::from_secs(15), || ping_once("qlt-k1", &k2)),
        "the networks after the ovs-vswitchd restart"
    );
    assert!(
        pings("qlt-k4", &k5),
        "the pair after the ovs-vswitchd restart"
    );
    assert!(!ping_once("qlt-k3", &k2), "and the deny on cn2");

    // A network's connections go with it.
    docker(&["rm", "-f", "qlt-k1", "qlt-k2", "qlt-k3", "qlt-k4", "qlt-k5"]);
    docker(&["network", "rm", "qlt-cn2"]);
    let v: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["--json", "connect", "ls"])).unwrap();
    assert!(
        v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["pair"]["networks"].is_null()),
        "{v}"
    );
    docker(&["network", "rm", "qlt-cn1", "qlt-cn3", "qlt-cn4"]);
}

/// The routes in `container`'s namespace, as `ip route` prints them.
fn routes_of(container: &str) -> String {
    exec(container, "ip route").1
}

#[test]
fn nonat_networks_connect_through_routes_in_their_containers() {
    if !enabled("nonat_networks_connect_through_routes_in_their_containers") {
        return;
    }
    let env = Env::new();
    env.create_network("qlt-nn1", &["--opt", "model=nonat"]);
    env.create_network("qlt-nn2", &["--opt", "model=nonat"]);
    env.create_network("qlt-nn3", &["--opt", "model=nat"]);
    start_web("qlt-nn1", "qlt-m1", 80, &[]);
    start_web("qlt-nn2", "qlt-m2", 80, &[]);
    start_web("qlt-nn3", "qlt-m3", 80, &[]);
    let (m1, m2, m3) = (
        ip_of("qlt-m1", "qlt-nn1"),
        ip_of("qlt-m2", "qlt-nn2"),
        ip_of("qlt-m3", "qlt-nn3"),
    );
    let (gw1, gw2) = (env.gateway_of("qlt-nn1"), env.gateway_of("qlt-nn2"));
    assert!(pings("qlt-m1", &gw1), "positive control: m1's gateway");
    assert!(!fetches("qlt-m1", &m2, 80), "nonat networks start isolated");

    // Running containers get a route to the other network through their own gateway.
    env.qingluan(&["connect", "qlt-nn1", "qlt-nn2"]);
    assert!(fetches("qlt-m1", &m2, 80), "nn1 → nn2 after connect");
    assert!(fetches("qlt-m2", &m1, 80), "nn2 → nn1 after connect");
    assert!(
        routes_of("qlt-m1").contains(&format!("via {gw1}")),
        "{}",
        routes_of("qlt-m1")
    );
    assert!(
        !fetches("qlt-m1", &m3, 80),
        "still no way to a network that is not connected"
    );
    // A container started after the connection gets its route at Join.
    start_web("qlt-nn1", "qlt-m4", 80, &[]);
    assert!(fetches("qlt-m4", &m2, 80), "a later container of nn1 → nn2");
    assert!(
        fetches("qlt-m2", &ip_of("qlt-m4", "qlt-nn1"), 80),
        "and back"
    );

    // A nonat network with a nat network: the nat side has its default route.
    env.qingluan(&["connect", "qlt-nn1", "qlt-nn3"]);
    assert!(fetches("qlt-m1", &m3, 80), "nn1 → nn3");
    assert!(fetches("qlt-m3", &m1, 80), "nn3 → nn1");

    // Disconnect takes the routes out of the running containers.
    env.qingluan(&["disconnect", "qlt-nn1", "qlt-nn2"]);
    assert!(!fetches("qlt-m1", &m2, 80), "isolated again");
    let left = routes_of("qlt-m2");
    assert!(!left.contains(&format!("via {gw2}")), "{left}");
    assert!(fetches("qlt-m1", &m3, 80), "the other connection stays");

    // A pair of a nonat container with a container of another network: the nonat one gets
    // a route to its partner's network, and only the pair talks.
    env.qingluan(&["connect", "qlt-m2", "qlt-m3"]);
    assert!(fetches("qlt-m2", &m3, 80), "m2 → m3 as a pair");
    assert!(fetches("qlt-m3", &m2, 80), "m3 → m2 as a pair");
    assert!(
        !fetches("qlt-m4", &m2, 80),
        "nn1 stays isolated from nn2: the pair is not the networks"
    );
    // Restarted, m2 gets the route once its container is learnt again.
    docker(&["restart", "-t", "0", "qlt-m2"]);
    let m2 = ip_of("qlt-m2", "qlt-nn2");
    assert!(
        wait_for(Duration::from_secs(10), || fetches("qlt-m2", &m3, 80)),
        "m2 → m3 after m2's restart: {}",
        routes_of("qlt-m2")
    );
    assert!(fetches("qlt-m3", &m2, 80), "m3 → m2 after m2's restart");
    env.qingluan(&["disconnect", "qlt-m2", "qlt-m3"]);
    assert!(!fetches("qlt-m2", &m3, 80), "the pair is isolated again");
    let left = routes_of("qlt-m2");
    assert!(!left.contains(&format!("via {gw2}")), "{left}");

    // A restarted container gets its routes back at Join.
    docker(&["restart", "-t", "0", "qlt-m1"]);
    let m1 = ip_of("qlt-m1", "qlt-nn1");
    assert!(
        wait_for(Duration::from_secs(10), || fetches("qlt-m3", &m1, 80)),
        "nn3 reaches m1 after its restart"
    );
    assert!(fetches("qlt-m1", &m3, 80), "and m1 reaches nn3");
    docker(&["rm", "-f", "qlt-m1", "qlt-m2", "qlt-m3", "qlt-m4"]);
    docker(&["network", "rm", "qlt-nn1", "qlt-nn2", "qlt-nn3"]);
}

#[test]
fn ipv6_between_containers_follows_the_default() {
    if !enabled("ipv6_between_containers_follows_the_default") {
        return;
    }
    let env = Env::new();
    let dual = |name: &str, v4: &str, v6: &str, default: &str| {
        env.create_network(
            name,
            &[
                "--opt",
                "model=nat",
                "--opt",
                &format!("acl.default={default}"),
                "--ipv6",
                "--subnet",
                v4,
                "--subnet",
                v6,
            ],
        );
    };
    dual("qlt-d6a", "10.248.20.0/24", "fd48:20::/64", "deny");
    dual("qlt-d6b", "10.248.21.0/24", "fd48:21::/64", "allow");
    start_sleepers("qlt-d6a", &["qlt-6d1", "qlt-6d2"]);
    start_sleepers("qlt-d6b", &["qlt-6e1", "qlt-6e2"]);
    let addr = |c: &str, scope: &str| {
        let out = exec(c, &format!("ip -6 -o addr show dev eth0 scope {scope}")).1;
        out.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no {scope} IPv6 address on {c}: {out}"))
            .to_string()
    };
    let ping6 = |from: &str, to: &str| {
        exec(
            from,
            &format!("for i in 1 2 3; do ping -c 1 -W 1 {to} && exit 0; done; exit 1"),
        )
        .0
    };
    assert!(ping6("qlt-6d1", "fd48:20::1"), "the IPv6 gateway answers");
    assert!(
        !ping6("qlt-6d1", &addr("qlt-6d2", "global")),
        "default deny holds for IPv6"
    );
    let link = format!("-I eth0 {}", addr("qlt-6d2", "link"));
    assert!(!ping6("qlt-6d1", &link), "and for link-local addresses");
    assert!(
        ping6("qlt-6e1", &addr("qlt-6e2", "global")),
        "positive control: IPv6 between containers under the default allow"
    );
    assert!(
        ping6("qlt-6e1", &format!("-I eth0 {}", addr("qlt-6e2", "link"))),
        "positive control: link-local"
    );
    docker(&["rm", "-f", "qlt-6d1", "qlt-6d2", "qlt-6e1", "qlt-6e2"]);
    docker(&["network", "rm", "qlt-d6a", "qlt-d6b"]);
}
