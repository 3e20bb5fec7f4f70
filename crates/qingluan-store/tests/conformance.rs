//! Runs the conformance suite on every backend, plus the redb durability checks.

use std::sync::Arc;

use qingluan_store::memory::MemoryStore;
use qingluan_store::redb::RedbStore;
use qingluan_store::{conformance, put, Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_backend_conforms() {
    conformance::run_all(|| Arc::new(MemoryStore::new()) as Arc<dyn Store>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scoped_view_conforms() {
    conformance::run_all(|| {
        let root: Arc<dyn Store> = Arc::new(MemoryStore::new());
        Arc::new(qingluan_store::scoped::Scoped::new(root, "local/h1/")) as Arc<dyn Store>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    let stores: Vec<Arc<dyn Store>> = futures_stores(&dir, &n).await;
    let it = std::sync::Mutex::new(stores.into_iter());
    conformance::run_all(|| it.lock().unwrap().next().unwrap()).await;
}

async fn futures_stores(
    dir: &tempfile::TempDir,
    n: &std::sync::atomic::AtomicU32,
) -> Vec<Arc<dyn Store>> {
    let mut v: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..9 {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        v.push(Arc::new(
            RedbStore::open(&dir.path().join(format!("s{i}.redb")))
                .await
                .unwrap(),
        ));
    }
    v
}

#[tokio::test]
async fn redb_survives_reopen_and_locks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/state.redb");
    let s = RedbStore::open(&path).await.unwrap();
    put(&s, "a", b"1".to_vec()).await.unwrap();
    put(&s, "b", b"2".to_vec()).await.unwrap();
    let rev = s.get("b").await.unwrap().unwrap().mod_revision;
    match RedbStore::open(&path).await {
        Err(e @ StoreError::Locked(_)) => assert_eq!(
            e.to_string(),
            format!("store {} is in use by another process", path.display())
        ),
        other => panic!(
            "second open must fail as locked, got {:?}",
            other.map(|_| ())
        ),
    }
    drop(s);
    let s = RedbStore::open(&path).await.unwrap();
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
    put(&s, "c", vec![]).await.unwrap();
    assert!(
        s.get("c").await.unwrap().unwrap().mod_revision > rev,
        "revision counter survives"
    );
}

#[tokio::test]
async fn scoped_views_do_not_see_each_other() {
    use qingluan_store::scoped::Scoped;
    let root: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (h1, h2) = (
        Scoped::new(root.clone(), "local/h1/"),
        Scoped::new(root.clone(), "local/h2/"),
    );
    put(&h1, "networks/a", b"1".to_vec()).await.unwrap();
    put(&h2, "networks/b", b"2".to_vec()).await.unwrap();
    let keys =
        |v: Vec<qingluan_store::KeyValue>| v.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(
        keys(h1.list("networks/").await.unwrap()),
        vec!["networks/a"]
    );
    assert_eq!(
        keys(h2.list("networks/").await.unwrap()),
        vec!["networks/b"]
    );
    assert!(h1.get("networks/b").await.unwrap().is_none());
    assert_eq!(
        keys(root.list("local/").await.unwrap()),
        vec!["local/h1/networks/a", "local/h2/networks/b"]
    );
}
