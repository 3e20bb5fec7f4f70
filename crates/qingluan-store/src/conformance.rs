//! The conformance suite every `Store` backend must pass.
//!
//! To check a new backend, call [`run_all`] from an integration test with a factory that
//! returns a fresh, empty store each time (see `tests/conformance.rs`). Each check panics
//! with a message naming the broken rule.

use std::sync::Arc;

use crate::{create, put, Compare, Op, Store, WatchEvent};

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all<F: Fn() -> Arc<dyn Store>>(make: F) {
    get_put_list(make()).await;
    txn_is_all_or_nothing(make()).await;
    compares(make()).await;
    delete_prefix(make()).await;
    watch_delivers_in_order(make()).await;
    concurrent_cas_counter(make()).await;
    concurrent_create_once(make()).await;
    concurrent_writes_are_ordered(make()).await;
    leases(make()).await;
}

async fn get_put_list(s: Arc<dyn Store>) {
    assert!(
        s.get("/a/1").await.unwrap().is_none(),
        "absent key must read as None"
    );
    put(&*s, "/a/1", b"x".to_vec()).await.unwrap();
    let first = s.get("/a/1").await.unwrap().unwrap();
    put(&*s, "/a/1", b"y".to_vec()).await.unwrap();
    let second = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!(second.value, b"y", "put overwrites");
    assert!(
        second.mod_revision > first.mod_revision,
        "put bumps mod_revision"
    );
    assert_eq!(
        second.create_revision, first.create_revision,
        "create_revision stays"
    );
    put(&*s, "/a/0", b"z".to_vec()).await.unwrap();
    put(&*s, "/ab", b"n".to_vec()).await.unwrap();
    let keys: Vec<String> = s
        .list("/a/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        keys,
        vec!["/a/0", "/a/1"],
        "list is sorted and limited to the prefix"
    );
}

async fn txn_is_all_or_nothing(s: Arc<dyn Store>) {
    put(&*s, "k", b"1".to_vec()).await.unwrap();
    let r = s
        .txn(
            vec![Compare::Absent("k".into())],
            vec![Op::Put("a".into(), b"1".to_vec()), Op::Delete("k".into())],
        )
        .await
        .unwrap();
    assert!(!r.succeeded, "a failed compare fails the txn");
    assert!(
        s.get("a").await.unwrap().is_none(),
        "a failed txn applies nothing"
    );
    assert!(
        s.get("k").await.unwrap().is_some(),
        "a failed txn applies nothing"
    );
    let before = r.revision;
    let r = s
        .txn(
            vec![],
            vec![
                Op::Put("a".into(), b"1".to_vec()),
                Op::Put("b".into(), b"2".to_vec()),
            ],
        )
        .await
        .unwrap();
    assert!(
        r.succeeded && r.revision > before,
        "revisions strictly increase"
    );
    let (a, b) = (
        s.get("a").await.unwrap().unwrap(),
        s.get("b").await.unwrap().unwrap(),
    );
    assert_eq!(a.mod_revision, b.mod_revision, "one txn, one revision");
}

async fn compares(s: Arc<dyn Store>) {
    put(&*s, "c", b"v".to_vec()).await.unwrap();
    let rev = s.get("c").await.unwrap().unwrap().mod_revision;
    let ok = |c: Compare| {
        let s = s.clone();
        async move { s.txn(vec![c], vec![]).await.unwrap().succeeded }
    };
    assert!(ok(Compare::ModRevision("c".into(), rev)).await);
    assert!(!ok(Compare::ModRevision("c".into(), rev + 1)).await);
    assert!(!ok(Compare::ModRevision("missing".into(), 0)).await);
    assert!(ok(Compare::Value("c".into(), b"v".to_vec())).await);
    assert!(!ok(Compare::Value("c".into(), b"w".to_vec())).await);
    assert!(ok(Compare::Absent("missing".into())).await);
    assert!(!ok(Compare::Absent("c".into())).await);
}

async fn delete_prefix(s: Arc<dyn Store>) {
    for k in ["p/1", "p/2", "p/3/x", "q/1"] {
        put(&*s, k, vec![]).await.unwrap();
    }
    s.txn(vec![], vec![Op::DeletePrefix("p/".into())])
        .await
        .unwrap();
    assert!(
        s.list("p/").await.unwrap().is_empty(),
        "DeletePrefix removes the prefix"
    );
    assert_eq!(
        s.list("q/").await.unwrap().len(),
        1,
        "DeletePrefix keeps others"
    );
    let before = s.txn(vec![], vec![]).await.unwrap().revision;
    let r = s
        .txn(vec![], vec![Op::Delete("nothing".into())])
        .await
        .unwrap();
    assert!(r.succeeded, "deleting an absent key succeeds");
    assert_eq!(
        r.revision, before,
        "a write that changes nothing keeps the revision"
    );
}

async fn watch_delivers_in_order(s: Arc<dyn Store>) {
    let mut w = s.watch("w/").await.unwrap();
    put(&*s, "w/1", b"a".to_vec()).await.unwrap();
    put(&*s, "other", b"x".to_vec()).await.unwrap();
    s.txn(vec![], vec![Op::Delete("w/1".into())]).await.unwrap();
    match w.recv().await.unwrap() {
        WatchEvent::Put(kv) => {
            assert_eq!((kv.key.as_str(), kv.value.as_slice()), ("w/1", &b"a"[..]))
        }
        e => panic!("expected a put first, got {e:?}"),
    }
    match w.recv().await.unwrap() {
        WatchEvent::Delete { key, .. } => assert_eq!(key, "w/1", "only the watched prefix"),
        e => panic!("expected the delete, got {e:?}"),
    }
}

async fn concurrent_cas_counter(s: Arc<dyn Store>) {
    put(&*s, "counter", b"0".to_vec()).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    loop {
                        let kv = s.get("counter").await.unwrap().unwrap();
                        let n: u64 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                        let r = s
                            .txn(
                                vec![Compare::ModRevision("counter".into(), kv.mod_revision)],
                                vec![Op::Put("counter".into(), (n + 1).to_string().into_bytes())],
                            )
                            .await
                            .unwrap();
                        if r.succeeded {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let v = s.get("counter").await.unwrap().unwrap().value;
    assert_eq!(v, b"800", "compare-and-swap increments never get lost");
}

async fn concurrent_create_once(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                create(&*s, &format!("once/{}", i % 20), vec![])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap() {
            created += 1;
        }
    }
    assert_eq!(created, 20, "each key is created exactly once");
}

async fn concurrent_writes_are_ordered(s: Arc<dyn Store>) {
    let mut w = s.watch("ord/").await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let key = format!("ord/{i}");
                let r = s
                    .txn(vec![], vec![Op::Put(key.clone(), vec![])])
                    .await
                    .unwrap();
                (key, r.revision)
            })
        })
        .collect();
    let mut answered = std::collections::BTreeMap::new();
    for t in tasks {
        let (key, revision) = t.await.unwrap();
        answered.insert(key, revision);
    }
    let mut revisions: Vec<u64> = answered.values().copied().collect();
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 50, "each write has a revision of its own");
    let mut seen = Vec::new();
    for _ in 0..50 {
        match w.recv().await.unwrap() {
            WatchEvent::Put(kv) => {
                assert_eq!(
                    answered[&kv.key], kv.mod_revision,
                    "a write is stored at the revision it answered"
                );
                seen.push(kv.mod_revision);
            }
            e => panic!("expected puts only, got {e:?}"),
        }
    }
    assert!(
        seen.windows(2).all(|p| p[0] < p[1]),
        "watchers see writes in revision order: {seen:?}"
    );
}

async fn leases(s: Arc<dyn Store>) {
    let lease = s.grant(30).await.unwrap();
    s.txn(
        vec![],
        vec![Op::PutLeased("l/1".into(), b"x".to_vec(), lease)],
    )
    .await
    .unwrap();
    assert_eq!(
        s.get("l/1").await.unwrap().unwrap().value,
        b"x",
        "a leased key reads like any key"
    );
    assert!(s.keep_alive(lease).await.unwrap(), "a fresh lease is alive");
}
