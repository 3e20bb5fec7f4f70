//! Traffic scheduling end to end on the real dockerd: iperf3, run in the containers'
//! network namespaces from the host, measures the limits over 5 s after 2 s of warm-up
//! (`-O 2`). Egress (a meter) and ingress (an HTB class) hold at 90–110 % of 100 Mbit/s and
//! change live while a connection runs; every source (network `--opt`, `--driver-opt`,
//! labels, `qos set`) applies with its precedence; DSCP marks leave through the gateway;
//! limits hold after a daemon kill -9 and an ovs-vswitchd restart; removed limits leave no
//! meter, Queue or QoS row; bad input is refused with a clear error and changes nothing.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// An iperf3 server in `server`'s network namespace, for one test.
fn iperf_server(server: &str, port: u16) -> Guard {
    let g = Guard(
        Command::new("nsenter")
            .args([
                "-t",
                &pid_of(server),
                "-n",
                "iperf3",
                "-s",
                "-1",
                "-J",
                "-p",
            ])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    let pid = pid_of(server);
    assert!(
        wait_for(Duration::from_secs(5), || {
            run("nsenter", &["-t", &pid, "-n", "ss", "-ltn"])
                .stdout
                .windows(port.to_string().len() + 1)
                .any(|w| w == format!(":{port}").as_bytes())
        }),
        "iperf3 server did not listen"
    );
    g
}

/// iperf3's JSON result of a TCP test from `client` to `server` (at `ip`): `secs` seconds
/// measured after 2 s of warm-up; `reverse`: the server sends.
fn iperf_json(client: &str, server: &str, ip: &str, secs: u32, reverse: bool) -> serde_json::Value {
    let _server = iperf_server(server, 5201);
    let (secs, pid) = (secs.to_string(), pid_of(client));
    let mut args = vec![
        "-t", &pid, "-n", "iperf3", "-c", ip, "-p", "5201", "-t", &secs, "-O", "2", "-J",
    ];
    if reverse {
        args.push("-R");
    }
    let out = run("nsenter", &args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "iperf3: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(v["error"].is_null(), "iperf3 failed: {}", v["error"]);
    v
}

/// Steady-state Mbit/s from `client` to `server` (or back with `reverse`).
fn mbits(client: &str, server: &str, ip: &str, reverse: bool) -> f64 {
    let v = iperf_json(client, server, ip, 5, reverse);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("a rate")
        / 1e6
}

fn assert_near(got: f64, want: f64, what: &str) {
    eprintln!("{what}: measured {got:.1} Mbit/s, want {want} ±10 %");
    assert!(
        (want * 0.9..=want * 1.1).contains(&got),
        "{what}: measured {got:.1} Mbit/s, want {want} ±10 %"
    );
}

/// Number of rows of an OVS table.
fn rows(table: &str) -> usize {
    ok("ovs-vsctl", &["--bare", "--columns=_uuid", "list", table])
        .split_whitespace()
        .count()
}

/// The `qos ls --json` row of `container`, once the daemon has learnt which endpoint is
/// the container's (it asks the Engine API after the Join; a container just started may
/// not be known yet).
fn qos_row(env: &Env, container: &str) -> serde_json::Value {
    let mut last = Err(serde_json::Value::Null);
    wait_for(Duration::from_secs(10), || {
        last = qos_row_now(env, container);
        last.is_ok()
    });
    last.unwrap_or_else(|v| panic!("{container} not in qos ls: {v}"))
}

/// The `qos ls --json` row of `container`, or all of `qos ls` while the daemon has not
/// learnt yet which endpoint is the container's (it does after the Join).
fn qos_row_now(env: &Env, container: &str) -> Result<serde_json::Value, serde_json::Value> {
    let id = docker(&["inspect", "-f", "{{.Id}}", container])
        .trim()
        .to_string();
    let v: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["--json", "qos", "ls"])).unwrap();
    let row = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["container"] == id.as_str())
        .cloned();
    row.ok_or(v)
}

/// Waits until `what` of `container`'s effective QoS reads `want`.
fn wait_effective(env: &Env, container: &str, what: &str, want: &str, secs: u64) -> bool {
    wait_for(Duration::from_secs(secs), || {
        qos_row_now(env, container).is_ok_and(|r| effective(&r, what) == want)
    })
}

/// `value (source)` of one effective value in `qos ls --json`.
fn effective(row: &serde_json::Value, what: &str) -> String {
    let e = &row["effective"][what];
    if e.is_null() {
        return "-".into();
    }
    format!(
        "{} ({})",
        e["value"].as_str().unwrap_or_default(),
        e["source"].as_str().unwrap_or_default()
    )
}

#[test]
fn limits_hold_in_both_directions_and_change_live() {
    if !enabled("limits_hold_in_both_directions_and_change_live") {
        return;
    }
    let env = Env::new();
    env.create_network(
        "qlt-qos",
        &["--opt", "model=nat", "--opt", "qos.egress.rate=100mbit"],
    );
    start_sleepers("qlt-qos", &["qlt-qa", "qlt-qb"]);
    let a = ip_of("qlt-qa", "qlt-qos");
    assert!(pings("qlt-qb", &a));

    // Egress: b sends under the network's 100 Mbit/s.
    assert_near(
        mbits("qlt-qb", "qlt-qa", &a, false),
        100.0,
        "egress 100mbit",
    );
    assert_eq!(
        effective(&qos_row(&env, "qlt-qb"), "egress"),
        "100mbit (network)"
    );

    // Ingress: b receives under 50 Mbit/s of its own (a sends at 100).
    env.qingluan(&["qos", "set", "qlt-qb", "--ingress-rate", "50mbit"]);
    assert_near(mbits("qlt-qb", "qlt-qa", &a, true), 50.0, "ingress 50mbit");
    let row = qos_row(&env, "qlt-qb");
    assert_eq!(effective(&row, "ingress"), "50mbit (set)");
    assert_eq!(effective(&row, "egress"), "100mbit (network)");

    // Live: 20 Mbit/s set 7 s into a running transfer holds from 2 s later, on the same
    // connection. Both rates are what the receiver counted over 5 s: the 5 s of steady state
    // after 2 s of warm-up, and the last 5 s.
    let server = iperf_server("qlt-qa", 5201);
    let client = Command::new("nsenter")
        .args([
            "-t",
            &pid_of("qlt-qb"),
            "-n",
            "iperf3",
            "-c",
            &a,
            "-t",
            "14",
            "-J",
            "--get-server-output",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(7));
    env.qingluan(&["qos", "set", "qlt-qb", "--egress-rate", "20mbit"]);
    let out = client.wait_with_output().unwrap();
    drop(server);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].is_null(), "the connection broke: {}", v["error"]);
    let received: Vec<f64> = v["server_output_json"]["intervals"]
        .as_array()
        .expect("the server's intervals")
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap() / 1e6)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (before, after) = (mean(&received[2..7]), mean(&received[9..14]));
    assert_near(before, 100.0, "before the change");
    assert_near(after, 20.0, "2 s after the change");

    // Removing the override brings the network's limit back.
    env.qingluan(&["qos", "rm", "qlt-qb"]);
    assert_eq!(
        effective(&qos_row(&env, "qlt-qb"), "egress"),
        "100mbit (network)"
    );
    assert_eq!(effective(&qos_row(&env, "qlt-qb"), "ingress"), "-");
    assert_eq!(rows("QoS"), 0, "the ingress class went with the override");
    let table = env.qingluan(&["qos", "ls", "--network", "qlt-qos"]);
    assert!(table.contains("100mbit (network)"), "{table}");

    // Nothing is left when the containers and the network go.
    docker(&["rm", "-f", "qlt-qa", "qlt-qb"]);
    docker(&["network", "rm", "qlt-qos"]);
    let meters = ok(
        "sh",
        &[
            "-c",
            "for b in $(ovs-vsctl list-br); do ovs-ofctl -O OpenFlow13 dump-meters $b; done",
        ],
    );
    assert!(!meters.contains("meter="), "{meters}");
    assert_eq!((rows("QoS"), rows("Queue")), (0, 0));
}

/// The TOS bytes of `count` ICMP packets `container` sends to the gateway, as tcpdump on
/// the network's bridge (the way out of a nat network) prints them.
fn tos_leaving(env: &Env, network: &str, container: &str) -> String {
    let id = docker(&["network", "inspect", "-f", "{{.Id}}", network]);
    let bridge = format!("{}b{}", env.prefix, &id[..8]);
    let src = ip_of(container, network);
    let dump = Command::new("timeout")
        .args(["10", "tcpdump", "-l", "-nn", "-v", "-c", "2", "-i", &bridge])
        .args(["icmp", "and", "src", &src])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let gw = env.gateway_of(network);
    exec(container, &format!("ping -c 3 -W 1 {gw}"));
    let out = dump.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_source_applies_with_its_precedence_and_marks_its_class() {
    if !enabled("every_source_applies_with_its_precedence_and_marks_its_class") {
        return;
    }
    let env = Env::with_daemon_config("gc_secs = 2");
    env.create_network(
        "qlt-qsrc",
        &[
            "--opt",
            "model=nat",
            "--opt",
            "qos.egress.rate=100mbit",
            "--opt",
            "qos.burst=1mb",
        ],
    );
    // A label (read through the Engine API) over the network's default.
    docker(&[
        "run",
        "-d",
        "--name",
        "qlt-qlab",
        "--net",
        "qlt-qsrc",
        "--label",
        "qingluan.qos.egress.rate=20mbit",
        "--label",
        "qingluan.qos.priority=high",
        IMAGE,
        "sleep",
        "600",
    ]);
    // A driver-opt at connect time over a label.
    docker(&[
        "create",
        "--name",
        "qlt-qopt",
        "--label",
        "qingluan.qos.egress.rate=30mbit",
        IMAGE,
        "sleep",
        "600",
    ]);
    docker(&[
        "network",
        "connect",
        "--driver-opt",
        "qos.egress.rate=10mbit",
        "--driver-opt",
        "qos.priority=low",
        "qlt-qsrc",
        "qlt-qopt",
    ]);
    docker(&["start", "qlt-qopt"]);
    let lab = ip_of("qlt-qlab", "qlt-qsrc");
    assert!(wait_effective(
        &env,
        "qlt-qlab",
        "egress",
        "20mbit (label)",
        10
    ));
    let row = qos_row(&env, "qlt-qlab");
    assert_eq!(effective(&row, "priority"), "high (label)");
    assert_eq!(effective(&row, "burst"), "1mb (network)");
    let row = qos_row(&env, "qlt-qopt");
    assert_eq!(effective(&row, "egress"), "10mbit (driver-opt)");
    assert_eq!(effective(&row, "priority"), "low (driver-opt)");
    assert_near(
        mbits(
            "qlt-qlab",
            "qlt-qopt",
            &ip_of("qlt-qopt", "qlt-qsrc"),
            false,
        ),
        20.0,
        "label",
    );
    assert_near(
        mbits("qlt-qopt", "qlt-qlab", &lab, false),
        10.0,
        "driver-opt",
    );

    // qos set over the driver-opt; it outlives the container's restart (a new endpoint).
    env.qingluan(&[
        "qos",
        "set",
        "qlt-qopt",
        "--egress-rate",
        "40mbit",
        "--priority",
        "high",
    ]);
    docker(&["restart", "-t", "0", "qlt-qopt"]);
    assert!(wait_effective(
        &env,
        "qlt-qopt",
        "egress",
        "40mbit (set)",
        10
    ));
    assert_near(mbits("qlt-qopt", "qlt-qlab", &lab, false), 40.0, "set");

    // DSCP of each class as the packets leave: high = AF41 (tos 0x88), low = CS1 (0x20).
    let high = tos_leaving(&env, "qlt-qsrc", "qlt-qlab");
    assert!(high.contains("tos 0x88"), "high is AF41: {high}");
    env.qingluan(&["qos", "set", "qlt-qopt", "--priority", "low"]);
    let low = tos_leaving(&env, "qlt-qsrc", "qlt-qopt");
    assert!(low.contains("tos 0x20"), "low is CS1: {low}");

    // The network's defaults change live too.
    env.qingluan(&[
        "qos",
        "set",
        "--network",
        "qlt-qsrc",
        "--egress-rate",
        "50mbit",
    ]);
    docker(&[
        "run", "-d", "--name", "qlt-qnew", "--net", "qlt-qsrc", IMAGE, "sleep", "600",
    ]);
    assert_eq!(
        effective(&qos_row(&env, "qlt-qnew"), "egress"),
        "50mbit (network-set)"
    );
    let table = env.qingluan(&["qos", "ls"]);
    assert!(
        table.contains("qos set on qlt-qopt: egress 40mbit, priority low"),
        "{table}"
    );
    assert!(
        table.contains("network --opt egress 100mbit, burst 1mb"),
        "{table}"
    );
    // A removed container's override goes with it (the Engine API pass, every gc_secs).
    docker(&["rm", "-f", "qlt-qopt"]);
    assert!(wait_for(Duration::from_secs(10), || {
        let table = env.qingluan(&["qos", "ls"]);
        !table.contains("qos set on container") && !table.contains("qos set on qlt-qopt")
    }));
}

#[test]
fn limits_hold_after_daemon_and_vswitchd_restarts() {
    if !enabled("limits_hold_after_daemon_and_vswitchd_restarts") {
        return;
    }
    let mut env = Env::new();
    env.create_network(
        "qlt-qrs",
        &[
            "--opt",
            "model=nat",
            "--opt",
            "qos.egress.rate=30mbit",
            "--opt",
            "qos.ingress.rate=60mbit",
        ],
    );
    start_sleepers("qlt-qrs", &["qlt-qra", "qlt-qrb"]);
    let a = ip_of("qlt-qra", "qlt-qrs");
    assert_near(mbits("qlt-qrb", "qlt-qra", &a, false), 30.0, "before");

    env.kill();
    assert_near(mbits("qlt-qrb", "qlt-qra", &a, false), 30.0, "daemon down");
    env.start();
    assert_near(mbits("qlt-qrb", "qlt-qra", &a, false), 30.0, "daemon back");

    restart_by_pidfile("/run/openvswitch/ovs-vswitchd.pid", || {
        run("ovs-appctl", &["version"]).status.success()
    });
    assert!(
        wait_for(Duration::from_secs(15), || pings("qlt-qrb", &a)),
        "no connectivity after the ovs-vswitchd restart"
    );
    assert_near(
        mbits("qlt-qrb", "qlt-qra", &a, false),
        30.0,
        "egress after vswitchd",
    );
    env.qingluan(&["qos", "set", "qlt-qrb", "--egress-rate", "100mbit"]);
    assert_near(
        mbits("qlt-qrb", "qlt-qra", &a, false),
        60.0,
        "ingress after vswitchd",
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    if !enabled("bad_input_is_refused_and_changes_nothing") {
        return;
    }
    let env = Env::new();
    for (opt, want) in [
        (
            "qos.egres.rate=1mbit",
            "unknown QoS option \"qos.egres.rate\"",
        ),
        (
            "qos.egress.rate=10 mbps",
            "invalid rate \"10 mbps\" for qos.egress.rate",
        ),
        ("qos.egress.rate=0mbit", "invalid rate \"0mbit\""),
        ("qos.ingress.rate=-5mbit", "invalid rate \"-5mbit\""),
        ("qos.burst=1mb", "qos.burst needs a rate in the same place"),
        (
            "qos.priority=urgent",
            "unknown priority \"urgent\" (priorities: high, normal, low)",
        ),
    ] {
        let err = env.create_network_fails("qlt-qbad", &["--opt", "model=nat", "--opt", opt]);
        assert!(err.contains(want), "{opt}: {err}");
    }
    assert!(!docker(&["network", "ls"]).contains("qlt-qbad"));

    env.create_network("qlt-qok", &["--opt", "model=nat"]);
    env.create_network("qlt-qother", &["--opt", "model=nat"]);
    // Connected while running, so the driver sees the options at connect time.
    start_sleepers("qlt-qother", &["qlt-qc"]);
    let err = fails(
        "docker",
        &[
            "network",
            "connect",
            "--driver-opt",
            "qos.egress.rate=fast",
            "qlt-qok",
            "qlt-qc",
        ],
    );
    assert!(
        err.contains("invalid rate \"fast\" for qos.egress.rate"),
        "{err}"
    );
    let err = fails(
        "docker",
        &[
            "network",
            "connect",
            "--driver-opt",
            "qos.color=red",
            "qlt-qok",
            "qlt-qc",
        ],
    );
    assert!(err.contains("unknown QoS option \"qos.color\""), "{err}");
    docker(&["network", "connect", "qlt-qok", "qlt-qc"]);

    let refused = |args: &[&str], want: &str| {
        let o = env.cli(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    };
    refused(
        &["qos", "set", "qlt-qc", "--egress-rate", "10 mbps"],
        "invalid rate \"10 mbps\" for --egress-rate",
    );
    refused(
        &["qos", "set", "qlt-qc", "--egress-rate", "0bit"],
        "invalid rate \"0bit\"",
    );
    refused(
        &["qos", "set", "qlt-qc", "--egress-rate", "1mbit"],
        "container qlt-qc is on several qingluan networks (qlt-qok, qlt-qother): give --network",
    );
    docker(&["network", "disconnect", "qlt-qother", "qlt-qc"]);
    refused(
        &["qos", "set", "qlt-qc", "--burst", "64kb"],
        "--burst needs a rate",
    );
    refused(
        &["qos", "set", "qlt-qc", "--priority", "urgent"],
        "unknown priority \"urgent\"",
    );
    refused(
        &[
            "qos",
            "set",
            "qlt-qc",
            "--network",
            "qlt-qother",
            "--egress-rate",
            "1mbit",
        ],
        "container qlt-qc is not on network qlt-qother",
    );
    refused(
        &["qos", "set", "qlt-nosuch", "--egress-rate", "1mbit"],
        "no container or endpoint \"qlt-nosuch\"",
    );
    refused(&["qos", "set", "qlt-qc"], "nothing to set");
    refused(
        &["qos", "rm", "qlt-qc"],
        "no qos set override for container",
    );
    let v: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["--json", "qos", "ls"])).unwrap();
    assert_eq!(
        v["overrides"],
        serde_json::json!([]),
        "nothing was recorded"
    );
    assert_eq!(effective(&qos_row(&env, "qlt-qc"), "egress"), "-");
}

/// Mbit/s each of `clients` (container, port) sends at once to iperf3 servers on those
/// ports in namespace `ns` (at `ip`), 5 s after 2 s of warm-up.
fn concurrent_to(ns: &str, ip: &str, clients: &[(&str, u16)]) -> Vec<f64> {
    let servers: Vec<Guard> = clients
        .iter()
        .map(|(_, port)| {
            Guard(
                Command::new("ip")
                    .args(["netns", "exec", ns, "iperf3", "-s", "-1", "-p"])
                    .arg(port.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for (_, port) in clients {
        assert!(wait_for(Duration::from_secs(5), || {
            String::from_utf8_lossy(&run("ip", &["netns", "exec", ns, "ss", "-ltn"]).stdout)
                .contains(&format!(":{port}"))
        }));
    }
    let running: Vec<_> = clients
        .iter()
        .map(|(c, port)| {
            Command::new("nsenter")
                .args([
                    "-t",
                    &pid_of(c),
                    "-n",
                    "iperf3",
                    "-c",
                    ip,
                    "-t",
                    "5",
                    "-O",
                    "2",
                    "-J",
                ])
                .args(["-p", &port.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let rates = running
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap()
                / 1e6
        })
        .collect();
    drop(servers);
    rates
}

#[test]
fn classes_keep_their_share_of_an_aggregate_limit() {
    if !enabled("classes_keep_their_share_of_an_aggregate_limit") {
        return;
    }
    let mut env = Env::new();
    let (ns, _, outside) = env.outside();
    env.create_network(
        "qlt-qagg",
        &["--opt", "model=nat", "--opt", "qos.aggregate.rate=100mbit"],
    );
    docker(&[
        "run",
        "-d",
        "--name",
        "qlt-qhi",
        "--net",
        "qlt-qagg",
        "--label",
        "qingluan.qos.priority=high",
        IMAGE,
        "sleep",
        "600",
    ]);
    start_sleepers("qlt-qagg", &["qlt-qlo"]);
    env.qingluan(&["qos", "set", "qlt-qlo", "--priority", "low"]);
    assert!(wait_effective(
        &env,
        "qlt-qhi",
        "priority",
        "high (label)",
        10
    ));

    // Alone, low borrows the whole limit.
    let alone = concurrent_to(&ns, &outside, &[("qlt-qlo", 5301)]);
    assert_near(alone[0], 100.0, "low alone");
    // Together, high keeps at least its 60 % (and takes what low leaves first).
    let both = concurrent_to(&ns, &outside, &[("qlt-qhi", 5302), ("qlt-qlo", 5303)]);
    eprintln!(
        "aggregate 100mbit: low alone {:.1}, high {:.1} + low {:.1} Mbit/s",
        alone[0], both[0], both[1]
    );
    assert!(
        both[0] >= 54.0 && both[0] + both[1] <= 110.0,
        "high {:.1} and low {:.1} Mbit/s under 100mbit: high must keep 60 %",
        both[0],
        both[1]
    );

    // Live: the limit changes, and goes away with everything it made.
    env.qingluan(&[
        "qos",
        "set",
        "--network",
        "qlt-qagg",
        "--aggregate-rate",
        "40mbit",
    ]);
    assert_near(
        concurrent_to(&ns, &outside, &[("qlt-qlo", 5304)])[0],
        40.0,
        "40mbit",
    );
    docker(&["rm", "-f", "qlt-qhi", "qlt-qlo"]);
    docker(&["network", "rm", "qlt-qagg"]);
    let ifbs = ok("ip", &["-o", "link", "show", "type", "ifb"]);
    assert!(!ifbs.contains(&format!("{}q", env.prefix)), "{ifbs}");

    // A whole network's, never one container's.
    env.create_network("qlt-qagg2", &["--opt", "model=nat"]);
    start_sleepers("qlt-qagg2", &["qlt-qx"]);
    let o = env.cli(&["qos", "set", "qlt-qx", "--aggregate-rate", "1gbit"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--aggregate-rate limits a whole network"),
        "{err}"
    );
}

#[test]
fn an_override_outlives_a_dockerd_restart() {
    if !enabled("an_override_outlives_a_dockerd_restart") {
        return;
    }
    if std::env::var("QL_OWN_DOCKERD").as_deref() != Ok("1") {
        println!("SKIP: an_override_outlives_a_dockerd_restart: dockerd was not started by scripts/test.sh");
        return;
    }
    let env = Env::new();
    env.create_network("qlt-qdr", &["--opt", "model=nat"]);
    for c in ["qlt-qda", "qlt-qdb"] {
        docker(&[
            "run",
            "-d",
            "--restart=always",
            "--name",
            c,
            "--net",
            "qlt-qdr",
            IMAGE,
            "sleep",
            "100000",
        ]);
    }
    env.qingluan(&["qos", "set", "qlt-qdb", "--egress-rate", "20mbit"]);
    restart_by_pidfile("/run/docker.pid", || {
        run("docker", &["version"]).status.success()
    });
    assert!(wait_for(Duration::from_secs(60), || {
        ["qlt-qda", "qlt-qdb"]
            .iter()
            .all(|c| docker(&["inspect", "-f", "{{.State.Running}}", c]).trim() == "true")
    }));
    // The container came back with a new endpoint; its override applies to it.
    assert!(wait_effective(
        &env,
        "qlt-qdb",
        "egress",
        "20mbit (set)",
        15
    ));
    let a = ip_of("qlt-qda", "qlt-qdr");
    assert!(wait_for(Duration::from_secs(10), || pings("qlt-qdb", &a)));
    assert_near(
        mbits("qlt-qdb", "qlt-qda", &a, false),
        20.0,
        "after dockerd restart",
    );
}
