//! [`FlowProgrammer`] running `ovs-ofctl -O OpenFlow15` as a subprocess.
//!
//! Each call runs one ovs-ofctl with a time limit (the process is killed when it is
//! exceeded); the flow text goes to its stdin while its output is read, so neither side can
//! block the other. Failures carry ovs-ofctl's stderr.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{Flow, FlowError, FlowProgrammer};

/// How long one ovs-ofctl run may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `ovs-ofctl -O OpenFlow15`.
pub struct OfctlFlows {
    /// Directory of the bridges' `<bridge>.mgmt` sockets (a private OVS's `OVS_RUNDIR`);
    /// `None` = ovs-ofctl's default (`$OVS_RUNDIR` or `/run/openvswitch`).
    pub rundir: Option<PathBuf>,
}

impl OfctlFlows {
    /// Where ovs-ofctl reaches `bridge`.
    fn target(&self, bridge: &str) -> String {
        match &self.rundir {
            Some(d) => format!("unix:{}/{bridge}.mgmt", d.display()),
            None => bridge.to_string(),
        }
    }

    /// Runs ovs-ofctl `op` on `bridge` with `args`, feeding `stdin`; returns its stdout.
    async fn run(
        &self,
        op: &'static str,
        bridge: &str,
        args: &[&str],
        stdin: Option<String>,
    ) -> Result<String, FlowError> {
        let spawn_err = |reason: String| FlowError::Spawn {
            op,
            bridge: bridge.to_string(),
            reason,
        };
        let mut cmd = Command::new("ovs-ofctl");
        cmd.args(["-O", "OpenFlow15"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(d) = &self.rundir {
            cmd.env("OVS_RUNDIR", d);
        }
        let mut child = cmd.spawn().map_err(|e| spawn_err(e.to_string()))?;
        let pipe = child.stdin.take();
        let feed = async move {
            if let (Some(text), Some(mut pipe)) = (stdin, pipe) {
                // A write error means ovs-ofctl exited early; its stderr says why.
                let _ = pipe.write_all(text.as_bytes()).await;
            }
        };
        let run = async {
            let ((), out) = tokio::join!(feed, child.wait_with_output());
            out
        };
        let out = tokio::time::timeout(TIMEOUT, run)
            .await
            .map_err(|_| FlowError::Timeout {
                op,
                bridge: bridge.to_string(),
                secs: TIMEOUT.as_secs(),
            })?
            .map_err(|e| spawn_err(e.to_string()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(FlowError::Ofctl {
                op,
                bridge: bridge.to_string(),
                stderr: if stderr.is_empty() {
                    out.status.to_string()
                } else {
                    stderr
                },
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[async_trait]
impl FlowProgrammer for OfctlFlows {
    async fn replace_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), FlowError> {
        let text: String = flows.iter().map(|f| f.render() + "\n").collect();
        let target = self.target(bridge);
        self.run(
            "replace-flows",
            bridge,
            &["--bundle", "replace-flows", &target, "-"],
            Some(text),
        )
        .await
        .map(|_| ())
    }

    async fn dump_flows(&self, bridge: &str) -> Result<Vec<String>, FlowError> {
        let target = self.target(bridge);
        let out = self
            .run(
                "dump-flows",
                bridge,
                &["--no-stats", "--names", "dump-flows", &target],
                None,
            )
            .await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("OFPST_") && !l.starts_with("NXST_"))
            .map(String::from)
            .collect())
    }

    async fn flow_count(&self, bridge: &str, cookie: u64, mask: u64) -> Result<u64, FlowError> {
        let target = self.target(bridge);
        let filter = format!("cookie={cookie:#x}/{mask:#x}");
        let out = self
            .run(
                "dump-aggregate",
                bridge,
                &["dump-aggregate", &target, &filter],
                None,
            )
            .await?;
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("flow_count="))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| FlowError::Output {
                op: "dump-aggregate",
                bridge: bridge.to_string(),
                output: out.trim().to_string(),
            })
    }
}
