//! A native OVSDB JSON-RPC client (RFC 7047): transact, monitor_cond, echo, reconnect.
//!
//! No usable Rust crate exists, so this is ours. One background task owns the connection:
//! requests are multiplexed by id, the server's `echo` is answered, our own echo every 5 s
//! detects a dead peer, and on any failure it reconnects with backoff (100 ms doubling to
//! 2 s), re-issues every monitor and emits [`ClientEvent::Reconnected`] so owners resync.
//! While disconnected, requests fail at once with [`OvsdbError::Unreachable`]; every request
//! also has a timeout, so nothing hangs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};

/// OVSDB errors, each naming what failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum OvsdbError {
    /// No connection to the server.
    #[error("ovsdb unreachable at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    /// No answer in time.
    #[error("ovsdb at {target} did not answer {method} within {secs} s")]
    Timeout {
        target: String,
        method: String,
        secs: u64,
    },
    /// The server answered with an error.
    #[error("ovsdb {method} failed: {error}")]
    Rpc { method: String, error: String },
    /// One operation of a transaction failed.
    #[error("ovsdb transaction failed at operation {index}: {error}{details}")]
    Op {
        index: usize,
        error: String,
        details: String,
    },
    /// ovs-vswitchd did not apply a change in time.
    #[error("ovs-vswitchd did not apply the change within {0} s (is ovs-vswitchd running?)")]
    NotApplied(u64),
    /// Something in the database is not as expected.
    #[error("{0}")]
    Schema(String),
}

/// Connection events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The connection came back (not sent for the first connect).
    Reconnected,
    /// The connection was lost.
    Disconnected,
    /// A monitor update (`update2` / `update` notification params).
    Update(Value),
}

struct Request {
    method: String,
    params: Value,
    reply: oneshot::Sender<Result<Value, OvsdbError>>,
}

/// A handle on the connection task; cheap to clone.
#[derive(Clone)]
pub struct OvsdbClient {
    target: String,
    tx: mpsc::UnboundedSender<Request>,
    events: broadcast::Sender<ClientEvent>,
    monitors: Arc<Mutex<Vec<(String, Value)>>>,
    timeout: Duration,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

async fn dial(target: &str) -> std::io::Result<Box<dyn Stream>> {
    if let Some(addr) = target.strip_prefix("tcp:") {
        Ok(Box::new(tokio::net::TcpStream::connect(addr).await?))
    } else {
        let path = target.strip_prefix("unix:").unwrap_or(target);
        Ok(Box::new(tokio::net::UnixStream::connect(path).await?))
    }
}

/// Splits complete JSON values off the front of `buf`, leaving an incomplete tail.
pub fn split_messages(buf: &mut Vec<u8>) -> Result<Vec<Value>, serde_json::Error> {
    let mut out = Vec::new();
    let mut consumed = 0;
    {
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
        loop {
            match it.next() {
                Some(Ok(v)) => {
                    out.push(v);
                    consumed = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(e),
                None => {
                    consumed = it.byte_offset();
                    break;
                }
            }
        }
    }
    buf.drain(..consumed);
    Ok(out)
}

impl OvsdbClient {
    /// Starts the connection task for `target` (`unix:/path`, a path, or `tcp:host:port`).
    pub fn connect(target: &str) -> OvsdbClient {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(256);
        let c = OvsdbClient {
            target: target.to_string(),
            tx,
            events,
            monitors: Arc::new(Mutex::new(Vec::new())),
            timeout: Duration::from_secs(10),
        };
        tokio::spawn(c.clone().run(rx));
        c
    }

    /// Connection events and monitor updates.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    /// Sends one request and waits for its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let (reply, rx) = oneshot::channel();
        let unreachable = |reason: &str| OvsdbError::Unreachable {
            target: self.target.clone(),
            reason: reason.to_string(),
        };
        self.tx
            .send(Request {
                method: method.to_string(),
                params,
                reply,
            })
            .map_err(|_| unreachable("client stopped"))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(unreachable("connection lost")),
            Err(_) => Err(OvsdbError::Timeout {
                target: self.target.clone(),
                method: method.to_string(),
                secs: self.timeout.as_secs(),
            }),
        }
    }

    /// `transact` on `db`; fails if any operation failed.
    pub async fn transact(&self, db: &str, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let n = ops.len();
        let mut params = vec![json!(db)];
        params.extend(ops);
        let result = self.call("transact", Value::Array(params)).await?;
        let results = result.as_array().cloned().unwrap_or_default();
        for (i, r) in results.iter().enumerate() {
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                let details = r
                    .get("details")
                    .and_then(Value::as_str)
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                return Err(OvsdbError::Op {
                    index: i,
                    error: e.to_string(),
                    details,
                });
            }
        }
        if results.len() < n {
            return Err(OvsdbError::Op {
                index: results.len(),
                error: "not committed".into(),
                details: String::new(),
            });
        }
        Ok(results)
    }

    /// `monitor_cond` (falling back to `monitor`) on `db`; returns the initial contents and
    /// delivers later changes as [`ClientEvent::Update`]. Re-issued after every reconnect.
    pub async fn monitor(&self, db: &str, id: &str, requests: Value) -> Result<Value, OvsdbError> {
        let params = json!([db, id, requests]);
        self.monitors
            .lock()
            .unwrap()
            .push((db.to_string(), params.clone()));
        match self.call("monitor_cond", params.clone()).await {
            Err(OvsdbError::Rpc { .. }) => self.call("monitor", params).await,
            r => r,
        }
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            match dial(&self.target).await {
                Ok(stream) => {
                    backoff = Duration::from_millis(100);
                    if !first {
                        let _ = self.events.send(ClientEvent::Reconnected);
                    }
                    first = false;
                    let reason = self.session(stream, &mut rx).await;
                    tracing::warn!(target = %self.target, %reason, "ovsdb connection lost");
                    let _ = self.events.send(ClientEvent::Disconnected);
                    if rx.is_closed() {
                        return;
                    }
                }
                Err(e) => {
                    let deadline = tokio::time::sleep(backoff);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            req = rx.recv() => match req {
                                Some(r) => {
                                    let _ = r.reply.send(Err(OvsdbError::Unreachable {
                                        target: self.target.clone(),
                                        reason: e.to_string(),
                                    }));
                                }
                                None => return,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One connection's life; returns why it ended.
    async fn session(
        &self,
        stream: Box<dyn Stream>,
        rx: &mut mpsc::UnboundedReceiver<Request>,
    ) -> String {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut pending: HashMap<u64, (String, oneshot::Sender<Result<Value, OvsdbError>>)> =
            HashMap::new();
        let mut next_id: u64 = 1;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut echo = tokio::time::interval(Duration::from_secs(5));
        echo.tick().await;
        let mut awaiting_echo = false;
        let resub: Vec<(String, Value)> = self.monitors.lock().unwrap().clone();
        for (_, params) in resub {
            let msg = json!({"method": "monitor_cond", "params": params, "id": format!("resync-{next_id}")});
            next_id += 1;
            if let Err(e) = wr.write_all(msg.to_string().as_bytes()).await {
                return e.to_string();
            }
        }
        let why = loop {
            tokio::select! {
                n = rd.read(&mut chunk) => {
                    let n = match n {
                        Ok(0) => break "closed by server".to_string(),
                        Ok(n) => n,
                        Err(e) => break e.to_string(),
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let msgs = match split_messages(&mut buf) {
                        Ok(m) => m,
                        Err(e) => break format!("malformed message: {e}"),
                    };
                    for m in msgs {
                        if let Some(method) = m.get("method").and_then(Value::as_str) {
                            match method {
                                "echo" => {
                                    let reply = json!({"result": m["params"], "error": null, "id": m["id"]});
                                    if let Err(e) = wr.write_all(reply.to_string().as_bytes()).await {
                                        return e.to_string();
                                    }
                                }
                                "update" | "update2" | "update3" => {
                                    let _ = self.events.send(ClientEvent::Update(m["params"].clone()));
                                }
                                _ => {}
                            }
                            continue;
                        }
                        if m["id"] == json!("echo") {
                            awaiting_echo = false;
                            continue;
                        }
                        let Some(id) = m["id"].as_u64() else { continue };
                        if let Some((method, reply)) = pending.remove(&id) {
                            let r = if m["error"].is_null() {
                                Ok(m["result"].clone())
                            } else {
                                Err(OvsdbError::Rpc { method, error: m["error"].to_string() })
                            };
                            let _ = reply.send(r);
                        }
                    }
                }
                req = rx.recv() => {
                    let Some(req) = req else { break "client dropped".to_string() };
                    let id = next_id;
                    next_id += 1;
                    let msg = json!({"method": req.method, "params": req.params, "id": id});
                    if let Err(e) = wr.write_all(msg.to_string().as_bytes()).await {
                        let _ = req.reply.send(Err(OvsdbError::Unreachable { target: self.target.clone(), reason: e.to_string() }));
                        break e.to_string();
                    }
                    pending.insert(id, (req.method, req.reply));
                }
                _ = echo.tick() => {
                    if awaiting_echo {
                        break "no echo reply within 5 s".to_string();
                    }
                    awaiting_echo = true;
                    let msg = json!({"method": "echo", "params": [], "id": "echo"});
                    if let Err(e) = wr.write_all(msg.to_string().as_bytes()).await {
                        break e.to_string();
                    }
                }
            }
        };
        for (_, (_, reply)) in pending.drain() {
            let _ = reply.send(Err(OvsdbError::Unreachable {
                target: self.target.clone(),
                reason: why.clone(),
            }));
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_concatenated_and_partial_messages() {
        let mut buf = br#"{"id":1,"result":[]}{"id":2,"res"#.to_vec();
        let m = split_messages(&mut buf).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["id"], 1);
        buf.extend_from_slice(br#"ult":{}} {"method":"echo","params":[],"id":"x"}"#);
        let m = split_messages(&mut buf).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1]["method"], "echo");
        assert!(buf.iter().all(|b| b.is_ascii_whitespace()));
    }
}
