//! Benchmark: how long an ACL rule takes to hold, on the host where it is added and on the
//! other hosts of a cluster. Three hosts of the test bed (tests/bed) share one vxlan network
//! with `acl.default=deny` and a container each; ROUNDS times, `qingluan acl add` of an
//! allow on host 1 (it answers once the rule's flows are on host 1's switch, checked right
//! after), then host 2 and host 3 are polled in turn for the rule's flows on their overlay
//! bridge; the rule is removed before the next round. Prints p50 and max per host: the time the
//! command took on host 1, and from its answer until the flows are on the other hosts
//! (polled with `ovs-ofctl`, a few milliseconds a poll).
//!
//! Needs root and etcd; about a minute. Run with
//! `QL_E2E=1 cargo bench -p qingluan --features etcd --bench acl_cluster`
//! (`scripts/bench.sh` runs it in its cluster section).

#[path = "../tests/bed/mod.rs"]
mod bed;

use std::time::{Duration, Instant};

use bed::{enabled, strs, text, wait_until, Bed};

const HOSTS: usize = 3;
const ROUNDS: usize = 20;
const NET: &str = "qlaclb";

/// Whether host `h` has the flows of rule `id` on its overlay bridge (cookie: the ACL
/// feature and the rule's ID; the bits between are the reconciler's).
fn has_flows(bed: &Bed, h: usize, id: &str) -> bool {
    let cookie = format!("0x07000000{}/0xff000000ffffffff", &id[..8]);
    let o = bed.exec(
        h,
        &format!("ovs-ofctl -O OpenFlow15 dump-flows qlov cookie={cookie}"),
    );
    text(&o).contains("priority=")
}

/// p50 and max of `v` in milliseconds.
fn summary(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "p50 {:6.0} ms, max {:6.0} ms",
        v[v.len() / 2] * 1e3,
        v[v.len() - 1] * 1e3
    )
}

fn main() {
    if !enabled("acl_cluster") {
        return;
    }
    let bed = Bed::start(HOSTS, "");
    bed.docker_ok(
        1,
        &strs(&Bed::vxlan_args(NET, 5120, &["--opt", "acl.default=deny"])),
    );
    wait_until(30, "the network on every host", || {
        (2..=HOSTS).all(|h| bed.has_network(h, NET))
    });
    for h in 1..=HOSTS {
        bed.sleeper(h, &format!("qlt-acb{h}"), NET);
    }
    println!(
        "acl across hosts: one vxlan network over {HOSTS} hosts, {ROUNDS} rules added on h1 \
         one after another"
    );
    let mut took: Vec<Vec<f64>> = vec![Vec::new(); HOSTS];
    for i in 0..ROUNDS {
        let from = format!("cidr:10.199.0.{}", i + 1);
        let t = Instant::now();
        let id = bed.acl_add(
            1,
            &[
                "--network",
                NET,
                "--from",
                &from,
                "--to",
                "any",
                "--proto",
                "tcp",
                "--port",
                "80",
                "--allow",
            ],
        );
        let answered = Instant::now();
        took[0].push((answered - t).as_secs_f64());
        assert!(has_flows(&bed, 1, &id), "h1 answered before its flows");
        let end = answered + Duration::from_secs(10);
        let mut waiting: Vec<usize> = (2..=HOSTS).collect();
        while !waiting.is_empty() {
            assert!(Instant::now() < end, "rule {id} never held on {waiting:?}");
            waiting.retain(|&h| {
                let held = has_flows(&bed, h, &id);
                if held {
                    took[h - 1].push(answered.elapsed().as_secs_f64());
                }
                !held
            });
        }
        let o = bed.ql(1, &["acl", "rm", &id]);
        assert!(o.status.success(), "acl rm {id}: {}", text(&o));
    }
    let [first, others @ ..] = took.as_mut_slice() else {
        unreachable!("three hosts")
    };
    println!(
        "  h1: `acl add` answered (flows installed)  {}",
        summary(first)
    );
    for (i, t) in others.iter_mut().enumerate() {
        println!(
            "  h{}: flows installed after h1's answer   {}",
            i + 2,
            summary(t)
        );
    }
}
