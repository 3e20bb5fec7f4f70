//! `qingluan trace FROM TO`: the path a described packet takes, in the pipeline's words
//! (the route `/v1/trace` and the command).
//!
//! The daemon resolves FROM and TO (container names or ID prefixes, or IPv4 addresses) and
//! builds the packet. From a container, ovs-vswitchd traces it through the flow tables of
//! the bridge holding the container's port (`ofproto/trace`); every flow it meets is a hop
//! named by its stage and feature (an ACL rule by its ID, the QoS meter by number). A packet
//! the bridge hands to its gateway port goes on through netfilter as qingluan's own typed
//! rules decide it (isolation between networks, connections, published ports; dockerd's
//! chains are not evaluated), then, towards a container of another network here, through
//! that bridge's tables. From an address outside, the packet enters netfilter first (a
//! published port's DNAT). Towards another host the trace ends at the tunnel, naming the
//! host: that host's pipeline is not traced from here. The last hop gives the verdict, and a
//! drop its reason.

use std::net::Ipv4Addr;

use axum::extract::State;
use axum::Json;
use qingluan_core::cluster::ClusterEndpoint;
use qingluan_core::model::{head, Endpoint, Mode, Network};
use qingluan_core::pipeline::{Feature, Stage, OWNER_MASK};
use qingluan_dataplane::netfilter::{Cond, Iface, Packet, Rule, Ruleset, Verdict};
use qingluan_dataplane::vswitchd::{DatapathPort, Trace};
use serde::{Deserialize, Serialize};

use crate::api::{bad, Api, ApiError};

pub mod remote;
use crate::cli::Client;

/// A `trace` request, as typed (also the command's arguments).
#[derive(Clone, Debug, Default, Serialize, Deserialize, clap::Args)]
pub struct TraceRequest {
    /// Source: a container (name or ID prefix) or an IPv4 address.
    pub from: String,
    /// Destination: a container or an IPv4 address.
    pub to: String,
    /// A TCP SYN to this port.
    #[arg(long, conflicts_with_all = ["udp", "icmp"])]
    pub tcp: Option<u16>,
    /// A UDP datagram to this port.
    #[arg(long, conflicts_with = "icmp")]
    pub udp: Option<u16>,
    /// An ICMP echo request (the default).
    #[arg(long)]
    pub icmp: bool,
    /// The source address the packet carries instead of FROM's (e.g. a forged one).
    #[arg(long)]
    pub src_ip: Option<Ipv4Addr>,
}

/// One step of the path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hop {
    /// Where: a bridge, `netfilter` or `tunnel`.
    pub at: String,
    /// The pipeline stage (flows) or chain (netfilter).
    pub stage: String,
    /// The flow's table and priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u8>,
    /// The flow's priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// The feature that owns the flow, or the rule that decided.
    pub feature: String,
    /// What happened.
    pub detail: String,
}

/// The whole answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceReport {
    /// The packet, in words.
    pub packet: String,
    /// The path.
    pub hops: Vec<Hop>,
    /// `allowed`, `dropped`, or `unknown` (the host behind a tunnel did not answer).
    pub verdict: String,
    /// Why it was dropped, or where it ends when allowed.
    pub reason: String,
}

/// A party of the trace.
#[derive(Clone, Debug)]
enum Party {
    /// A container of this host, by its endpoint.
    Local(Endpoint, String),
    /// A container of another host.
    Remote(ClusterEndpoint, String),
    /// An address that is no container.
    Address(Ipv4Addr),
}

impl Party {
    fn ip(&self) -> Ipv4Addr {
        match self {
            Party::Local(e, _) => e.address.addr(),
            Party::Remote(e, _) => e.address.addr(),
            Party::Address(a) => *a,
        }
    }

    fn network(&self) -> Option<&str> {
        match self {
            Party::Local(e, _) => Some(&e.network_id),
            Party::Remote(e, _) => Some(&e.network_id),
            Party::Address(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Party::Local(e, n) => format!("{n} ({})", e.address.addr()),
            Party::Remote(e, n) => format!("{n} ({}, on host {})", e.address.addr(), e.host),
            Party::Address(a) => a.to_string(),
        }
    }
}

const ALLOWED: &str = "allowed";
const DROPPED: &str = "dropped";
const UNKNOWN: &str = "unknown";

/// What the trace works with.
struct Context {
    networks: Vec<Network>,
    locals: Vec<(Endpoint, String)>,
    remotes: Vec<(ClusterEndpoint, String)>,
    ports: Vec<DatapathPort>,
    hosts: Vec<(String, Option<std::net::IpAddr>)>,
    /// The start of our kernel VXLAN devices' names (`[cluster] overlay = "kernel"`).
    vxlan_prefix: String,
    proto: &'static str,
    dport: Option<u16>,
}

impl Context {
    fn network(&self, id: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.id == id)
    }

    /// Every party `s` names: a container's endpoints, or an address.
    fn resolve(&self, s: &str) -> Result<Vec<Party>, ApiError> {
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            if let Some((e, n)) = self.locals.iter().find(|(e, _)| e.address.addr() == ip) {
                return Ok(vec![Party::Local(e.clone(), n.clone())]);
            }
            if let Some((e, n)) = self.remotes.iter().find(|(e, _)| e.address.addr() == ip) {
                return Ok(vec![Party::Remote(e.clone(), n.clone())]);
            }
            return Ok(vec![Party::Address(ip)]);
        }
        let named =
            |name: &str, id: Option<&str>| name == s || id.is_some_and(|i| i.starts_with(s));
        let mut found: Vec<Party> = self
            .locals
            .iter()
            .filter(|(e, n)| named(n, e.container.as_ref().map(|c| c.id.as_str())))
            .map(|(e, n)| Party::Local(e.clone(), n.clone()))
            .collect();
        found.extend(
            self.remotes
                .iter()
                .filter(|(e, n)| named(n, e.container.as_ref().map(|c| c.id.as_str())))
                .map(|(e, n)| Party::Remote(e.clone(), n.clone())),
        );
        if found.is_empty() {
            return Err(bad(format!(
                "{s:?} is neither an IPv4 address nor a container on a qingluan network"
            )));
        }
        Ok(found)
    }

    fn port(&self, name: &str) -> Option<&DatapathPort> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// The routed network of this host whose subnet holds `ip`, with its gateway interface.
    fn routed_network(&self, ip: Ipv4Addr) -> Option<(&Network, String)> {
        self.networks
            .iter()
            .filter(|n| n.subnet.contains(&ip))
            .find_map(|n| n.host_gateway().map(|g| (n, g)))
    }

    /// The ofproto/trace flow of a packet entering `in_port`.
    fn flow(
        &self,
        in_port: &str,
        src_mac: &str,
        dst_mac: &str,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> String {
        let l4 = match (self.proto, self.dport) {
            ("tcp", Some(p)) => format!("tcp,tp_src=40000,tp_dst={p},tcp_flags=syn,"),
            ("udp", Some(p)) => format!("udp,tp_src=40000,tp_dst={p},"),
            _ => "icmp,icmp_type=8,icmp_code=0,".into(),
        };
        format!("{l4}in_port={in_port},dl_src={src_mac},dl_dst={dst_mac},nw_src={src},nw_dst={dst},nw_ttl=64")
    }

    /// The hops of an ofproto/trace.
    fn flow_hops(&self, t: &Trace) -> Vec<Hop> {
        t.steps
            .iter()
            .map(|s| {
                let feature = Feature::of_cookie(s.cookie)
                    .map(|f| match f {
                        Feature::Acl => format!("ACL rule {:08x}", s.cookie & OWNER_MASK),
                        f if s.cookie & OWNER_MASK != 0 => {
                            format!("{} {:08x}", f.describe(), s.cookie & OWNER_MASK)
                        }
                        f => f.describe().to_string(),
                    })
                    .unwrap_or_else(|| "-".into());
                Hop {
                    at: s.bridge.clone(),
                    stage: Stage::at_table(s.table)
                        .map(Stage::name)
                        .unwrap_or("?")
                        .to_string(),
                    table: Some(s.table),
                    priority: Some(s.priority),
                    feature,
                    detail: s.actions.join("; "),
                }
            })
            .collect()
    }

    /// The host behind a tunnel endpoint address.
    fn host_at(&self, ip: &str) -> String {
        self.hosts
            .iter()
            .find(|(_, u)| u.map(|u| u.to_string()).as_deref() == Some(ip))
            .map(|(h, _)| h.clone())
            .unwrap_or_else(|| "an unknown host".into())
    }
}

/// Where a bridge sent the packet.
enum Exit {
    Dropped(String),
    Delivered(String),
    Gateway,
    Tunnel(String, String),
    Out(Vec<String>),
}

/// Reads the datapath actions of a bridge's trace: who got the packet.
fn exit(
    ctx: &Context,
    t: &Trace,
    gateway: &str,
    to: &Party,
    from_name: &str,
    src: Ipv4Addr,
    from_ip: Ipv4Addr,
) -> Exit {
    let actions = t.datapath_actions.as_str();
    if actions.is_empty() || actions == "drop" {
        let last = t.steps.last();
        let feature = last.and_then(|s| Feature::of_cookie(s.cookie));
        let stage = last
            .and_then(|s| Stage::at_table(s.table))
            .map(Stage::name)
            .unwrap_or("?");
        let reason = match feature {
            Some(Feature::Endpoint) if src != from_ip => {
                format!("spoof guard: source {src} is not {from_name}'s address")
            }
            Some(Feature::Endpoint) => format!("spoof guard: {from_name} may not send this"),
            Some(Feature::Acl) => format!(
                "ACL rule {:08x}",
                last.map(|s| s.cookie & OWNER_MASK).unwrap_or_default()
            ),
            Some(Feature::AclBase) => "ACL: the network's default or an invalid connection".into(),
            Some(f) => format!("{stage}: {}", f.describe()),
            None => format!("{stage}: no flow takes it"),
        };
        return Exit::Dropped(reason);
    }
    if let Some(dst) = tunnel_destination(actions) {
        return Exit::Tunnel(ctx.host_at(&dst), dst);
    }
    let outputs: Vec<String> = actions
        .split(',')
        .filter_map(|a| a.trim().parse::<u32>().ok())
        .filter_map(|n| {
            ctx.ports
                .iter()
                .find(|p| p.number == n)
                .map(|p| p.name.clone())
        })
        .collect();
    match to {
        Party::Local(e, n) if outputs.contains(&e.veth) => {
            return Exit::Delivered(format!("to {n} on {}", e.veth));
        }
        // Into a kernel VXLAN device, whose forwarding entries send it to the MAC's host.
        Party::Remote(e, _) if outputs.iter().any(|o| o.starts_with(&ctx.vxlan_prefix)) => {
            let ip = ctx
                .hosts
                .iter()
                .find(|(h, _)| *h == e.host)
                .and_then(|(_, u)| *u)
                .map(|u| u.to_string())
                .unwrap_or_default();
            return Exit::Tunnel(e.host.clone(), ip);
        }
        _ => {}
    }
    if outputs.iter().any(|o| o == gateway) {
        return Exit::Gateway;
    }
    Exit::Out(outputs)
}

/// The outer destination of a tunnelled packet: `tnl_push(...ipv4(src=...,dst=D,...)...)`
/// on the userspace datapath, `set(tunnel(tun_id=...,dst=D,...))` on the kernel one.
fn tunnel_destination(actions: &str) -> Option<String> {
    let header = if let Some(i) = actions.find("tnl_push(") {
        actions[i..].split("ipv4(").nth(1)?
    } else {
        &actions[actions.find("set(tunnel(")?..]
    };
    let dst = header.split("dst=").nth(1)?;
    Some(dst.split([',', ')']).next().unwrap_or_default().to_string())
}

fn mac_of(iface: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|_| "ff:ff:ff:ff:ff:ff".into())
}

fn local_address(ip: Ipv4Addr) -> bool {
    nix::ifaddrs::getifaddrs().is_ok_and(|mut a| {
        a.any(|x| x.address.and_then(|s| s.as_sockaddr_in().map(|s| s.ip())) == Some(ip))
    })
}

/// The interface the host routes `ip` through.
fn route_iface(ip: Ipv4Addr) -> String {
    crate::routes::iface_for(ip).unwrap_or_else(|| "?".into())
}

const ISOLATION: &str = "isolation between networks";

/// What a forward rule of the policy (`policy.rs`) is for.
fn purpose(r: &Rule) -> &'static str {
    let has = |f: fn(&Cond) -> bool| r.when.iter().any(f);
    match r.then {
        Verdict::Accept if has(|c| matches!(c, Cond::Dnatted)) => "a published port",
        Verdict::Accept if has(|c| matches!(c, Cond::Established)) => {
            "a reply of an open connection"
        }
        Verdict::Accept => "connected networks (qingluan connect)",
        Verdict::Drop if has(|c| matches!(c, Cond::Oif(Iface::Matches(_)))) => ISOLATION,
        Verdict::Drop if has(|c| matches!(c, Cond::Iif(Iface::IsNot(_)))) => {
            "closed to the outside (a nat network lets in only published ports and replies)"
        }
        Verdict::Drop => "a network without a way out (nonat or --internal)",
        Verdict::Masquerade | Verdict::Dnat(..) => "address translation",
    }
}

/// The trace itself.
struct Run<'a> {
    ctx: &'a Context,
    hops: Vec<Hop>,
    /// qingluan's netfilter rules, read when the packet first reaches netfilter (reading
    /// them builds the desired state under the reconcile lock).
    rules: Option<Ruleset>,
}

impl Run<'_> {
    async fn rules(&mut self, api: &Api) -> Result<Ruleset, String> {
        if self.rules.is_none() {
            self.rules = Some(
                api.driver
                    .state
                    .ruleset()
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(self.rules.clone().unwrap_or_default())
    }

    fn netfilter(&mut self, chain: &str, rule: String, detail: String) {
        self.hops.push(Hop {
            at: "netfilter".into(),
            stage: chain.into(),
            table: None,
            priority: None,
            feature: rule,
            detail,
        });
    }

    /// A packet routed by the host: netfilter's forward (or input) decision, then the
    /// destination network's bridge. Returns the verdict and its reason.
    async fn routed(
        &mut self,
        api: &Api,
        iif: &str,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        dnatted: bool,
        to: &Party,
    ) -> (&'static str, String) {
        let ctx = self.ctx;
        let rules = match self.rules(api).await {
            Ok(r) => r,
            Err(e) => {
                return (
                    UNKNOWN,
                    format!("cannot read qingluan's netfilter rules: {e}"),
                )
            }
        };
        if local_address(dst) && !dnatted {
            let p = Packet {
                iif: iif.into(),
                src: Some(src),
                dst: Some(dst),
                proto: ctx.proto.into(),
                dport: ctx.dport,
                ..Packet::default()
            };
            return match rules.first_match(&rules.input, &p) {
                Some((i, r)) if r.then == Verdict::Drop => {
                    self.netfilter(
                        "input",
                        format!("rule {i}: only the network's own gateway"),
                        "dropped".into(),
                    );
                    (
                        DROPPED,
                        format!("netfilter input: {iif} may reach only its own gateway"),
                    )
                }
                _ => {
                    self.netfilter("input", "-".into(), "accepted: to this host".into());
                    (ALLOWED, format!("delivered to this host ({dst})"))
                }
            };
        }
        let dest = ctx.routed_network(dst);
        let oif = dest
            .as_ref()
            .map(|(_, g)| g.clone())
            .unwrap_or_else(|| route_iface(dst));
        let p = Packet {
            iif: iif.into(),
            oif: Some(oif.clone()),
            src: Some(src),
            dst: Some(dst),
            proto: ctx.proto.into(),
            dport: ctx.dport,
            dnatted,
            ..Packet::default()
        };
        match rules.first_match(&rules.forward, &p) {
            Some((i, r)) if r.then == Verdict::Drop => {
                // Between two of our bridges every drop is isolation, whichever network's
                // rule comes first.
                let ours = |i: &str| i.starts_with(rules.bridge_wildcard.trim_end_matches('+'));
                let why = if ours(iif) && ours(&oif) && iif != oif {
                    ISOLATION
                } else {
                    purpose(r)
                };
                self.netfilter(
                    "forward",
                    format!("rule {i}: {why}"),
                    format!("{iif} → {oif}: dropped"),
                );
                return match why {
                    ISOLATION => (
                        DROPPED,
                        format!("isolation: {iif} may not forward to {oif}"),
                    ),
                    _ => (DROPPED, format!("{why} ({iif} → {oif})")),
                };
            }
            Some((i, r)) => self.netfilter(
                "forward",
                format!("rule {i}: {}", purpose(r)),
                format!("{iif} → {oif}: accepted"),
            ),
            None => self.netfilter(
                "forward",
                "-".into(),
                format!("{iif} → {oif}: no qingluan rule; dockerd's chains decide"),
            ),
        }
        let mut src_seen = src;
        if let Some((i, r)) = rules.first_match(&rules.postrouting, &p) {
            if r.then == Verdict::Masquerade {
                self.netfilter(
                    "postrouting",
                    format!("rule {i}"),
                    format!("masqueraded to {oif}'s address"),
                );
                if let Some((n, _)) = &dest {
                    src_seen = n.gateway;
                }
            }
        }
        let (Some((net, gw)), Party::Local(e, name)) = (dest, to) else {
            return (ALLOWED, format!("leaves this host through {oif}"));
        };
        if e.network_id != net.id {
            return (ALLOWED, format!("leaves this host through {oif}"));
        }
        let Some(port) = ctx.port(&gw) else {
            return (DROPPED, format!("{gw} is not on any bridge"));
        };
        // In at the gateway's own port: the bridge's LOCAL port, or the `nat=true` gateway
        // port of a vxlan network on the overlay bridge.
        let flow = ctx.flow(&gw, &mac_of(&gw), &e.mac.to_string(), src_seen, dst);
        let t = match api.vswitchd.trace(&port.bridge, &flow).await {
            Ok(t) => t,
            Err(e) => return (DROPPED, e.to_string()),
        };
        self.hops.extend(ctx.flow_hops(&t));
        match exit(ctx, &t, &gw, to, name, src_seen, src_seen) {
            Exit::Delivered(d) => (ALLOWED, format!("delivered {d}")),
            Exit::Dropped(r) => (DROPPED, r),
            _ => (
                DROPPED,
                format!("{} did not deliver it to {name}", port.bridge),
            ),
        }
    }
}

/// A request ID that no other trace in flight shares.
fn rand_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    qingluan_dataplane::fnv1a(&t.to_le_bytes()) ^ u64::from(std::process::id())
}

fn pick(froms: Vec<Party>, tos: Vec<Party>) -> (Party, Party) {
    for f in &froms {
        for t in &tos {
            if f.network().is_some() && f.network() == t.network() {
                return (f.clone(), t.clone());
            }
        }
    }
    (froms[0].clone(), tos[0].clone())
}

/// What a trace on this host needs to know, read once per trace.
async fn context(api: &Api, proto: &'static str, dport: Option<u16>) -> Result<Context, ApiError> {
    let internal = |e: &dyn std::fmt::Display| {
        ApiError(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    let state = &api.driver.state;
    let names = api.names.read().await.containers.clone();
    let name_of = |e: &Endpoint| {
        e.container
            .as_ref()
            .map(|c| c.name.clone())
            .or_else(|| names.get(&e.id).map(|c| c.name.clone()))
            .unwrap_or_else(|| head(&e.id, 12).to_string())
    };
    let locals: Vec<(Endpoint, String)> = state
        .endpoints()
        .await
        .map_err(|e| internal(&e))?
        .into_iter()
        .map(|e| {
            let n = name_of(&e);
            (e, n)
        })
        .collect();
    let remotes = api
        .driver
        .agent
        .cluster_endpoints()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.host != state.host)
        .map(|e| {
            let n = e
                .container
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_else(|| head(&e.id, 12).to_string());
            (e, n)
        })
        .collect();
    let hosts = qingluan_core::membership::hosts(&*api.store)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|h| (h.host.id, h.host.underlay_ip))
        .collect();
    Ok(Context {
        networks: state.networks().await.map_err(|e| internal(&e))?,
        locals,
        remotes,
        ports: api
            .vswitchd
            .datapath_ports()
            .await
            .map_err(|e| internal(&e))?,
        hosts,
        vxlan_prefix: qingluan_core::modes::vxlan_prefix(&state.settings.prefix),
        proto,
        dport,
    })
}

/// `POST /v1/trace`.
pub async fn trace(
    State(api): State<Api>,
    Json(r): Json<TraceRequest>,
) -> Result<Json<TraceReport>, ApiError> {
    let internal = |e: &dyn std::fmt::Display| {
        ApiError(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    let (proto, dport) = match (r.tcp, r.udp) {
        (Some(p), _) => ("tcp", Some(p)),
        (_, Some(p)) => ("udp", Some(p)),
        _ => ("icmp", None),
    };
    if dport == Some(0) {
        return Err(bad("port 0 cannot be traced: give 1-65535"));
    }
    let ctx = context(&api, proto, dport).await?;
    let (from, to) = pick(ctx.resolve(&r.from)?, ctx.resolve(&r.to)?);
    let src = r.src_ip.unwrap_or_else(|| from.ip());
    let dst = to.ip();
    let l4 = dport.map(|p| format!("/{p}")).unwrap_or_default();
    let packet = format!(
        "{proto}{l4} {src} → {dst}: from {} to {}",
        from.describe(),
        to.describe()
    );
    let mut run = Run {
        ctx: &ctx,
        hops: Vec::new(),
        rules: None,
    };
    let (verdict, reason) = match &from {
        Party::Remote(e, n) => {
            return Err(bad(format!("{n} runs on host {}: trace it there", e.host)))
        }
        Party::Local(e, name) => {
            let net = ctx
                .network(&e.network_id)
                .ok_or_else(|| bad(format!("{name}'s network is gone")))?;
            let port = ctx
                .port(&e.veth)
                .ok_or_else(|| bad(format!("{name}'s port {} is on no bridge", e.veth)))?;
            let gw = net.host_gateway();
            let gw_mac = || gw.as_deref().map_or("ff:ff:ff:ff:ff:ff".into(), mac_of);
            let dst_mac = match &to {
                _ if !net.subnet.contains(&dst) || dst == net.gateway => gw_mac(),
                Party::Local(d, _) => d.mac.to_string(),
                Party::Remote(d, _) => d.mac.to_string(),
                // Flat and vlan subnets hold physical hosts too: the frame floods to them.
                Party::Address(_) if matches!(net.mode, Mode::Flat | Mode::Vlan) => {
                    "ff:ff:ff:ff:ff:ff".into()
                }
                Party::Address(_) => {
                    return Ok(Json(TraceReport {
                        packet,
                        hops: Vec::new(),
                        verdict: DROPPED.into(),
                        reason: format!("no container has {dst} on {name}'s network"),
                    }))
                }
            };
            let flow = ctx.flow(&e.veth, &e.mac.to_string(), &dst_mac, src, dst);
            let t = api
                .vswitchd
                .trace(&port.bridge, &flow)
                .await
                .map_err(|e| internal(&e))?;
            run.hops.extend(ctx.flow_hops(&t));
            let gw = gw.unwrap_or_default();
            match exit(&ctx, &t, &gw, &to, name, src, e.address.addr()) {
                Exit::Dropped(r) => (DROPPED, r),
                Exit::Delivered(d) => (ALLOWED, format!("delivered {d}")),
                Exit::Tunnel(host, ip) => {
                    run.hops.push(Hop {
                        at: "tunnel".into(),
                        stage: "L2_FORWARD".into(),
                        table: None,
                        priority: None,
                        feature: "overlay".into(),
                        detail: format!(
                            "VXLAN {} to host {host} ({ip})",
                            net.vni.unwrap_or_default()
                        ),
                    });
                    let Party::Remote(d, _) = &to else {
                        return Ok(Json(TraceReport {
                            packet,
                            hops: run.hops,
                            verdict: UNKNOWN.into(),
                            reason: format!(
                                "sent through the tunnel to host {host} ({ip}); no container \
                                 known there has {dst}, so that host was not asked"
                            ),
                        }));
                    };
                    let arrival = remote::Arrival {
                        id: format!("{:016x}", rand_id()),
                        tun_src: api
                            .driver
                            .state
                            .settings
                            .underlay_ip
                            .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                        vni: net.vni.unwrap_or_default(),
                        src_mac: e.mac.to_string(),
                        dst_mac: dst_mac.clone(),
                        src,
                        dst,
                        proto: proto.into(),
                        dport,
                        endpoint: d.id.clone(),
                        from_name: name.clone(),
                    };
                    match remote::ask(&api, &d.host, &arrival).await {
                        Ok(a) => {
                            run.hops.extend(a.hops);
                            (if a.allowed { ALLOWED } else { DROPPED }, a.reason)
                        }
                        Err(why) => (
                            UNKNOWN,
                            format!("sent through the tunnel to host {host} ({ip}); {why}"),
                        ),
                    }
                }
                Exit::Gateway => run.routed(&api, &gw, src, dst, false, &to).await,
                Exit::Out(o) if o.is_empty() => (DROPPED, "no port takes it".into()),
                Exit::Out(o) => (ALLOWED, format!("out of {}", o.join(", "))),
            }
        }
        Party::Address(a) => {
            let iif = route_iface(*a);
            let mut dst = dst;
            let mut dnatted = false;
            let mut to = to.clone();
            if local_address(dst) {
                let p = Packet {
                    iif: iif.clone(),
                    src: Some(src),
                    dst: Some(dst),
                    proto: proto.into(),
                    dport,
                    local_daddr: true,
                    ..Packet::default()
                };
                let rules = run.rules(&api).await.map_err(|e| internal(&e))?;
                match rules.first_match(&rules.dnat, &p) {
                    Some((i, rule)) => {
                        if let Verdict::Dnat(ip, port) = rule.then {
                            run.netfilter(
                                "prerouting",
                                format!("rule {i}"),
                                format!(
                                    "published {proto}/{} → {ip}:{port}",
                                    dport.unwrap_or_default()
                                ),
                            );
                            dst = ip;
                            dnatted = true;
                            to = ctx.resolve(&ip.to_string())?.remove(0);
                        }
                    }
                    None => {
                        run.netfilter("prerouting", "-".into(), "no published port matches".into());
                    }
                }
            }
            if !dnatted && local_address(dst) {
                (DROPPED, format!("no container publishes {proto}{l4} on {dst}; the host itself answers or refuses"))
            } else {
                run.routed(&api, &iif, src, dst, dnatted, &to).await
            }
        }
    };
    Ok(Json(TraceReport {
        packet,
        hops: run.hops,
        verdict: verdict.into(),
        reason,
    }))
}

impl Client {
    /// `qingluan trace`.
    pub async fn trace(&self, r: &TraceRequest) -> anyhow::Result<()> {
        let body = self
            .call("POST", "/v1/trace", Some(serde_json::to_vec(r)?))
            .await?;
        if self.json {
            self.print_json(&serde_json::from_slice(&body)?);
            return Ok(());
        }
        let t: TraceReport = serde_json::from_slice(&body)?;
        println!("{}", t.packet);
        for h in &t.hops {
            let at = match (h.table, h.priority) {
                (Some(t), Some(p)) => format!("table {t:<2} prio {p:<4}"),
                _ => String::new(),
            };
            println!(
                "  {:<14} {:<12} {:<18} {:<34} {}",
                h.at, h.stage, at, h.feature, h.detail
            );
        }
        match t.verdict.as_str() {
            "allowed" => println!("verdict: allowed ({})", t.reason),
            "unknown" => println!("verdict: unknown ({})", t.reason),
            _ => println!("verdict: dropped ({})", t.reason),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use qingluan_core::policy::{Link, Policy, Segment};

    use super::*;

    fn segment(bridge: &str, third: u8, external: bool) -> Segment {
        Segment {
            bridge: bridge.into(),
            subnet: format!("10.1.{third}.0/24").parse().unwrap(),
            gateway: Ipv4Addr::new(10, 1, third, 1),
            gateway_v6: None,
            external,
            dnat: Vec::new(),
        }
    }

    /// The purpose `trace` gives the forward rule a packet meets first.
    fn met(r: &Ruleset, iif: &str, oif: &str, dnatted: bool) -> &'static str {
        let p = Packet {
            iif: iif.into(),
            oif: Some(oif.into()),
            proto: "icmp".into(),
            dnatted,
            ..Packet::default()
        };
        r.first_match(&r.forward, &p)
            .map_or("none", |(_, rule)| purpose(rule))
    }

    #[test]
    fn the_tunnel_destination_is_read_on_either_datapath() {
        let userspace = "tnl_push(tnl_port(4),header(size=50,type=4,eth(dst=b2:07:d3:2c:6f:12,src=aa:bb:cc:dd:ee:ff,dl_type=0x0800),ipv4(src=10.213.7.1,dst=10.213.7.2,proto=17,tos=0,ttl=64,frag=0x4000),udp(src=0,dst=4789,csum=0x0),vxlan(flags=0x8000000,vni=0x1519)),out_port(2)),3";
        assert_eq!(tunnel_destination(userspace).as_deref(), Some("10.213.7.2"));
        let kernel = "set(tunnel(tun_id=0x1519,dst=10.0.0.2,ttl=64,tp_dst=4789,flags(df|key))),2";
        assert_eq!(tunnel_destination(kernel).as_deref(), Some("10.0.0.2"));
        assert_eq!(tunnel_destination("3,4"), None);
    }

    #[test]
    fn each_forward_rule_of_the_policy_has_its_purpose() {
        let policy = Policy {
            name: "qingluan".into(),
            bridge_prefix: "qlb".into(),
            segments: vec![
                segment("qlb1", 1, true),
                segment("qlb2", 2, true),
                segment("qlb3", 3, false),
                segment("qlb4", 4, true),
            ],
            guards: Vec::new(),
            links: vec![Link {
                a: "qlb1".into(),
                b: "qlb4".into(),
                between: None,
            }],
        };
        let r = policy.ruleset();
        assert_eq!(met(&r, "qlb1", "qlb2", false), ISOLATION);
        assert_eq!(
            met(&r, "qlb1", "qlb4", false),
            "connected networks (qingluan connect)"
        );
        assert_eq!(met(&r, "eth0", "qlb1", true), "a published port");
        assert!(met(&r, "eth0", "qlb1", false).starts_with("closed to the outside"));
        assert!(met(&r, "qlb3", "eth0", false).starts_with("a network without a way out"));
        assert_eq!(met(&r, "qlb1", "eth0", false), "none");
    }
}
