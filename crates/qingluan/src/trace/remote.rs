//! A trace that crosses to another host: the packet leaves this host's overlay bridge through
//! the tunnel (OVS's tunnel port or the VNI's kernel VXLAN device), so the host behind the
//! tunnel traces its arrival on its own overlay bridge, through the same kind of port.
//! Request and answer travel through the cluster store (etcd), the one channel hosts
//! share: the tracing host puts `trace/requests/<host>/<id>` and waits up to 5 s for
//! `trace/answers/<id>`; every host's daemon watches its own requests ([`answer`]). Both keys
//! live on a 30 s lease, so nothing outlives a host that stopped halfway.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use qingluan_core::modes::{tunnel_port, vxlan_device};
use qingluan_store::{Op, WatchEvent};
use serde::{Deserialize, Serialize};

use super::{context, exit, Exit, Hop, Party};
use crate::api::Api;

const REQUESTS: &str = "trace/requests/";
const ANSWERS: &str = "trace/answers/";
/// How long the tracing host waits for the other's answer.
const WAIT: Duration = Duration::from_secs(5);
/// Lease of requests and answers.
const LEASE_SECS: i64 = 30;

/// A packet arriving through the tunnel, as the sending host describes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Arrival {
    /// Request ID.
    pub id: String,
    /// The outer source address: the sending host's tunnel address.
    pub tun_src: IpAddr,
    /// The VNI.
    pub vni: u32,
    /// Inner MACs and addresses.
    pub src_mac: String,
    /// Destination MAC.
    pub dst_mac: String,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// `tcp`, `udp` or `icmp`.
    pub proto: String,
    /// TCP or UDP destination port.
    pub dport: Option<u16>,
    /// The destination's endpoint ID on the receiving host.
    pub endpoint: String,
    /// The source container's name, for reasons.
    pub from_name: String,
}

/// What the receiving host found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    /// Its hops (at `<host>:<bridge>`).
    pub hops: Vec<Hop>,
    /// Whether the packet reached its container.
    pub allowed: bool,
    /// Why not, or where it ended.
    pub reason: String,
}

/// Asks `host` to trace `a`'s arrival; why not when it did not answer within [`WAIT`].
pub async fn ask(api: &Api, host: &str, a: &Arrival) -> Result<Answer, String> {
    let store = &api.store;
    let request = format!("{REQUESTS}{host}/{}", a.id);
    let answer = format!("{ANSWERS}{}", a.id);
    let unreachable =
        |e: qingluan_store::StoreError| format!("the cluster store cannot carry the request ({e})");
    let lease = store.grant(LEASE_SECS).await.map_err(unreachable)?;
    let body = serde_json::to_vec(a).map_err(|e| e.to_string())?;
    store
        .txn(vec![], vec![Op::PutLeased(request.clone(), body, lease)])
        .await
        .map_err(unreachable)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut found = Err(format!(
        "host {host} did not answer within {} s (its daemon down?)",
        WAIT.as_secs()
    ));
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(kv)) = store.get(&answer).await {
            found = serde_json::from_slice(&kv.value)
                .map_err(|e| format!("host {host} answered what this one cannot read ({e})"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = store
        .txn(vec![], vec![Op::Delete(request), Op::Delete(answer)])
        .await;
    found
}

/// Answers the trace requests addressed to this host until aborted.
pub async fn answer(api: Api) {
    let mine = format!("{REQUESTS}{}/", api.driver.state.host);
    loop {
        if let Ok(mut events) = api.store.watch(&mine).await {
            while let Some(e) = events.recv().await {
                let WatchEvent::Put(kv) = e else { continue };
                let Ok(a) = serde_json::from_slice::<Arrival>(&kv.value) else {
                    continue;
                };
                let found = arrive(&api, &a).await;
                let body = serde_json::to_vec(&found).unwrap_or_default();
                if let Ok(lease) = api.store.grant(LEASE_SECS).await {
                    let key = format!("{ANSWERS}{}", a.id);
                    let _ = api
                        .store
                        .txn(vec![], vec![Op::PutLeased(key, body, lease)])
                        .await;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Traces `a` from this host's tunnel port to its container.
async fn arrive(api: &Api, a: &Arrival) -> Answer {
    let refused = |reason: String| Answer {
        hops: Vec::new(),
        allowed: false,
        reason,
    };
    let host = &api.driver.state.host;
    let proto = match a.proto.as_str() {
        "tcp" => "tcp",
        "udp" => "udp",
        _ => "icmp",
    };
    let ctx = match context(api, proto, a.dport).await {
        Ok(c) => c,
        Err(e) => return refused(format!("host {host} cannot trace: {}", e.1)),
    };
    let Some((ep, name)) = ctx.locals.iter().find(|(e, _)| e.id == a.endpoint) else {
        return refused(format!("host {host} has no such endpoint any more"));
    };
    let Some(port) = ctx.port(&ep.veth) else {
        return refused(format!("on host {host}, {name}'s port is on no bridge"));
    };
    let settings = &api.driver.state.settings;
    let me = settings
        .underlay_ip
        .map(|i| i.to_string())
        .unwrap_or_default();
    // Through the VNI's kernel VXLAN device when there is one, else OVS's tunnel port.
    let device = vxlan_device(&settings.prefix, a.vni);
    let flow = if ctx.port(&device).is_some() {
        ctx.flow(&device, &a.src_mac, &a.dst_mac, a.src, a.dst)
    } else {
        format!(
            "tun_id={},tun_src={},tun_dst={me},{}",
            a.vni,
            a.tun_src,
            ctx.flow(
                &tunnel_port(&settings.prefix),
                &a.src_mac,
                &a.dst_mac,
                a.src,
                a.dst
            )
        )
    };
    let t = match api.vswitchd.trace(&port.bridge, &flow).await {
        Ok(t) => t,
        Err(e) => return refused(format!("host {host}: {e}")),
    };
    let mut hops = ctx.flow_hops(&t);
    for h in &mut hops {
        h.at = format!("{host}:{}", h.at);
    }
    let to = Party::Local(ep.clone(), name.clone());
    let (allowed, reason) = match exit(&ctx, &t, "", &to, &a.from_name, a.src, a.src) {
        Exit::Delivered(d) => (true, format!("delivered on host {host} {d}")),
        Exit::Dropped(r) => (false, format!("on host {host}: {r}")),
        _ => (false, format!("host {host} did not deliver it to {name}")),
    };
    Answer {
        hops,
        allowed,
        reason,
    }
}
