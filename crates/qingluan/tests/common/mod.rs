//! End-to-end test kit: a real qingluan daemon (this build), the host's real dockerd driven
//! by the real `docker` CLI, real OVS, and "outside" hosts as network namespaces.
//!
//! Every test runs only with `QL_E2E=1` as root (scripts/test.sh sets it after starting OVS
//! and dockerd); otherwise it prints `SKIP:` and returns, so a skip is always visible. Names
//! of everything a test creates start with `qlt`, and a guard removes them even when the
//! test panics. The daemon under test is named `qingluan` unless a system daemon already
//! serves that name (`QL_SYSTEM_DAEMON=1`), then `qltest`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The test image, built from busybox-static (scripts/lib/env.sh does the same).
pub const IMAGE: &str = "qlbusybox:latest";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether e2e tests may run here; prints the reason when not.
pub fn enabled(test: &str) -> bool {
    if std::env::var("QL_E2E").as_deref() != Ok("1") {
        println!("SKIP: {test}: end-to-end tests need QL_E2E=1 (scripts/test.sh sets it)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP: {test}: end-to-end tests need root");
        return false;
    }
    true
}

/// Runs a command, returning its output.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Runs a command through `sh -c`.
pub fn sh(script: &str) -> Output {
    run("sh", &["-c", script])
}

/// stdout of a command that must succeed.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of a command that must fail.
pub fn fails(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        !o.status.success(),
        "{cmd} {} should have failed but printed {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts each of `names` on `network`: a sleeping container with NET_ADMIN (so tests can
/// forge its addresses).
pub fn start_sleepers(network: &str, names: &[&str]) {
    for c in names {
        docker(&[
            "run",
            "-d",
            "--cap-add",
            "NET_ADMIN",
            "--name",
            c,
            "--net",
            network,
            IMAGE,
            "sleep",
            "600",
        ]);
    }
}

/// Kills and reaps a child process of the test when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The PID of a container's first process (for `nsenter -n`).
pub fn pid_of(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Pid}}", container])
        .trim()
        .to_string()
}

/// `docker ARGS`, must succeed.
pub fn docker(args: &[&str]) -> String {
    ok("docker", args)
}

/// Waits until `f` is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// The daemon under test and everything the test created.
pub struct Env {
    /// Driver name (`qingluan` or `qltest`).
    pub driver: String,
    /// IPAM driver name.
    pub ipam: String,
    /// Link prefix of the instance.
    pub prefix: String,
    /// Per-test state directory (config, store, logs).
    pub dir: tempfile::TempDir,
    /// The daemon process.
    daemon: Option<Child>,
    /// Outside namespaces created.
    outside: Vec<String>,
    /// Where the daemon serves `/metrics` (a free loopback port).
    pub metrics: std::net::SocketAddr,
}

impl Env {
    /// Starts a daemon with a fresh store; removes leftovers of earlier runs first.
    pub fn new() -> Env {
        Env::with_daemon_config("")
    }

    /// Like [`Env::new`], with extra `[daemon]` settings (TOML lines).
    pub fn with_daemon_config(extra: &str) -> Env {
        Env::with_config(extra, "")
    }

    /// Like [`Env::new`], with extra `[daemon]` and `[monitoring]` settings (TOML lines).
    pub fn with_config(extra: &str, monitoring: &str) -> Env {
        cleanup_docker();
        let system = std::env::var("QL_SYSTEM_DAEMON").as_deref() == Ok("1");
        let (driver, prefix) = if system {
            ("qltest", "qt")
        } else {
            ("qingluan", "ql")
        };
        let dir = tempfile::Builder::new()
            .prefix("qlt-e2e")
            .tempdir()
            .unwrap();
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let config = format!(
            "[daemon]\nname = \"{driver}\"\nprefix = \"{prefix}\"\napi_socket = \"{api}\"\nlog = \"info,qingluan=debug\"\n{extra}\n\n[store]\npath = \"{store}\"\n\n[monitoring]\nlisten = \"{metrics}\"\n{monitoring}\n",
            api = dir.path().join("api.sock").display(),
            store = dir.path().join("state.redb").display(),
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        ensure_image();
        let mut env = Env {
            ipam: format!("{driver}Ipam"),
            driver: driver.into(),
            prefix: prefix.into(),
            dir,
            daemon: None,
            outside: Vec::new(),
            metrics,
        };
        env.start();
        env
    }

    /// Config file of this instance.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Starts the daemon and waits for its sockets.
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the daemon with extra environment variables (e.g. `FAILPOINTS`) and waits for
    /// its sockets. It runs in the test's directory.
    pub fn start_with_env(&mut self, vars: &[(&str, &str)]) {
        let before = self.reconciles();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_qingluan"))
            .args(["--config", self.config().to_str().unwrap(), "daemon"])
            .envs(vars.iter().copied())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start qingluan daemon");
        self.daemon = Some(child);
        let sock = PathBuf::from(format!("/run/docker/plugins/{}.sock", self.driver));
        assert!(
            wait_for(Duration::from_secs(10), || sock.exists()
                && self.cli_ok(&["status"])),
            "daemon did not come up: {}",
            self.log()
        );
        assert!(
            wait_for(Duration::from_secs(20), || self.reconciles() > before),
            "daemon never reconciled: {}",
            self.log()
        );
    }

    /// The nice value of each of the daemon's threads.
    pub fn daemon_nice(&self) -> Vec<i32> {
        let pid = self.daemon.as_ref().expect("a daemon runs").id();
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("the daemon's threads")
            .map(|t| {
                let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
                // Fields after the command's closing parenthesis; nice is the 19th field.
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                rest.split(' ').nth(16).unwrap().parse().unwrap()
            })
            .collect()
    }

    /// The reports of the full reconciles the daemon logged, oldest first (across restarts:
    /// the log is appended to).
    pub fn reconcile_reports(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("full reconcile done"))
            .map(String::from)
            .collect()
    }

    fn reconciles(&self) -> usize {
        self.reconcile_reports().len()
    }

    /// Waits for the daemon to exit by itself (a crash point); panics after 10 s.
    pub fn wait_crashed(&mut self) {
        let mut c = self.daemon.take().expect("a daemon runs");
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let crashed = matches!(c.try_wait(), Ok(Some(_)));
        let _ = c.kill();
        let _ = c.wait();
        assert!(crashed, "the daemon did not crash: {}", self.log());
    }

    /// Sends the daemon SIGTERM and waits up to 5 s; returns its exit status (`None` when it
    /// had to be killed) and how long it took.
    pub fn terminate(&mut self) -> (Option<std::process::ExitStatus>, Duration) {
        let mut c = self.daemon.take().expect("a daemon runs");
        let t = Instant::now();
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        while t.elapsed() < Duration::from_secs(5) && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = c.try_wait().ok().flatten();
        let took = t.elapsed();
        let _ = c.kill();
        let _ = c.wait();
        (status, took)
    }

    /// Kills the daemon with SIGKILL, as a crash would stop it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs `qingluan ARGS` against this instance.
    pub fn cli(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut a = vec!["--config", config.to_str().unwrap()];
        a.extend_from_slice(args);
        run(env!("CARGO_BIN_EXE_qingluan"), &a)
    }

    fn cli_ok(&self, args: &[&str]) -> bool {
        self.cli(args).status.success()
    }

    /// stdout of `qingluan ARGS`, which must succeed.
    pub fn qingluan(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "qingluan {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `docker network create --driver D --ipam-driver I ARGS NAME`.
    pub fn create_network(&self, name: &str, args: &[&str]) -> String {
        let mut a = vec![
            "network",
            "create",
            "--driver",
            &self.driver,
            "--ipam-driver",
            &self.ipam,
        ];
        a.extend_from_slice(args);
        a.push(name);
        docker(&a).trim().to_string()
    }

    /// Like [`Env::create_network`] but must fail; returns stderr.
    pub fn create_network_fails(&self, name: &str, args: &[&str]) -> String {
        let mut a = vec![
            "network",
            "create",
            "--driver",
            &self.driver,
            "--ipam-driver",
            &self.ipam,
        ];
        a.extend_from_slice(args);
        a.push(name);
        fails("docker", &a)
    }

    /// An "outside" host: a namespace reached through the host's routing, on a /30 of
    /// 10.249.N.0; returns (namespace, host address, outside address).
    pub fn outside(&mut self) -> (String, String, String) {
        let n = SEQ.fetch_add(1, Ordering::SeqCst) + (std::process::id() % 200);
        let ns = format!("qlt-out{n}");
        let host_if = format!("qlto{n}");
        let (h, o) = (format!("10.249.{n}.1"), format!("10.249.{n}.2"));
        let script = format!(
            "set -e; ip netns add {ns}; ip link add name {host_if} type veth peer name eth0 netns {ns}; \
             ip addr add {h}/30 dev {host_if}; ip link set dev {host_if} up; \
             ip -n {ns} addr add {o}/30 dev eth0; ip -n {ns} link set dev eth0 up; ip -n {ns} link set dev lo up; \
             ip -n {ns} route add default via {h}; sysctl -qw net.ipv4.ip_forward=1"
        );
        let out = sh(&script);
        assert!(
            out.status.success(),
            "outside ns: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.outside.push(ns.clone());
        (ns, h, o)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        cleanup_docker();
        self.stop();
        for ns in &self.outside {
            let _ = run("ip", &["netns", "del", ns]);
        }
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}", self.log());
        }
    }
}

/// Removes every test container and network (name prefix `qlt`).
pub fn cleanup_docker() {
    let _ = sh("ids=$(docker ps -aq --filter name=^qlt); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null 2>&1");
    let _ = sh("for n in $(docker network ls --format '{{.Name}}' | grep '^qlt'); do docker network rm $n >/dev/null 2>&1; done");
}

/// Builds the test image from busybox-static when it is missing.
pub fn ensure_image() {
    if run("docker", &["image", "inspect", IMAGE]).status.success() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let script = format!(
        "set -e; cd {r}; mkdir -p bin etc tmp www; cp /bin/busybox bin/busybox; \
         for a in $(bin/busybox --list); do [ \"$a\" = busybox ] || ln -sf busybox bin/$a; done; \
         echo 'root:x:0:0:root:/root:/bin/sh' > etc/passwd; tar -c . | docker import -c 'ENV PATH=/bin' -c 'CMD [\"sh\"]' - {IMAGE} >/dev/null",
        r = root.path().display()
    );
    let o = sh(&script);
    assert!(
        o.status.success(),
        "building {IMAGE}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `docker exec C sh -c SCRIPT`, returning success and output.
pub fn exec(container: &str, script: &str) -> (bool, String) {
    let o = run("docker", &["exec", container, "sh", "-c", script]);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Whether `from` can ping `ip` (2 tries).
pub fn pings(from: &str, ip: &str) -> bool {
    exec(from, &format!("ping -c 1 -W 1 {ip} || ping -c 1 -W 1 {ip}")).0
}

/// A container's IPv4 address on a network.
pub fn ip_of(container: &str, network: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ])
    .trim()
    .to_string()
}

impl Env {
    /// A network as qingluan reports it (`qingluan network inspect NAME`).
    pub fn network(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.qingluan(&["network", "inspect", name])).unwrap()
    }

    /// Gateway address of a network.
    pub fn gateway_of(&self, name: &str) -> String {
        self.network(name)["gateway"].as_str().unwrap().to_string()
    }

    /// Subnet of a network.
    pub fn subnet_of(&self, name: &str) -> String {
        self.network(name)["subnet"].as_str().unwrap().to_string()
    }
}

impl Env {
    /// Posts `body` to `method` on the instance's plugin socket (`ipam`: the IPAM one) as a
    /// raw client would; returns the HTTP status and the reply body.
    pub fn post(&self, ipam: bool, method: &str, body: &str) -> (u16, String) {
        let sock = if ipam { &self.ipam } else { &self.driver };
        let file = self.dir.path().join("body.json");
        std::fs::write(&file, body).unwrap();
        let o = run(
            "curl",
            &[
                "-s",
                "--unix-socket",
                &format!("/run/docker/plugins/{sock}.sock"),
                "-w",
                "\n%{http_code}",
                "--data-binary",
                &format!("@{}", file.display()),
                &format!("http://plugin/{method}"),
            ],
        );
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (reply, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), reply.to_string())
    }

    /// Like [`Env::post`]; asserts a 500 whose `Err` contains `want`.
    pub fn post_refused(&self, ipam: bool, method: &str, body: &str, want: &str) {
        let (code, reply) = self.post(ipam, method, body);
        assert_eq!(code, 500, "{method}: {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        let err = v["Err"].as_str().unwrap_or_default();
        assert!(err.contains(want), "{method}: expected {want:?} in {err:?}");
    }
}

/// Restarts a daemon by its pidfile with the same command line; waits for `ready`.
pub fn restart_by_pidfile(pidfile: &str, ready: impl Fn() -> bool) -> Instant {
    let pid = std::fs::read_to_string(pidfile).unwrap().trim().to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    ok("kill", &[&pid]);
    assert!(wait_for(Duration::from_secs(30), || !std::path::Path::new(
        &format!("/proc/{pid}")
    )
    .exists()));
    let started = Instant::now();
    // Detached through a shell so the daemon outlives this test process.
    let mut detach = vec!["-c", "setsid \"$@\" >/dev/null 2>&1 < /dev/null &", "sh"];
    detach.extend(args.iter().map(String::as_str));
    ok("sh", &detach);
    assert!(
        wait_for(Duration::from_secs(60), ready),
        "{} did not come back",
        args[0]
    );
    started
}
