//! The multi-host test bed: N qingluan hosts on one machine, for cluster, flat, vlan and
//! vxlan tests (docs/testing.md).
//!
//! Layout, all under a random tag `T` so runs never collide:
//! - `qlb<T>sw`: a "switch" namespace with a Linux bridge `br0`, the underlay
//!   `10.213.<x>.0/24`; every other namespace has `eth0` plugged into it.
//! - `qlb<T>et`: etcd at `.100`, which tests can stop and start again with its data.
//! - `qlb<T>h<N>`: host N at `.<N>`, default route via `.254` (nobody), with its own
//!   ovsdb-server and ovs-vswitchd (own run/db/log dirs, userspace TSO on), its own qingluan
//!   daemon (this build, `cluster.host_id = "h<N>"`, etcd as the cluster store), and its own
//!   dockerd in a private mount namespace whose `/run/docker/plugins` is the host's own
//!   plugin directory (`nsenter --net`, not `ip netns exec`, which hides the cgroup mounts).
//! - `qlb<T>ot`: an "outside" namespace at `.200`, for physical-host and router roles.
//!
//! Start order: etcd, OVS, daemons, dockerds (so each dockerd finds its plugin). Dropping
//! the bed stops everything it started by PID, deletes its namespaces (and with them every
//! link and bridge), its cgroups and its files; when a test failed, the logs are copied to
//! `/tmp/qlt-logs/bed-<T>/` first.

#![allow(dead_code)]

pub mod overlay;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The test image in every host's dockerd.
pub const IMAGE: &str = "qlbusybox:latest";

/// Whether the bed may run here; prints the reason when not.
pub fn enabled(test: &str) -> bool {
    if std::env::var("QL_E2E").as_deref() != Ok("1") {
        println!("SKIP: {test}: end-to-end tests need QL_E2E=1 (scripts/test.sh sets it)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP: {test}: end-to-end tests need root");
        return false;
    }
    if Command::new("etcd").arg("--version").output().is_err() {
        println!("SKIP: {test}: the etcd-server package is not installed");
        return false;
    }
    true
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Waits up to `limit` for `child` to exit; whether it did.
fn exits_within(child: &mut std::process::Child, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `sig` to `child`.
fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

fn must(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The environment that points the OVS tools at the instance with its files in `d`.
fn ovs_env_of(d: &std::path::Path) -> Vec<(String, String)> {
    ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"]
        .iter()
        .map(|k| (k.to_string(), d.display().to_string()))
        .collect()
}

/// Stops the OVS daemons whose pidfiles are in `d` (SIGTERM, up to 5 s each), if any.
fn stop_ovs(d: &std::path::Path) {
    for f in ["ovs-vswitchd.pid", "ovsdb-server.pid"] {
        let pid = std::fs::read_to_string(d.join(f)).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..50 {
                if nix::sys::signal::kill(pid, None).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The `&str`s of owned arguments.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// stdout and stderr of a command, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `f` every 200 ms until it holds; panics with `what` after `secs`.
/// A script that starts a one-shot iperf3 server on `port` and returns once it listens
/// (`iperf3 -D` returns before the server binds; under load that took more than 500 ms),
/// failing after 10 s.
pub fn iperf_server(port: u16) -> String {
    format!(
        "iperf3 -s -D -1 -p {port} >/dev/null 2>&1; for _ in $(seq 200); do \
         ss -Hltn 'sport = :{port}' | grep -q . && exit 0; sleep 0.05; done; exit 1"
    )
}

pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out after {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One host of the bed.
struct Host {
    dir: PathBuf,
    daemon: Option<Child>,
    dockerd: Option<Child>,
}

/// The bed.
pub struct Bed {
    tag: String,
    dir: PathBuf,
    net: u8,
    size: usize,
    hosts: Vec<Host>,
    etcd: Option<Child>,
    cluster_toml: String,
    /// Hosts keep their state in the embedded store: no etcd, no cluster.
    local: bool,
}

impl Bed {
    /// Starts `n` hosts; `cluster_toml` is added to each host's `[cluster]` table
    /// (e.g. `reclaim_after_secs = 3`).
    pub fn start(n: usize, cluster_toml: &str) -> Bed {
        Bed::boot(n, cluster_toml, false)
    }

    /// Starts one host with the embedded store, as a single-host user runs it.
    pub fn start_local() -> Bed {
        Bed::boot(1, "", true)
    }

    fn boot(n: usize, cluster_toml: &str, local: bool) -> Bed {
        let t0 = Instant::now();
        let seed = std::process::id() ^ (t0.elapsed().subsec_nanos() << 8);
        let tag = format!("{:04x}", seed & 0xffff);
        let dir = PathBuf::from(format!("/tmp/qlb{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bed = Bed {
            net: 1 + (seed % 250) as u8,
            size: n,
            tag,
            dir,
            hosts: Vec::new(),
            etcd: None,
            cluster_toml: cluster_toml.to_string(),
            local,
        };
        bed.underlay(n);
        if !local {
            bed.start_etcd();
        }
        bed.rootfs();
        for h in 1..=n {
            let hd = bed.dir.join(format!("h{h}"));
            for sub in ["ovs", "plugins", "d", "x"] {
                std::fs::create_dir_all(hd.join(sub)).unwrap();
            }
            bed.hosts.push(Host {
                dir: hd,
                daemon: None,
                dockerd: None,
            });
            bed.start_ovs(h);
            bed.write_config(h);
            bed.start_daemon(h);
            bed.start_dockerd(h);
        }
        println!(
            "bed {}: {n} hosts on 10.213.{}.0/24 up in {:.1} s",
            bed.tag,
            bed.net,
            t0.elapsed().as_secs_f64()
        );
        bed
    }

    /// Namespace of host `h` (1-based), or of `sw`, `et`, `ot`.
    pub fn ns(&self, h: impl std::fmt::Display) -> String {
        let h = h.to_string();
        if h.parse::<usize>().is_ok() {
            format!("qlb{}h{h}", self.tag)
        } else {
            format!("qlb{}{h}", self.tag)
        }
    }

    /// Underlay address of host `h`.
    pub fn host_ip(&self, h: usize) -> String {
        format!("10.213.{}.{h}", self.net)
    }

    /// Underlay address of the outside namespace.
    pub fn outside_ip(&self) -> String {
        format!("10.213.{}.200", self.net)
    }

    fn etcd_ip(&self) -> String {
        format!("10.213.{}.100", self.net)
    }

    fn plug(&self, ns: &str, ip: &str, port: &str) {
        let sw = self.ns("sw");
        must("ip", &["netns", "add", ns]);
        must(
            "ip",
            &[
                "-n", &sw, "link", "add", "name", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ],
        );
        must(
            "ip",
            &["-n", &sw, "link", "set", "dev", port, "master", "br0", "up"],
        );
        must(
            "ip",
            &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        must("ip", &["-n", ns, "link", "set", "dev", "eth0", "up"]);
        must("ip", &["-n", ns, "link", "set", "dev", "lo", "up"]);
    }

    fn underlay(&self, n: usize) {
        let sw = self.ns("sw");
        must("ip", &["netns", "add", &sw]);
        must(
            "ip",
            &["-n", &sw, "link", "add", "name", "br0", "type", "bridge"],
        );
        must("ip", &["-n", &sw, "link", "set", "dev", "br0", "up"]);
        for h in 1..=n {
            let ns = self.ns(h);
            self.plug(&ns, &self.host_ip(h), &format!("p{h}"));
            let gw = format!("10.213.{}.254", self.net);
            must("ip", &["-n", &ns, "route", "add", "default", "via", &gw]);
        }
        self.plug(&self.ns("et"), &self.etcd_ip(), "pet");
        self.plug(&self.ns("ot"), &self.outside_ip(), "pot");
    }

    /// Address of the router's untagged leg on the underlay: the physical gateway of flat
    /// networks on it.
    pub fn router_ip(&self) -> String {
        format!("10.213.{}.254", self.net)
    }

    /// Starts a router namespace (`rt`) on the underlay trunk. This kernel has neither an
    /// 802.1Q module nor VLAN filtering in its bridge, so the router switches with an OVS of
    /// its own (userspace datapath): its trunk `eth0` and, per VLAN (`(id, "192.168.10.1/24")`),
    /// an internal port that is an access port of that VLAN and holds its gateway; the
    /// bridge's own port is the untagged leg with [`Bed::router_ip`]. The kernel routes
    /// between them and holds 198.51.100.1 as "the outside world"; the outside namespace
    /// routes the VLAN subnets back through it.
    pub fn start_router(&self, vlans: &[(u16, &str)]) {
        let (rt, sw) = (self.ns("rt"), self.ns("sw"));
        must("ip", &["netns", "add", &rt]);
        must(
            "ip",
            &[
                "-n", &sw, "link", "add", "name", "prt", "type", "veth", "peer", "name", "eth0",
                "netns", &rt,
            ],
        );
        must(
            "ip",
            &[
                "-n", &sw, "link", "set", "dev", "prt", "master", "br0", "up",
            ],
        );
        let d = self.dir.join("rt/ovs");
        std::fs::create_dir_all(&d).unwrap();
        self.start_ovs_in("rt", &d);
        let mut script = format!(
            "set -e; ip link set lo up; ip link set eth0 up; ip addr add 198.51.100.1/32 dev lo; \
             sysctl -qw net.ipv4.ip_forward=1; \
             ovs-vsctl add-br rbr -- set bridge rbr datapath_type=netdev -- add-port rbr eth0; \
             ip addr add {}/24 dev rbr; ip link set rbr up; ",
            self.router_ip()
        );
        for (id, gw) in vlans {
            script += &format!(
                "ovs-vsctl add-port rbr g{id} tag={id} -- set interface g{id} type=internal; \
                 ip addr add {gw} dev g{id}; ip link set g{id} up; "
            );
        }
        let o = Command::new("ip")
            .args(["netns", "exec", &rt, "sh", "-c", &script])
            .envs(ovs_env_of(&d))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "router: {}", text(&o));
        let back = format!(
            "ip route add 192.168.0.0/16 via {0}; ip route add 10.242.0.0/16 via {0}",
            self.router_ip()
        );
        let o = self.exec_in("ot", &back);
        assert!(o.status.success(), "outside routes: {}", text(&o));
    }

    /// The etcd client URL the hosts use.
    pub fn etcd_url(&self) -> String {
        format!("http://{}:2379", self.etcd_ip())
    }

    /// Starts etcd (again, keeping its data) and waits until it is healthy.
    pub fn start_etcd(&mut self) {
        let (ip, data) = (self.etcd_ip(), self.dir.join("etcd"));
        let client = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("et"), "etcd", "--name", "qlb"])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("qlb={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd");
        self.etcd = Some(child);
        let url = format!("{client}/health");
        let ns = self.ns("et");
        wait_until(30, "etcd healthy", || {
            let o = run(
                "ip",
                &["netns", "exec", &ns, "curl", "-sf", "-m", "1", &url],
            );
            String::from_utf8_lossy(&o.stdout).contains("true")
        });
    }

    /// Stops etcd (SIGKILL: an outage, not a shutdown).
    pub fn stop_etcd(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn rootfs(&self) {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
        let list = must("/bin/busybox", &["--list"]);
        for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }

    fn ovs_env(&self, h: usize) -> Vec<(String, String)> {
        ovs_env_of(&self.hosts[h - 1].dir.join("ovs"))
    }

    /// Runs a shell command in host `h`'s namespace with its OVS environment.
    pub fn exec(&self, h: usize, script: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(h), "sh", "-c", script])
            .envs(self.ovs_env(h))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Like [`Bed::exec`], in any namespace of the bed (`sw`, `et`, `ot`).
    pub fn exec_in(&self, ns: &str, script: &str) -> Output {
        run("ip", &["netns", "exec", &self.ns(ns), "sh", "-c", script])
    }

    fn start_ovs(&self, h: usize) {
        self.start_ovs_in(&h.to_string(), &self.hosts[h - 1].dir.join("ovs"));
    }

    /// Starts an ovsdb-server and ovs-vswitchd with their files in `d`, in namespace `ns`
    /// (a host number or `rt`).
    fn start_ovs_in(&self, ns: &str, d: &std::path::Path) {
        let ds = d.display();
        let script = format!(
            "ovsdb-tool create {ds}/conf.db /usr/share/openvswitch/vswitch.ovsschema && \
             ovsdb-server {ds}/conf.db --remote=punix:{ds}/db.sock \
               --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
               --pidfile={ds}/ovsdb-server.pid --log-file={ds}/ovsdb-server.log \
               -vconsole:off --no-chdir --detach && \
             ovs-vsctl --no-wait init && \
             ovs-vsctl --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true && \
             ovs-vswitchd unix:{ds}/db.sock --pidfile={ds}/ovs-vswitchd.pid \
               --log-file={ds}/ovs-vswitchd.log -vconsole:off --no-chdir --detach"
        );
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), "sh", "-c", &script])
            .envs(ovs_env_of(d))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "OVS of {ns}: {}", text(&o));
    }

    fn write_config(&self, h: usize) {
        let d = &self.hosts[h - 1].dir;
        let ds = d.display();
        let store = if self.local {
            String::new()
        } else {
            format!(
                "backend = \"etcd\"\nendpoints = [\"{}\"]\nnamespace = \"/qlb{}/\"\n",
                self.etcd_url(),
                self.tag
            )
        };
        let cfg = format!(
            "[daemon]\nname = \"qingluan\"\nprefix = \"ql\"\nplugin_dir = \"{ds}/plugins\"\n\
             api_socket = \"{ds}/api.sock\"\ndocker_socket = \"{ds}/docker.sock\"\n\
             log = \"info\"\n\n[ovs]\ndb = \"unix:{ds}/ovs/db.sock\"\nrundir = \"{ds}/ovs\"\n\n\
             [store]\n{store}path = \"{ds}/state.redb\"\n\n\
             [ids]\neve_log = \"{ds}/eve.json\"\ndefault_rules = \"{ds}/rules/*.rules\"\n\n\
             [cluster]\nhost_id = \"h{h}\"\nunderlay_ip = \"{}\"\n{}\n",
            self.host_ip(h),
            self.cluster_toml
        );
        std::fs::write(d.join("config.toml"), cfg).unwrap();
    }

    /// Starts host `h`'s qingluan daemon and waits for its plugin socket.
    pub fn start_daemon(&mut self, h: usize) {
        let d = self.hosts[h - 1].dir.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("qingluan.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(h), env!("CARGO_BIN_EXE_qingluan")])
            .arg("--config")
            .arg(d.join("config.toml"))
            .arg("daemon")
            .envs(self.ovs_env(h))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.hosts[h - 1].daemon = Some(child);
        let sock = d.join("api.sock");
        wait_until(30, &format!("qingluan daemon of h{h}"), || {
            sock.exists() && self.ql(h, &["status", "--json"]).status.success()
        });
    }

    /// Stops host `h`'s daemon with SIGTERM (a clean shutdown: it marks itself down).
    pub fn stop_daemon(&mut self, h: usize) {
        if let Some(mut c) = self.hosts[h - 1].daemon.take() {
            // `ip netns exec` execs the daemon, so the child is the daemon itself.
            signal(&c, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Kills host `h`'s daemon with SIGKILL (a crash: its lease runs out in etcd).
    pub fn kill_daemon(&mut self, h: usize) {
        if let Some(mut c) = self.hosts[h - 1].daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts host `h`'s ovs-vswitchd (SIGTERM, then a new one on the same database): its
    /// flows are gone until qingluan re-programs them.
    pub fn restart_vswitchd(&self, h: usize) {
        self.stop_ovs_part(h, "ovs-vswitchd");
        self.start_vswitchd(h);
    }

    /// Stops host `h`'s `ovs-vswitchd` or `ovsdb-server` (SIGTERM) and waits until it exited.
    pub fn stop_ovs_part(&self, h: usize, which: &str) {
        let d = self.hosts[h - 1].dir.join("ovs");
        let pid = std::fs::read_to_string(d.join(format!("{which}.pid"))).unwrap_or_default();
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_until(10, &format!("{which} to exit"), || {
            nix::sys::signal::kill(pid, None).is_err()
        });
    }

    /// Starts host `h`'s `ovsdb-server` again on its database (after [`Bed::stop_ovs_part`]).
    pub fn start_ovsdb(&self, h: usize) {
        let ds = self.hosts[h - 1].dir.join("ovs");
        let ds = ds.display();
        let o = self.exec(
            h,
            &format!(
                "ovsdb-server {ds}/conf.db --remote=punix:{ds}/db.sock \
                 --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
                 --pidfile={ds}/ovsdb-server.pid --log-file={ds}/ovsdb-server.log \
                 -vconsole:off --no-chdir --detach"
            ),
        );
        assert!(o.status.success(), "ovsdb-server of h{h}: {}", text(&o));
    }

    /// Starts host `h`'s `ovs-vswitchd` again (after [`Bed::stop_ovs_part`]).
    pub fn start_vswitchd(&self, h: usize) {
        let ds = self.hosts[h - 1].dir.join("ovs");
        let ds = ds.display();
        let o = self.exec(
            h,
            &format!(
                "ovs-vswitchd unix:{ds}/db.sock --pidfile={ds}/ovs-vswitchd.pid \
                 --log-file={ds}/ovs-vswitchd.log -vconsole:off --no-chdir --detach"
            ),
        );
        assert!(o.status.success(), "ovs-vswitchd of h{h}: {}", text(&o));
    }

    /// `qingluan doctor --json` run in host `h`'s namespace: its exit status and report.
    pub fn doctor(&self, h: usize) -> (bool, serde_json::Value) {
        let cfg = self.hosts[h - 1].dir.join("config.toml");
        let o = self.exec(
            h,
            &format!(
                "{} --config {} doctor --json",
                env!("CARGO_BIN_EXE_qingluan"),
                cfg.display()
            ),
        );
        let report = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("doctor printed no report ({e}): {}", text(&o)));
        (o.status.success(), report)
    }

    /// Kills host `h`'s dockerd with SIGKILL (a crash) and starts it again. Its managed
    /// containerd is killed too (by its pidfile): a new dockerd would otherwise wait for the
    /// orphan's socket, which no longer answers, and give up.
    pub fn restart_dockerd(&mut self, h: usize) {
        if let Some(mut c) = self.hosts[h - 1].dockerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let cd = self.hosts[h - 1].dir.join("x/containerd");
        let pid = std::fs::read_to_string(cd.join("containerd.pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            wait_until(10, "containerd to exit", || {
                nix::sys::signal::kill(pid, None).is_err()
            });
        }
        let _ = std::fs::remove_file(cd.join("containerd.pid"));
        let _ = std::fs::remove_file(cd.join("containerd.sock"));
        self.start_dockerd(h);
    }

    fn start_dockerd(&mut self, h: usize) {
        let d = self.hosts[h - 1].dir.clone();
        let ds = d.display();
        let script = format!(
            "mkdir -p /run/docker/plugins && mount --bind {ds}/plugins /run/docker/plugins && \
             exec dockerd --data-root {ds}/d --exec-root {ds}/x -H unix://{ds}/docker.sock \
             --pidfile {ds}/dockerd.pid --bridge=none --iptables=false --ip6tables=false \
             --ip-masq=false --ip-forward=false --userland-proxy=false \
             --cgroup-parent=/qlb{}h{h} --storage-driver=overlay2",
            self.tag
        );
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.ns(h)))
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.hosts[h - 1].dockerd = Some(child);
        wait_until(60, &format!("dockerd of h{h}"), || {
            self.docker(h, &["version"]).status.success()
        });
        let root = self.dir.join("rootfs");
        let o = run(
            "sh",
            &[
                "-c",
                &format!(
                    "tar -C {} -c . | docker -H unix://{ds}/docker.sock import - {IMAGE}",
                    root.display()
                ),
            ],
        );
        assert!(o.status.success(), "image import on h{h}: {}", text(&o));
    }

    /// The docker CLI against host `h`'s dockerd.
    pub fn docker(&self, h: usize, args: &[&str]) -> Output {
        self.docker_command(h, args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker: {e}"))
    }

    /// The docker command against host `h`'s dockerd, not started yet.
    fn docker_command<S: AsRef<std::ffi::OsStr>>(&self, h: usize, args: &[S]) -> Command {
        let sock = format!("unix://{}/docker.sock", self.hosts[h - 1].dir.display());
        let mut c = Command::new("docker");
        c.args(["-H", &sock]).args(args).stdin(Stdio::null());
        c
    }

    /// Like [`Bed::docker`]; panics unless it succeeds, returns stdout.
    pub fn docker_ok(&self, h: usize, args: &[&str]) -> String {
        let o = self.docker(h, args);
        assert!(
            o.status.success(),
            "h{h}: docker {}: {}",
            args.join(" "),
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The qingluan CLI of host `h`.
    pub fn ql(&self, h: usize, args: &[&str]) -> Output {
        let cfg = self.hosts[h - 1].dir.join("config.toml");
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        run(env!("CARGO_BIN_EXE_qingluan"), &all)
    }

    /// Starts container `name` (sleeping) on network `net` of host `h`; returns its address.
    pub fn sleeper(&self, h: usize, name: &str, net: &str) -> String {
        self.docker_ok(
            h,
            &[
                "run", "-d", "--name", name, "--net", net, IMAGE, "sleep", "600",
            ],
        );
        self.address(h, name)
    }

    /// Whether container `from` on host `h` gets an answer to one ping of `to`.
    pub fn ping(&self, h: usize, from: &str, to: &str) -> bool {
        self.docker(h, &["exec", from, "ping", "-c", "1", "-W", "2", to])
            .status
            .success()
    }

    /// Whether one ping of `ip` from `from` on host `h` is answered within 1 s: for
    /// refusals, where [`Bed::ping`] would wait twice as long.
    pub fn ping_once(&self, h: usize, from: &str, ip: &str) -> bool {
        self.docker(h, &["exec", from, "ping", "-c", "1", "-W", "1", ip])
            .status
            .success()
    }

    /// `qingluan acl add ARGS` on host `h`: the new rule's ID.
    pub fn acl_add(&self, h: usize, args: &[&str]) -> String {
        let mut all = vec!["acl", "add"];
        all.extend_from_slice(args);
        let o = self.ql(h, &all);
        assert!(o.status.success(), "h{h}: acl add {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Asserts that `docker ARGS` on host `h` fails with a message containing `want`.
    pub fn docker_refused(&self, h: usize, args: &[String], want: &str) {
        let o = self.docker(h, &strs(args));
        assert!(
            !o.status.success() && text(&o).contains(want),
            "h{h}: docker {args:?}: {}",
            text(&o)
        );
    }

    /// `qingluan --json ARGS` of host `h`, parsed.
    pub fn ql_json(&self, h: usize, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let o = self.ql(h, &all);
        assert!(o.status.success(), "h{h}: qingluan {args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// `docker network create` arguments of a qingluan network of `model` from the pool of
    /// the same name, with `extra` before the name.
    pub fn network_args(model: &str, name: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "network",
            "create",
            "--driver",
            "qingluan",
            "--ipam-driver",
            "qingluanIpam",
            "--opt",
            &format!("model={model}"),
            "--ipam-opt",
            &format!("pool={model}"),
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(name.into());
        v
    }

    /// `docker network create` arguments of a vxlan network with VNI `vni`.
    pub fn vxlan_args(name: &str, vni: u32, extra: &[&str]) -> Vec<String> {
        let vni = format!("vni={vni}");
        let mut all = vec!["--opt", vni.as_str(), "--ipam-opt", vni.as_str()];
        all.extend_from_slice(extra);
        Bed::network_args("vxlan", name, &all)
    }

    /// The IPv4 address (without prefix) of a container's `eth0` on host `h`.
    pub fn address(&self, h: usize, container: &str) -> String {
        let script = "ip -4 -o addr show eth0 | awk '{print $4}'";
        self.docker_ok(h, &["exec", container, "sh", "-c", script])
            .trim()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }

    /// Runs a host program (`ping -M do`, `iperf3`, ...) in a container's network namespace
    /// on host `h`: busybox lacks some options.
    pub fn in_container(&self, h: usize, container: &str, script: &str) -> Output {
        let pid = self.docker_ok(h, &["inspect", "-f", "{{.State.Pid}}", container]);
        run(
            "nsenter",
            &[
                &format!("--net=/proc/{}/ns/net", pid.trim()),
                "sh",
                "-c",
                script,
            ],
        )
    }

    /// Captures on the underlay switch (`tcpdump -nn -e` on `br0`) with `filter` while `f`
    /// runs, and returns what tcpdump printed.
    pub fn capture(&self, filter: &str, f: impl FnOnce()) -> String {
        let out = self.dir.join("capture.txt");
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("sw"),
                "tcpdump",
                "-nn",
                "-e",
                "-l",
            ])
            .args(["-i", "br0"])
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        std::thread::sleep(Duration::from_millis(1500));
        f();
        std::thread::sleep(Duration::from_millis(500));
        signal(&child, nix::sys::signal::Signal::SIGINT);
        let _ = child.wait();
        std::fs::read_to_string(&out).unwrap_or_default()
    }

    /// Whether host `h`'s Docker lists a network of that name.
    pub fn has_network(&self, h: usize, name: &str) -> bool {
        let o = self.docker(h, &["network", "ls", "--format", "{{.Name}}"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l == name)
    }

    /// PID of host `h`'s qingluan daemon while it runs.
    pub fn daemon_pid(&self, h: usize) -> Option<u32> {
        self.hosts[h - 1].daemon.as_ref().map(Child::id)
    }

    /// The reports of the full reconciles host `h`'s daemon logged, oldest first (its log
    /// is appended to across restarts).
    pub fn reconcile_reports(&self, h: usize) -> Vec<String> {
        std::fs::read_to_string(self.hosts[h - 1].dir.join("qingluan.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("full reconcile done"))
            .map(String::from)
            .collect()
    }

    /// Tail of every host's daemon log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let log = std::fs::read_to_string(h.dir.join("qingluan.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("--- h{} qingluan.log (last 30 lines)\n", i + 1));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn stop_host(&mut self, h: usize) {
        let o = self.docker(h, &["ps", "-aq"]);
        let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() && !self.remove_containers(h, &ids) {
            self.keep_logs();
        }
        let host = &mut self.hosts[h - 1];
        if let Some(mut c) = host.dockerd.take() {
            signal(&c, nix::sys::signal::Signal::SIGTERM);
            exits_within(&mut c, Duration::from_secs(15));
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut c) = host.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        stop_ovs(&host.dir.join("ovs"));
    }

    /// `docker rm -f` of `ids` on host `h`; false when it hung. dockerd 20.10.24 can
    /// deadlock while it removes many containers (moby/libnetwork#2649): then its goroutine
    /// dump is taken for the kept logs, and stopping dockerd ends the removal.
    fn remove_containers(&self, h: usize, ids: &[String]) -> bool {
        let mut rm = self
            .docker_command(h, &["rm", "-f"])
            .args(ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if exits_within(&mut rm, Duration::from_secs(120)) {
            return true;
        }
        eprintln!(
            "h{h}: docker rm -f hung for 2 minutes; logs and dockerd's goroutines go to /tmp/qlt-logs/bed-{}",
            self.tag
        );
        if let Some(d) = &self.hosts[h - 1].dockerd {
            signal(d, nix::sys::signal::Signal::SIGUSR1);
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = rm.kill();
        let _ = rm.wait();
        false
    }

    fn keep_logs(&self) {
        let dest = PathBuf::from(format!("/tmp/qlt-logs/bed-{}", self.tag));
        let _ = std::fs::create_dir_all(&dest);
        let _ = std::fs::copy(self.dir.join("etcd.log"), dest.join("etcd.log"));
        for (i, h) in self.hosts.iter().enumerate() {
            for f in ["qingluan.log", "dockerd.log", "config.toml"] {
                let _ = std::fs::copy(h.dir.join(f), dest.join(format!("h{}-{f}", i + 1)));
            }
            let _ = std::fs::copy(
                h.dir.join("ovs/ovs-vswitchd.log"),
                dest.join(format!("h{}-ovs-vswitchd.log", i + 1)),
            );
            for e in std::fs::read_dir(h.dir.join("x"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("goroutine-stacks") {
                    let _ = std::fs::copy(e.path(), dest.join(format!("h{}-{name}", i + 1)));
                }
            }
        }
        eprintln!("{}\nbed logs kept in {}", self.logs(), dest.display());
    }
}

/// Kills the containerd shims of the bed's dockerds (their `-address` is under `dir`) and
/// their containers: a dockerd killed by a test leaves them running.
fn kill_shims(dir: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let mark = dir.display().to_string();
    let mut shims = Vec::new();
    let mut parents = Vec::new();
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("containerd-shim") && cmd.contains(&mark) {
            shims.push(pid);
        }
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|pp| pp.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let children = parents
        .iter()
        .filter(|(_, pp)| shims.contains(pp))
        .map(|(p, _)| *p);
    for pid in children.chain(shims.iter().copied()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn remove_cgroups(name: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in controllers.flatten() {
        let dir = c.path().join(name);
        if dir.is_dir() {
            remove_cgroup_tree(&dir);
        }
    }
    let v2 = Path::new("/sys/fs/cgroup").join(name);
    if v2.is_dir() {
        remove_cgroup_tree(&v2);
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Bed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        for h in 1..=self.hosts.len() {
            self.stop_host(h);
        }
        kill_shims(&self.dir);
        self.stop_etcd();
        stop_ovs(&self.dir.join("rt/ovs"));
        let mut names: Vec<String> = (1..=self.size).map(|h| self.ns(h)).collect();
        names.extend(["et", "ot", "rt", "sw"].map(|n| self.ns(n)));
        for ns in names {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        for h in 1..=self.size {
            remove_cgroups(&format!("qlb{}h{h}", self.tag));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
