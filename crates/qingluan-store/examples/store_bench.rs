//! The embedded store's write latency by how many keys it holds, against the anchor of one
//! 4 KiB page overwritten and `fdatasync`ed in the same directory, measured in the same run;
//! then writes from several tasks at once (as a storm of plugin calls makes them), against
//! one writer in the same run.
//! `cargo run --release -p qingluan-store --example store_bench [DIR]` (default `/var/tmp`,
//! the file system of `/var/lib/qingluan`); `scripts/bench.sh` runs it.

use std::os::unix::fs::FileExt;
use std::time::Instant;

use qingluan_store::{redb::RedbStore, Op, Store};

/// Writes timed at each size.
const WRITES: usize = 1000;
/// A value about the size of an endpoint record.
const VALUE: usize = 600;

/// The median and the 99th percentile, in ms.
fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: usize| ms[(ms.len() * q / 100).min(ms.len() - 1)];
    (at(50), at(99))
}

fn page_sync(path: &std::path::Path) -> Vec<f64> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("anchor file");
    let page = vec![7u8; 4096];
    for i in 0..64 {
        f.write_all_at(&page, i * 4096).expect("write");
    }
    f.sync_all().expect("sync");
    (0..WRITES)
        .map(|i| {
            f.write_all_at(&page, (i as u64 % 64) * 4096)
                .expect("write");
            let t = Instant::now();
            f.sync_data().expect("fdatasync");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/var/tmp".into());
    let dir = tempfile::tempdir_in(&dir).expect("a directory to write in");
    let store = RedbStore::open(&dir.path().join("bench.redb"))
        .await
        .expect("store");
    let value = vec![b'x'; VALUE];
    println!("store: one write of a {VALUE}-byte record, fsynced (crates/qingluan-store/examples/store_bench.rs)");
    let mut held = 0;
    for size in [0, 1000, 5000] {
        for i in held..size {
            let op = Op::Put(format!("fill/{i}"), value.clone());
            store.txn(vec![], vec![op]).await.expect("fill");
        }
        held = size;
        let anchor = page_sync(&dir.path().join("anchor"));
        let mut ms = Vec::with_capacity(WRITES);
        for i in 0..WRITES {
            let op = Op::Put(format!("w/{}", i % 100), value.clone());
            let t = Instant::now();
            store.txn(vec![], vec![op]).await.expect("write");
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let ((w50, w99), (a50, a99)) = (percentiles(ms), percentiles(anchor));
        println!(
            "  {size:>5} keys held: write p50 {w50:5.2} p99 {w99:5.2} ms   one page fdatasync \
             p50 {a50:5.2} p99 {a99:5.2} ms   ratio of medians {:4.1}",
            w50 / a50
        );
    }
    let mut alone = 0.0;
    for writers in [1, 8, 32] {
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let (store, value) = (store.clone(), value.clone());
                tokio::spawn(async move {
                    let mut ms = Vec::new();
                    for i in 0..WRITES / writers {
                        let op = Op::Put(format!("c/{w}/{}", i % 10), value.clone());
                        let t = Instant::now();
                        store.txn(vec![], vec![op]).await.expect("write");
                        ms.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    ms
                })
            })
            .collect();
        let mut ms = Vec::new();
        for t in tasks {
            ms.extend(t.await.expect("writer"));
        }
        let rate = ms.len() as f64 / start.elapsed().as_secs_f64();
        if writers == 1 {
            alone = rate;
        }
        let (w50, w99) = percentiles(ms);
        println!(
            "  {writers:>2} writers at once, {held} keys held: {rate:6.0} writes/s, p50 {w50:5.2} \
             p99 {w99:5.2} ms   rate / one writer {:4.1}",
            rate / alone
        );
    }
}
