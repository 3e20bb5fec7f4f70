//! Intrusion detection end to end on the real dockerd: `ids enable` mirrors a network to
//! the detector's capture port; an HTTP request carrying a signature string raises an EVE
//! alert with the rule's sid, both addresses and both containers' names (a plain request
//! raises none: the control); a forged ARP claim, dropped by the spoof guard, is reported;
//! a busybox `nc` loop over 200 ports raises a port-scan alert,
//! and in IPS mode quarantines the scanner (its pings fail, its peers' do not, it still
//! reaches its gateway) until `ids release`. Rules and the quarantine survive a daemon
//! kill -9; a rule file with a syntax error is refused naming file and line, and the old
//! rules keep running; bad input changes nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SID: u64 = 1_000_001;

/// Every alert in the EVE log (`ids alerts --json`).
fn alerts(env: &Env) -> Vec<serde_json::Value> {
    env.qingluan(&["--json", "ids", "alerts"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("an EVE line"))
        .collect()
}

/// The alerts with signature `sid`.
fn with_sid(env: &Env, sid: u64) -> Vec<serde_json::Value> {
    alerts(env)
        .into_iter()
        .filter(|a| a["alert"]["signature_id"] == sid)
        .collect()
}

/// `ids status --json`.
fn status(env: &Env) -> serde_json::Value {
    serde_json::from_str(&env.qingluan(&["--json", "ids", "status"])).unwrap()
}

/// A daemon whose EVE log is in its own directory, with no default rules, and a SYN flood
/// threshold of 100 a second (the userspace datapath delays bursts of new connections
/// beyond that while it installs their flows, so a test cannot count on more).
fn ids_env() -> Env {
    let mut env = Env::new();
    let dir = env.dir.path().to_path_buf();
    env.stop();
    let mut config = std::fs::read_to_string(env.config()).unwrap();
    config.push_str(&format!(
        "\n[ids]\neve_log = \"{}\"\ndefault_rules = \"{}/none/*.rules\"\nsyn_flood_per_sec = 100\n",
        dir.join("eve.json").display(),
        dir.display()
    ));
    std::fs::write(env.config(), config).unwrap();
    env.start();
    env
}

/// Waits until a detector thread reads the watched network's capture port.
fn wait_inspecting(env: &Env) {
    assert!(
        wait_for(Duration::from_secs(10), || status(env)["watches"][0]
            ["inspecting"]
            == true),
        "the detector reads the capture port: {}",
        status(env)
    );
}

/// Runs `qingluan ARGS`: whether it succeeded, and what it printed.
fn try_cli(env: &Env, args: &[&str]) -> (bool, String) {
    let o = env.cli(args);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), text.trim().to_string())
}

/// Waits until `n` alerts with `sid` are logged; the time it took.
fn wait_alerts(env: &Env, sid: u64, n: usize, what: &str) -> Duration {
    let start = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || with_sid(env, sid).len() >= n),
        "{what}: alerts {:?}\nstatus {}",
        alerts(env),
        status(env)
    );
    start.elapsed()
}

#[test]
fn ids_alerts_on_signatures_and_scans_and_quarantines_in_ips_mode() {
    if !enabled("ids_alerts_on_signatures_and_scans_and_quarantines_in_ips_mode") {
        return;
    }
    let mut env = ids_env();
    let dir = env.dir.path().to_path_buf();
    let rules = dir.join("web.rules");
    std::fs::write(
        &rules,
        format!(
            "# qingluan e2e\n\
             alert tcp any any -> $HOME_NET 80 (msg:\"QLT attack marker\"; flow:to_server,established; content:\"qlt-attack-marker\"; nocase; classtype:web-application-attack; sid:{SID}; rev:1;)\n\
             alert http any any -> any any (msg:\"QLT app layer\"; http.uri; content:\"/x\"; sid:1000002; rev:1;)\n"
        ),
    )
    .unwrap();
    let broken = dir.join("broken.rules");
    std::fs::write(
        &broken,
        "alert tcp any any -> any 80 (msg:\"fine\"; sid:1000003;)\nalert tcp any any -> any 80 (msg:\"unterminated; sid:1000004;\n",
    )
    .unwrap();
    let (rules, broken) = (rules.display().to_string(), broken.display().to_string());

    env.create_network("qlt-ids", &["--opt", "model=nat"]);
    start_sleepers("qlt-ids", &["qlt-ia", "qlt-ic"]);
    docker(&[
        "run",
        "-d",
        "--name",
        "qlt-ib",
        "--net",
        "qlt-ids",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let (a, b) = (ip_of("qlt-ia", "qlt-ids"), ip_of("qlt-ib", "qlt-ids"));
    let gateway = env.gateway_of("qlt-ids");

    // Bad input is refused and changes nothing.
    let (ok, text) = try_cli(&env, &["ids", "enable", "--network", "qlt-nosuch"]);
    assert!(!ok && text.contains("not a qingluan network"), "{text}");
    let (ok, text) = try_cli(
        &env,
        &["ids", "enable", "--network", "qlt-ids", "--rules", &broken],
    );
    assert!(
        !ok && text.contains(&format!("{broken}:2")),
        "a syntax error names file and line: {text}"
    );
    let (ok, text) = try_cli(
        &env,
        &["ids", "enable", "--network", "qlt-ids", "--mode", "both"],
    );
    assert!(!ok && text.contains("give ids or ips"), "{text}");
    let s = status(&env);
    assert_eq!(s["watches"], serde_json::json!([]), "nothing watched: {s}");
    assert_eq!(s["rules"]["count"], 0, "no rules: {s}");

    // Watch the network; the unsupported rule is reported, not loaded.
    let (ok, text) = try_cli(
        &env,
        &["ids", "enable", "--network", "qlt-ids", "--rules", &rules],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("rules: 1 loaded") && text.contains("sid 1000002 uses protocol http"),
        "{text}"
    );
    wait_inspecting(&env);

    // The control: a plain request raises nothing.
    let fetch = |path: &str| {
        let (ok, out) = exec(
            "qlt-ia",
            &format!("timeout 3 wget -q -O - http://{b}/{path}"),
        );
        assert!(ok || out.contains("404"), "the request goes through: {out}");
    };
    fetch("index.html");
    std::thread::sleep(Duration::from_secs(1));
    assert!(with_sid(&env, SID).is_empty(), "{:?}", alerts(&env));

    // The signature: an alert with the sid, both addresses and both names.
    fetch("?q=QLT-Attack-Marker");
    let took = wait_alerts(&env, SID, 1, "signature");
    eprintln!("signature alert logged within {took:?}");
    let alert = &with_sid(&env, SID)[0];
    assert_eq!(alert["event_type"], "alert");
    assert_eq!(alert["src_ip"], a.as_str(), "{alert}");
    assert_eq!(alert["dest_ip"], b.as_str(), "{alert}");
    assert_eq!(alert["dest_port"], 80, "{alert}");
    assert_eq!(alert["qingluan"]["src_container"], "qlt-ia", "{alert}");
    assert_eq!(alert["qingluan"]["dest_container"], "qlt-ib", "{alert}");
    assert_eq!(alert["qingluan"]["network"], "qlt-ids", "{alert}");
    assert!(pings("qlt-ia", &b), "IDS mode quarantines nobody");

    // ARP spoofing: the spoof guard drops qlt-ia's claim to be qlt-b, and the detector
    // reports it (the guard's drop flow copies what it drops to the capture port).
    let spoof = format!(
        "import socket\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('eth0', 0))\n\
         mac = s.getsockname()[4]\n\
         ip = socket.inet_aton('{b}')\n\
         arp = bytes.fromhex('0001080006040002') + mac + ip + bytes(6) + ip\n\
         for _ in range(3): s.send(b'\\xff' * 6 + mac + b'\\x08\\x06' + arp)\n"
    );
    common::ok(
        "nsenter",
        &["-t", &pid_of("qlt-ia"), "-n", "python3", "-c", &spoof],
    );
    wait_alerts(&env, 9_000_004, 1, "ARP spoofing");
    let spoof = &with_sid(&env, 9_000_004)[0];
    assert_eq!(spoof["src_ip"], b.as_str(), "the address claimed: {spoof}");
    assert_eq!(
        spoof["qingluan"]["src_container"], "qlt-ia",
        "the sender, by its MAC, not the owner of the address: {spoof}"
    );
    let acl: serde_json::Value =
        serde_json::from_str(&env.qingluan(&["--json", "acl", "ls"])).unwrap();
    assert!(
        acl["spoofed"].as_object().is_some_and(|m| !m.is_empty()),
        "the spoof guard still counts what it drops: {acl}"
    );
    assert!(pings("qlt-ic", &b), "qlt-b's address is not taken over");

    // Floods: 400 echo requests and 300 SYNs to one port, each at about 1,000 a second
    // (python3 in qlt-ia's namespace; the thresholds are 200 (the default) and 100 per
    // second). Paced, because the userspace datapath drops frames of a burst sent faster
    // than it polls the container's port.
    let flood = format!(
        "import socket, struct, time\n\
         def csum(b):\n\
         \x20   s = sum(struct.unpack('!%dH' % (len(b) // 2), b))\n\
         \x20   s = (s >> 16) + (s & 0xffff); s += s >> 16\n\
         \x20   return ~s & 0xffff\n\
         icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
         for i in range(400):\n\
         \x20   h = struct.pack('!BBHHH', 8, 0, 0, 7, i) + b'qlt'\n\
         \x20   h = h[:2] + struct.pack('!H', csum(h + b'\\0')) + h[4:]\n\
         \x20   icmp.sendto(h, ('{b}', 0)); time.sleep(0.001)\n\
         held = []\n\
         for i in range(300):\n\
         \x20   s = socket.socket(); s.setblocking(False); s.connect_ex(('{b}', 81)); held.append(s)\n\
         \x20   time.sleep(0.001)\n"
    );
    common::ok(
        "nsenter",
        &["-t", &pid_of("qlt-ia"), "-n", "python3", "-c", &flood],
    );
    wait_alerts(&env, 9_000_003, 1, "ICMP flood");
    wait_alerts(&env, 9_000_002, 1, "SYN flood");
    assert_eq!(
        with_sid(&env, 9_000_003)[0]["qingluan"]["src_container"],
        "qlt-ia"
    );
    assert_eq!(
        with_sid(&env, 9_000_002)[0]["qingluan"]["dest_container"],
        "qlt-ib"
    );

    // The table and the time window of `ids alerts`.
    let table = env.qingluan(&["ids", "alerts", "--since", "10m"]);
    assert!(
        table.contains("QLT attack marker") && table.contains("qlt-ia"),
        "{table}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let (ok, recent) = try_cli(&env, &["--json", "ids", "alerts", "--since", "1s"]);
    assert!(
        ok && recent.is_empty(),
        "nothing in the last second: {recent}"
    );

    // IPS mode: a port scan raises a scan alert and quarantines the scanner.
    let (ok, text) = try_cli(
        &env,
        &["ids", "enable", "--network", "qlt-ids", "--mode", "ips"],
    );
    assert!(ok, "{text}");
    assert!(
        pings("qlt-ic", &a),
        "before the scan the scanner reaches its peers"
    );
    docker(&[
        "exec",
        "-d",
        "qlt-ic",
        "sh",
        "-c",
        // The scanner stops once it is cut off, so that it does not scan again after
        // its release.
        &format!(
            "for p in $(seq 1000 1199); do nc -w1 {a} $p </dev/null; \
             ping -c 1 -W 1 {a} >/dev/null || break; done"
        ),
    ]);
    wait_alerts(&env, 9_000_001, 1, "port scan");
    let scan = &with_sid(&env, 9_000_001)[0];
    assert_eq!(scan["qingluan"]["src_container"], "qlt-ic", "{scan}");
    assert!(
        wait_for(Duration::from_secs(10), || status(&env)["quarantined"]
            .as_array()
            .is_some_and(|q| q.iter().any(|q| q["container"] == "qlt-ic"))),
        "the scanner is quarantined: {}",
        status(&env)
    );
    let cut = |who: &str| {
        assert!(!pings(who, &a), "{who} is cut off");
        assert!(
            exec(who, &format!("ping -c 1 -W 1 {gateway}")).0,
            "{who} still reaches its gateway"
        );
        assert!(pings("qlt-ia", &b), "the peers are unaffected");
    };
    cut("qlt-ic");

    // Rules and the quarantine survive a daemon kill -9.
    env.kill();
    env.start();
    let s = status(&env);
    assert_eq!(s["rules"]["count"], 1, "{s}");
    cut("qlt-ic");

    // Release lifts the quarantine; a second release is refused.
    let (ok, text) = try_cli(&env, &["ids", "release", "qlt-ic"]);
    assert!(ok && text.contains("released qlt-ic"), "{text}");
    assert!(pings("qlt-ic", &a), "released");
    let (ok, text) = try_cli(&env, &["ids", "release", "qlt-ic"]);
    assert!(!ok && text.contains("is not quarantined"), "{text}");

    // A broken rule file keeps the old rules running: the signature (priority 1) still
    // alerts, and in IPS mode now quarantines its sender.
    let (ok, text) = try_cli(&env, &["ids", "reload", "--rules", &broken]);
    assert!(!ok && text.contains(&format!("{broken}:2")), "{text}");
    assert_eq!(status(&env)["rules"]["files"][0], rules.as_str());
    wait_inspecting(&env);
    fetch("?q=qlt-attack-marker-again");
    wait_alerts(&env, SID, 2, "the old rules still run");
    assert!(
        wait_for(Duration::from_secs(10), || !pings("qlt-ia", &b)),
        "the sender of a priority 1 alert is quarantined: {}",
        status(&env)
    );
    let (ok, text) = try_cli(&env, &["ids", "release", "qlt-ia"]);
    assert!(ok, "{text}");
    assert!(pings("qlt-ia", &b), "released");

    // The metrics count the alerts.
    let m = ok_metrics(&env);
    assert!(
        m.lines()
            .any(|l| l.starts_with("qingluan_ids_alerts_total")
                && l.contains(&format!("sid=\"{SID}\""))),
        "{m}"
    );

    // Disabling stops the mirror and removes the capture port.
    let capture = status(&env)["watches"][0]["capture"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, text) = try_cli(&env, &["ids", "disable", "--network", "qlt-ids"]);
    assert!(ok, "{text}");
    assert!(
        wait_for(Duration::from_secs(10), || !run(
            "ip",
            &["link", "show", &capture]
        )
        .status
        .success()),
        "the capture port goes"
    );
}

/// The daemon's `/metrics`.
fn ok_metrics(env: &Env) -> String {
    ok("curl", &["-sf", &format!("http://{}/metrics", env.metrics)])
}

#[test]
fn a_watched_container_is_inspected_alone() {
    if !enabled("a_watched_container_is_inspected_alone") {
        return;
    }
    let env = ids_env();
    let rules = env.dir.path().join("ping.rules");
    std::fs::write(
        &rules,
        "alert icmp $HOME_NET any -> $HOME_NET any (msg:\"QLT ping\"; sid:1000201; rev:1;)\n",
    )
    .unwrap();
    let rules = rules.display().to_string();
    env.create_network("qlt-idc", &["--opt", "model=nat"]);
    start_sleepers("qlt-idc", &["qlt-ja", "qlt-jb", "qlt-jc"]);
    let (b, c) = (ip_of("qlt-jb", "qlt-idc"), ip_of("qlt-jc", "qlt-idc"));

    let (ok, text) = try_cli(&env, &["ids", "enable", "--container", "qlt-nosuch"]);
    assert!(!ok && text.contains("is on no qingluan network"), "{text}");
    let (ok, text) = try_cli(
        &env,
        &[
            "mirror",
            "add",
            "--network",
            "qlt-idc",
            "--container",
            "qlt-nosuch",
            "--to",
            "container:qlt-jc",
        ],
    );
    assert!(!ok && text.contains("has no endpoint on network"), "{text}");

    let (ok, text) = try_cli(
        &env,
        &["ids", "enable", "--container", "qlt-jb", "--rules", &rules],
    );
    assert!(ok && text.contains("watching container qlt-jb"), "{text}");
    wait_inspecting(&env);
    let s = status(&env);
    assert_eq!(s["watches"][0]["containers"][0], "qlt-jb", "{s}");
    assert_eq!(s["watches"][0]["network_name"], "qlt-idc", "{s}");

    // Traffic of the other containers is not inspected (the control), the container's is.
    assert!(pings("qlt-ja", &c));
    std::thread::sleep(Duration::from_secs(1));
    assert!(with_sid(&env, 1_000_201).is_empty(), "{:?}", alerts(&env));
    // `ids alerts --follow` prints the alert as it comes.
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_qingluan"))
        .args(["--config", env.config().to_str().unwrap()])
        .args(["--json", "ids", "alerts", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ids alerts --follow");
    let out = follow.stdout.take().expect("stdout");
    let mut follow = Guard(follow);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(pings("qlt-ja", &b));
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("--follow prints the new alert");
    assert!(line.contains("\"signature_id\":1000201"), "{line}");
    let _ = follow.0.kill();
    let _ = follow.0.wait();
    wait_alerts(&env, 1_000_201, 1, "the watched container's ping");
    let a = &with_sid(&env, 1_000_201)[0];
    assert_eq!(a["qingluan"]["dest_container"], "qlt-jb", "{a}");

    let capture = status(&env)["watches"][0]["capture"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, text) = try_cli(&env, &["ids", "disable", "--container", "qlt-jb"]);
    assert!(ok, "{text}");
    assert_eq!(status(&env)["watches"], serde_json::json!([]));
    assert!(
        !run("ip", &["link", "show", &capture]).status.success(),
        "the capture port goes"
    );
}
