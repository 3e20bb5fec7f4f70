//! Benchmark: address allocations on a cluster network through etcd, from one host and from
//! three hosts at once, one call at a time and 8 at a time (as dockerd calls while containers
//! start in parallel), against the embedded store on the same machine, measured in one run;
//! then each allocation followed by its binding to an endpoint, as RequestAddress and
//! CreateEndpoint do.
//!
//! Each "host" is its own IPAM with its own etcd client, as three daemons would be; each
//! allocates from its own address blocks. A private etcd is started on loopback and stopped
//! at the end. Every address is checked unique. Run with
//! `cargo bench -p qingluan --features etcd --bench cluster_ipam [-- ALLOCATIONS]`
//! (scripts/bench.sh runs it too).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qingluan_core::ipam::Ipam;
use qingluan_core::settings::IpamSettings;
use qingluan_store::etcd::EtcdStore;
use qingluan_store::redb::RedbStore;
use qingluan_store::Store;

fn no_routes() -> Vec<ipnet::IpNet> {
    Vec::new()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Allocation timings of one run.
struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
    hosts: usize,
}

impl Run {
    fn print(&self, label: &str, base: Option<&Run>) {
        let mut l = self.latencies.clone();
        l.sort();
        let pct = |p: f64| l[((l.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
        let rate = l.len() as f64 / self.wall.as_secs_f64();
        let ratio = base
            .map(|b| {
                let brate = b.latencies.len() as f64 / b.wall.as_secs_f64();
                format!("{:.2}", rate / brate)
            })
            .unwrap_or_else(|| "1.00".into());
        println!(
            "{label:<42} {:>6} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>14}",
            l.len(),
            rate,
            rate / self.hosts as f64,
            pct(0.5),
            pct(0.99),
            ratio
        );
    }
}

async fn ipam(local: Arc<dyn Store>, cluster: Arc<dyn Store>, host: &str) -> Arc<Ipam> {
    let i = Ipam::lazy(local, cluster, host, &IpamSettings::default(), no_routes).unwrap();
    i.seed().await.unwrap();
    Arc::new(i)
}

fn vni(v: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("pool".to_string(), "vxlan".to_string()),
        ("vni".to_string(), v.to_string()),
    ])
}

/// `hosts` IPAMs allocate `each` addresses at once in one /16, `inflight` calls at a time
/// per host; with `bind`, each address is then bound to an endpoint, timed together.
async fn allocate(hosts: &[Arc<Ipam>], each: usize, v: u32, inflight: usize, bind: bool) -> Run {
    let pool = hosts[0]
        .request_pool(&format!("10.{}.0.0/16", 100 + v), "", &vni(v), false)
        .await
        .unwrap();
    for h in &hosts[1..] {
        h.request_pool("", "", &vni(v), false).await.unwrap();
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for h in hosts {
        for lane in 0..inflight {
            let (h, id) = (h.clone(), pool.id.clone());
            let calls = each / inflight + usize::from(lane < each % inflight);
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for n in 0..calls {
                    let t = Instant::now();
                    let a = h.request_address(&id, "", false).await.unwrap();
                    if bind {
                        let endpoint = format!("ep-{lane}-{n}");
                        h.bind(&id, a.addr(), &endpoint, Vec::new()).await.unwrap();
                    }
                    out.push((a, t.elapsed()));
                }
                out
            }));
        }
    }
    let mut latencies = Vec::new();
    let mut seen = BTreeSet::new();
    for t in tasks {
        for (a, d) in t.await.unwrap() {
            assert!(seen.insert(a), "duplicate address {a}");
            latencies.push(d);
        }
    }
    let wall = start.elapsed();
    Run {
        latencies,
        wall,
        hosts: hosts.len(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    let mut etcd = Command::new("etcd")
        .args(["--name", "qltbench", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args([
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
        ])
        .args(["--initial-cluster", &format!("qltbench={p}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (apt-get install etcd-server)");
    let endpoints = vec![c];
    let connect = || async {
        let t = Instant::now();
        loop {
            if let Ok(s) = EtcdStore::connect(&endpoints, None, "/qltbench/").await {
                if s.get("probe").await.is_ok() {
                    return Arc::new(s) as Arc<dyn Store>;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(20), "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let redb: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).await.unwrap());
    let embedded = ipam(redb.clone(), redb, "h1").await;
    let mut etcd_hosts = Vec::new();
    for h in ["h1", "h2", "h3"] {
        let local: Arc<dyn Store> = Arc::new(
            RedbStore::open(&dir.path().join(format!("{h}.redb")))
                .await
                .unwrap(),
        );
        etcd_hosts.push(ipam(local, connect().await, h).await);
    }

    println!("address allocations on a cluster (vxlan) network, {n} per host, in one run");
    println!(
        "{:<42} {:>6} {:>10} {:>10} {:>9} {:>9} {:>14}",
        "store", "allocs", "allocs/s", "per host", "p50 ms", "p99 ms", "rate/embedded"
    );
    let base = allocate(&[embedded], n, 1, 1, false).await;
    base.print("embedded redb, one host, 1 at a time", None);
    let runs = [
        ("etcd, one host, 1 at a time", 1, 1, false),
        ("etcd, one host, 8 at a time", 1, 8, false),
        ("etcd, three hosts at once, 1 at a time", 3, 1, false),
        ("etcd, three hosts at once, 8 at a time", 3, 8, false),
        ("etcd, one host, 1 at a time, and bound", 1, 1, true),
        ("etcd, three hosts, 8 at a time, and bound", 3, 8, true),
    ];
    for (v, (label, hosts, inflight, bind)) in (2..).zip(runs) {
        allocate(&etcd_hosts[..hosts], n, v, inflight, bind)
            .await
            .print(label, Some(&base));
    }
    let _ = etcd.kill();
    let _ = etcd.wait();
}
