//! Port mirroring end to end on the real dockerd: `mirror add --network N --to
//! container:A` copies what N's containers send and receive to A's port, as tcpdump in A's
//! namespace sees, while the mirrored traffic still flows; before the mirror and after
//! `mirror rm`, A sees none of it (the controls). `--to interface:I` adds a host interface
//! to the bridge for as long as the mirror exists, and the copies come out of it. Bad input is refused with a clear error
//! and changes nothing; the mirror survives a daemon kill -9 and goes with its network.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

/// The command that runs a program in `container`'s network namespace.
fn in_container(container: &str) -> Vec<String> {
    ["nsenter", "-t", &pid_of(container), "-n"]
        .map(String::from)
        .to_vec()
}

/// The command that runs a program in the network namespace `ns`.
fn in_netns(ns: &str) -> Vec<String> {
    ["ip", "netns", "exec", ns].map(String::from).to_vec()
}

/// What tcpdump on `eth0` of a namespace (entered with `enter`) prints for frames
/// matching `filter` while `traffic` runs (it is started first and stops 2 s after
/// `traffic` returns).
fn captured(enter: &[String], filter: &str, traffic: impl FnOnce()) -> String {
    let mut child = Command::new(&enter[0])
        .args(&enter[1..])
        .args(["tcpdump", "-i", "eth0", "-n", "-l", filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsenter tcpdump");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while err.read_line(&mut line).expect("tcpdump's stderr") > 0 && !line.contains("listening") {
        line.clear();
    }
    assert!(line.contains("listening"), "tcpdump did not start: {line}");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let mut guard = Guard(child);
    traffic();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _ = guard.0.kill();
    let _ = guard.0.wait();
    reader.join().expect("tcpdump reader")
}

/// `qingluan mirror add --network NETWORK --to TO`: whether it succeeded, and its output.
fn add(env: &Env, network: &str, to: &str) -> (bool, String) {
    let o = env.cli(&["mirror", "add", "--network", network, "--to", to]);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), text.trim().to_string())
}

/// The mirrors `mirror ls --json` lists.
fn mirrors(env: &Env) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["--json", "mirror", "ls"])).unwrap();
    v["mirrors"].as_array().unwrap().clone()
}

#[test]
fn a_mirror_copies_a_networks_traffic_to_an_analyzer() {
    if !enabled("a_mirror_copies_a_networks_traffic_to_an_analyzer") {
        return;
    }
    let mut env = Env::new();
    env.create_network("qlt-mir", &["--opt", "model=nat"]);
    env.create_network("qlt-mir2", &["--opt", "model=nat"]);
    start_sleepers("qlt-mir", &["qlt-ma", "qlt-mb", "qlt-man"]);
    start_sleepers("qlt-mir2", &["qlt-mo"]);
    let b = ip_of("qlt-mb", "qlt-mir");
    let a = ip_of("qlt-ma", "qlt-mir");
    let filter = format!("icmp and host {a} and host {b}");
    let ping_b = || assert!(pings("qlt-ma", &b), "a reaches b");

    // The control: without a mirror the analyzer sees nothing of a and b.
    let seen = captured(&in_container("qlt-man"), &filter, ping_b);
    assert!(!seen.contains("ICMP"), "no mirror, no copies: {seen}");

    // Bad input is refused and changes nothing.
    for (to, want) in [
        ("container:qlt-mo", "is not on network"),
        ("container:qlt-nosuch", "is not on network"),
        ("qlt-man", "expected container:"),
        ("interface:qlt-nosuch0", "no interface"),
    ] {
        let (ok, text) = add(&env, "qlt-mir", to);
        assert!(!ok && text.contains(want), "{to}: {text}");
    }
    let (ok, text) = add(&env, "qlt-nosuch", "container:qlt-man");
    assert!(!ok && text.contains("not a qingluan network"), "{text}");
    assert!(mirrors(&env).is_empty(), "nothing was stored");

    // The mirror: both directions of a's and b's traffic reach the analyzer, and the
    // traffic itself still flows.
    let (ok, id) = add(&env, "qlt-mir", "container:qlt-man");
    assert!(ok, "{id}");
    let seen = captured(&in_container("qlt-man"), &filter, ping_b);
    assert!(
        seen.contains(&format!("{a} > {b}: ICMP echo request"))
            && seen.contains(&format!("{b} > {a}: ICMP echo reply")),
        "both directions are copied: {seen}"
    );
    let listed = mirrors(&env);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(
        listed[0]["watched"], 2,
        "a and b, not the analyzer: {listed:?}"
    );
    let (ok, text) = add(&env, "qlt-mir", "container:qlt-man");
    assert!(
        !ok && text.contains("already"),
        "a duplicate is refused: {text}"
    );

    // Kept across a daemon kill -9: the copies still come.
    env.kill();
    env.start();
    let seen = captured(&in_container("qlt-man"), &filter, ping_b);
    assert!(
        seen.contains("ICMP echo request"),
        "after a restart: {seen}"
    );

    // Removed: no more copies.
    env.qingluan(&["mirror", "rm", &id]);
    let seen = captured(&in_container("qlt-man"), &filter, ping_b);
    assert!(!seen.contains("ICMP"), "removed, no copies: {seen}");

    // An interface target: the host end of a veth whose other end is in a namespace of the
    // test. It joins the bridge while the mirror exists; the copies come out there.
    let (ns, _, _) = env.outside();
    let iface = ns.replace("qlt-out", "qlto");
    let (ok, by_iface) = add(&env, "qlt-mir", &format!("interface:{iface}"));
    assert!(ok, "{by_iface}");
    let seen = captured(&in_netns(&ns), &filter, ping_b);
    assert!(
        seen.contains(&format!("{a} > {b}: ICMP echo request"))
            && seen.contains(&format!("{b} > {a}: ICMP echo reply")),
        "copies out of the interface: {seen}"
    );
    let (ok, text) = add(&env, "qlt-mir2", &format!("interface:{iface}"));
    assert!(
        !ok && text.contains("is a port of OVS bridge"),
        "an interface on another bridge already is refused: {text}"
    );
    env.qingluan(&["mirror", "rm", &by_iface]);
    assert!(
        !run("ovs-vsctl", &["port-to-br", &iface]).status.success(),
        "the interface left the bridge with its mirror"
    );

    // A mirror goes with its network.
    assert!(add(&env, "qlt-mir", "container:qlt-man").0);
    docker(&["rm", "-f", "qlt-ma", "qlt-mb", "qlt-man", "qlt-mo"]);
    docker(&["network", "rm", "qlt-mir", "qlt-mir2"]);
    assert!(
        mirrors(&env).is_empty(),
        "the network's mirror went with it"
    );
}
