//! The soak, outside CI (`bash scripts/soak.sh [SECONDS]`): random container starts, stops,
//! connects and disconnects on every mode (nat, nonat, vxlan, flat, vlan) across three bed
//! hosts, with random faults — kill -9 of a daemon or a dockerd, an ovs-vswitchd restart, an
//! etcd stop — for `QL_SOAK_SECS` (default 1800). At the end every invariant must hold: no
//! address twice in Docker's or qingluan's view, every running container reaches its peers,
//! and once everything is removed no endpoint, veth or port is left. It prints the counts
//! of operations and faults, and the seed (`QL_SOAK_SEED` replays a run).

mod bed;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bed::{enabled, strs, text, wait_until, Bed, IMAGE};

/// A small xorshift generator: the soak needs repeatable choices, not good randomness.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

const CLUSTER: [&str; 3] = ["ov1", "fl1", "vl10"];
const LOCAL: [&str; 2] = ["nat1", "nn1"];

/// Running containers of host `h` with the networks each is on.
fn containers(bed: &Bed, h: usize) -> BTreeMap<String, BTreeMap<String, String>> {
    let o = bed.docker(
        h,
        &["ps", "--filter", "name=^qlt-s", "--format", "{{.Names}}"],
    );
    let mut out = BTreeMap::new();
    for name in String::from_utf8_lossy(&o.stdout).split_whitespace() {
        let nets = bed.docker(
            h,
            &[
                "inspect",
                "-f",
                "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
                name,
            ],
        );
        let nets = String::from_utf8_lossy(&nets.stdout)
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter(|(_, ip)| !ip.is_empty())
            .map(|(k, ip)| (k.to_string(), ip.to_string()))
            .collect();
        out.insert(name.to_string(), nets);
    }
    out
}

#[test]
#[ignore = "a long soak with faults: run it with scripts/soak.sh"]
fn soak_keeps_every_invariant() {
    if !enabled("soak_keeps_every_invariant") {
        return;
    }
    let secs: u64 = std::env::var("QL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let seed: u64 = std::env::var("QL_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 * 2_654_435_761 + 1);
    println!("soak: {secs} s, seed {seed}");
    let mut rng = Rng(seed.max(1));
    let mut bed = Bed::start(3, "reclaim_after_secs = 600");
    let base = bed.router_ip().rsplit_once('.').unwrap().0.to_string();
    bed.docker_ok(1, &strs(&Bed::vxlan_args("ov1", 5001, &[])));
    bed.docker_ok(
        1,
        &strs(&Bed::network_args(
            "flat",
            "fl1",
            &[
                "--subnet",
                &format!("{base}.0/24"),
                "--gateway",
                &bed.router_ip(),
                "--ip-range",
                &format!("{base}.128/25"),
            ],
        )),
    );
    bed.docker_ok(
        1,
        &strs(&Bed::network_args(
            "vlan",
            "vl10",
            &["--opt", "vni=10", "--ipam-opt", "vni=10"],
        )),
    );
    for h in 1..=3 {
        wait_until(30, "cluster networks everywhere", || {
            CLUSTER.iter().all(|n| bed.has_network(h, n))
        });
        bed.docker_ok(h, &strs(&Bed::network_args("nat", "nat1", &[])));
        bed.docker_ok(h, &strs(&Bed::network_args("nonat", "nn1", &[])));
    }

    let mut ops: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let mut tally = |op: &'static str, ok: bool| {
        let e = ops.entry(op).or_default();
        if ok {
            e.0 += 1
        } else {
            e.1 += 1
        }
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let mut next_fault = Instant::now() + Duration::from_secs(20);
    let mut serial = 0;
    while Instant::now() < end {
        let h = 1 + rng.below(3);
        let all: Vec<&str> = CLUSTER.iter().chain(LOCAL.iter()).copied().collect();
        let net = all[rng.below(all.len())];
        let running: Vec<String> = containers(&bed, h).into_keys().collect();
        let pick = |rng: &mut Rng| running.get(rng.below(running.len().max(1))).cloned();
        match rng.below(20) {
            0..=7 => {
                serial += 1;
                let name = format!("qlt-s{serial}");
                let o = bed.docker(
                    h,
                    &[
                        "run", "-d", "--name", &name, "--net", net, IMAGE, "sleep", "3600",
                    ],
                );
                if !o.status.success() {
                    bed.docker(h, &["rm", "-f", &name]);
                }
                tally("start", o.status.success());
            }
            8..=12 => {
                if let Some(c) = pick(&mut rng) {
                    tally("remove", bed.docker(h, &["rm", "-f", &c]).status.success());
                }
            }
            13..=16 => {
                if let Some(c) = pick(&mut rng) {
                    let o = bed.docker(h, &["network", "connect", net, &c]);
                    let already = text(&o).contains("already");
                    tally("connect", o.status.success() || already);
                }
            }
            _ => {
                if let Some(c) = pick(&mut rng) {
                    let o = bed.docker(h, &["network", "disconnect", net, &c]);
                    let not_on = text(&o).contains("is not connected");
                    tally("disconnect", o.status.success() || not_on);
                }
            }
        }
        if Instant::now() >= next_fault {
            next_fault = Instant::now() + Duration::from_secs(20 + rng.below(20) as u64);
            let fault = match rng.below(4) {
                0 => {
                    bed.kill_daemon(h);
                    std::thread::sleep(Duration::from_secs(1));
                    bed.start_daemon(h);
                    "daemon kill -9"
                }
                1 => {
                    bed.restart_vswitchd(h);
                    "ovs-vswitchd restart"
                }
                2 => {
                    bed.restart_dockerd(h);
                    "dockerd kill -9"
                }
                _ => {
                    bed.stop_etcd();
                    std::thread::sleep(Duration::from_secs(5));
                    bed.start_etcd();
                    "etcd stop"
                }
            };
            *faults.entry(fault).or_default() += 1;
        }
    }
    println!("soak: operations (ok, refused): {ops:?}; faults: {faults:?}");

    // Settle, then check: no address twice, in Docker's view and in qingluan's.
    std::thread::sleep(Duration::from_secs(10));
    let mut by_net: BTreeMap<String, Vec<(usize, String, String)>> = BTreeMap::new();
    for h in 1..=3 {
        for (c, nets) in containers(&bed, h) {
            for (n, ip) in nets {
                let key = if LOCAL.contains(&n.as_str()) {
                    format!("{n}@h{h}")
                } else {
                    n
                };
                by_net.entry(key).or_default().push((h, c.clone(), ip));
            }
        }
    }
    for (n, members) in &by_net {
        let ips: BTreeSet<&String> = members.iter().map(|(_, _, ip)| ip).collect();
        assert_eq!(
            ips.len(),
            members.len(),
            "{n}: an address twice: {members:?}"
        );
    }
    let eps = bed.ql_json(1, &["endpoint", "ls", "--all"]);
    let mut seen = BTreeSet::new();
    for e in eps.as_array().unwrap() {
        let scope = e["network_key"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("{}@{}", e["network_id"], e["host"]));
        assert!(
            seen.insert((scope, e["address"].to_string())),
            "qingluan lists an address twice: {e}"
        );
    }
    // Every running container reaches the others on each of its networks.
    let mut pings = 0;
    for (n, members) in &by_net {
        let Some((h, from, _)) = members.first() else {
            continue;
        };
        for (_, _, ip) in members.iter().skip(1) {
            wait_until(20, &format!("{from} on h{h} reaches {ip} on {n}"), || {
                bed.ping(*h, from, ip)
            });
            pings += 1;
        }
    }
    println!(
        "soak: {} networks, {pings} pairs reach each other",
        by_net.len()
    );

    // Everything removed: nothing is left on any host.
    for h in 1..=3 {
        let ids = bed.docker_ok(h, &["ps", "-aq"]);
        if !ids.trim().is_empty() {
            let mut a = vec!["rm", "-f"];
            a.extend(ids.split_whitespace());
            bed.docker(h, &a);
        }
        for n in LOCAL {
            bed.docker(h, &["network", "rm", n]);
        }
    }
    for n in CLUSTER {
        bed.ql(1, &["network", "rm", n]);
    }
    for h in 1..=3 {
        wait_until(120, &format!("nothing left on h{h}"), || {
            let eps = bed.ql_json(h, &["endpoint", "ls"]);
            let o = bed.exec(
                h,
                "ip -o link show type veth | grep -vc ' eth0@'; \
                 ovs-vsctl --bare --columns=external_ids list Port | grep -c qingluan-endpoint",
            );
            let counts: Vec<String> = text(&o).split_whitespace().map(String::from).collect();
            eps.as_array().is_some_and(Vec::is_empty) && counts == ["0", "0"]
        });
    }
    println!("soak: every invariant held");
}
