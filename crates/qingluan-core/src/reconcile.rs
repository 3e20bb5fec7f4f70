//! Reconcile: make OVS, links, flows and netfilter match the desired dataplane.
//!
//! Level-triggered and idempotent. One routine serves every occasion: after each plugin
//! call (cheap: unchanged flows and rules are skipped using what this process last applied),
//! at start-up, after an OVS reconnect and periodically (`full`: everything is compared with
//! the installed state). It re-creates what is missing, removes what this instance owns but
//! no longer wants, and never deletes and re-creates something that already matches, so a
//! daemon restart does not drop a packet. Errors are collected, never stopping at the first.
//!
//! A pass is a [`Pass`]: it holds the pass lock from before the desired state is built until
//! its OVSDB transaction is committed, then the programming lock until it is applied, so no
//! pass ever applies a desired state older than one an earlier pass applied (a stale pass
//! would delete the veth of an endpoint recorded meanwhile); while one pass waits for
//! ovs-vswitchd and programs, the next builds and commits (see [`Pass::sync_noting`]). It lists
//! the endpoint veths that exist first, so the desired state can leave out endpoints whose
//! container is gone: an OVS port without a device has no OpenFlow port, and one flow naming
//! it would make the whole bridge's flow table fail.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use qingluan_dataplane::netfilter::Firewall;
use qingluan_dataplane::netlink::{LinkError, Links, Vxlan};
use qingluan_dataplane::openflow::{Flow, FlowProgrammer, Meter};
use qingluan_dataplane::ovsdb::{Ovs, OvsOp};
use tokio::sync::{Mutex, MutexGuard};

use crate::desired::{Desired, GatewayPort, Veth, OWNER};
use crate::qos;
use crate::uplink;
use futures::StreamExt;
use qingluan_dataplane::netlink::{EgressShaping, IngressShaping};
use qingluan_dataplane::ovsdb::BridgeState;
use qingluan_dataplane::ovsdb::PortQos;

/// The system adapters the reconciler drives.
#[derive(Clone)]
pub struct Adapters {
    /// OVSDB.
    pub ovs: Arc<dyn Ovs>,
    /// OpenFlow.
    pub flows: Arc<dyn FlowProgrammer>,
    /// Links, addresses, sysctls.
    pub links: Arc<dyn Links>,
    /// Netfilter.
    pub firewall: Arc<dyn Firewall>,
}

/// Everything that went wrong in one pass, each with its object.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ReconcileError(pub Vec<String>);

/// What one pass changed, for logs and tests.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// OVSDB operations applied.
    pub ovs_ops: usize,
    /// Veths created.
    pub veths_created: usize,
    /// Veths deleted.
    pub veths_deleted: usize,
    /// Bridges whose flow tables were programmed (compared with the switch, and made equal).
    pub flows_replaced: usize,
    /// Flows added or deleted on them: identical flows are kept, with their counters.
    pub flows_changed: usize,
    /// Whether netfilter changed.
    pub firewall_changed: bool,
}

impl std::fmt::Display for Lap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// A bridge's flow table and meters.
type Programmed = (Vec<Flow>, Vec<Meter>);

/// Gateways (by interface), sysctls (by key) and VXLAN devices (by name) as last set by
/// this process.
#[derive(Default)]
struct Configured {
    gateways: BTreeMap<String, GatewayPort>,
    sysctls: BTreeMap<String, String>,
    vxlans: BTreeMap<String, Vxlan>,
}

/// Which of `names` a full pass checks against the system: all of them up to
/// [`COMPARED_PER_PASS`], beyond that that many in turn (`turn` says where the last pass
/// stopped), so a periodic pass costs the same at 1,000 networks as at 32; each name is
/// still checked every `ceil(names / 32)` passes.
fn in_turn<'d>(
    turn: &std::sync::atomic::AtomicUsize,
    names: impl ExactSizeIterator<Item = &'d String>,
) -> BTreeSet<&'d str> {
    let n = names.len();
    if n <= COMPARED_PER_PASS {
        return names.map(String::as_str).collect();
    }
    let start = turn.fetch_add(COMPARED_PER_PASS, std::sync::atomic::Ordering::Relaxed) % n;
    names
        .enumerate()
        .filter(|(i, _)| (i + n - start) % n < COMPARED_PER_PASS)
        .map(|(_, b)| b.as_str())
        .collect()
}

/// How many bridges are programmed at once.
const BRIDGES_AT_ONCE: usize = 16;

/// How many bridges' flows, gateways and sysctls a full pass checks at most (each).
const COMPARED_PER_PASS: usize = 32;

/// Time spent per step of a pass or a call, for the debug log.
pub(crate) struct Lap(Vec<String>, std::time::Instant);

impl Lap {
    /// Starts timing the first step.
    pub(crate) fn start() -> Lap {
        Lap(Vec::new(), std::time::Instant::now())
    }

    /// Ends `step`; the next starts now.
    pub(crate) fn mark(&mut self, step: &str) {
        self.0.push(format!(
            "{step}={:.1}ms",
            self.1.elapsed().as_secs_f64() * 1e3
        ));
        self.1 = std::time::Instant::now();
    }
}

/// Drives the adapters towards a desired state.
pub struct Reconciler {
    adapters: Adapters,
    /// Instance name (owner tag).
    owner: String,
    /// Link name prefix of endpoint host veths.
    veth_prefix: String,
    /// The instance's link prefix (IFB devices are `<prefix>q…`).
    prefix: String,
    /// The shaping this process last applied per gateway, with the gateway's ifindex (a
    /// re-created interface lost its shaping).
    installed_shaping: Mutex<BTreeMap<String, (IngressShaping, u32)>>,
    /// The egress shaping this process last applied per uplink interface.
    installed_egress: Mutex<BTreeMap<String, EgressShaping>>,
    /// Flows and meters this process last installed per bridge.
    installed_flows: Mutex<BTreeMap<String, Programmed>>,
    /// The gateways and sysctls this process last set; a pass that is not full skips what
    /// is unchanged (a call's pass would otherwise ask the kernel about every network).
    configured: Mutex<Configured>,
    /// The sentinel cookie of each bridge whose flows are installed, for the flow audit.
    sentinels: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Which bridge the flow audit asks next.
    audit_turn: std::sync::atomic::AtomicUsize,
    /// Where the next full pass starts comparing bridges' flows with the switch, checking
    /// gateways and writing sysctls (see [`in_turn`]).
    compare_turn: std::sync::atomic::AtomicUsize,
    gateway_turn: std::sync::atomic::AtomicUsize,
    sysctl_turn: std::sync::atomic::AtomicUsize,
    /// Serialises passes up to their OVSDB transaction (see [`Pass::sync_noting`]).
    pass: Mutex<()>,
    /// Serialises passes from their wait for ovs-vswitchd on: programming flows and
    /// netfilter, deleting stale veths.
    programming: Mutex<()>,
    /// Held while a veth pair is made and while a pass lists the veths, so no pass takes a
    /// half-made pair for one to add to OVS: ovs-vswitchd sets a new port's flags by reading
    /// and writing them back, which can undo the `up` still on its way.
    creating: Mutex<()>,
}

impl Reconciler {
    /// A reconciler for an instance whose objects carry `owner` and whose links start with
    /// `prefix`.
    pub fn new(adapters: Adapters, owner: &str, prefix: &str) -> Self {
        Reconciler {
            adapters,
            owner: owner.to_string(),
            veth_prefix: format!("{prefix}v"),
            prefix: prefix.to_string(),
            installed_shaping: Mutex::new(BTreeMap::new()),
            installed_egress: Mutex::new(BTreeMap::new()),
            installed_flows: Mutex::new(BTreeMap::new()),
            configured: Mutex::default(),
            sentinels: Default::default(),
            audit_turn: Default::default(),
            compare_turn: Default::default(),
            gateway_turn: Default::default(),
            sysctl_turn: Default::default(),
            pass: Mutex::new(()),
            programming: Mutex::new(()),
            creating: Mutex::new(()),
        }
    }

    /// The adapters (for status and audits).
    pub fn adapters(&self) -> &Adapters {
        &self.adapters
    }

    /// Bridges whose sentinel flow is gone (ovs-vswitchd restarted and lost them). Each call
    /// asks one bridge, in turn, since a restart empties all of them at once; only when that
    /// one lost its flows are all asked. Nothing is built and no lock is waited for, so an
    /// idle audit costs one OpenFlow round trip (a bridge emptied by hand is found within as
    /// many calls as there are bridges, and by the periodic full pass anyway).
    pub async fn flows_lost(&self) -> Vec<String> {
        let sentinels: Vec<(String, u64)> = self
            .sentinels
            .lock()
            .expect("sentinels lock")
            .iter()
            .map(|(b, c)| (b.clone(), *c))
            .collect();
        if sentinels.is_empty() {
            return Vec::new();
        }
        let turn = self
            .audit_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (bridge, cookie) = &sentinels[turn % sentinels.len()];
        if !self.lost_flows(bridge, *cookie).await {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (bridge, cookie) in &sentinels {
            if self.lost_flows(bridge, *cookie).await {
                out.push(bridge.clone());
            }
        }
        out
    }

    /// Whether `bridge` has no flow with its sentinel `cookie` (an error counts as no).
    async fn lost_flows(&self, bridge: &str, cookie: u64) -> bool {
        matches!(
            self.adapters
                .flows
                .flow_count(bridge, cookie, u64::MAX)
                .await,
            Ok(0)
        )
    }

    /// Starts a pass: waits for the one in flight, then lists the endpoint veths that exist.
    /// Build the desired state only after this returns.
    pub async fn begin(&self) -> Result<Pass<'_>, ReconcileError> {
        let lock = self.pass.lock().await;
        let creating = self.creating.lock().await;
        let ours = self
            .adapters
            .links
            .links_with_prefix(&self.prefix)
            .await
            .map_err(|e| ReconcileError(vec![e.to_string()]))?;
        drop(creating);
        let vxlan_prefix = crate::modes::vxlan_prefix(&self.prefix);
        let (mut veths, mut vxlans) = (BTreeSet::new(), BTreeSet::new());
        for l in ours {
            if l.name.starts_with(&self.veth_prefix) {
                veths.insert(l.name);
            } else if l.name.starts_with(&vxlan_prefix) && l.kind.as_deref() == Some("vxlan") {
                vxlans.insert(l.name);
            }
        }
        Ok(Pass {
            r: self,
            veths,
            vxlans,
            lock: Some(lock),
        })
    }

    /// Creates an endpoint's veth pair, its peer's checksum offload off when `v` asks;
    /// whether it did. A pair that appeared meanwhile was made whole by whoever made it:
    /// CreateEndpoint's task makes a new endpoint's pair beside its pass, and a pass may have
    /// listed the links before that and then read the endpoint's record.
    pub async fn create_veth(&self, v: &Veth) -> Result<bool, LinkError> {
        let _creating = self.creating.lock().await;
        let links = &self.adapters.links;
        if let Err(e) = links
            .create_veth(&v.host, &v.peer, v.mtu, Some(v.mac.0))
            .await
        {
            return match links.link(&v.host).await {
                Ok(Some(_)) => Ok(false),
                _ => Err(e),
            };
        }
        if v.tx_off {
            links.tx_checksum_off(&v.peer).await?;
        }
        Ok(true)
    }

    /// Waits until every pass that released the pass lock has finished programming.
    pub async fn settled(&self) {
        drop(self.programming.lock().await);
    }
}

/// A reconcile pass in progress; holds the pass lock until dropped or until
/// [`Pass::sync`] hands over to programming.
pub struct Pass<'a> {
    r: &'a Reconciler,
    /// Endpoint veths (host ends) that existed when the pass began.
    veths: BTreeSet<String>,
    /// Our kernel VXLAN devices that existed when the pass began.
    vxlans: BTreeSet<String>,
    lock: Option<MutexGuard<'a, ()>>,
}

impl Pass<'_> {
    /// Aggregate limits on uplinks: each uplink interface (`nics`, by bridge) with limited
    /// networks gets its HTB, rebuilt when it changed (or went missing, on full passes);
    /// one that no longer has any, or whose uplink bridge went, loses it (after a restart of
    /// ours, OVS removes it when the port's `linux-noop` QoS goes). Returns the errors.
    async fn shape_uplinks(
        &self,
        d: &Desired,
        nics: &BTreeMap<String, String>,
        full: bool,
    ) -> Vec<String> {
        let (r, mut errs) = (self.r, Vec::new());
        let links = &r.adapters.links;
        let mut installed = r.installed_egress.lock().await;
        for (bridge, nic) in nics {
            let result = match d.egress.get(bridge) {
                Some(groups) => {
                    let want = EgressShaping {
                        iface: nic.clone(),
                        groups: groups.clone(),
                    };
                    let current = installed.get(nic) == Some(&want)
                        && (!full || links.egress_shaped(nic).await.unwrap_or(false));
                    if current {
                        continue;
                    }
                    installed.remove(nic);
                    let done = links.shape_egress(&want).await;
                    if done.is_ok() {
                        installed.insert(nic.clone(), want);
                    }
                    done
                }
                None if installed.contains_key(nic) => {
                    installed.remove(nic);
                    links.unshape_egress(nic).await
                }
                None => continue,
            };
            if let Err(e) = result {
                errs.push(e.to_string());
            }
        }
        // Interfaces whose uplink bridge went: they are the host's again.
        let gone: Vec<String> = installed
            .keys()
            .filter(|n| !nics.values().any(|v| v == *n))
            .cloned()
            .collect();
        for nic in gone {
            installed.remove(&nic);
            if let Err(e) = links.unshape_egress(&nic).await {
                errs.push(e.to_string());
            }
        }
        errs
    }

    /// Aggregate limits: what each shaped gateway receives goes through its IFB; IFBs of
    /// this instance nobody wants are removed (looked for on full passes, and when one was
    /// dropped). Returns the errors.
    async fn shape(&self, d: &Desired, full: bool) -> Vec<String> {
        let (r, mut errs) = (self.r, Vec::new());
        let links = &r.adapters.links;
        let mut installed = r.installed_shaping.lock().await;
        for s in &d.shaped {
            let index = match links.link(&s.iface).await {
                Ok(Some(l)) => l.index,
                Ok(None) => {
                    errs.push(format!(
                        "gateway {} of an aggregate limit not found",
                        s.iface
                    ));
                    continue;
                }
                Err(e) => {
                    errs.push(e.to_string());
                    continue;
                }
            };
            let want = (s.clone(), index);
            if !full && installed.get(&s.iface) == Some(&want) {
                continue;
            }
            match links.shape_ingress(s).await {
                Ok(()) => {
                    installed.insert(s.iface.clone(), want);
                }
                Err(e) => {
                    installed.remove(&s.iface);
                    errs.push(e.to_string());
                }
            }
        }
        let wanted: BTreeSet<&str> = d.shaped.iter().map(|s| s.ifb.as_str()).collect();
        let dropped = installed
            .keys()
            .any(|g| !d.shaped.iter().any(|s| &s.iface == g));
        if !full && !dropped {
            return errs;
        }
        let ifb_prefix = format!("{}q", r.prefix);
        match links.links_with_prefix(&ifb_prefix).await {
            Ok(ifbs) => {
                for l in ifbs.iter().filter(|l| {
                    l.kind.as_deref() == Some("ifb") && !wanted.contains(l.name.as_str())
                }) {
                    let gateway = qos::gateway_of_ifb(&r.prefix, &l.name);
                    match links.unshape_ingress(&gateway, &l.name).await {
                        Ok(()) => {
                            installed.remove(&gateway);
                        }
                        Err(e) => errs.push(e.to_string()),
                    }
                }
                installed.retain(|g, _| d.shaped.iter().any(|s| &s.iface == g));
            }
            Err(e) => errs.push(e.to_string()),
        }
        errs
    }

    /// Whether the host end `veth` existed when the pass began.
    pub fn has_veth(&self, veth: &str) -> bool {
        self.veths.contains(veth)
    }

    /// Forgets what was installed on `bridge` so this pass re-programs its flows, and what
    /// gateways and sysctls were set (ovs-vswitchd re-creates its internal ports when it
    /// restarts, without their addresses).
    pub async fn invalidate_bridge(&self, bridge: &str) {
        self.r.installed_flows.lock().await.remove(bridge);
        *self.r.configured.lock().await = Configured::default();
    }

    /// Applies `d`.
    pub async fn sync(self, d: &Desired, full: bool) -> Result<Report, ReconcileError> {
        self.sync_noting(d, full, |_| ()).await
    }

    /// Applies `d`, and calls `done` with whether it succeeded before the next pass may
    /// program.
    ///
    /// A pass holds the pass lock while it creates veths and commits its OVSDB
    /// transaction, then takes the programming lock and lets the pass lock go: the next
    /// pass builds and commits while this one waits for ovs-vswitchd to apply its
    /// transaction and then programs flows and netfilter. Programming keeps the passes'
    /// order, so no bridge gets an older table after a newer one. Only a transaction that
    /// adds or changes endpoints' ports is waited for after the hand-over: any other (one
    /// that deletes a port, touches a bridge, or moves an uplink's interface, whose
    /// addresses follow right after) first waits for the passes before it to finish
    /// programming (their flows may name the port) and is applied before the hand-over,
    /// as full passes are.
    pub async fn sync_noting(
        mut self,
        d: &Desired,
        full: bool,
        done: impl FnOnce(bool) + Send,
    ) -> Result<Report, ReconcileError> {
        let r = self.r;
        let a = &r.adapters;
        let mut errs = Vec::new();
        let mut report = Report::default();
        let mut lap = Lap::start();

        // 1. Links first: OVS system ports need their device.
        let existing = &self.veths;
        for v in d
            .veths
            .iter()
            .filter(|v| v.recreate && !existing.contains(&v.host))
        {
            match r.create_veth(v).await {
                Ok(created) => report.veths_created += usize::from(created),
                Err(e) => errs.push(e.to_string()),
            }
        }

        // VXLAN devices with their forwarding entries, before the flows that send into them:
        // those that changed since this process synced them, and all on full passes.
        let mut synced_vxlans = Vec::new();
        {
            let mut configured = r.configured.lock().await;
            configured
                .vxlans
                .retain(|n, _| !full && d.vxlans.iter().any(|v| &v.name == n));
            for v in &d.vxlans {
                if configured.vxlans.get(&v.name) == Some(v) {
                    synced_vxlans.push(v.name.clone());
                    continue;
                }
                match a.links.sync_vxlan(v).await {
                    Ok(_) => {
                        synced_vxlans.push(v.name.clone());
                        configured.vxlans.insert(v.name.clone(), v.clone());
                    }
                    Err(e) => {
                        configured.vxlans.remove(&v.name);
                        errs.push(e.to_string());
                    }
                }
            }
        }

        lap.mark("links");
        // 2. OVS bridges and ports, in one transaction; around it, the host's addresses
        //    move back from an uplink bridge about to go, and onto a new one.
        let mut turn = None;
        let mut pending = None;
        let mut nic_guards = Vec::new();
        let mut uplink_nics = BTreeMap::new();
        match a.ovs.snapshot().await {
            Ok(snap) => {
                let wanted: BTreeSet<&str> = d.uplinks.iter().map(|u| u.bridge.as_str()).collect();
                for (bridge, nic) in uplink::owned_uplinks(&r.owner, &snap) {
                    if !wanted.contains(bridge) {
                        if let Some(nic) = nic {
                            if let Err(e) = uplink::move_addresses(&*a.links, bridge, nic).await {
                                errs.push(e.to_string());
                            }
                        }
                    }
                }
                let mut with = d.clone();
                let mut planned = Vec::new();
                let mut unplanned = BTreeSet::new();
                for u in &d.uplinks {
                    match uplink::plan(&*a.links, &r.owner, u, &snap).await {
                        Ok((b, mut p)) => {
                            if d.egress.contains_key(&b.name) {
                                // Our HTB on the interface; OVS must leave its qdisc alone.
                                p.qos = Some(PortQos::noop());
                            }
                            uplink_nics.insert(b.name.clone(), p.name.clone());
                            with.bridges.push(b.clone());
                            with.ports.push(p.clone());
                            planned.push((b, p));
                        }
                        Err(e) => {
                            errs.push(e.to_string());
                            unplanned.insert(u.bridge.clone());
                        }
                    }
                }
                let with = if unplanned.is_empty() {
                    with
                } else {
                    keep_uplinks(&with, &snap, &r.owner, &unplanned)
                };
                nic_guards = userspace_nics(&with);
                let ops = ovs_ops(&r.owner, &with, &snap);
                let endpoint_ports_only = !full
                    && ops.iter().all(|o| match o {
                        OvsOp::AddPort(p) | OvsOp::UpdatePort(p) => {
                            p.external_ids.contains_key(crate::desired::ENDPOINT)
                        }
                        _ => false,
                    });
                if !ops.is_empty() {
                    report.ovs_ops = ops.len();
                    let applied = if endpoint_ports_only {
                        a.ovs.commit(&ops).await.map(|cfg| pending = cfg)
                    } else {
                        turn = Some(r.programming.lock().await);
                        a.ovs.apply(&ops).await
                    };
                    if let Err(e) = applied {
                        errs.push(e.to_string());
                    }
                }
                for (b, p) in &planned {
                    if let Err(e) = uplink::move_addresses(&*a.links, &p.name, &b.name).await {
                        errs.push(e.to_string());
                    }
                }
            }
            Err(e) => errs.push(e.to_string()),
        }

        lap.mark("ovs");
        // 3. Gateway ports: MTU, addresses, up; then sysctls that name them. Only what
        //    changed since this process set it, and on full passes those in turn.
        let mut configured = r.configured.lock().await;
        if full {
            let ifaces: Vec<&String> = d.gateways.iter().map(|g| &g.iface).collect();
            for i in in_turn(&r.gateway_turn, ifaces.into_iter()) {
                configured.gateways.remove(i);
            }
            for k in in_turn(&r.sysctl_turn, d.sysctls.keys()) {
                configured.sysctls.remove(k);
            }
        }
        configured
            .gateways
            .retain(|i, _| d.gateways.iter().any(|g| &g.iface == i));
        for g in &d.gateways {
            if configured.gateways.get(&g.iface) == Some(g) {
                continue;
            }
            let set = async {
                a.links.set_mtu(&g.iface, g.mtu).await?;
                for addr in &g.addrs {
                    a.links.add_address(&g.iface, *addr).await?;
                }
                a.links.set_up(&g.iface).await
            };
            match set.await {
                Ok(()) => {
                    configured.gateways.insert(g.iface.clone(), g.clone());
                }
                Err(e) => errs.push(e.to_string()),
            }
        }
        configured.sysctls.retain(|k, _| d.sysctls.contains_key(k));
        for (k, v) in &d.sysctls {
            if configured.sysctls.get(k) == Some(v) {
                continue;
            }
            match a.links.sysctl(k, v).await {
                Ok(()) => {
                    configured.sysctls.insert(k.clone(), v.clone());
                }
                Err(e) => errs.push(e.to_string()),
            }
        }
        drop(configured);

        errs.extend(self.shape(d, full).await);
        // A kernel VXLAN device is shaped like an uplink's interface (by its own name).
        uplink_nics.extend(synced_vxlans.iter().map(|v| (v.clone(), v.clone())));
        errs.extend(self.shape_uplinks(d, &uplink_nics, full).await);

        lap.mark("gateways");
        let _turn = match turn {
            Some(t) => t,
            None => r.programming.lock().await,
        };
        self.lock = None;
        lap.mark("turn");
        if let Some(cfg) = pending {
            if let Err(e) = a.ovs.applied(cfg).await {
                errs.push(e.to_string());
            }
        }
        lap.mark("vswitchd");
        // 4. and 5., concurrently (independent processes): flows, only where they differ from
        //    what we installed (or always when full); netfilter, with guards only for devices
        //    that exist (a vanished veth must not block the whole ruleset).
        let flows = async {
            let t = std::time::Instant::now();
            let mut errs = Vec::new();
            let (mut replaced, mut changed) = (0, 0);
            let mut installed = r.installed_flows.lock().await;
            installed.retain(|b, _| d.flows.contains_key(b));
            let compared = if full {
                in_turn(&r.compare_turn, d.flows.keys())
            } else {
                BTreeSet::new()
            };
            let due: Vec<(&String, Programmed, bool)> = d
                .flows
                .iter()
                .map(|(bridge, flows)| {
                    let meters = d.meters.get(bridge).cloned().unwrap_or_default();
                    (bridge, (flows.clone(), meters))
                })
                .filter(|(bridge, want)| {
                    compared.contains(bridge.as_str()) || installed.get(*bridge) != Some(want)
                })
                .map(|(bridge, want)| {
                    let meters_known = !compared.contains(bridge.as_str())
                        && installed.get(bridge).is_some_and(|(_, m)| *m == want.1);
                    (bridge, want, meters_known)
                })
                .collect();
            // Bridges concurrently: each round trip waits for a turn of ovs-vswitchd's main
            // loop (22-35 ms at 1,000 ports), which serves every connection at once.
            let programs: Vec<_> = due
                .into_iter()
                .map(|(bridge, want, meters_known)| async move {
                    let done = program(&*a.flows, bridge, &want.0, &want.1, meters_known).await;
                    (bridge, want, done)
                })
                .collect();
            let results: Vec<_> = futures::stream::iter(programs)
                .buffer_unordered(BRIDGES_AT_ONCE)
                .collect()
                .await;
            for (bridge, want, done) in results {
                match done {
                    Ok(n) => {
                        replaced += 1;
                        changed += n;
                        installed.insert(bridge.clone(), want);
                    }
                    Err(e) => {
                        installed.remove(bridge);
                        errs.push(e.to_string());
                    }
                }
            }
            *r.sentinels.lock().expect("sentinels lock") = d
                .sentinels
                .iter()
                .filter(|(b, _)| installed.contains_key(*b))
                .map(|(b, c)| (b.clone(), *c))
                .collect();
            ((replaced, changed), errs, t.elapsed())
        };
        let firewall = async {
            let t = std::time::Instant::now();
            let mut fw = d.firewall.clone();
            if let Ok(now) = a.links.links_with_prefix(&r.veth_prefix).await {
                let now: BTreeSet<String> = now.into_iter().map(|l| l.name).collect();
                fw.guards.retain(|g| now.contains(g));
            }
            fw.guards.extend(nic_guards);
            fw.guards.extend(synced_vxlans);
            fw.guards.sort();
            fw.guards.dedup();
            (a.firewall.apply(&fw.ruleset(), full).await, t.elapsed())
        };
        let (((replaced, changed), flow_errs, flows_took), (fw, fw_took)) =
            tokio::join!(flows, firewall);
        report.flows_replaced = replaced;
        report.flows_changed = changed;
        errs.extend(flow_errs);
        match fw {
            Ok(changed) => report.firewall_changed = changed,
            Err(e) => errs.push(e.to_string()),
        }

        lap.mark(&format!(
            "flows+netfilter(flows={:.1}ms on {replaced} bridges, netfilter={:.1}ms)",
            flows_took.as_secs_f64() * 1e3,
            fw_took.as_secs_f64() * 1e3
        ));
        // 6. Veths nobody wants any more; only after a pass with no error, since deleting a
        //    veth cannot be undone (its peer may be a container's interface) and a failed
        //    pass is followed by one that undoes the call.
        let wanted: BTreeSet<&str> = d
            .veths
            .iter()
            .map(|v| v.host.as_str())
            .chain(d.vxlans.iter().map(|v| v.name.as_str()))
            .collect();
        if errs.is_empty() {
            let stale: Vec<String> = existing
                .iter()
                .chain(&self.vxlans)
                .filter(|n| !wanted.contains(n.as_str()))
                .cloned()
                .collect();
            match a.links.delete_links(&stale).await {
                Ok(()) => {
                    report.veths_deleted += stale.iter().filter(|n| existing.contains(*n)).count()
                }
                Err(e) => errs.push(e.to_string()),
            }
        }

        lap.mark("stale veths");
        tracing::debug!(full, steps = %lap, "reconcile pass");
        done(errs.is_empty());
        if errs.is_empty() {
            Ok(report)
        } else {
            Err(ReconcileError(errs))
        }
    }
}

/// Programs a bridge: meters that are missing or differ first (flows may use them), then
/// the flow table, then the meters nobody uses any more are deleted. Returns how many flows
/// changed. With `meters_known` (this process installed exactly `meters` there) only the
/// flow table is programmed: asking the switch for its meters costs a round trip, which
/// waits for a turn of ovs-vswitchd's main loop.
async fn program(
    of: &dyn FlowProgrammer,
    bridge: &str,
    flows: &[Flow],
    meters: &[Meter],
    meters_known: bool,
) -> Result<usize, qingluan_dataplane::openflow::FlowError> {
    if meters_known {
        return of.replace_flows(bridge, flows).await;
    }
    let have = of.meters(bridge).await?;
    for m in meters.iter().filter(|m| !have.contains(m)) {
        of.set_meter(bridge, *m).await?;
    }
    let changed = of.replace_flows(bridge, flows).await?;
    for m in have.iter().filter(|h| !meters.iter().any(|m| m.id == h.id)) {
        of.delete_meter(bridge, m.id).await?;
    }
    Ok(changed)
}

/// The interfaces enslaved to uplink bridges of the userspace datapath. They are guarded
/// like the endpoints' veths: they keep the bridge's MAC, so without a guard the host's
/// kernel would also take frames for the host's addresses from them directly, besides
/// OVS handing them to the internal port, and forward a second copy (the duplicate replies
/// of a vxlan `nat=true` gateway).
fn userspace_nics(d: &Desired) -> Vec<String> {
    d.ports
        .iter()
        .filter(|p| p.external_ids.contains_key(crate::desired::UPLINK_NIC))
        .filter(|p| {
            d.bridges
                .iter()
                .any(|b| b.name == p.bridge && b.datapath_type == "netdev")
        })
        .map(|p| p.name.clone())
        .collect()
}

/// `d` when some uplinks (`unplanned`) could not be planned this pass: every uplink bridge
/// that exists already is kept as it is (it may hold the host's addresses), and the ports of
/// an unplanned uplink bridge that does not exist are left out until it can be created.
fn keep_uplinks(
    d: &Desired,
    snap: &[BridgeState],
    owner: &str,
    unplanned: &BTreeSet<String>,
) -> Desired {
    let mut with = d.clone();
    let exists = |name: &str| snap.iter().any(|b| b.spec.name == name);
    with.ports
        .retain(|p| !unplanned.contains(&p.bridge) || exists(&p.bridge));
    for (name, _) in uplink::owned_uplinks(owner, snap) {
        let Some(b) = snap.iter().find(|b| b.spec.name == name) else {
            continue;
        };
        if !with.bridges.iter().any(|w| w.name == name) {
            with.bridges.push(b.spec.clone());
        }
        for p in &b.ports {
            if !with.ports.iter().any(|w| w.name == p.spec.name) {
                with.ports.push(p.spec.clone());
            }
        }
    }
    with
}

/// The OVSDB operations that turn `snap` into the desired bridges and ports.
pub fn ovs_ops(
    owner: &str,
    d: &Desired,
    snap: &[qingluan_dataplane::ovsdb::BridgeState],
) -> Vec<OvsOp> {
    let mut ops = Vec::new();
    let owned = |ids: &BTreeMap<String, String>| ids.get(OWNER).map(String::as_str) == Some(owner);
    let by_name: BTreeMap<&str, &qingluan_dataplane::ovsdb::BridgeState> =
        snap.iter().map(|b| (b.spec.name.as_str(), b)).collect();
    for want in &d.bridges {
        match by_name.get(want.name.as_str()) {
            None => ops.push(OvsOp::AddBridge(want.clone())),
            Some(have) => {
                let h = &have.spec;
                if h.fail_mode != want.fail_mode
                    || h.external_ids != want.external_ids
                    || h.protocols != want.protocols
                    || h.flow_export != want.flow_export
                {
                    ops.push(OvsOp::UpdateBridge(want.clone()));
                }
            }
        }
    }
    let wanted_bridges: BTreeSet<&str> = d.bridges.iter().map(|b| b.name.as_str()).collect();
    for b in snap
        .iter()
        .filter(|b| owned(&b.spec.external_ids) && !wanted_bridges.contains(b.spec.name.as_str()))
    {
        ops.push(OvsOp::DeleteBridge(b.spec.name.clone()));
    }
    let mut have_ports = BTreeMap::new();
    for b in snap {
        for p in &b.ports {
            have_ports.insert((b.spec.name.as_str(), p.spec.name.as_str()), &p.spec);
        }
    }
    for want in &d.ports {
        match have_ports.get(&(want.bridge.as_str(), want.name.as_str())) {
            None => ops.push(OvsOp::AddPort(want.clone())),
            Some(h) => {
                if h.external_ids != want.external_ids
                    || h.tag != want.tag
                    || h.kind != want.kind
                    || h.mac != want.mac
                    || h.qos != want.qos
                {
                    ops.push(OvsOp::UpdatePort(want.clone()));
                }
            }
        }
    }
    let wanted_ports: BTreeSet<(&str, &str)> = d
        .ports
        .iter()
        .map(|p| (p.bridge.as_str(), p.name.as_str()))
        .collect();
    for b in snap
        .iter()
        .filter(|b| wanted_bridges.contains(b.spec.name.as_str()))
    {
        for p in b.ports.iter().filter(|p| owned(&p.spec.external_ids)) {
            if !wanted_ports.contains(&(b.spec.name.as_str(), p.spec.name.as_str())) {
                ops.push(OvsOp::DeletePort {
                    bridge: b.spec.name.clone(),
                    name: p.spec.name.clone(),
                });
            }
        }
    }
    ops
}
