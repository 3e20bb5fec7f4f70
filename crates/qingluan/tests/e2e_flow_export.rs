//! Flow export end to end: with `[monitoring] sflow` and `ipfix` set, OVS's own sFlow agent
//! and IPFIX exporter on the network's bridge reach standard collectors on loopback —
//! pmacct's `sfacctd` and nfdump's `nfcapd` (Debian packages) — and both record the flow
//! between two containers. Unset again, the export leaves the bridge and its rows are gone.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A collector process of the test's own, in its own process group (pmacct forks its
/// plugins), killed with its group when dropped.
struct Collector(Child);

impl Collector {
    fn start(cmd: &str, args: &[&str], log: &Path) -> Collector {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(cmd)
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd}: {e}"));
        Collector(child)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// A free UDP port on loopback.
fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port()
}

/// The sFlow and IPFIX rows bridge `bridge` references (uuids, `None` for none).
fn export_of(bridge: &str) -> (Option<String>, Option<String>) {
    let get = |column: &str| {
        let v = ok("ovs-vsctl", &["get", "Bridge", bridge, column]);
        let v = v.trim().trim_matches(|c| c == '[' || c == ']');
        (!v.is_empty()).then(|| v.to_string())
    };
    (get("sflow"), get("ipfix"))
}

/// Whether row `uuid` of `table` exists.
fn row_exists(table: &str, uuid: &str) -> bool {
    run("ovs-vsctl", &["list", table, uuid]).status.success()
}

#[test]
fn sflow_and_ipfix_reach_standard_collectors() {
    if !enabled("sflow_and_ipfix_reach_standard_collectors") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("qlt-flows")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let (sflow, ipfix) = (udp_port(), udp_port());
    // Collectors first: OVS sends the IPFIX template when the exporter is created (then
    // only every 10 minutes), and a collector without it decodes nothing.
    std::fs::create_dir(d.join("nf")).unwrap();
    let mut nfcapd = Collector::start(
        "nfcapd",
        &[
            "-w",
            d.join("nf").to_str().unwrap(),
            "-b",
            "127.0.0.1",
            "-p",
            &ipfix.to_string(),
            "-t",
            "300",
        ],
        &d.join("nfcapd.log"),
    );
    let csv = d.join("sflow.csv");
    std::fs::write(
        d.join("sfacctd.conf"),
        format!(
            "daemonize: false\nsfacctd_ip: 127.0.0.1\nsfacctd_port: {sflow}\nsfacctd_renormalize: true\nplugins: print[p]\naggregate[p]: src_host, dst_host, proto\nprint_output[p]: csv\nprint_output_file[p]: {}\nprint_refresh_time[p]: 1\n",
            csv.display()
        ),
    )
    .unwrap();
    let _sfacctd = Collector::start(
        "sfacctd",
        &["-f", d.join("sfacctd.conf").to_str().unwrap()],
        &d.join("sfacctd.log"),
    );

    let mut env = Env::with_config(
        "",
        &format!(
            "sflow = \"127.0.0.1:{sflow}\"\nsflow_sampling = 1\nipfix = \"127.0.0.1:{ipfix}\"\nipfix_sampling = 1"
        ),
    );
    env.create_network(
        "qlt-flows",
        &["--opt", "model=nat", "--ipam-opt", "pool=nat"],
    );
    start_sleepers("qlt-flows", &["qlt-fl-a", "qlt-fl-b"]);
    let (a, b) = (
        ip_of("qlt-fl-a", "qlt-flows"),
        ip_of("qlt-fl-b", "qlt-flows"),
    );
    let bridge = env.network("qlt-flows")["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    let (Some(sflow_row), Some(ipfix_row)) = export_of(&bridge) else {
        panic!("{bridge} exports nothing: {:?}", export_of(&bridge));
    };
    let (answered, out) = exec("qlt-fl-a", &format!("ping -c 50 -i 0.02 {b}"));
    assert!(answered, "{out}");

    // sFlow: sfacctd writes the aggregated samples every second.
    let pair = format!("{a},{b},");
    assert!(
        wait_for(Duration::from_secs(15), || std::fs::read_to_string(&csv)
            .is_ok_and(|t| t.lines().any(|l| l.starts_with(&pair)))),
        "sfacctd never recorded {a} -> {b}: {:?}\n{}",
        std::fs::read_to_string(&csv),
        std::fs::read_to_string(d.join("sfacctd.log")).unwrap_or_default()
    );

    // IPFIX: SIGTERM makes nfcapd write what it holds into its file and exit.
    kill(nfcapd.pid(), Signal::SIGTERM).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || nfcapd
            .0
            .try_wait()
            .unwrap()
            .is_some()),
        "nfcapd did not exit"
    );
    let flows = ok(
        "nfdump",
        &[
            "-R",
            d.join("nf").to_str().unwrap(),
            "-q",
            "-o",
            "fmt:%sa -> %da",
            &format!("src ip {a} and dst ip {b}"),
        ],
    );
    assert!(
        flows.lines().any(|l| l.contains(&a) && l.contains(&b)),
        "nfcapd recorded no {a} -> {b}: {flows}"
    );

    // Unset: the bridge lets go of both and OVSDB drops their rows.
    env.stop();
    let config = std::fs::read_to_string(env.config()).unwrap();
    let kept: Vec<&str> = config
        .lines()
        .filter(|l| !l.starts_with("sflow") && !l.starts_with("ipfix"))
        .collect();
    std::fs::write(env.config(), kept.join("\n")).unwrap();
    env.start();
    assert!(
        wait_for(Duration::from_secs(10), || export_of(&bridge)
            == (None, None)),
        "flow export left on {bridge}: {:?}",
        export_of(&bridge)
    );
    assert!(
        !row_exists("sFlow", &sflow_row) && !row_exists("IPFIX", &ipfix_row),
        "the export rows outlived their bridge's reference"
    );
}
