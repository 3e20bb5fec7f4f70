//! ovs-vswitchd's control socket, the one `ovs-appctl` talks to: `<rundir>/ovs-vswitchd.<pid>.ctl`
//! (the PID from `<rundir>/ovs-vswitchd.pid`), one JSON-RPC request per connection. Our own
//! client, since no crate speaks it; it spawns nothing.
//!
//! Used for what only ovs-vswitchd can answer: its version, `ofproto/trace` (the path a
//! described packet takes through a bridge's flow tables, parsed here into [`Trace`]) and
//! `dpif/show` (which datapath port number is which interface, to read a trace's outputs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the control socket.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VswitchdError {
    /// No live ovs-vswitchd behind the pidfile.
    #[error("ovs-vswitchd is not running (no live process in {0})")]
    NotRunning(String),
    /// The socket could not be used.
    #[error("ovs-vswitchd control socket {path}: {reason}")]
    Socket {
        /// The socket.
        path: String,
        /// Why.
        reason: String,
    },
    /// ovs-vswitchd answered with an error.
    #[error("ovs-vswitchd refused {command}: {error}")]
    Refused {
        /// The command.
        command: String,
        /// Its error text.
        error: String,
    },
}

/// One flow a traced packet met: its table, priority, cookie and what it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceStep {
    /// The bridge.
    pub bridge: String,
    /// The OpenFlow table.
    pub table: u8,
    /// The flow's priority.
    pub priority: u32,
    /// The flow's cookie (0 when the trace shows none).
    pub cookie: u64,
    /// Its actions and the notes ovs-vswitchd printed under them, one per line.
    pub actions: Vec<String>,
}

/// What `ofproto/trace` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The flows met, in order (after a recirculation, those of the resumed pass follow).
    pub steps: Vec<TraceStep>,
    /// The last `Datapath actions:` line (e.g. `drop`, `3,4`, `ct(zone=2),recirc(0x1)`).
    pub datapath_actions: String,
}

/// Parses the text of `ofproto/trace`.
pub fn parse_trace(text: &str) -> Trace {
    let mut steps: Vec<TraceStep> = Vec::new();
    let mut bridge = String::new();
    let mut datapath_actions = String::new();
    for line in text.lines() {
        if let Some(b) = line
            .strip_prefix("bridge(\"")
            .and_then(|r| r.strip_suffix("\")"))
        {
            bridge = b.to_string();
        } else if let Some(a) = line.strip_prefix("Datapath actions: ") {
            datapath_actions = a.trim().to_string();
        } else if let Some(step) = parse_step(&bridge, line) {
            steps.push(step);
        } else if line.starts_with("    ") && !line.trim().is_empty() {
            if let Some(last) = steps.last_mut() {
                last.actions.push(line.trim().to_string());
            }
        }
    }
    Trace {
        steps,
        datapath_actions,
    }
}

/// ` 5. <match>, priority 0, cookie 0x1151135d705a38e` → a step without actions yet.
fn parse_step(bridge: &str, line: &str) -> Option<TraceStep> {
    let (table, rest) = line.trim_start().split_once(". ")?;
    let table: u8 = table.parse().ok()?;
    let (_, tail) = rest.rsplit_once("priority ")?;
    let mut parts = tail.split(", ");
    let priority = parts.next()?.trim().parse().ok()?;
    let cookie = parts
        .find_map(|p| p.strip_prefix("cookie 0x"))
        .and_then(|c| u64::from_str_radix(c.trim(), 16).ok())
        .unwrap_or(0);
    Some(TraceStep {
        bridge: bridge.to_string(),
        table,
        priority,
        cookie,
        actions: Vec::new(),
    })
}

/// A port of a bridge as the datapath numbers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathPort {
    /// The bridge.
    pub bridge: String,
    /// The interface.
    pub name: String,
    /// Its datapath port number (what a trace's `Datapath actions` output to).
    pub number: u32,
}

/// `dpif/show`: every bridge's ports with their datapath numbers.
pub fn parse_datapath_ports(text: &str) -> Vec<DatapathPort> {
    let mut bridge = String::new();
    let mut out = Vec::new();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(name), second) = (f.next(), f.next()) else {
            continue;
        };
        match second {
            None if l.starts_with("  ") && name.ends_with(':') => {
                bridge = name.trim_end_matches(':').to_string();
            }
            Some(numbers) => {
                let dp = numbers
                    .strip_suffix(':')
                    .and_then(|n| n.split_once('/'))
                    .and_then(|(_, dp)| dp.parse().ok());
                if let Some(number) = dp {
                    out.push(DatapathPort {
                        bridge: bridge.clone(),
                        name: name.to_string(),
                        number,
                    });
                }
            }
            None => {}
        }
    }
    out
}

/// The control socket of the ovs-vswitchd whose files are in a run directory.
#[derive(Clone, Debug)]
pub struct Vswitchd {
    rundir: PathBuf,
}

impl Vswitchd {
    /// ovs-vswitchd of `rundir` (`$OVS_RUNDIR` or `/run/openvswitch` when `None`).
    pub fn new(rundir: Option<PathBuf>) -> Vswitchd {
        let rundir = rundir
            .or_else(|| std::env::var_os("OVS_RUNDIR").map(Into::into))
            .unwrap_or_else(|| "/run/openvswitch".into());
        Vswitchd { rundir }
    }

    /// The pidfile.
    pub fn pidfile(&self) -> PathBuf {
        self.rundir.join("ovs-vswitchd.pid")
    }

    /// The PID of a live ovs-vswitchd, if one runs.
    pub fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_ok()
            .then_some(pid)
    }

    /// Runs one command (as `ovs-appctl COMMAND ARGS...` would) and returns its text.
    pub async fn call(&self, command: &str, args: &[&str]) -> Result<String, VswitchdError> {
        let pid = self
            .pid()
            .ok_or_else(|| VswitchdError::NotRunning(self.pidfile().display().to_string()))?;
        let path = self.rundir.join(format!("ovs-vswitchd.{pid}.ctl"));
        let failed = |reason: String| VswitchdError::Socket {
            path: path.display().to_string(),
            reason,
        };
        let request = serde_json::json!({"id": 0, "method": command, "params": args});
        let answer = tokio::time::timeout(TIMEOUT, exchange(&path, request.to_string()))
            .await
            .map_err(|_| failed(format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        match answer["error"].as_str() {
            Some(error) => Err(VswitchdError::Refused {
                command: command.to_string(),
                error: error.trim().to_string(),
            }),
            None => Ok(answer["result"].as_str().unwrap_or_default().to_string()),
        }
    }

    /// `ovs-vswitchd (Open vSwitch) 3.1.0`.
    pub async fn version(&self) -> Result<String, VswitchdError> {
        let v = self.call("version", &[]).await?;
        Ok(v.lines().next().unwrap_or_default().to_string())
    }

    /// `ofproto/trace BRIDGE FLOW`, parsed.
    pub async fn trace(&self, bridge: &str, flow: &str) -> Result<Trace, VswitchdError> {
        Ok(parse_trace(
            &self.call("ofproto/trace", &[bridge, flow]).await?,
        ))
    }

    /// Every bridge's ports with their datapath numbers.
    pub async fn datapath_ports(&self) -> Result<Vec<DatapathPort>, VswitchdError> {
        Ok(parse_datapath_ports(&self.call("dpif/show", &[]).await?))
    }
}

/// Sends one request and reads until a whole JSON answer arrived.
async fn exchange(path: &Path, request: String) -> std::io::Result<serde_json::Value> {
    let mut s = tokio::net::UnixStream::connect(path).await?;
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed without an answer"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice(&buf) {
            return Ok(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: &str = r#"Flow: tcp,in_port=1,vlan_tci=0x0000,dl_src=02:42:0a:f0:00:02

bridge("qlbd705a38e")
---------------------
 0. ip,in_port=1,dl_src=02:42:0a:f0:00:02,nw_src=10.240.0.2, priority 100, cookie 0x2d98e8e430a941a
    goto_table:5
 5. priority 0, cookie 0x1151135d705a38e
    goto_table:10
35. priority 0, cookie 0x12ba356d705a38e
    NORMAL
     -> no learned MAC for destination, flooding

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,in_port=1
Datapath actions: 1,4
"#;

    #[test]
    fn a_trace_becomes_steps_and_its_datapath_actions() {
        let t = parse_trace(ALLOWED);
        assert_eq!(t.datapath_actions, "1,4");
        assert_eq!(t.steps.len(), 3);
        assert_eq!(t.steps[0].table, 0);
        assert_eq!(t.steps[0].priority, 100);
        assert_eq!(t.steps[0].cookie, 0x02d9_8e8e_430a_941a);
        assert_eq!(t.steps[0].bridge, "qlbd705a38e");
        assert_eq!(t.steps[2].table, 35);
        assert_eq!(
            t.steps[2].actions,
            ["NORMAL", "-> no learned MAC for destination, flooding"]
        );
    }

    #[test]
    fn datapath_ports_name_their_interfaces() {
        let text = "netdev@ovs-netdev: hit:0 missed:0\n  qlbd705a38e:\n    qlbd705a38e 65534/1: (tap)\n    qlv21191981d6d 2/4: (system)\n";
        let ports = parse_datapath_ports(text);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].name, "qlbd705a38e");
        assert_eq!(ports[0].number, 1);
        assert_eq!(ports[1].bridge, "qlbd705a38e");
        assert_eq!(ports[1].name, "qlv21191981d6d");
        assert_eq!(ports[1].number, 4);
    }
}
