//! `qingluan trace` end to end on the real dockerd and OVS: an allowed path in the
//! pipeline's stage names, a drop by isolation between networks, by the spoof guard (a
//! forged source), by an ACL rule (its ID), the QoS meter on the way, a published port
//! from an outside namespace; each verdict beside the real traffic it predicts. On the
//! multi-host bed, a vxlan packet to another host's container goes through the tunnel to
//! that host, whose daemon traces its arrival through its own pipeline; an ACL rule of the
//! cluster network drops it before it leaves.

mod bed;
mod common;

use bed::{strs, Bed};
use common::{enabled, exec, ip_of, pings, start_sleepers, Env, IMAGE};

/// `qingluan trace ARGS --json` of `env`.
fn trace(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "trace"];
    all.extend_from_slice(args);
    serde_json::from_str(&env.qingluan(&all)).unwrap()
}

fn stages(report: &serde_json::Value) -> Vec<String> {
    report["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["stage"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn trace_explains_what_happens_to_a_packet() {
    if !enabled("trace_explains_what_happens_to_a_packet") {
        return;
    }
    let mut env = Env::new();
    env.create_network("qltra", &["--opt", "model=nat"]);
    env.create_network("qltrb", &["--opt", "model=nat"]);
    start_sleepers("qltra", &["qltr1", "qltr2"]);
    start_sleepers("qltrb", &["qltr3"]);
    common::docker(&[
        "run", "-d", "--name", "qltrweb", "--net", "qltra", "-p", "18480:80", IMAGE, "httpd", "-f",
        "-p", "80",
    ]);
    let peer = ip_of("qltr2", "qltra");

    // Allowed, in the pipeline's words; the table form ends with the verdict line.
    let text = env.qingluan(&["trace", "qltr1", "qltr2", "--tcp", "5432"]);
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("verdict: allowed"),
        "{text}"
    );
    let r = trace(&env, &["qltr1", "qltr2", "--tcp", "5432"]);
    assert_eq!(r["verdict"], "allowed", "{r:#}");
    assert!(r["reason"].as_str().unwrap().contains("delivered to qltr2"));
    let s = stages(&r);
    assert_eq!(s.first().map(String::as_str), Some("CLASSIFY"), "{s:?}");
    assert!(s.iter().any(|x| x == "L2_FORWARD"), "{s:?}");
    assert!(pings("qltr1", &peer), "the control: qltr1 reaches qltr2");

    // Isolation between networks, as the real ping finds.
    let other = ip_of("qltr3", "qltrb");
    let r = trace(&env, &["qltr1", "qltr3"]);
    assert_eq!(r["verdict"], "dropped", "{r:#}");
    assert!(
        r["reason"].as_str().unwrap().starts_with("isolation:"),
        "{r:#}"
    );
    assert!(!pings("qltr1", &other), "qltr1 reached another network");

    // A forged source meets the spoof guard.
    let forged = format!("{}.250", peer.rsplit_once('.').unwrap().0);
    let text = env.qingluan(&["trace", "qltr1", "qltr2", "--icmp", "--src-ip", &forged]);
    assert!(
        text.contains(&format!(
            "verdict: dropped (spoof guard: source {forged} is not qltr1's address)"
        )),
        "{text}"
    );

    // An ACL rule drops it by its ID; the QoS meter shows on the way.
    let id = env
        .qingluan(&[
            "acl",
            "add",
            "--network",
            "qltra",
            "--from",
            "container:qltr1",
            "--to",
            "container:qltr2",
            "--proto",
            "tcp",
            "--port",
            "5432",
            "--deny",
        ])
        .trim()
        .to_string();
    env.qingluan(&["qos", "set", "qltr1", "--egress-rate", "10mbit"]);
    let r = trace(&env, &["qltr1", "qltr2", "--tcp", "5432"]);
    assert_eq!(r["verdict"], "dropped", "{r:#}");
    assert_eq!(r["reason"], format!("ACL rule {id}"), "{r:#}");
    let hops = r["hops"].as_array().unwrap();
    assert!(
        hops.iter()
            .any(|h| h["stage"] == "POLICY" && h["feature"] == format!("ACL rule {id}")),
        "{r:#}"
    );
    assert!(
        hops.iter()
            .any(|h| h["stage"] == "QOS" && h["detail"].as_str().unwrap().contains("meter:")),
        "{r:#}"
    );
    let (ok, _) = exec("qltr1", &format!("timeout 3 nc {peer} 5432 </dev/null"));
    assert!(!ok, "the ACL let qltr1 connect");
    let r = trace(&env, &["qltr1", "qltr2", "--tcp", "80"]);
    assert_eq!(r["verdict"], "allowed", "another port passes: {r:#}");

    // A published port from outside the host.
    let (ns, host_ip, outside_ip) = env.outside();
    let r = trace(&env, &[&outside_ip, &host_ip, "--tcp", "18480"]);
    assert_eq!(r["verdict"], "allowed", "{r:#}");
    assert!(r["reason"].as_str().unwrap().contains("qltrweb"), "{r:#}");
    assert_eq!(r["hops"][0]["stage"], "prerouting", "{r:#}");
    let fetched = common::run(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{host_ip}:18480/"),
        ],
    );
    assert!(
        fetched.status.success(),
        "the control: curl from outside failed"
    );
    let r = trace(&env, &[&outside_ip, &host_ip, "--tcp", "18481"]);
    assert_eq!(r["verdict"], "dropped", "{r:#}");

    // An address of the network that no container has.
    let nobody = format!("{}.200", peer.rsplit_once('.').unwrap().0);
    let r = trace(&env, &["qltr1", &nobody]);
    assert_eq!(r["verdict"], "dropped", "{r:#}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("no container has"),
        "{r:#}"
    );

    // Bad input.
    let o = env.cli(&["trace", "qltnobody", "qltr2"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither an IPv4 address nor a container"));
}

#[test]
fn trace_follows_the_tunnel_to_the_other_host() {
    if !bed::enabled("trace_follows_the_tunnel_to_the_other_host") {
        return;
    }
    let bed = Bed::start(2, "");
    bed.docker_ok(1, &strs(&Bed::vxlan_args("trv", 5401, &[])));
    bed::wait_until(20, "trv on h2", || bed.has_network(2, "trv"));
    bed.sleeper(1, "tr1", "trv");
    let far = bed.sleeper(2, "tr2", "trv");
    bed::wait_until(20, "h1 to know tr2", || {
        bed.ql(1, &["trace", "tr1", "tr2"]).status.success()
    });
    assert!(bed.ping(1, "tr1", &far), "the control: tr1 reaches tr2");
    // h2's own pipeline follows the tunnel: its overlay bridge's stages.
    bed::overlay::trace_crosses_to_h2(&bed, "tr1", "tr2", 5401);

    let id = bed.acl_add(
        1,
        &[
            "--network",
            "trv",
            "--from",
            "container:tr1",
            "--to",
            "container:tr2",
            "--proto",
            "icmp",
            "--deny",
        ],
    );
    bed::wait_until(10, "the rule on h1", || {
        bed.ql_json(1, &["trace", "tr1", "tr2"])["verdict"] == "dropped"
    });
    let r = bed.ql_json(1, &["trace", "tr1", "tr2"]);
    assert_eq!(r["reason"], format!("ACL rule {id}"), "{r:#}");
    assert!(!bed.ping_once(1, "tr1", &far), "the ACL let tr1 ping tr2");

    // With h2's daemon killed (its lease still runs, so h1 still tunnels to it), nobody
    // traces the arrival: the verdict is unknown, not allowed.
    let mut bed = bed;
    bed.kill_daemon(2);
    let r = bed.ql_json(1, &["trace", "tr1", "tr2", "--tcp", "80"]);
    assert_eq!(r["verdict"], "unknown", "{r:#}");
    assert!(
        r["reason"].as_str().unwrap().contains("did not answer"),
        "{r:#}"
    );
    // Back, so h2's dockerd can tear its containers down through it.
    bed.start_daemon(2);
}
