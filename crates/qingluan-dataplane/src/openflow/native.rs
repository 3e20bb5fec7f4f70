//! [`FlowProgrammer`] over our own OpenFlow channel: one connection per bridge, kept open.
//!
//! Each bridge has a slot holding its connection; an operation takes the slot (operations
//! on one bridge run one at a time, bridges independently), connects if needed, and runs
//! within a time limit. A connection that broke (ovs-vswitchd restarted, the bridge was
//! re-created) is dropped and the operation tried once more on a new one: every operation is
//! idempotent, and a bundle that was never committed is discarded by the switch when its
//! connection closes. Nothing here spawns a process or a task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::channel::{Channel, Failure};
use super::{Flow, FlowError, FlowProgrammer, FlowStats, Meter, PortStats};

/// How long one operation may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where ovs-vswitchd puts its sockets when nothing else is said.
const DEFAULT_RUNDIR: &str = "/var/run/openvswitch";

type Slot = Arc<tokio::sync::Mutex<Option<Channel>>>;

/// OpenFlow over the bridges' `<rundir>/<bridge>.mgmt` sockets.
pub struct NativeFlows {
    rundir: PathBuf,
    slots: Mutex<HashMap<String, Slot>>,
}

/// One operation.
enum Op<'a> {
    Replace(&'a [Flow]),
    Stats(u64, u64),
    Ports,
    Count(u64, u64),
    SetMeter(Meter),
    DeleteMeter(u32),
    Meters,
}

/// Its result.
enum Done {
    Nothing,
    Changed(usize),
    Stats(Vec<FlowStats>),
    Ports(Vec<PortStats>),
    Count(u64),
    Meters(Vec<Meter>),
}

impl Op<'_> {
    fn name(&self) -> &'static str {
        match self {
            Op::Replace(_) => "replace-flows",
            Op::Stats(..) => "flow-stats",
            Op::Ports => "port-stats",
            Op::Count(..) => "flow-count",
            Op::SetMeter(_) => "set-meter",
            Op::DeleteMeter(_) => "delete-meter",
            Op::Meters => "meters",
        }
    }

    async fn run(&self, ch: &mut Channel) -> Result<Done, Failure> {
        Ok(match self {
            Op::Replace(flows) => Done::Changed(ch.replace(flows).await?),
            Op::Stats(c, m) => Done::Stats(ch.stats(*c, *m).await?),
            Op::Ports => Done::Ports(ch.port_stats().await?),
            Op::Count(c, m) => Done::Count(ch.count(*c, *m).await?),
            Op::SetMeter(m) => {
                ch.set_meter(*m).await?;
                Done::Nothing
            }
            Op::DeleteMeter(id) => {
                ch.delete_meter(*id).await?;
                Done::Nothing
            }
            Op::Meters => Done::Meters(ch.meters().await?),
        })
    }
}

impl NativeFlows {
    /// Reaches bridges in `rundir` (a private OVS's `OVS_RUNDIR`), or in
    /// `/var/run/openvswitch` when `None`.
    pub fn new(rundir: Option<PathBuf>) -> NativeFlows {
        NativeFlows {
            rundir: rundir.unwrap_or_else(|| DEFAULT_RUNDIR.into()),
            slots: Mutex::default(),
        }
    }

    fn slot(&self, bridge: &str) -> Slot {
        self.slots
            .lock()
            .expect("slots lock")
            .entry(bridge.to_string())
            .or_default()
            .clone()
    }

    async fn run(&self, bridge: &str, op: Op<'_>) -> Result<Done, FlowError> {
        let name = op.name();
        let path = self.rundir.join(format!("{bridge}.mgmt"));
        let err = |f: Failure| match f {
            Failure::Refused(error) => FlowError::Refused {
                op: name,
                bridge: bridge.into(),
                error,
            },
            Failure::UnknownPort(port) => FlowError::UnknownPort {
                op: name,
                bridge: bridge.into(),
                port,
            },
            Failure::Broken(reason) => FlowError::Channel {
                op: name,
                bridge: bridge.into(),
                reason,
            },
        };
        let timed_out = || FlowError::Timeout {
            op: name,
            bridge: bridge.into(),
            secs: TIMEOUT.as_secs(),
        };
        let slot = self.slot(bridge);
        let mut held = slot.lock().await;
        let mut reused = held.is_some();
        loop {
            let ch = match held.as_mut() {
                Some(ch) => ch,
                None => {
                    let ch = match tokio::time::timeout(TIMEOUT, Channel::connect(&path)).await {
                        Ok(Ok(ch)) => ch,
                        Ok(Err(Failure::Broken(reason))) => {
                            drop(held);
                            self.slots.lock().expect("slots lock").remove(bridge);
                            return Err(FlowError::Connect {
                                bridge: bridge.into(),
                                path: path.display().to_string(),
                                reason,
                            });
                        }
                        Ok(Err(f)) => return Err(err(f)),
                        Err(_) => return Err(timed_out()),
                    };
                    held.insert(ch)
                }
            };
            match tokio::time::timeout(TIMEOUT, op.run(ch)).await {
                Ok(Ok(done)) => return Ok(done),
                Ok(Err(Failure::Broken(reason))) => {
                    *held = None;
                    if !reused {
                        return Err(err(Failure::Broken(reason)));
                    }
                    tracing::debug!(bridge, %reason, "OpenFlow connection broke; reconnecting");
                    reused = false;
                }
                Ok(Err(f)) => return Err(err(f)),
                Err(_) => {
                    *held = None;
                    return Err(timed_out());
                }
            }
        }
    }
}

#[async_trait]
impl FlowProgrammer for NativeFlows {
    async fn replace_flows(&self, bridge: &str, flows: &[Flow]) -> Result<usize, FlowError> {
        match self.run(bridge, Op::Replace(flows)).await? {
            Done::Changed(n) => Ok(n),
            _ => unreachable!("replace-flows answers with the changes"),
        }
    }

    async fn flow_stats(
        &self,
        bridge: &str,
        cookie: u64,
        mask: u64,
    ) -> Result<Vec<FlowStats>, FlowError> {
        match self.run(bridge, Op::Stats(cookie, mask)).await? {
            Done::Stats(s) => Ok(s),
            _ => unreachable!("flow-stats answers with stats"),
        }
    }

    async fn port_stats(&self, bridge: &str) -> Result<Vec<PortStats>, FlowError> {
        match self.run(bridge, Op::Ports).await? {
            Done::Ports(p) => Ok(p),
            _ => unreachable!("port-stats answers with ports"),
        }
    }

    async fn flow_count(&self, bridge: &str, cookie: u64, mask: u64) -> Result<u64, FlowError> {
        match self.run(bridge, Op::Count(cookie, mask)).await? {
            Done::Count(n) => Ok(n),
            _ => unreachable!("flow-count answers with a count"),
        }
    }

    async fn set_meter(&self, bridge: &str, meter: Meter) -> Result<(), FlowError> {
        self.run(bridge, Op::SetMeter(meter)).await.map(|_| ())
    }

    async fn delete_meter(&self, bridge: &str, id: u32) -> Result<(), FlowError> {
        self.run(bridge, Op::DeleteMeter(id)).await.map(|_| ())
    }

    async fn meters(&self, bridge: &str) -> Result<Vec<Meter>, FlowError> {
        match self.run(bridge, Op::Meters).await? {
            Done::Meters(m) => Ok(m),
            _ => unreachable!("meters answers with meters"),
        }
    }
}
