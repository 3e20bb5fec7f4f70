//! `qingluan daemon`: loads state, serves the plugin and management sockets, and keeps the
//! dataplane converged.
//!
//! Start-up order matters (protocol doc §2.2): the store and IPAM are loaded first, then the
//! sockets are bound, because Docker never re-activates a plugin that restarted and a failed
//! GetCapabilities disables the driver until dockerd restarts. OVS is NOT needed to answer
//! activation and capability calls; calls that need OVS fail with a clear error while it is
//! down, and background tasks converge the dataplane once it is back:
//! - a full reconcile at start (from the cluster view and intent saved at the last run, so
//!   a restart keeps the overlay and cluster ACLs while etcd is read again or down), every
//!   30 s, after every OVSDB reconnect and after every `Plugin.Activate` (a new dockerd);
//! - a flow audit every second, re-programming bridges whose sentinel flow is gone
//!   (ovs-vswitchd restarted);
//! - after an activation and every 60 s, endpoints Docker no longer knows are collected;
//! - on every change under `cluster/` and every 3 s, the cluster agent keeps this host's
//!   entries in the cluster store true,
//!   reclaims the addresses of hosts down longer than the grace period, and makes this
//!   host's Docker match the cluster's networks (creating and removing them through the
//!   Engine API).
//!
//! With etcd, this host's traffic rows are published to the cluster store every 5 s for
//! `qingluan stats --host` and `top --host` on any host (`host_stats`).
//!
//! Prometheus metrics are served on `monitoring.listen` (bound before the plugin sockets, so
//! a port in use stops the start with a clear error); see `metrics`.
//!
//! Stores: this host's records (nat/nonat networks, endpoints, the `host` IPAM domain) are
//! always in the embedded redb file, so local networks never depend on etcd. The cluster
//! store is etcd with `store.backend = "etcd"`, else the same redb file.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use qingluan_core::cluster::Replication;
use qingluan_core::ipam::Ipam;
use qingluan_core::reconcile::{Adapters, Reconciler};
use qingluan_core::service::{Driver, Stores};
use qingluan_dataplane::netfilter::NftFirewall;
use qingluan_dataplane::netlink::NetlinkLinks;
use qingluan_dataplane::openflow::NativeFlows;
use qingluan_dataplane::ovsdb::{default_db_target, Ovs, OvsEvent, OvsdbOvs};
use qingluan_plugin::{CallStats, Interface, Plugin};
use qingluan_store::redb::RedbStore;
use qingluan_store::scoped::Scoped;
use qingluan_store::Store;
use tokio::net::UnixListener;
use tokio::sync::{Notify, RwLock};

use crate::api::{self, Api};
use crate::config::Config;
use crate::metrics::{MeasuredStore, Metrics};

fn bind(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove stale {}", path.display())),
    }
    let l =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// The one socket of the managed plugin: `interface.socket` of packaging/plugin/config.json.
const MANAGED_SOCKET: &str = "qingluan.sock";

/// How long a shutdown may take, and the part of it kept for marking this host down.
const SHUTDOWN: Duration = Duration::from_secs(2);
const LEAVE: Duration = Duration::from_millis(500);

/// The daemon's tasks: each is owned by one of these sets and stopped at shutdown, none is
/// detached.
type Tasks = tokio::task::JoinSet<()>;

/// Serves `router` on `listener` until `stop` turns true, then finishes the calls in flight.
fn serve<L>(
    servers: &mut Tasks,
    listener: L,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    servers.spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "server stopped");
        }
    });
}

/// The embedded store and the cluster store (the same one unless etcd is configured).
async fn open_stores(config: &Config) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Store>)> {
    let embedded: Arc<dyn Store> = Arc::new(RedbStore::open(&config.store.path).await?);
    match etcd_store(config)? {
        Some(cluster) => Ok((embedded, cluster)),
        None => Ok((embedded.clone(), embedded)),
    }
}

/// The etcd cluster store when `store.backend = "etcd"` (connected lazily).
pub(crate) fn etcd_store(config: &Config) -> anyhow::Result<Option<Arc<dyn Store>>> {
    let c = &config.store;
    #[cfg(feature = "etcd")]
    if c.backend == "etcd" {
        let tls = qingluan_store::etcd::Tls {
            ca: c.ca.clone(),
            cert: c.cert.clone(),
            key: c.key.clone(),
        };
        let secure = c.endpoints.iter().any(|e| e.starts_with("https://"));
        let store = qingluan_store::etcd::EtcdStore::lazy(
            &c.endpoints,
            secure.then_some(&tls),
            &c.namespace,
        )?;
        return Ok(Some(Arc::new(store)));
    }
    anyhow::ensure!(
        c.backend != "etcd",
        "store.backend = \"etcd\" needs a build with --features etcd"
    );
    Ok(None)
}

/// This host as it registers itself in the store.
pub(crate) fn this_host(config: &Config) -> qingluan_core::membership::Host {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    qingluan_core::membership::Host {
        id: config
            .cluster
            .host_id
            .clone()
            .unwrap_or_else(|| hostname.clone()),
        hostname,
        underlay_ip: config.cluster.underlay_ip.or_else(default_route_address),
        version: env!("CARGO_PKG_VERSION").into(),
        started: qingluan_core::model::now(),
    }
}

/// The IPv4 address of the interface holding the default route.
pub(crate) fn default_route_address() -> Option<std::net::IpAddr> {
    let iface = crate::routes::host_routes()
        .into_iter()
        .find(|r| r.dest.prefix_len() == 0)?
        .iface;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let ip = a.address?.as_sockaddr_in()?.ip();
        (a.interface_name == iface).then_some(std::net::IpAddr::V4(ip))
    })
}

/// As a managed plugin the daemon runs in a container whose `/proc/sys` dockerd mounted
/// read-only; its network namespace is the host's, so it makes that mount writable again to
/// set the host's sysctls (it has CAP_SYS_ADMIN for this, see packaging/plugin/config.json).
fn writable_proc_sys() -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    let ro = nix::sys::statvfs::statvfs("/proc/sys")
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false);
    if ro {
        mount(
            None::<&str>,
            "/proc/sys",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("cannot make /proc/sys writable (the managed plugin needs CAP_SYS_ADMIN)")?;
    }
    Ok(())
}

/// The default receive buffer of new sockets, at least [`SOCKET_BUFFER`] (never lowered).
const RMEM_DEFAULT: &str = "/proc/sys/net/core/rmem_default";
/// 4 MiB: about 60 of userspace TSO's 64 KB frames.
const SOCKET_BUFFER: u64 = 4 << 20;

/// Raises the default socket receive buffer on the userspace datapath. ovs-vswitchd reads
/// each port with an `AF_PACKET` socket of the default size (208 KiB, about three of
/// userspace TSO's 64 KB frames), and a burst that overflows it is dropped and
/// retransmitted by TCP: with 4 MiB, two containers on one host moved 16.0 instead of 11.8
/// Gbit/s, a mirror no longer cost its network a fifth of that, and the kernel VXLAN devices
/// stopped dropping 7 % of their frames (`docs/performance.md`). Only sockets opened after
/// this get it: ports ovs-vswitchd already reads keep theirs until it restarts. Failing is
/// logged, not fatal: everything works, slower.
fn socket_buffers() {
    let now = std::fs::read_to_string(RMEM_DEFAULT)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if now.is_some_and(|n| n >= SOCKET_BUFFER) {
        return;
    }
    match std::fs::write(RMEM_DEFAULT, SOCKET_BUFFER.to_string()) {
        Ok(()) => {
            tracing::info!(from = ?now, to = SOCKET_BUFFER, "raised net.core.rmem_default for ovs-vswitchd's ports")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise net.core.rmem_default; ovs-vswitchd will drop frames of fast flows")
        }
    }
}

/// Sets the calling thread's nice value, which the threads and processes it starts inherit:
/// call it before the runtime starts its threads. dockerd waits on the daemon's calls, each
/// a few short bursts of CPU, while a batch of starts keeps ovs-vswitchd, dockerd and
/// containerd busy on every core; at the nice value of those, the bursts queued for a core
/// (CreateEndpoint p50 2.0–10.8 ms at 0 against 1.8–2.8 ms at -10 with 10 containers
/// starting at once, `docs/performance.md`).
pub fn renice(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes plain integers and changes only this thread's nice value.
    match unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut settings = config.settings();
    if settings.managed.is_some() {
        writable_proc_sys()?;
    }
    let (embedded, store) = open_stores(&config).await?;
    let host = this_host(&config);
    settings.underlay_ip = host.underlay_ip;
    let host_id = host.id.clone();
    let module = std::path::Path::new(qingluan_core::service::OVS_MODULE).exists();
    if qingluan_core::service::choose_datapath(&settings.datapath, module) == "netdev" {
        socket_buffers();
    }
    let d = &config.daemon;
    let metrics = Metrics::new(&host_id, d.docker_socket.clone(), &settings.docker_driver());
    let local = MeasuredStore::wrap(
        Arc::new(Scoped::new(embedded, &format!("local/{host_id}/"))),
        "local",
        metrics.clone(),
    );
    let store = MeasuredStore::wrap(store, "cluster", metrics.clone());
    let metrics_listener = match config.monitoring.listen_addr()? {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let mut tasks = Tasks::new();
    tasks.spawn(qingluan_core::membership::run(store.clone(), host));
    let ipam = Arc::new(Ipam::lazy(
        local.clone(),
        store.clone(),
        &host_id,
        &settings.ipam,
        qingluan_core::ipam::host_routes,
    )?);
    spawn_seed(&mut tasks, ipam.clone());
    let db = config.ovs.db.clone().unwrap_or_else(default_db_target);
    let ovs = Arc::new(OvsdbOvs::connect(&db));
    let rundir = config
        .ovs
        .rundir
        .clone()
        .or_else(|| std::env::var_os("OVS_RUNDIR").map(Into::into));
    let adapters = Adapters {
        ovs: ovs.clone(),
        flows: Arc::new(NativeFlows::new(rundir.clone())),
        links: Arc::new(NetlinkLinks::new().context("cannot open netlink")?),
        firewall: Arc::new(NftFirewall::new()),
    };
    let reconciler = Reconciler::new(adapters, &settings.name, &settings.prefix);
    let driver = Arc::new(Driver::new(
        settings.clone(),
        Stores {
            local,
            cluster: store.clone(),
            host: host_id,
        },
        ipam.clone(),
        reconciler,
    ));
    if let Err(e) = driver.state.restore_cluster().await {
        tracing::warn!(error = %e, "cannot read the cluster's state saved at the last run");
    }
    let stats = Arc::new(CallStats::default());
    let activated = Arc::new(Notify::new());
    let activated_gc = Arc::new(Notify::new());
    let names = Arc::new(RwLock::new(crate::docker::Names::default()));

    let plugin = Plugin {
        driver: driver.clone(),
        ipam: ipam.clone(),
        on_activate: {
            let (a, b) = (activated.clone(), activated_gc.clone());
            Arc::new(move || {
                a.notify_one();
                b.notify_one();
            })
        },
        stats: stats.clone(),
    };
    // A managed plugin has one socket for both drivers; else each has its own.
    let sockets = if settings.managed.is_some() {
        vec![(d.plugin_dir.join(MANAGED_SOCKET), Interface::Both)]
    } else {
        vec![
            (
                d.plugin_dir.join(format!("{}.sock", settings.name)),
                Interface::Network,
            ),
            (
                d.plugin_dir.join(format!("{}.sock", settings.ipam_name())),
                Interface::Ipam,
            ),
        ]
    };
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut servers = Tasks::new();
    let ids = crate::ids::runtime::Runtime::new(
        driver.clone(),
        config.ids.clone(),
        names.clone(),
        d.docker_socket.clone(),
    );
    let api = Api {
        store: store.clone(),
        driver: driver.clone(),
        ipam,
        stats,
        names: names.clone(),
        started: qingluan_core::model::now(),
        docker: d.docker_socket.clone(),
        ids: ids.clone(),
        vswitchd: qingluan_dataplane::vswitchd::Vswitchd::new(rundir),
    };
    let publishing = config.store.backend == "etcd";
    if publishing {
        tasks.spawn(crate::trace::remote::answer(api.clone()));
    }
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics");
        serve(
            &mut servers,
            listener,
            crate::metrics::router(api.clone(), metrics.clone()),
            stopping.clone(),
        );
    }
    serve(
        &mut servers,
        bind(&d.api_socket, 0o600)?,
        api::router(api),
        stopping.clone(),
    );
    for (path, iface) in &sockets {
        serve(
            &mut servers,
            bind(path, 0o600)?,
            qingluan_plugin::router(plugin.clone(), *iface),
            stopping.clone(),
        );
    }
    tracing::info!(plugin = ?sockets, api = %d.api_socket.display(), ovsdb = %db, "serving");

    spawn_converge(
        &mut tasks,
        driver.clone(),
        ovs.events(),
        activated.clone(),
        metrics,
    );
    spawn_flow_audit(&mut tasks, driver.clone());
    tasks.spawn(ids.run());
    tasks.spawn(crate::containers::learn(
        driver.clone(),
        d.docker_socket.clone(),
    ));
    if publishing {
        tasks.spawn(crate::host_stats::publish(
            driver.clone(),
            store.clone(),
            names.clone(),
        ));
    }
    spawn_cluster_agent(
        &mut tasks,
        driver.clone(),
        store.clone(),
        d.docker_socket.clone(),
        config.cluster.reclaim_after_secs,
    );
    spawn_docker_watch(
        &mut tasks,
        driver.clone(),
        d.docker_socket.clone(),
        names,
        activated_gc,
        d.gc_secs,
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Within 2 s: stop accepting calls and let those in flight finish, stop the background
    // tasks (each of their steps is idempotent, so one cut short is redone at the next
    // start), mark this host down.
    let deadline = tokio::time::Instant::now() + SHUTDOWN;
    let _ = stop.send(true);
    tasks.abort_all();
    for p in sockets.iter().map(|(p, _)| p).chain([&d.api_socket]) {
        let _ = std::fs::remove_file(p);
    }
    let calls = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline - LEAVE, calls)
        .await
        .is_err()
    {
        tracing::warn!("calls still in flight at shutdown were cut short");
        servers.abort_all();
    }
    while tasks.join_next().await.is_some() {}
    // Marking this host down and withdrawing its statistics share what is left of the
    // deadline; both keys expire with their leases if this is cut short.
    let leave = async {
        let withdraw = async {
            if publishing {
                crate::host_stats::withdraw(&*store, &driver.state.host).await;
            }
        };
        tokio::join!(
            qingluan_core::membership::leave(&*store, &driver.state.host),
            withdraw
        )
        .0
    };
    if let Ok(Err(e)) = tokio::time::timeout_at(deadline, leave).await {
        tracing::warn!(error = %e, "could not mark this host down; its lease will run out");
    }
    tracing::info!("stopped; the dataplane stays as it is");
    Ok(())
}

/// Full reconciles: at start (retried until OVS answers), periodically, on OVS reconnects
/// and on activations.
fn spawn_converge(
    tasks: &mut Tasks,
    driver: Arc<Driver>,
    mut events: tokio::sync::broadcast::Receiver<OvsEvent>,
    activated: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let kick = Arc::new(Notify::new());
    {
        let kick = kick.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(OvsEvent::Reconnected) => {
                        metrics.ovsdb_connected(true);
                        kick.notify_one()
                    }
                    Ok(OvsEvent::Disconnected) => metrics.ovsdb_connected(false),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => kick.notify_one(),
                    Err(_) => return,
                }
            }
        });
    }
    tasks.spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            let started = std::time::Instant::now();
            let result = driver.state.sync(true).await;
            metrics.reconciled(started.elapsed(), result.is_ok());
            match result {
                Ok(r) => {
                    metrics.ovsdb_connected(true);
                    tracing::info!(?r, "full reconcile done");
                    delay = Duration::from_secs(30);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "full reconcile failed; retrying");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = kick.notified() => {}
                _ = activated.notified() => {}
            }
        }
    });
}

/// The cluster agent pass, then this host's Docker made to match the cluster's networks:
/// whenever something under `cluster/` changes (a watch on the cluster store), and every 3 s
/// regardless, so recovery after an etcd outage needs no watch to survive it.
fn spawn_cluster_agent(
    tasks: &mut Tasks,
    driver: Arc<Driver>,
    store: Arc<dyn Store>,
    docker: std::path::PathBuf,
    grace: u64,
) {
    let kick = Arc::new(Notify::new());
    {
        let kick = kick.clone();
        tasks.spawn(async move {
            loop {
                if let Ok(mut events) = store.watch("cluster/").await {
                    while events.recv().await.is_some() {
                        kick.notify_one();
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    tasks.spawn(async move {
        let mut primed = BTreeMap::new();
        loop {
            match driver.agent.sync(grace).await {
                Ok(r) if !r.is_empty() => tracing::info!(?r, "cluster agent"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cluster agent"),
            }
            match driver.agent.replication().await {
                Ok(steps) => {
                    for step in steps {
                        if let Err(e) = replicate(&driver, &docker, &step).await {
                            tracing::warn!(error = %e, ?step, "replication");
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "replication"),
            }
            prime_tunnels(&driver.agent.vteps().await, &mut primed);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                _ = kick.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
}

/// How often a tunnel endpoint is primed again: within OVS's 15 min neighbour lifetime.
const PRIME_EVERY: Duration = Duration::from_secs(600);

/// Makes the kernel resolve the MAC of each tunnel endpoint that is new (or was primed
/// longer than [`PRIME_EVERY`] ago) by sending it an empty datagram on the VXLAN port,
/// which the peer drops. OVS learns the MAC from the ARP reply; without this, the first
/// packet a container sends to a host this host never talked to is dropped while OVS
/// resolves it (a one-second stall for a first ping or TCP connect).
fn prime_tunnels(
    vteps: &std::collections::BTreeSet<std::net::IpAddr>,
    primed: &mut BTreeMap<std::net::IpAddr, std::time::Instant>,
) {
    primed.retain(|ip, _| vteps.contains(ip));
    let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return;
    };
    for ip in vteps {
        if primed.get(ip).is_some_and(|t| t.elapsed() < PRIME_EVERY) {
            continue;
        }
        if sock.send_to(&[], (*ip, 4789)).is_ok() {
            primed.insert(*ip, std::time::Instant::now());
        }
    }
}

async fn replicate(driver: &Driver, docker: &Path, step: &Replication) -> anyhow::Result<()> {
    match step {
        Replication::Create(def) => {
            let s = &driver.state.settings;
            crate::docker::create_network(docker, &s.docker_driver(), &s.docker_ipam(), def)
                .await?;
            tracing::info!(network = ?def.name, key = %def.key, "created the cluster network in docker");
        }
        Replication::Remove(id) => {
            crate::docker::remove_network(docker, id).await?;
            tracing::info!(network = %id, "removed a network the cluster removed");
        }
        Replication::LearnName { key, docker_id } => {
            let n = crate::docker::network_name(docker, docker_id).await?;
            driver.agent.learn_name(key, &n).await?;
        }
    }
    Ok(())
}

/// Creates the configured pools, retrying while the store is unreachable.
fn spawn_seed(tasks: &mut Tasks, ipam: Arc<Ipam>) {
    tasks.spawn(async move {
        let mut delay = Duration::from_millis(200);
        while let Err(e) = ipam.seed().await {
            tracing::warn!(error = %e, "cannot create the configured pools; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}

/// Every second: bridges that lost their flows get them back.
fn spawn_flow_audit(tasks: &mut Tasks, driver: Arc<Driver>) {
    tasks.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match driver.state.repair_flows().await {
                Ok(b) if !b.is_empty() => {
                    tracing::warn!(bridges = ?b, "flows were missing; re-programmed")
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "flow audit"),
            }
        }
    });
}

/// Releases subnets of failed network creations that Docker could not release, once older
/// than `grace` seconds.
async fn collect_subnets(driver: &Driver, socket: &Path, grace: u64) {
    let used = match crate::docker::ipam_subnets(socket, &driver.state.settings.docker_ipam()).await
    {
        Ok(used) => used,
        Err(e) => return tracing::debug!(error = %e, "docker api"),
    };
    match driver.collector.subnets(&used, grace).await {
        Ok(r) if !r.is_empty() => {
            tracing::warn!(subnets = ?r, "released subnets no network uses")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "subnet collection failed"),
    }
}

/// Refreshes network names and collects endpoints Docker forgot, from the Engine API,
/// every `gc_secs` seconds; endpoints and subnets younger than that are never collected
/// (Docker may not list them yet). QoS overrides of containers Docker no longer has go too.
fn spawn_docker_watch(
    tasks: &mut Tasks,
    driver: Arc<Driver>,
    socket: std::path::PathBuf,
    names: Arc<RwLock<crate::docker::Names>>,
    activated: Arc<Notify>,
    gc_secs: u64,
) {
    tasks.spawn(async move {
        loop {
            match crate::docker::networks(&socket, &driver.state.settings.docker_driver()).await {
                Ok(nets) => {
                    *names.write().await = crate::docker::Names::of(&nets);
                    let known: BTreeMap<String, BTreeSet<String>> = nets
                        .into_iter()
                        .map(|(id, n)| (id, n.containers.into_keys().collect()))
                        .collect();
                    match driver.collector.endpoints(&known, gc_secs).await {
                        Ok(r) if !r.is_empty() => {
                            tracing::warn!(endpoints = ?r, "removed endpoints docker no longer knows")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "endpoint collection failed"),
                    }
                    match driver.collector.networks(&known, gc_secs).await {
                        Ok(r) if !r.is_empty() => {
                            tracing::warn!(networks = ?r, "removed networks docker does not have")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "network collection failed"),
                    }
                    match driver.collector.addresses(gc_secs).await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(count = n, "released addresses no endpoint got"),
                        Err(e) => tracing::warn!(error = %e, "address collection failed"),
                    }
                    collect_subnets(&driver, &socket, gc_secs).await;
                    if let Ok(ids) = crate::docker::container_ids(&socket).await {
                        match driver.qos.collect(&ids).await {
                            Ok(r) if !r.is_empty() => {
                                tracing::info!(overrides = ?r, "removed qos overrides of containers that are gone")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "qos override collection failed"),
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "docker api"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(gc_secs)) => {}
                _ = activated.notified() => tokio::time::sleep(Duration::from_secs(5)).await,
            }
        }
    });
}
