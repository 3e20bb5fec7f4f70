//! Prometheus metrics end to end: a real Prometheus (Debian's) scrapes the daemon while two
//! containers move 50 MiB over TCP (python3 run in their network namespaces); PromQL through
//! Prometheus' HTTP API sees the bytes under the containers' names. Spoofed frames appear
//! as drops by reason. Counters survive restarts of the daemon and of ovs-vswitchd without
//! going backwards. The listener's configuration errors stop the daemon with a clear
//! message.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A Prometheus server of the test's own, stopped (by PID) when dropped.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second.
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("qlt-prom")
            .tempdir()
            .unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: qingluan\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package prometheus)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of the single series `query` returns, if it returns one.
    fn value(&self, query: &str) -> Option<f64> {
        let out = run(
            "curl",
            &[
                "-sf",
                "--max-time",
                "3",
                &format!("http://{}/api/v1/query", self.addr),
                "--data-urlencode",
                &format!("query={query}"),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's own `/metrics` text.
fn scrape(env: &Env) -> String {
    ok(
        "curl",
        &[
            "-sf",
            "--max-time",
            "10",
            &format!("http://{}/metrics", env.metrics),
        ],
    )
}

/// The payload of the transfer: 50 MiB.
const SENT: f64 = 50.0 * 1024.0 * 1024.0;

/// Receives on TCP port 5311 until the sender closes, then prints the byte count.
const RECEIVER: &str = "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 5311))\ns.listen(1)\nprint('listening', flush=True)\nc, _ = s.accept()\nn = 0\nwhile True:\n    d = c.recv(1 << 20)\n    if not d:\n        break\n    n += len(d)\nc.close()\nprint(n)\n";

/// Sends 50 MiB to port 5311 of argv[1] and waits for the receiver to close.
const SENDER: &str = "import socket, sys\nc = socket.create_connection((sys.argv[1], 5311))\nb = bytes(1 << 20)\nfor _ in range(50):\n    c.sendall(b)\nc.shutdown(socket.SHUT_WR)\nc.recv(1)\nc.close()\n";

/// Moves exactly [`SENT`] bytes over TCP from container `from` to `to` (at `to_ip`), with
/// python3 run in their network namespaces from the host.
fn transfer(from: &str, to: &str, to_ip: &str) {
    use std::io::BufRead;
    let mut receiver = Guard(
        Command::new("nsenter")
            .args(["-t", &pid_of(to), "-n", "python3", "-c", RECEIVER])
            .stdout(Stdio::piped())
            .spawn()
            .expect("receiver"),
    );
    let mut lines = std::io::BufReader::new(receiver.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    ok(
        "nsenter",
        &["-t", &pid_of(from), "-n", "python3", "-c", SENDER, to_ip],
    );
    let got: f64 = lines.next().unwrap().unwrap().parse().unwrap();
    assert_eq!(got, SENT, "the receiver got every byte");
}

#[test]
fn prometheus_sees_what_containers_send_by_name() {
    if !enabled("prometheus_sees_what_containers_send_by_name") {
        return;
    }
    let env = Env::new();
    env.create_network(
        "qlt-metrics",
        &["--opt", "model=nat", "--ipam-opt", "pool=nat"],
    );
    start_sleepers("qlt-metrics", &["qlt-me-a", "qlt-me-b"]);
    let prom = Prometheus::start(env.metrics);
    let sent_by = |c: &str| {
        format!("qingluan_endpoint_transmit_bytes_total{{container_name=\"{c}\",network_name=\"qlt-metrics\",mode=\"nat\"}}")
    };
    let received_by = |c: &str| {
        format!("qingluan_endpoint_receive_bytes_total{{container_name=\"{c}\",network_name=\"qlt-metrics\"}}")
    };
    let mut before = (0.0, 0.0);
    assert!(
        wait_for(Duration::from_secs(30), || {
            match (
                prom.value(&sent_by("qlt-me-a")),
                prom.value(&received_by("qlt-me-b")),
            ) {
                (Some(a), Some(b)) => {
                    before = (a, b);
                    true
                }
                _ => false,
            }
        }),
        "prometheus never saw the containers by name; /metrics:\n{}",
        scrape(&env)
    );

    let b_ip = ip_of("qlt-me-b", "qlt-metrics");
    let kernel = |c: &str, what: &str| -> f64 {
        exec(c, &format!("cat /sys/class/net/eth0/statistics/{what}"))
            .1
            .trim()
            .parse()
            .unwrap()
    };
    let kernel_before = (
        kernel("qlt-me-a", "tx_bytes"),
        kernel("qlt-me-b", "rx_bytes"),
    );
    transfer("qlt-me-a", "qlt-me-b", &b_ip);
    let kernel_counted = (
        kernel("qlt-me-a", "tx_bytes") - kernel_before.0,
        kernel("qlt-me-b", "rx_bytes") - kernel_before.1,
    );

    // Each side within 5 % of what the container's own kernel counted on its eth0 (the
    // payload plus headers, and the sender's retransmissions), and at least the payload.
    let mut seen = (0.0, 0.0);
    let settled = wait_for(Duration::from_secs(30), || {
        seen = (
            prom.value(&sent_by("qlt-me-a")).unwrap_or(0.0) - before.0,
            prom.value(&received_by("qlt-me-b")).unwrap_or(0.0) - before.1,
        );
        seen.0 >= SENT.max(kernel_counted.0 * 0.95) && seen.1 >= SENT.max(kernel_counted.1 * 0.95)
    });
    let report = format!(
        "prometheus saw {seen:?} bytes (sent, received); the kernels counted {kernel_counted:?}, the payload was {SENT}"
    );
    assert!(settled, "{report}");
    assert!(
        seen.0 <= kernel_counted.0 * 1.05 && seen.1 <= kernel_counted.1 * 1.05,
        "{report}"
    );
    println!("{report}");

    // Spoofed frames: drops by reason, under the sender's name.
    let spoof = {
        let o: Vec<&str> = b_ip.split('.').collect();
        format!("{}.{}.{}.200", o[0], o[1], o[2])
    };
    exec("qlt-me-a", &format!("ip addr add {spoof}/24 dev eth0"));
    let (answered, _) = exec(
        "qlt-me-a",
        &format!("ping -c 10 -i 0.05 -W 1 -I {spoof} {b_ip}"),
    );
    assert!(!answered, "a spoofed ping got an answer");
    let mut text = String::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            text = scrape(&env);
            text.lines().any(|l| {
                l.starts_with("qingluan_endpoint_policy_dropped_packets_total{")
                    && l.contains("container_name=\"qlt-me-a\"")
                    && l.contains("reason=\"spoofed\"")
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(10.0)
            })
        }),
        "no 10 spoofed drops for qlt-me-a:\n{text}"
    );

    // The daemon's own instruments are there too.
    for want in [
        "qingluan_plugin_call_duration_seconds_count{method=\"NetworkDriver.CreateEndpoint\"}",
        "qingluan_reconcile_duration_seconds_count{result=\"ok\"}",
        "qingluan_store_operation_duration_seconds_count{store=\"local\"",
        "qingluan_ovs_up{component=\"ovsdb\"} 1",
        "qingluan_ovs_up{component=\"openflow\"} 1",
        "qingluan_cluster_hosts{state=\"up\"} 1",
        "qingluan_build_info{version=",
        "qingluan_endpoint_start_time_seconds{",
    ] {
        assert!(text.contains(want), "no {want} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
}

/// The daemon refuses to start on a bad `[monitoring]` section, saying why.
#[test]
fn metrics_listener_refuses_bad_configuration() {
    let dir = tempfile::Builder::new()
        .prefix("qlt-mcfg")
        .tempdir()
        .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!("listen = \"{}\"", taken.local_addr().unwrap());
    let cases = [
        (busy.as_str(), "cannot serve metrics on"),
        ("listen = \"0.0.0.0:19465\"", "allow_remote"),
        ("listen = \"localhost\"", "not an address and port"),
        (
            "listen = \"127.0.0.1:19465\"\nallow_remote = \"yes\"",
            "allow_remote",
        ),
        ("lisen = \"127.0.0.1:9465\"", "unknown field `lisen`"),
    ];
    for (section, want) in cases {
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\npath = \"{}\"\n\n[monitoring]\n{section}\n",
                dir.path().join("state.redb").display()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_qingluan"))
            .args(["--config", config.to_str().unwrap(), "daemon"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{section}: started");
        assert!(err.contains(want), "{section}: {err}");
    }
}

/// The value of `metric` for container `name` in a `/metrics` text.
fn value_of(text: &str, metric: &str, name: &str) -> Option<f64> {
    let label = format!("container_name=\"{name}\"");
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Counters keep counting across a daemon restart (OVS kept them) and never go backwards
/// across an ovs-vswitchd restart: a veth port's counters are the kernel's and survive it,
/// the spoof guard's flow counter starts again at zero and the daemon adds what it had
/// seen. The start time stays the endpoint's.
#[test]
fn counters_survive_restarts() {
    if !enabled("counters_survive_restarts") {
        return;
    }
    let mut env = Env::new();
    env.create_network("qlt-mrs", &["--opt", "model=nat", "--ipam-opt", "pool=nat"]);
    start_sleepers("qlt-mrs", &["qlt-mr-a", "qlt-mr-b"]);
    let b = ip_of("qlt-mr-b", "qlt-mrs");
    let (ok, out) = exec("qlt-mr-a", &format!("ping -c 20 -i 0.05 -s 1000 {b}"));
    assert!(ok, "{out}");
    // Spoofed frames: counted by the spoof guard's flow, which OVS itself keeps.
    let spoof = {
        let o: Vec<&str> = b.split('.').collect();
        format!("{}.{}.{}.201", o[0], o[1], o[2])
    };
    exec("qlt-mr-a", &format!("ip addr add {spoof}/24 dev eth0"));
    exec(
        "qlt-mr-a",
        &format!("ping -c 10 -i 0.05 -W 1 -I {spoof} {b}"),
    );
    exec("qlt-mr-a", &format!("ip addr del {spoof}/24 dev eth0"));
    let read = |env: &Env| {
        let text = scrape(env);
        let value = |metric: &str| {
            value_of(&text, metric, "qlt-mr-a")
                .unwrap_or_else(|| panic!("no {metric} for qlt-mr-a:\n{text}"))
        };
        (
            value("qingluan_endpoint_transmit_bytes_total"),
            value("qingluan_endpoint_policy_dropped_packets_total"),
            value("qingluan_endpoint_start_time_seconds"),
        )
    };
    let mut before = (0.0, 0.0, 0.0);
    assert!(
        wait_for(Duration::from_secs(10), || {
            before = read(&env);
            before.1 >= 10.0
        }),
        "spoofed frames not counted: {before:?}"
    );
    assert!(before.0 >= 20.0 * 1042.0, "{before:?}");

    env.stop();
    env.start();
    let after = read(&env);
    assert!(
        after.0 >= before.0 && after.1 >= before.1,
        "the daemon restart reset a counter: {before:?} -> {after:?}"
    );
    assert!(
        (after.2 - before.2).abs() <= 1.0,
        "start time moved: {before:?} -> {after:?}"
    );

    if std::env::var("QL_OWN_OVS").as_deref() != Ok("1") {
        println!("SKIP: counters_survive_restarts (ovs-vswitchd part): OVS was not started by scripts/test.sh");
        return;
    }
    // What OVS itself reports, without the daemon's offsets.
    let raw_spoofed = |env: &Env| -> u64 {
        let rows: serde_json::Value =
            serde_json::from_str(&env.qingluan(&["stats", "--json", "--container", "qlt-mr-a"]))
                .unwrap();
        rows[0]["spoofed"].as_u64().unwrap()
    };
    assert!(raw_spoofed(&env) >= 10);
    restart_by_pidfile("/run/openvswitch/ovs-vswitchd.pid", || {
        run("ovs-appctl", &["version"]).status.success()
    });
    assert!(
        wait_for(Duration::from_secs(15), || exec(
            "qlt-mr-a",
            &format!("ping -c 1 -W 1 {b}")
        )
        .0),
        "no connectivity after the ovs-vswitchd restart"
    );
    let last = read(&env);
    assert_eq!(
        raw_spoofed(&env),
        0,
        "OVS kept the drop flow's counter across its restart: nothing proven"
    );
    assert!(
        last.0 >= after.0 && last.1 >= after.1,
        "a counter went backwards: {after:?} -> {last:?}"
    );
    assert!(
        (last.2 - before.2).abs() <= 1.0,
        "start time moved: {before:?} -> {last:?}"
    );
}
