//! A private OVS per test: its own ovsdb-server and ovs-vswitchd with their own run, db and
//! log directory (a fresh temp dir, passed as `OVS_RUNDIR`/`OVS_DBDIR`/`OVS_LOGDIR`), and
//! ovs-vswitchd in a network namespace of its own, so the userspace datapath's tap devices
//! and the test's veths never touch the host.
//!
//! Rules: the daemons are children of the test process (not detached), so the guard knows
//! exactly which PIDs it started and stops only those (SIGTERM, then SIGKILL after 5 s);
//! dropping the guard, also on panic, stops them, deletes the namespace and removes the temp
//! dir. Names carry the test process id and a counter, so parallel tests never collide.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The schema `ovsdb-tool create` needs.
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// Programs the sandbox runs.
const TOOLS: &[&str] = &[
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vsctl",
    "ovs-vswitchd",
    "ovs-ofctl",
    "ip",
];

/// Counter making namespace names unique within the test process.
static NEXT: AtomicU32 = AtomicU32::new(1);

/// A running private OVS; dropping it stops exactly its daemons.
pub struct PrivateOvs {
    /// Run, db and log directory.
    dir: tempfile::TempDir,
    /// The network namespace ovs-vswitchd runs in.
    ns: String,
    /// The daemons we started, by program name.
    daemons: Mutex<Vec<(&'static str, Child)>>,
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Why the sandbox cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    if let Some(t) = TOOLS.iter().find(|t| !on_path(t)) {
        return Some(format!(
            "{t} not installed (package openvswitch-switch / iproute2)"
        ));
    }
    if !Path::new(SCHEMA).exists() {
        return Some(format!("{SCHEMA} missing"));
    }
    None
}

impl PrivateOvs {
    /// Starts a private OVS, or prints `SKIP: <test>: <reason>` and returns `None` when this
    /// machine cannot run one (not root, OVS not installed).
    pub fn start(test: &str) -> Option<PrivateOvs> {
        if let Some(reason) = missing() {
            println!("SKIP: {test}: {reason}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("qlt-ovs")
            .tempdir()
            .expect("temp dir");
        let ns = format!(
            "qlt-ovs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let ovs = PrivateOvs {
            dir,
            ns,
            daemons: Mutex::new(Vec::new()),
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &ovs.ns])
            .stderr(Stdio::null())
            .status();
        ovs.must(Command::new("ip").args(["netns", "add", &ovs.ns]));
        ovs.must(Command::new("ip").args(["-n", &ovs.ns, "link", "set", "lo", "up"]));
        let db = ovs.path("conf.db");
        ovs.must(
            Command::new("ovsdb-tool")
                .arg("create")
                .arg(&db)
                .arg(SCHEMA),
        );
        ovs.start_ovsdb();
        ovs.vsctl(&["--no-wait", "init"]);
        ovs.start_vswitchd();
        Some(ovs)
    }

    /// A file in the run directory.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The run directory (`OVS_RUNDIR`), where `<bridge>.mgmt` sockets live.
    pub fn rundir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The OVSDB target, `unix:<rundir>/db.sock`.
    pub fn target(&self) -> String {
        format!("unix:{}", self.path("db.sock").display())
    }

    fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("OVS_RUNDIR", self.dir.path())
            .env("OVS_DBDIR", self.dir.path())
            .env("OVS_LOGDIR", self.dir.path())
    }

    /// Runs a command with the private OVS's environment; panics with its stderr on failure.
    fn must(&self, cmd: &mut Command) -> Output {
        let out = self.env(cmd).output().expect("spawn");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn spawn(&self, name: &'static str, cmd: &mut Command) {
        let child = self
            .env(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon");
        self.daemons.lock().unwrap().push((name, child));
    }

    /// Starts ovsdb-server (again) and waits until its socket accepts connections.
    pub fn start_ovsdb(&self) {
        let d = self.dir.path().display();
        self.spawn(
            "ovsdb-server",
            Command::new("ovsdb-server").args([
                format!("{d}/conf.db"),
                format!("--remote=punix:{d}/db.sock"),
                format!("--pidfile={d}/ovsdb-server.pid"),
                format!("--log-file={d}/ovsdb-server.log"),
                "-vconsole:off".into(),
                "--no-chdir".into(),
            ]),
        );
        let sock = self.path("db.sock");
        wait_for("ovsdb-server socket", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    /// Starts ovs-vswitchd in the namespace and waits until it has reported its datapaths.
    pub fn start_vswitchd(&self) {
        let d = self.dir.path().display();
        self.spawn(
            "ovs-vswitchd",
            Command::new("ip").args([
                "netns".into(),
                "exec".into(),
                self.ns.clone(),
                "ovs-vswitchd".into(),
                format!("unix:{d}/db.sock"),
                format!("--pidfile={d}/ovs-vswitchd.pid"),
                format!("--log-file={d}/ovs-vswitchd.log"),
                "-vconsole:off".into(),
                "--no-chdir".into(),
            ]),
        );
        wait_for("ovs-vswitchd", || {
            self.vsctl(&["get", "Open_vSwitch", ".", "datapath_types"])
                .contains("netdev")
        });
        let pid = self.pid_of("ovs-vswitchd").expect("started");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "ovs-vswitchd",
            "ip netns exec must exec, not fork"
        );
    }

    fn pid_of(&self, name: &str) -> Option<u32> {
        let daemons = self.daemons.lock().unwrap();
        daemons
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.id())
    }

    /// Stops the daemon called `name` that we started (SIGTERM, SIGKILL after 5 s).
    pub fn stop(&self, name: &str) {
        let mut daemons = self.daemons.lock().unwrap();
        if let Some(i) = daemons.iter().position(|(n, _)| *n == name) {
            let (_, child) = daemons.remove(i);
            terminate(child);
        }
    }

    /// `ovs-vsctl --db=<target> ARGS`; panics on failure, returns stdout.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let out = self.must(
            Command::new("ovs-vsctl")
                .arg(format!("--db={}", self.target()))
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `ovs-ofctl -O OpenFlow15 CMD unix:<rundir>/<bridge>.mgmt ARGS`; returns stdout.
    pub fn ofctl(&self, cmd: &str, bridge: &str, args: &[&str]) -> String {
        let target = format!("unix:{}", self.path(&format!("{bridge}.mgmt")).display());
        let out = self.must(
            Command::new("ovs-ofctl")
                .args(["-O", "OpenFlow15", cmd, &target])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell command inside the namespace; panics on failure.
    /// The network namespace ovs-vswitchd runs in.
    pub fn netns(&self) -> String {
        self.ns.clone()
    }

    pub fn in_ns(&self, script: &str) {
        self.must(Command::new("ip").args(["netns", "exec", &self.ns, "sh", "-c", script]));
    }
}

/// SIGTERM, wait up to 5 s, then SIGKILL; always reaps the child.
fn terminate(mut child: Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `ready` for up to 10 s.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < end, "{what} not ready within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for PrivateOvs {
    fn drop(&mut self) {
        let mut daemons =
            std::mem::take(&mut *self.daemons.lock().unwrap_or_else(|e| e.into_inner()));
        // ovs-vswitchd before ovsdb-server, so it does not log reconnect attempts.
        daemons.sort_by_key(|(name, _)| *name != "ovs-vswitchd");
        for (_, child) in daemons {
            terminate(child);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}
