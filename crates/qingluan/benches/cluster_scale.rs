//! Benchmark: one vxlan network over three hosts of the test bed (tests/bed), many endpoints
//! on each (300 by default, `QL_BENCH_CLUSTER_ENDPOINTS`), in one run:
//! - starting them, 10 `docker run -d` at a time on every host at once: wall time per host,
//!   CreateEndpoint and Join p50/p99 from each daemon, every address checked unique, and how
//!   long until the last container started is reached from another host; beside them the
//!   floor under every durable write (a redb commit, an etcd commit) of those calls: a
//!   4 KiB overwrite and `fdatasync` every 10 ms in /tmp, on the disk every store here uses;
//! - each daemon's RSS, its idle CPU over 10 s, and the flows per bridge;
//! - a kill -9 of host 1's daemon while a container there pings one on host 2 every 10 ms:
//!   packets lost, and when the new daemon answers and has done its full reconcile;
//! - a host restart: host 2's daemon killed and its ovs-vswitchd restarted (its flows, and
//!   with them its underlay, are gone), then the daemon started: when it answers, has done
//!   its full reconcile, and host 1's containers reach host 2's again.
//!
//! Needs root and etcd; 300 per host take about 8 minutes. Run with
//! `QL_E2E=1 cargo bench -p qingluan --features etcd --bench cluster_scale`
//! (`QL_BENCH_CLUSTER_SCALE=1 scripts/bench.sh` runs it too).

#[path = "../tests/bed/mod.rs"]
mod bed;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bed::{enabled, strs, text, wait_until, Bed, IMAGE};

const HOSTS: usize = 3;
const PARALLEL: usize = 10;
const NET: &str = "qlscale";

/// Starts `per` sleep containers `c<h>-<i>` on host `h`, PARALLEL at a time; wall seconds.
fn start_many(bed: &Bed, h: usize, per: usize) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for lane in 0..PARALLEL {
            s.spawn(move || {
                for i in (lane..per).step_by(PARALLEL) {
                    let name = format!("c{h}-{i}");
                    bed.docker_ok(
                        h,
                        &[
                            "run", "-d", "--name", &name, "--net", NET, IMAGE, "sleep", "86400",
                        ],
                    );
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

/// A 4 KiB overwrite of one of 256 preallocated pages and its `fdatasync`, every 10 ms on a
/// thread of its own until [`FsyncFloor::finish`]; the file goes when the floor is dropped.
struct FsyncFloor {
    halt: Arc<AtomicBool>,
    thread: JoinHandle<Vec<f64>>,
}

impl FsyncFloor {
    fn start() -> FsyncFloor {
        let file = tempfile::Builder::new()
            .prefix("qlt-fsync-floor.")
            .tempfile_in("/tmp")
            .expect("probe file");
        file.as_file()
            .write_all_at(&vec![0; 256 * 4096], 0)
            .expect("preallocate");
        file.as_file().sync_all().expect("fsync");
        let halt = Arc::new(AtomicBool::new(false));
        let stop = halt.clone();
        let thread = std::thread::spawn(move || {
            let page = vec![b'q'; 4096];
            let mut samples = Vec::new();
            for n in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                file.as_file()
                    .write_all_at(&page, (n % 256) * 4096)
                    .expect("probe write");
                file.as_file().sync_data().expect("fdatasync");
                samples.push(t.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        FsyncFloor { halt, thread }
    }

    /// p50 and p99 of the samples so far.
    fn finish(self) -> String {
        self.halt.store(true, Ordering::Relaxed);
        let mut s = self.thread.join().expect("probe thread");
        if s.is_empty() {
            return "(no samples)".into();
        }
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((s.len() as f64 * q) as usize).min(s.len() - 1)];
        format!(
            "p50 {:.1} ms, p99 {:.1} ms ({} samples)",
            at(0.5),
            at(0.99),
            s.len()
        )
    }
}

/// Addresses of host `h`'s containers on the network.
fn addresses(bed: &Bed, h: usize) -> Vec<String> {
    let ids = bed.docker_ok(h, &["ps", "-q", "--filter", &format!("name=^c{h}-")]);
    let mut args = vec![
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"qlscale\").IPAddress}}",
    ];
    args.extend(ids.split_whitespace());
    bed.docker_ok(h, &args)
        .lines()
        .map(str::to_string)
        .collect()
}

/// p50 and p99 of a plugin method on host `h`, from `qingluan status`.
fn percentiles(bed: &Bed, h: usize, method: &str) -> String {
    let status = bed.ql_json(h, &["status"]);
    let call = status["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["method"] == method);
    match call {
        Some(c) => format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            c["p50_ms"].as_f64().unwrap_or(0.0),
            c["p99_ms"].as_f64().unwrap_or(0.0)
        ),
        None => "(no calls)".into(),
    }
}

/// Resident set size of process `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// CPU seconds used by process `pid` so far (user and system, with waited-for children).
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = s
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum::<u64>() as f64 / 100.0
}

/// Flow count of every bridge on host `h`.
fn flows(bed: &Bed, h: usize) -> String {
    let script = "for b in $(ovs-vsctl list-br); do \
                  echo $b $(ovs-ofctl -O OpenFlow14 dump-aggregate $b | \
                  sed -n 's/.*flow_count=\\([0-9]*\\).*/\\1/p'); done";
    text(&bed.exec(h, script))
        .lines()
        .map(|l| l.replace(' ', ": "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Full reconciles host `h`'s daemon has logged.
fn reconciles(bed: &Bed, h: usize) -> usize {
    bed.reconcile_reports(h).len()
}

/// Seconds since `t` when host `h`'s daemon has logged more than `before` full reconciles
/// (polled every 20 ms).
fn reconciled(bed: &Bed, h: usize, before: usize, t: Instant) -> f64 {
    let end = Instant::now() + Duration::from_secs(120);
    while reconciles(bed, h) <= before {
        assert!(Instant::now() < end, "h{h} never finished a full reconcile");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed().as_secs_f64()
}

/// Seconds since `t` when container `from` on host `h` first reaches `ip`.
fn reached(bed: &Bed, h: usize, from: &str, ip: &str, t: Instant) -> f64 {
    wait_until(120, &format!("{from} on h{h} to reach {ip}"), || {
        bed.ping_once(h, from, ip)
    });
    t.elapsed().as_secs_f64()
}

fn main() {
    if !enabled("cluster_scale") {
        return;
    }
    let per: usize = std::env::var("QL_BENCH_CLUSTER_ENDPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut bed = Bed::start(HOSTS, "");
    bed.docker_ok(
        1,
        &strs(&Bed::vxlan_args(NET, 5100, &["--subnet", "10.88.0.0/20"])),
    );
    wait_until(30, "the network on every host", || {
        (2..=HOSTS).all(|h| bed.has_network(h, NET))
    });
    println!("cluster at scale: one vxlan network, {HOSTS} hosts x {per} endpoints, in one run");

    let floor = FsyncFloor::start();
    let took: Vec<f64> = std::thread::scope(|s| {
        let bed = &bed;
        let runs: Vec<_> = (1..=HOSTS)
            .map(|h| s.spawn(move || start_many(bed, h, per)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let done = Instant::now();
    let floor = floor.finish();
    let all: Vec<Vec<String>> = (1..=HOSTS).map(|h| addresses(&bed, h)).collect();
    let unique: BTreeSet<&String> = all.iter().flatten().collect();
    let count: usize = all.iter().map(Vec::len).sum();
    assert_eq!(count, HOSTS * per, "not every container runs");
    assert_eq!(unique.len(), count, "an address is used twice");
    let last = bed.address(HOSTS, &format!("c{HOSTS}-{}", per - 1));
    let reach_last = reached(&bed, 1, "c1-0", &last, done);
    println!(
        "start {per} per host, {PARALLEL} at a time, every host at once: {}; {count} addresses, \
         all unique; the last container reached from h1 {reach_last:.2} s after the starts ended",
        (1..=HOSTS)
            .map(|h| format!("h{h} {:.1} s", took[h - 1]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for h in 1..=HOSTS {
        println!(
            "  h{h} CreateEndpoint {}; Join {}",
            percentiles(&bed, h, "NetworkDriver.CreateEndpoint"),
            percentiles(&bed, h, "NetworkDriver.Join")
        );
    }
    println!(
        "  floor under each durable write meanwhile (a cluster CreateEndpoint makes two in a \
         row: its record, then its binding and entry), a 4 KiB fdatasync: {floor}"
    );

    std::thread::sleep(Duration::from_secs(5));
    let pids: Vec<u32> = (1..=HOSTS)
        .map(|h| bed.daemon_pid(h).expect("daemon runs"))
        .collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect();
    std::thread::sleep(Duration::from_secs(10));
    for h in 1..=HOSTS {
        let pid = pids[h - 1];
        println!(
            "  h{h} daemon: RSS {:.0} MiB, idle CPU {:.2} % of a core; flows: {}",
            rss_mib(pid),
            (cpu_secs(pid) - before[h - 1]) * 10.0,
            flows(&bed, h)
        );
    }

    let dst = bed.address(2, "c2-0");
    let pid = bed.docker_ok(1, &["inspect", "-f", "{{.State.Pid}}", "c1-0"]);
    // A fixed count, not an interrupt: an interrupted ping counts the request in flight as
    // lost. 600 requests take 6 s; the kill comes 2 s in.
    let ping = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", pid.trim()))
        .args(["ping", "-c", "600", "-i", "0.01", "-W", "1", &dst])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let n = reconciles(&bed, 1);
    bed.kill_daemon(1);
    let t = Instant::now();
    bed.start_daemon(1);
    let answered = t.elapsed().as_secs_f64();
    let full = reconciled(&bed, 1, n, t);
    let out = String::from_utf8_lossy(&ping.wait_with_output().unwrap().stdout).into_owned();
    let counts: Vec<u64> = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .map(|l| {
            l.split(',')
                .filter_map(|p| p.split_whitespace().next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (sent, got) = (counts.first().copied(), counts.get(1).copied());
    println!(
        "kill -9 of h1's daemon, h1 pinging h2 every 10 ms: {} of {} lost; status answers \
         within {answered:.2} s (polled every 200 ms), full reconcile done at {full:.2} s",
        sent.zip(got)
            .map_or("?".into(), |(s, g)| (s - g).to_string()),
        sent.map_or("?".into(), |s| s.to_string()),
    );

    let far = bed.address(2, &format!("c2-{}", per - 1));
    let h3 = bed.address(3, "c3-0");
    let n = reconciles(&bed, 2);
    bed.kill_daemon(2);
    bed.restart_vswitchd(2);
    let t = Instant::now();
    bed.start_daemon(2);
    let answered = t.elapsed().as_secs_f64();
    let full = reconciled(&bed, 2, n, t);
    let back = reached(&bed, 1, "c1-0", &far, t);
    let out = reached(&bed, 2, &format!("c2-{}", per - 1), &h3, t);
    println!(
        "h2 restarted (daemon killed, ovs-vswitchd restarted), from the daemon's start: status \
         answers within {answered:.2} s, full reconcile done at {full:.2} s, h1 reaches h2's \
         last container at {back:.2} s, it reaches h3 at {out:.2} s"
    );
}
