//! The embedded store on a full disk: a write fails with a clear error while the disk is
//! full, and succeeds again once space is freed, with no reopen by the caller and nothing
//! lost. Runs on a small tmpfs, so it needs root (`mount`); prints SKIP otherwise.

use std::process::Command;

use qingluan_store::redb::RedbStore;
use qingluan_store::{put, Store};

struct Tmpfs(tempfile::TempDir);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_writes_clearly_and_recovers_by_itself() {
    let dir = tempfile::Builder::new()
        .prefix("qlt-full")
        .tempdir()
        .unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "qlt-full"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("SKIP: a_full_disk_fails_writes_clearly_and_recovers_by_itself: cannot mount a tmpfs (needs root)");
        return;
    }
    let fs = Tmpfs(dir);
    let filler = fs.0.path().join("filler");
    let s = RedbStore::open(&fs.0.path().join("state.redb"))
        .await
        .unwrap();
    put(&s, "before", b"kept".to_vec()).await.unwrap();
    // Take most of the space, then fill the rest with records until a write fails.
    std::fs::write(&filler, vec![0u8; 4 << 20]).unwrap();
    let value = vec![b'x'; 64 << 10];
    let mut err = None;
    for i in 0..200 {
        if let Err(e) = put(&s, &format!("fill/{i}"), value.clone()).await {
            err = Some(e.to_string());
            break;
        }
    }
    let err = err.expect("the disk never filled up");
    assert!(err.contains("No space left on device"), "{err}");
    // Still full: the next write fails the same clear way, not with a poisoned database.
    let again = put(&s, "during", value.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("No space left on device"), "{again}");

    // Space freed: writes work again without reopening anything by hand.
    std::fs::remove_file(&filler).unwrap();
    put(&s, "after", b"ok".to_vec()).await.unwrap();
    assert_eq!(s.get("before").await.unwrap().unwrap().value, b"kept");
    assert_eq!(s.get("after").await.unwrap().unwrap().value, b"ok");
    assert!(s.get("during").await.unwrap().is_none());
    drop(s);
    let reopened = RedbStore::open(&fs.0.path().join("state.redb"))
        .await
        .unwrap();
    assert_eq!(reopened.get("after").await.unwrap().unwrap().value, b"ok");
}
