//! [`FlowProgrammer`] running `ovs-ofctl`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{Flow, FlowError, FlowProgrammer};

/// Runs `ovs-ofctl -O OpenFlow15`.
pub struct OfctlFlows {
    /// Directory of the bridges' `<bridge>.mgmt` sockets; `None` = ovs-ofctl's default.
    pub rundir: Option<PathBuf>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl OfctlFlows {
    fn target(&self, bridge: &str) -> String {
        match &self.rundir {
            Some(d) => format!("unix:{}/{bridge}.mgmt", d.display()),
            None => bridge.to_string(),
        }
    }

    async fn run(
        &self,
        op: &'static str,
        bridge: &str,
        args: &[&str],
        stdin: Option<String>,
    ) -> Result<String, FlowError> {
        let spawn = |reason: String| FlowError::Spawn {
            op,
            bridge: bridge.to_string(),
            reason,
        };
        let mut child = Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow15"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| spawn(e.to_string()))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|e| spawn(e.to_string()))?;
        }
        let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| spawn(format!("no answer within {} s", TIMEOUT.as_secs())))?
            .map_err(|e| spawn(e.to_string()))?;
        if !out.status.success() {
            return Err(FlowError::Ofctl {
                op,
                bridge: bridge.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
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
                &["--no-stats", "dump-flows", &target],
                None,
            )
            .await?;
        Ok(out
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
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
            .ok_or_else(|| FlowError::Ofctl {
                op: "dump-aggregate",
                bridge: bridge.to_string(),
                stderr: format!("unexpected output {out:?}"),
            })
    }
}
