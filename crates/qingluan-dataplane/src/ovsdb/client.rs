//! A native OVSDB JSON-RPC client (RFC 7047): transact, monitor_cond, echo, reconnect.
//!
//! No usable Rust crate exists, so this is ours. [`OvsdbClient::connect`] spawns one
//! background task that owns the connection; handles are cheap clones that send requests to
//! it, and the task ends when the last handle is dropped.
//!
//! Rules:
//! - Requests are multiplexed by id; answers may come in any order.
//! - The server's `echo` requests are answered. After 5 s without any message from the
//!   server we send an `echo` ourselves; 5 more silent seconds and the peer is declared dead.
//! - Any failure drops the connection ([`ClientEvent::Disconnected`]). The task redials at
//!   once (unless the connection died young: a flapping server is not hammered), then
//!   forever with a backoff of 100 ms doubling to 2 s. Once connected again it re-issues every monitor (whose channel then
//!   receives the full contents again, marked `initial`) and emits
//!   [`ClientEvent::Reconnected`] so owners resync.
//! - While there is no connection, requests fail at once with [`OvsdbError::Unreachable`];
//!   every request also has a time limit (10 s), so nothing ever hangs.
//! - Monitors use `monitor_cond` (`update2` notifications) and fall back to `monitor`
//!   (`update`) when the server refuses it; each update says which format it is in.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::error::{io_reason, OvsdbError};
use super::framing::Framer;

/// Time limits of a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// How long a request may wait for its answer.
    pub request: Duration,
    /// Silence after which we send an echo; as much again without an answer drops the peer.
    pub probe: Duration,
    /// How long one connection attempt may take.
    pub dial: Duration,
    /// First reconnect delay; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            request: Duration::from_secs(10),
            probe: Duration::from_secs(5),
            dial: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Connection events, for owners that keep state derived from the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A connection was established after the server had been unreachable or the connection
    /// lost (not sent when the very first attempt succeeds): resync.
    Reconnected,
    /// The connection was lost.
    Disconnected,
}

/// The notification format of a monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateFormat {
    /// `monitor_cond`: `<table-updates2>` (`initial`/`insert`/`modify`/`delete` per row).
    Update2,
    /// `monitor` (fallback): `<table-updates>` (`old`/`new` per row).
    Update,
}

/// One message of a monitor.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorUpdate {
    /// `true` for the full contents of the monitored tables: the first message, and again
    /// after every reconnect (replace everything derived from earlier messages).
    pub initial: bool,
    /// The format of `tables`.
    pub format: UpdateFormat,
    /// The table updates, as the server sent them.
    pub tables: Value,
}

/// A request from a handle to the connection task.
enum Request {
    /// A plain JSON-RPC call.
    Call {
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<Value, OvsdbError>>,
    },
    /// A new monitor.
    Monitor(NewMonitor),
}

/// A monitor being created.
struct NewMonitor {
    db: String,
    requests: Value,
    format: UpdateFormat,
    updates: mpsc::UnboundedSender<MonitorUpdate>,
    reply: oneshot::Sender<Result<(), OvsdbError>>,
}

/// An established monitor, re-issued on every new connection.
struct Monitor {
    db: String,
    requests: Value,
    format: UpdateFormat,
    updates: mpsc::UnboundedSender<MonitorUpdate>,
}

/// What an outstanding request id is waiting for.
enum Pending {
    /// A caller's call.
    Call {
        method: String,
        reply: oneshot::Sender<Result<Value, OvsdbError>>,
    },
    /// A monitor request: a new one (`new` is set) or a re-issued one.
    Monitor {
        id: String,
        format: UpdateFormat,
        new: Option<NewMonitor>,
    },
    /// Our echo or monitor_cancel: only the arrival matters.
    Ignore,
}

/// A handle on the connection task; cheap to clone.
#[derive(Clone)]
pub struct OvsdbClient {
    target: String,
    tx: mpsc::UnboundedSender<Request>,
    events: broadcast::Sender<ClientEvent>,
    timing: Timing,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

async fn dial(target: &str) -> std::io::Result<Box<dyn Stream>> {
    if let Some(addr) = target.strip_prefix("tcp:") {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    } else {
        let path = target.strip_prefix("unix:").unwrap_or(target);
        Ok(Box::new(tokio::net::UnixStream::connect(path).await?))
    }
}

/// An OVSDB error value (a string, or an object with `error` and `details`) as text.
fn error_text(e: &Value) -> String {
    let (error, details) = match e {
        Value::String(s) => (s.clone(), None),
        Value::Object(o) => (
            o.get("error")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| e.to_string()),
            o.get("details").and_then(Value::as_str),
        ),
        other => (other.to_string(), None),
    };
    let text = match details {
        Some(d) if !d.is_empty() => format!("{error}: {d}"),
        _ => error,
    };
    text.trim_end().trim_end_matches('.').to_string()
}

/// A transaction operation in words, e.g. `insert into Bridge`.
fn describe_op(op: &Value) -> String {
    let name = op["op"].as_str().unwrap_or("operation");
    match op["table"].as_str() {
        Some(t) if name == "insert" => format!("insert into {t}"),
        Some(t) if name == "select" || name == "delete" => format!("{name} from {t}"),
        Some(t) => format!("{name} {t}"),
        None => name.to_string(),
    }
}

impl OvsdbClient {
    /// Starts the connection task for `target`: `unix:/path`, a bare path, or
    /// `tcp:host:port`. Returns at once; requests fail fast until the server answers.
    pub fn connect(target: &str) -> OvsdbClient {
        Self::with_timing(target, Timing::default())
    }

    pub(crate) fn with_timing(target: &str, timing: Timing) -> OvsdbClient {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(64);
        let task = Task {
            target: target.to_string(),
            events: events.clone(),
            timing,
            monitors: BTreeMap::new(),
            next_monitor: 1,
            next_id: 1,
        };
        tokio::spawn(task.run(rx));
        OvsdbClient {
            target: target.to_string(),
            tx,
            events,
            timing,
        }
    }

    /// Connection events.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    fn unreachable(&self, reason: &str) -> OvsdbError {
        OvsdbError::Unreachable {
            target: self.target.clone(),
            reason: reason.to_string(),
        }
    }

    async fn wait<T>(
        &self,
        method: &str,
        rx: oneshot::Receiver<Result<T, OvsdbError>>,
    ) -> Result<T, OvsdbError> {
        match tokio::time::timeout(self.timing.request, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.unreachable("connection task stopped")),
            Err(_) => Err(OvsdbError::Timeout {
                target: self.target.clone(),
                method: method.to_string(),
                secs: self.timing.request.as_secs(),
            }),
        }
    }

    /// Sends one JSON-RPC request and waits for its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Call {
                method: method.to_string(),
                params,
                reply,
            })
            .map_err(|_| self.unreachable("connection task stopped"))?;
        self.wait(method, rx).await
    }

    /// Runs `ops` as one transaction on `db` and returns one result per operation. Fails if
    /// any operation failed (naming it) or the commit failed; then nothing was changed.
    pub async fn transact(&self, db: &str, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let described: Vec<String> = ops.iter().map(describe_op).collect();
        let mut params = vec![json!(db)];
        params.extend(ops);
        let result = self.call("transact", Value::Array(params)).await?;
        let Value::Array(results) = result else {
            return Err(OvsdbError::Protocol {
                method: "transact".into(),
                detail: format!("result is not an array: {result}"),
            });
        };
        for (index, r) in results.iter().enumerate() {
            if let Some(e) = r.get("error").filter(|e| !e.is_null()) {
                let error = error_text(&json!({"error": e, "details": r.get("details")}));
                return Err(match described.get(index) {
                    Some(op) => OvsdbError::Op {
                        index,
                        op: op.clone(),
                        error,
                    },
                    None => OvsdbError::Commit { error },
                });
            }
        }
        if results.len() < described.len() {
            return Err(OvsdbError::Commit {
                error: format!(
                    "only {} of {} operations answered",
                    results.len(),
                    described.len()
                ),
            });
        }
        Ok(results)
    }

    /// Monitors `columns` of `tables` in `db`: the returned channel first receives the
    /// current contents (`initial`), then every change; after a reconnect, the full contents
    /// again. `format` is the one preferred: `Update2` (`monitor_cond`, changed columns
    /// only) falls back to `Update` when the server refuses it; `Update` (`monitor`) gives
    /// every monitored column of a changed row, which is what a replica of the rows wants.
    /// The channel closes if the monitor cannot be re-established; dropping the receiver
    /// cancels the monitor.
    pub async fn monitor(
        &self,
        db: &str,
        tables: &[(&str, &[&str])],
        format: UpdateFormat,
    ) -> Result<mpsc::UnboundedReceiver<MonitorUpdate>, OvsdbError> {
        let requests: serde_json::Map<String, Value> = tables
            .iter()
            .map(|(t, cols)| (t.to_string(), json!([{"columns": cols}])))
            .collect();
        let (updates, rx) = mpsc::unbounded_channel();
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Request::Monitor(NewMonitor {
                db: db.to_string(),
                requests: Value::Object(requests),
                format,
                updates,
                reply,
            }))
            .map_err(|_| self.unreachable("connection task stopped"))?;
        self.wait("monitor_cond", done).await?;
        Ok(rx)
    }
}

/// The connection task's state.
struct Task {
    target: String,
    events: broadcast::Sender<ClientEvent>,
    timing: Timing,
    /// Established monitors by their JSON-RPC monitor id.
    monitors: BTreeMap<String, Monitor>,
    /// Counter for monitor ids.
    next_monitor: u64,
    /// Counter for request ids.
    next_id: u64,
}

/// Why a connection ended.
enum End {
    /// Every handle is gone: stop.
    Stop,
    /// The connection broke, for this reason.
    Lost(String),
}

impl Task {
    fn unreachable(&self, reason: &str) -> OvsdbError {
        OvsdbError::Unreachable {
            target: self.target.clone(),
            reason: reason.to_string(),
        }
    }

    fn refuse(&self, req: Request, reason: &str) {
        match req {
            Request::Call { reply, .. } => {
                let _ = reply.send(Err(self.unreachable(reason)));
            }
            Request::Monitor(m) => {
                let _ = m.reply.send(Err(self.unreachable(reason)));
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut delay = self.timing.backoff_min;
        let mut troubled = false;
        loop {
            // One attempt; requests arriving meanwhile wait for its outcome (at most `dial`).
            let mut queued = Vec::new();
            let dialed = {
                let attempt = tokio::time::timeout(self.timing.dial, dial(&self.target));
                tokio::pin!(attempt);
                loop {
                    tokio::select! {
                        r = &mut attempt => break r,
                        req = rx.recv() => match req {
                            Some(r) => queued.push(r),
                            None => return,
                        },
                    }
                }
            };
            let reason = match dialed {
                Ok(Ok(stream)) => {
                    if troubled {
                        let _ = self.events.send(ClientEvent::Reconnected);
                    }
                    let started = Instant::now();
                    let reason = match self
                        .session(stream, &mut rx, std::mem::take(&mut queued))
                        .await
                    {
                        End::Stop => return,
                        End::Lost(reason) => reason,
                    };
                    tracing::warn!(target = %self.target, %reason, "ovsdb connection lost");
                    let _ = self.events.send(ClientEvent::Disconnected);
                    troubled = true;
                    // A connection that lived a while broke: redial at once, so callers
                    // learn from that attempt whether the server is really gone. One that
                    // broke quickly (a flapping server) waits, and the wait doubles.
                    let lived = started.elapsed();
                    if lived >= self.timing.backoff_max {
                        delay = self.timing.backoff_min;
                        continue;
                    }
                    if lived >= delay {
                        delay = (delay * 2).min(self.timing.backoff_max);
                        continue;
                    }
                    reason
                }
                Ok(Err(e)) => io_reason(&e),
                Err(_) => format!("no connection within {} ms", self.timing.dial.as_millis()),
            };
            troubled = true;
            // Queued requests and everything until the next attempt fail fast.
            for req in queued {
                self.refuse(req, &reason);
            }
            let pause = tokio::time::sleep(delay);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    req = rx.recv() => match req {
                        Some(r) => self.refuse(r, &reason),
                        None => return,
                    },
                }
            }
            delay = (delay * 2).min(self.timing.backoff_max);
        }
    }

    /// One connection's life: serves requests and notifications until it breaks.
    async fn session(
        &mut self,
        stream: Box<dyn Stream>,
        rx: &mut mpsc::UnboundedReceiver<Request>,
        queued: Vec<Request>,
    ) -> End {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
        let mut framer = Framer::default();
        let mut chunk = vec![0u8; 64 * 1024];
        let probe = tokio::time::sleep(self.timing.probe);
        tokio::pin!(probe);
        let mut echo_sent = false;

        let mut out: Vec<Value> = Vec::new();
        let reissue: Vec<(String, Value, UpdateFormat)> = self
            .monitors
            .iter()
            .map(|(id, m)| (id.clone(), json!([m.db, id, m.requests]), m.format))
            .collect();
        for (id, params, format) in reissue {
            out.push(self.request_monitor(&mut pending, id, params, format, None));
        }
        for req in queued {
            out.push(self.accept(&mut pending, req));
        }
        let end = 'conn: loop {
            for msg in out.drain(..) {
                if let Err(e) = wr.write_all(msg.to_string().as_bytes()).await {
                    break 'conn End::Lost(io_reason(&e));
                }
            }
            tokio::select! {
                n = rd.read(&mut chunk) => {
                    let n = match n {
                        Ok(0) => break End::Lost("connection closed by the server".into()),
                        Ok(n) => n,
                        Err(e) => break End::Lost(io_reason(&e)),
                    };
                    probe.as_mut().reset(Instant::now() + self.timing.probe);
                    echo_sent = false;
                    let msgs = match framer.push(&chunk[..n]) {
                        Ok(m) => m,
                        Err(e) => break End::Lost(e),
                    };
                    for m in msgs {
                        self.receive(&mut pending, m, &mut out);
                    }
                }
                req = rx.recv() => match req {
                    Some(req) => out.push(self.accept(&mut pending, req)),
                    None => break End::Stop,
                },
                _ = &mut probe => {
                    if echo_sent {
                        break End::Lost(format!(
                            "no answer to echo within {} ms",
                            self.timing.probe.as_millis()
                        ));
                    }
                    echo_sent = true;
                    let id = self.id();
                    pending.insert(id, Pending::Ignore);
                    out.push(json!({"method": "echo", "params": [], "id": id}));
                    probe.as_mut().reset(Instant::now() + self.timing.probe);
                }
            }
        };
        if let End::Lost(reason) = &end {
            for p in pending.into_values() {
                match p {
                    Pending::Call { reply, .. } => {
                        let _ = reply.send(Err(self.unreachable(reason)));
                    }
                    Pending::Monitor { new: Some(m), .. } => {
                        let _ = m.reply.send(Err(self.unreachable(reason)));
                    }
                    Pending::Monitor { new: None, .. } | Pending::Ignore => {}
                }
            }
        }
        end
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Registers a caller's request and returns the message to send.
    fn accept(&mut self, pending: &mut BTreeMap<u64, Pending>, req: Request) -> Value {
        match req {
            Request::Call {
                method,
                params,
                reply,
            } => {
                let id = self.id();
                let msg = json!({"method": method, "params": params, "id": id});
                pending.insert(id, Pending::Call { method, reply });
                msg
            }
            Request::Monitor(m) => {
                let id = format!("qlmon-{}", self.next_monitor);
                self.next_monitor += 1;
                let params = json!([m.db, id, m.requests]);
                let format = m.format;
                self.request_monitor(pending, id, params, format, Some(m))
            }
        }
    }

    fn request_monitor(
        &mut self,
        pending: &mut BTreeMap<u64, Pending>,
        id: String,
        params: Value,
        format: UpdateFormat,
        new: Option<NewMonitor>,
    ) -> Value {
        let method = match format {
            UpdateFormat::Update2 => "monitor_cond",
            UpdateFormat::Update => "monitor",
        };
        let rid = self.id();
        pending.insert(rid, Pending::Monitor { id, format, new });
        json!({"method": method, "params": params, "id": rid})
    }

    fn cancel(&mut self, pending: &mut BTreeMap<u64, Pending>, id: &str, out: &mut Vec<Value>) {
        self.monitors.remove(id);
        let rid = self.id();
        pending.insert(rid, Pending::Ignore);
        out.push(json!({"method": "monitor_cancel", "params": [id], "id": rid}));
    }

    /// Handles one message from the server, queueing anything to send in `out`.
    fn receive(&mut self, pending: &mut BTreeMap<u64, Pending>, m: Value, out: &mut Vec<Value>) {
        if let Some(method) = m.get("method").and_then(Value::as_str) {
            match method {
                "echo" => out.push(json!({"result": m["params"], "error": null, "id": m["id"]})),
                "update" | "update2" => {
                    let id = m["params"][0].as_str().unwrap_or_default().to_string();
                    let Some(mon) = self.monitors.get(&id) else {
                        return;
                    };
                    let update = MonitorUpdate {
                        initial: false,
                        format: mon.format,
                        tables: m["params"][1].clone(),
                    };
                    if mon.updates.send(update).is_err() {
                        self.cancel(pending, &id, out);
                    }
                }
                other => tracing::debug!(method = other, "ignoring ovsdb notification"),
            }
            return;
        }
        let Some(p) = m["id"].as_u64().and_then(|id| pending.remove(&id)) else {
            return;
        };
        let error = m.get("error").filter(|e| !e.is_null());
        match p {
            Pending::Call { method, reply } => {
                let r = match error {
                    None => Ok(m["result"].clone()),
                    Some(e) => Err(OvsdbError::Rpc {
                        method,
                        error: error_text(e),
                    }),
                };
                let _ = reply.send(r);
            }
            Pending::Monitor { id, format, new } => match error {
                Some(e) if format == UpdateFormat::Update2 => {
                    tracing::debug!(error = %error_text(e), "monitor_cond refused; using monitor");
                    let params = match &new {
                        Some(n) => json!([n.db, id, n.requests]),
                        None => match self.monitors.get(&id) {
                            Some(mon) => json!([mon.db, id, mon.requests]),
                            None => return,
                        },
                    };
                    out.push(self.request_monitor(pending, id, params, UpdateFormat::Update, new));
                }
                Some(e) => {
                    let error = error_text(e);
                    match new {
                        Some(n) => {
                            let _ = n.reply.send(Err(OvsdbError::Rpc {
                                method: "monitor".into(),
                                error,
                            }));
                        }
                        None => {
                            tracing::warn!(monitor = %id, %error, "cannot re-establish ovsdb monitor");
                            self.monitors.remove(&id);
                        }
                    }
                }
                None => {
                    let initial = MonitorUpdate {
                        initial: true,
                        format,
                        tables: m["result"].clone(),
                    };
                    match new {
                        Some(n) => {
                            if n.updates.send(initial).is_ok() && n.reply.send(Ok(())).is_ok() {
                                self.monitors.insert(
                                    id,
                                    Monitor {
                                        db: n.db,
                                        requests: n.requests,
                                        format,
                                        updates: n.updates,
                                    },
                                );
                            } else {
                                self.cancel(pending, &id, out);
                            }
                        }
                        None => {
                            let sent = match self.monitors.get_mut(&id) {
                                Some(mon) => {
                                    mon.format = format;
                                    mon.updates.send(initial).is_ok()
                                }
                                None => true,
                            };
                            if !sent {
                                self.cancel(pending, &id, out);
                            }
                        }
                    }
                }
            },
            Pending::Ignore => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::net::{UnixListener, UnixStream};

    use super::*;

    /// A scripted OVSDB server's end of one connection.
    struct Peer {
        stream: UnixStream,
        framer: Framer,
        inbox: VecDeque<Value>,
    }

    impl Peer {
        async fn accept(l: &UnixListener) -> Peer {
            let (stream, _) = l.accept().await.unwrap();
            Peer {
                stream,
                framer: Framer::default(),
                inbox: VecDeque::new(),
            }
        }

        /// The next message, or `None` when the client closed the connection.
        async fn recv(&mut self) -> Option<Value> {
            let mut buf = [0u8; 4096];
            while self.inbox.is_empty() {
                let n = self.stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    return None;
                }
                self.inbox.extend(self.framer.push(&buf[..n]).unwrap());
            }
            self.inbox.pop_front()
        }

        async fn send(&mut self, text: &str) {
            self.stream.write_all(text.as_bytes()).await.unwrap();
        }
    }

    fn server() -> (tempfile::TempDir, UnixListener, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sock");
        let l = UnixListener::bind(&path).unwrap();
        (dir, l, format!("unix:{}", path.display()))
    }

    fn timing(request_ms: u64, probe_ms: u64) -> Timing {
        Timing {
            request: Duration::from_millis(request_ms),
            probe: Duration::from_millis(probe_ms),
            dial: Duration::from_millis(500),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn multiplexes_answers_echo_and_reads_split_messages() {
        let (_dir, l, target) = server();
        let c = OvsdbClient::connect(&target);
        let serve = async {
            let mut p = Peer::accept(&l).await;
            p.send(r#"{"method":"echo","params":["hi"],"id":"e1"}"#)
                .await;
            let mut ids = BTreeMap::new();
            while ids.len() < 2 {
                let m = p.recv().await.unwrap();
                if m["id"] == "e1" {
                    assert_eq!(m, json!({"result": ["hi"], "error": null, "id": "e1"}));
                    continue;
                }
                ids.insert(m["method"].as_str().unwrap().to_string(), m["id"].clone());
            }
            let text = format!(
                r#"{{"id":{},"result":[{{"rows":[]}}],"error":null}} {{"id":{},"result":["Open_vSwitch"],"error":null}}"#,
                ids["transact"], ids["list_dbs"]
            );
            let (a, b) = text.split_at(23);
            p.send(a).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            p.send(b).await;
            p
        };
        let (dbs, rows, _peer) = tokio::join!(
            c.call("list_dbs", json!([])),
            c.transact(
                "Open_vSwitch",
                vec![json!({"op": "select", "table": "Bridge", "where": []})]
            ),
            serve
        );
        assert_eq!(dbs.unwrap(), json!(["Open_vSwitch"]));
        assert_eq!(rows.unwrap(), vec![json!({"rows": []})]);
    }

    #[tokio::test]
    async fn fails_fast_with_the_reason_while_unreachable() {
        let c = OvsdbClient::connect("unix:/nonexistent-qlt/db.sock");
        let t = Instant::now();
        let e = c.call("list_dbs", json!([])).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "ovsdb unreachable at unix:/nonexistent-qlt/db.sock: no such file or directory"
        );
        let (dir, l, target) = server();
        drop(l);
        let c = OvsdbClient::connect(&target);
        let e = c.call("list_dbs", json!([])).await.unwrap_err();
        assert_eq!(
            e,
            OvsdbError::Unreachable {
                target,
                reason: "connection refused".into()
            }
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        drop(dir);
    }

    #[tokio::test]
    async fn transact_names_the_failed_operation_or_commit() {
        let (_dir, l, target) = server();
        let c = OvsdbClient::connect(&target);
        let answers = [
            r#"[{"count":1},{"error":"constraint violation","details":"Bad thing."},null]"#,
            r#"[{"count":1},{"error":"referential integrity violation","details":"x"}]"#,
            r#"[]"#,
        ];
        let serve = async {
            let mut p = Peer::accept(&l).await;
            for a in answers {
                let m = p.recv().await.unwrap();
                p.send(&format!(
                    r#"{{"id":{},"result":{a},"error":null}}"#,
                    m["id"]
                ))
                .await;
            }
            let m = p.recv().await.unwrap();
            p.send(&format!(
                r#"{{"id":{},"result":null,"error":{{"error":"unknown database","details":"no db"}}}}"#,
                m["id"]
            ))
            .await;
            p
        };
        let ops = || {
            vec![
                json!({"op": "mutate", "table": "Bridge", "where": [], "mutations": []}),
                json!({"op": "insert", "table": "Port", "row": {}}),
                json!({"op": "comment", "comment": "x"}),
            ]
        };
        let calls = async {
            let mut out = Vec::new();
            out.push(c.transact("db", ops()).await.unwrap_err().to_string());
            out.push(
                c.transact("db", ops()[..1].to_vec())
                    .await
                    .unwrap_err()
                    .to_string(),
            );
            out.push(
                c.transact("db", ops()[..1].to_vec())
                    .await
                    .unwrap_err()
                    .to_string(),
            );
            out.push(c.transact("db", ops()).await.unwrap_err().to_string());
            out
        };
        let (got, _peer) = tokio::join!(calls, serve);
        assert_eq!(
            got,
            [
                "ovsdb transaction failed at operation 1 (insert into Port): constraint violation: Bad thing",
                "ovsdb transaction not committed: referential integrity violation: x",
                "ovsdb transaction not committed: only 0 of 1 operations answered",
                "ovsdb transact failed: unknown database: no db",
            ]
        );
    }

    #[tokio::test]
    async fn monitor_falls_back_and_is_reissued_after_reconnect() {
        let (_dir, l, target) = server();
        let c = OvsdbClient::with_timing(&target, timing(2000, 5000));
        let mut events = c.events();
        let serve = async {
            let mut p = Peer::accept(&l).await;
            let m = p.recv().await.unwrap();
            assert_eq!(m["method"], "monitor_cond");
            p.send(&format!(
                r#"{{"id":{},"result":null,"error":"unknown method"}}"#,
                m["id"]
            ))
            .await;
            let m = p.recv().await.unwrap();
            assert_eq!(m["method"], "monitor");
            assert_eq!(m["params"][2], json!({"Bridge": [{"columns": ["name"]}]}));
            let id = m["params"][1].as_str().unwrap().to_string();
            p.send(&format!(
                r#"{{"id":{},"result":{{"Bridge":{{"u1":{{"new":{{"name":"a"}}}}}}}},"error":null}}"#,
                m["id"]
            ))
            .await;
            (p, id)
        };
        let (rx, (mut p, id)) = tokio::join!(
            c.monitor("db", &[("Bridge", &["name"])], UpdateFormat::Update2),
            serve
        );
        let mut rx = rx.unwrap();
        let first = rx.recv().await.unwrap();
        assert!(first.initial);
        assert_eq!(first.format, UpdateFormat::Update);
        p.send(&format!(
            r#"{{"method":"update","params":["{id}",{{"Bridge":{{"u2":{{"new":{{"name":"b"}}}}}}}}],"id":null}}"#
        ))
        .await;
        let change = rx.recv().await.unwrap();
        assert!(!change.initial);
        assert_eq!(change.tables["Bridge"]["u2"]["new"]["name"], "b");

        drop(p);
        assert_eq!(events.recv().await.unwrap(), ClientEvent::Disconnected);
        let mut p = Peer::accept(&l).await;
        assert_eq!(events.recv().await.unwrap(), ClientEvent::Reconnected);
        let m = p.recv().await.unwrap();
        assert_eq!(m["method"], "monitor", "the working method is remembered");
        assert_eq!(m["params"][1], id.as_str());
        p.send(&format!(
            r#"{{"id":{},"result":{{}},"error":null}}"#,
            m["id"]
        ))
        .await;
        let again = rx.recv().await.unwrap();
        assert!(again.initial);
        assert_eq!(again.tables, json!({}));

        drop(rx);
        p.send(&format!(
            r#"{{"method":"update","params":["{id}",{{}}],"id":null}}"#
        ))
        .await;
        let m = p.recv().await.unwrap();
        assert_eq!(m["method"], "monitor_cancel", "a dropped receiver cancels");
        assert_eq!(m["params"], json!([id]));
    }

    #[tokio::test]
    async fn silent_peer_is_dropped_after_an_unanswered_echo() {
        let (_dir, l, target) = server();
        let c = OvsdbClient::with_timing(&target, timing(5000, 100));
        let serve = async {
            let mut p = Peer::accept(&l).await;
            let m = p.recv().await.unwrap();
            assert_eq!(m["method"], "list_dbs");
            let m = p.recv().await.unwrap();
            assert_eq!(m["method"], "echo");
            p
        };
        let t = Instant::now();
        let (r, _peer) = tokio::join!(c.call("list_dbs", json!([])), serve);
        assert_eq!(
            r.unwrap_err().to_string(),
            format!("ovsdb unreachable at {target}: no answer to echo within 100 ms")
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn requests_time_out_and_the_task_stops_with_the_last_handle() {
        let (_dir, l, target) = server();
        let c = OvsdbClient::with_timing(&target, timing(1000, 5000));
        let (r, mut p) = tokio::join!(c.call("list_dbs", json!([])), Peer::accept(&l));
        assert_eq!(
            r.unwrap_err().to_string(),
            format!("ovsdb at {target} did not answer list_dbs within 1 s")
        );
        assert_eq!(p.recv().await.unwrap()["method"], "list_dbs");
        drop(c);
        assert_eq!(
            p.recv().await,
            None,
            "connection closed once the client is gone"
        );
    }
}
