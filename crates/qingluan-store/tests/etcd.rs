//! The conformance suite on a real etcd (started by the test on loopback, stopped by PID),
//! plus fail-fast while etcd is down and recovery without reconnecting by hand.
//! Needs the `etcd` feature and the etcd-server package; skipped visibly otherwise.
#![cfg(feature = "etcd")]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qingluan_store::etcd::EtcdStore;
use qingluan_store::{conformance, put, Store, StoreError};

struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
    /// Serve clients over TLS and require client certificates (files in `dir`).
    tls: bool,
    /// `--quota-backend-bytes`, when set.
    quota: Option<u64>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    fn start() -> Option<Etcd> {
        Etcd::start_with(None)
    }

    /// An etcd whose database may grow to `bytes` only.
    fn start_with_quota(bytes: u64) -> Option<Etcd> {
        Etcd::start_with(Some(bytes))
    }

    fn start_with(quota: Option<u64>) -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            println!("SKIP: etcd tests: the etcd-server package is not installed");
            return None;
        }
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client: free_port(),
            peer: free_port(),
            tls: false,
            quota,
        };
        e.spawn();
        Some(e)
    }

    /// An etcd that serves clients only over TLS with client-certificate authentication,
    /// with a CA, a server and a client certificate made by openssl.
    fn start_tls() -> Option<Etcd> {
        if Command::new("openssl").arg("version").output().is_err() {
            println!("SKIP: etcd TLS test: openssl is not installed");
            return None;
        }
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client: free_port(),
            peer: free_port(),
            tls: true,
            quota: None,
        };
        let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=qlt-ca 2>/dev/null
for who in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=qlt-$who 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth
' > $who.ext
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 1 -extfile $who.ext 2>/dev/null
done"#;
        let ok = Command::new("sh")
            .args(["-c", script])
            .current_dir(e.dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl could not make the certificates");
        e.spawn();
        Some(e)
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&mut self) {
        let scheme = if self.tls { "https" } else { "http" };
        let c = format!("{scheme}://127.0.0.1:{}", self.client);
        let p = format!("http://127.0.0.1:{}", self.peer);
        let mut cmd = Command::new("etcd");
        if self.tls {
            cmd.arg("--cert-file")
                .arg(self.file("server.pem"))
                .arg("--key-file")
                .arg(self.file("server.key"))
                .arg("--trusted-ca-file")
                .arg(self.file("ca.pem"))
                .arg("--client-cert-auth");
        }
        if let Some(q) = self.quota {
            cmd.arg(format!("--quota-backend-bytes={q}"));
        }
        let child = cmd
            .args(["--name", "qlt", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("qlt={p}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client)).is_err() {
            assert!(Instant::now() < end, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoint(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        vec![format!("{scheme}://127.0.0.1:{}", self.client)]
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_backend_conforms() {
    let Some(etcd) = Etcd::start() else { return };
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for i in 0..9 {
        let s = EtcdStore::connect(&etcd.endpoint(), None, &format!("/qlt/{i}/"))
            .await
            .unwrap();
        stores.push(Arc::new(s));
    }
    let it = std::sync::Mutex::new(stores.into_iter());
    conformance::run_all(|| it.lock().unwrap().next().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_fails_fast_and_recovers() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let s = EtcdStore::connect(&etcd.endpoint(), None, "/qlt/outage/")
        .await
        .unwrap();
    put(&s, "a", b"1".to_vec()).await.unwrap();
    etcd.stop();
    let t = Instant::now();
    let e = s.get("a").await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "failed only after {:?}",
        t.elapsed()
    );
    assert!(matches!(e, StoreError::Unreachable(_)), "{e}");
    assert!(
        e.to_string().starts_with("cluster store unreachable: "),
        "{e}"
    );
    etcd.spawn();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match s.get("a").await {
            Ok(v) => {
                assert_eq!(v.unwrap().value, b"1", "data survived the restart");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < end, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leases_expire_unless_kept_alive() {
    let Some(etcd) = Etcd::start() else { return };
    let s = EtcdStore::connect(&etcd.endpoint(), None, "/qlt/lease/")
        .await
        .unwrap();
    let kept = s.grant(2).await.unwrap();
    let dropped = s.grant(2).await.unwrap();
    s.txn(
        vec![],
        vec![
            qingluan_store::Op::PutLeased("kept".into(), vec![], kept),
            qingluan_store::Op::PutLeased("dropped".into(), vec![], dropped),
        ],
    )
    .await
    .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(s.keep_alive(kept).await.unwrap());
    }
    assert!(
        s.get("kept").await.unwrap().is_some(),
        "a kept lease keeps its key"
    );
    assert!(
        s.get("dropped").await.unwrap().is_none(),
        "an expired lease takes its key along"
    );
    assert!(
        !s.keep_alive(dropped).await.unwrap(),
        "an expired lease is reported dead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_store_starts_while_etcd_is_down() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    // Let etcd finish bootstrapping its data dir before killing it, or the restart below
    // may find a half-written one.
    let t = Instant::now();
    loop {
        if let Ok(probe) = EtcdStore::connect(&etcd.endpoint(), None, "/qlt/lazy/").await {
            if probe.get("probe").await.is_ok() {
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(20), "etcd never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    etcd.stop();
    let s = EtcdStore::lazy(&etcd.endpoint(), None, "/qlt/lazy/").unwrap();
    let t = Instant::now();
    let e = s.get("a").await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "failed only after {:?}",
        t.elapsed()
    );
    assert!(
        e.to_string().starts_with("cluster store unreachable: "),
        "{e}"
    );
    etcd.spawn();
    // A freshly started etcd may still be electing itself leader: retry like the daemon.
    let t = Instant::now();
    while let Err(e) = put(&s, "a", b"1".to_vec()).await {
        assert!(t.elapsed() < Duration::from_secs(10), "no recovery: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() {
    let Some(etcd) = Etcd::start_tls() else {
        return;
    };
    let tls = qingluan_store::etcd::Tls {
        ca: Some(etcd.file("ca.pem")),
        cert: Some(etcd.file("client.pem")),
        key: Some(etcd.file("client.key")),
    };
    let t = Instant::now();
    let s = loop {
        match EtcdStore::connect(&etcd.endpoint(), Some(&tls), "/qlt/tls/").await {
            Ok(s) if s.get("probe").await.is_ok() => break s,
            Ok(_) | Err(_) if t.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(_) => panic!("etcd over TLS never answered"),
            Err(e) => panic!("etcd over TLS never answered: {e}"),
        }
    };
    put(&s, "a", b"1".to_vec()).await.unwrap();
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
    // Without a client certificate etcd refuses us.
    let anonymous = qingluan_store::etcd::Tls {
        ca: Some(etcd.file("ca.pem")),
        cert: None,
        key: None,
    };
    let refused = match EtcdStore::connect(&etcd.endpoint(), Some(&anonymous), "/qlt/tls/").await {
        Ok(s) => s.get("a").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without certificate must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_etcd_is_a_clear_error() {
    // A quota below the size of a fresh database: the first writes fill it, with small
    // values that never make a write slow.
    let Some(etcd) = Etcd::start_with_quota(64 << 10) else {
        return;
    };
    let s = EtcdStore::connect(&etcd.endpoint(), None, "/qlt/full/")
        .await
        .unwrap();
    let value = vec![b'x'; 4 << 10];
    let mut written = 0;
    let e = loop {
        match put(&s, &format!("k{written}"), value.clone()).await {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 1000, "etcd never filled up");
    };
    println!("etcd full after {written} writes of 4 KiB");
    assert!(
        matches!(e, StoreError::Full(_)),
        "after {written} writes: {e}"
    );
    assert!(
        e.to_string()
            .starts_with("cluster store full: etcd refuses writes (mvcc: database space exceeded)"),
        "{e}"
    );
    assert!(s.list("").await.is_ok(), "reads still work");
}
