//! Churn on the multi-host test bed: many containers started and removed at once on one
//! network, on two hosts, while the other host's agent re-programs the same bridge.
//!
//! It guards against a race where a reconcile pass built from records read before a
//! concurrent CreateEndpoint deleted that endpoint's fresh veth as stale, and every later
//! flow table then named a port that was gone. Each round starts 20 containers per host and
//! removes the previous round's 20 at the same moment; every `docker run` and `docker rm`
//! must succeed, and the new containers must reach each other across the hosts.
//! `QL_CHURN_ROUNDS` sets the number of rounds (default 3).

mod bed;

use bed::{enabled, strs, text, Bed, IMAGE};

const PER_HOST: usize = 20;

fn names(round: usize, h: usize) -> Vec<String> {
    (0..PER_HOST)
        .map(|i| format!("qlt-r{round}-h{h}-{i}"))
        .collect()
}

#[test]
fn containers_start_and_stop_at_once_without_failing() {
    if !enabled("containers_start_and_stop_at_once_without_failing") {
        return;
    }
    let rounds: usize = std::env::var("QL_CHURN_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let bed = Bed::start(2, "");
    bed.docker_ok(1, &strs(&Bed::vxlan_args("ov1", 5001, &[])));
    bed::wait_until(20, "ov1 on h2", || bed.has_network(2, "ov1"));

    for round in 0..=rounds {
        let t = std::time::Instant::now();
        let failures: Vec<String> = std::thread::scope(|s| {
            let mut jobs = Vec::new();
            for h in 1..=2 {
                if round < rounds {
                    for name in names(round, h) {
                        let bed = &bed;
                        jobs.push(s.spawn(move || {
                            let o = bed.docker(
                                h,
                                &[
                                    "run", "-d", "--name", &name, "--net", "ov1", IMAGE, "sleep",
                                    "600",
                                ],
                            );
                            (!o.status.success()).then(|| format!("h{h} run {name}: {}", text(&o)))
                        }));
                    }
                }
                if round > 0 {
                    for name in names(round - 1, h) {
                        let bed = &bed;
                        jobs.push(s.spawn(move || {
                            let o = bed.docker(h, &["rm", "-f", &name]);
                            (!o.status.success()).then(|| format!("h{h} rm {name}: {}", text(&o)))
                        }));
                    }
                }
            }
            jobs.into_iter().filter_map(|j| j.join().unwrap()).collect()
        });
        assert!(
            failures.is_empty(),
            "round {round}: {} calls failed:\n{}\n{}",
            failures.len(),
            failures.join("\n"),
            bed.logs()
        );
        println!(
            "round {round}: {} started, {} removed in {:.1} s",
            if round < rounds { 2 * PER_HOST } else { 0 },
            if round > 0 { 2 * PER_HOST } else { 0 },
            t.elapsed().as_secs_f64()
        );
        if round < rounds {
            // The newest containers reach each other on one host and across the hosts.
            let (a, b) = (
                &names(round, 1)[PER_HOST - 1],
                &names(round, 2)[PER_HOST - 1],
            );
            let far = bed.address(2, b);
            let near = bed.address(1, &names(round, 1)[0]);
            assert!(bed.ping(1, a, &near), "round {round}: {a} -> {near}");
            assert!(bed.ping(1, a, &far), "round {round}: {a} -> {far} on h2");
        }
    }

    // Nothing is left: no endpoint, and once the passes that follow the deletions' answers
    // ran, no veth and no port but the bridges' own.
    for h in 1..=2 {
        let eps = bed.ql_json(h, &["endpoint", "ls"]);
        assert_eq!(eps.as_array().map(Vec::len), Some(0), "h{h}: {eps}");
        let left = || {
            let o = bed.exec(
                h,
                "ip -o link show type veth | grep -vc ' eth0@'; \
                 ovs-vsctl --bare --columns=external_ids list Port | grep -c qingluan-endpoint",
            );
            text(&o)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        bed::wait_until(10, &format!("h{h}: veths and endpoint ports gone"), || {
            left() == ["0", "0"]
        });
    }
}
