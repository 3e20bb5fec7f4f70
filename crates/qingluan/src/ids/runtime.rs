//! The detector in the daemon: one thread per watched bridge reads its capture port
//! (`capture.rs`) and feeds the frames to a `qingluan_ids::Detector`; its alerts go, named
//! with containers and networks, to one task that appends them to the EVE log, counts them
//! and, for a network in IPS mode, quarantines their source (`service/ids.rs`).
//!
//! A manager keeps the capture threads matching the watches (every 5 s, and before an
//! `ids` command answers): it creates missing capture ports (then reconciles, so the
//! mirrors to them appear), starts and stops threads, and hands the threads the current
//! address → container map (also the ARP bindings of the spoof detector), and adopts the
//! cluster's rule set when another host loaded a newer one. The rule set is shared: a
//! reload builds it once and each thread swaps it in before its next frame.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use qingluan_core::ids::{self, IdsMode, IdsRules, RuleFile};
use qingluan_core::service::Driver;
use qingluan_ids::{Action, Alert, Detector, EveNames, RuleSet, Vars};
use tokio::sync::mpsc;

use super::capture::Capture;
use crate::config::IdsConfig;

/// A watched address: its container and network, and the endpoint's MAC when the
/// container runs here.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Host {
    container: Option<String>,
    network: String,
    network_name: Option<String>,
    mac: Option<[u8; 6]>,
}

impl Host {
    fn local(&self) -> bool {
        self.mac.is_some()
    }
}

/// What the capture threads read: the rule set and the watched addresses' MACs, each
/// with a generation they compare with their own.
#[derive(Default)]
struct Shared {
    rules: RwLock<Arc<RuleSet>>,
    rules_generation: AtomicU64,
    bindings: RwLock<Arc<HashMap<Ipv4Addr, [u8; 6]>>>,
    bindings_generation: AtomicU64,
}

/// Counters of one capture thread.
#[derive(Default, Debug)]
pub struct CaptureStats {
    /// Frames inspected.
    pub packets: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Frames the kernel dropped because the detector fell behind.
    pub drops: AtomicU64,
    /// Alerts raised.
    pub alerts: AtomicU64,
}

struct Thread {
    stop: Arc<AtomicBool>,
    stats: Arc<CaptureStats>,
    join: std::thread::JoinHandle<()>,
}

/// An alert on its way to the log, with the capture port it came from.
struct Found {
    alert: Alert,
    reader: String,
}

/// The loaded rule set as `ids status` shows it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RulesInfo {
    /// Paths or patterns as given.
    pub paths: Vec<String>,
    /// The files they named.
    pub files: Vec<String>,
    /// When loaded (seconds since the epoch); 0: never.
    pub loaded: u64,
    /// Rules running.
    pub count: usize,
    /// Rules not loaded because they use what the detector does not support, as
    /// `file:line: sid N uses KEYWORD`.
    pub unsupported: Vec<String>,
}

/// The detector of this daemon.
pub struct Runtime {
    driver: Arc<Driver>,
    config: IdsConfig,
    names: Arc<tokio::sync::RwLock<crate::docker::Names>>,
    docker: std::path::PathBuf,
    shared: Arc<Shared>,
    hosts: tokio::sync::Mutex<HashMap<IpAddr, Host>>,
    threads: tokio::sync::Mutex<BTreeMap<String, Thread>>,
    stats: std::sync::Mutex<BTreeMap<String, Arc<CaptureStats>>>,
    info: std::sync::Mutex<RulesInfo>,
    current: std::sync::Mutex<Option<IdsRules>>,
    counts: std::sync::Mutex<BTreeMap<(u32, String), u64>>,
    found: mpsc::UnboundedSender<Found>,
    inbox: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Found>>>,
}

/// How long a capture thread waits for a frame before it looks at its generations.
const POLL: Duration = Duration::from_millis(200);
/// How often the manager checks the watches without being asked.
const EVERY: Duration = Duration::from_secs(5);

impl Runtime {
    /// A detector that runs nothing until [`Runtime::run`]; network names come from the
    /// daemon's cache of Docker's, or from the Engine API at `docker`.
    pub fn new(
        driver: Arc<Driver>,
        config: IdsConfig,
        names: Arc<tokio::sync::RwLock<crate::docker::Names>>,
        docker: std::path::PathBuf,
    ) -> Arc<Runtime> {
        let (found, inbox) = mpsc::unbounded_channel();
        Arc::new(Runtime {
            driver,
            config,
            names,
            docker,
            shared: Arc::default(),
            hosts: Default::default(),
            threads: Default::default(),
            stats: Default::default(),
            info: Default::default(),
            current: Default::default(),
            counts: Default::default(),
            found,
            inbox: std::sync::Mutex::new(Some(inbox)),
        })
    }

    /// The rule variables: the defaults, `$HOME_NET` from the configuration.
    fn vars(&self) -> Vars {
        let mut o = HashMap::new();
        if let Some(h) = &self.config.home_net {
            o.insert("HOME_NET".to_string(), h.clone());
        }
        Vars::with_overrides(&o)
    }

    /// The EVE log's path.
    pub fn eve_log(&self) -> &std::path::Path {
        &self.config.eve_log
    }

    /// Reads the files `paths` name and parses them; a syntax error names `file:line`.
    pub fn read_rules(&self, paths: &[String]) -> Result<(IdsRules, RuleSet), String> {
        let mut files = Vec::new();
        for p in paths {
            for path in expand(p)? {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read rule file {path}: {e}"))?;
                files.push(RuleFile { path, text });
            }
        }
        let set = self.parse(&files)?;
        Ok((
            IdsRules {
                id: IdsRules::ID.into(),
                paths: paths.to_vec(),
                files,
                loaded: qingluan_core::model::now(),
            },
            set,
        ))
    }

    fn parse(&self, files: &[RuleFile]) -> Result<RuleSet, String> {
        let pairs: Vec<(String, String)> = files
            .iter()
            .map(|f| (f.path.clone(), f.text.clone()))
            .collect();
        qingluan_ids::load(&pairs, &self.vars()).map_err(|e| e.to_string())
    }

    /// Runs `set` (loaded from `rules`) from the next frame on.
    pub fn use_rules(&self, rules: &IdsRules, set: RuleSet) {
        *self.info.lock().expect("rules info") = RulesInfo {
            paths: rules.paths.clone(),
            files: rules.files.iter().map(|f| f.path.clone()).collect(),
            loaded: rules.loaded,
            count: set.len(),
            unsupported: set
                .unsupported
                .iter()
                .map(|s| format!("{}:{}: sid {} uses {}", s.file, s.line, s.sid, s.keyword))
                .collect(),
        };
        *self.current.lock().expect("current rules") = Some(rules.clone());
        *self.shared.rules.write().expect("rules") = Arc::new(set);
        self.shared.rules_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The rule set running.
    pub fn rules_info(&self) -> RulesInfo {
        self.info.lock().expect("rules info").clone()
    }

    /// The counters of the capture thread reading `reader`, if one runs.
    pub fn capture_stats(&self, reader: &str) -> Option<Arc<CaptureStats>> {
        self.stats.lock().expect("stats").get(reader).cloned()
    }

    /// The counters of every capture thread, by capture port.
    pub fn all_capture_stats(&self) -> Vec<(String, Arc<CaptureStats>)> {
        let stats = self.stats.lock().expect("stats");
        stats.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Alerts raised so far by (sid, network ID).
    pub fn alert_counts(&self) -> BTreeMap<(u32, String), u64> {
        self.counts.lock().expect("counts").clone()
    }

    /// Looks at the watches now (after an `ids` command), so that what the command
    /// changed holds when it answers.
    pub async fn refresh(&self) {
        if let Err(e) = self.manage().await {
            tracing::warn!(error = %e, "ids: cannot start the capture of the watched networks");
        }
    }

    /// Loads the stored rule set (or, when none was ever loaded here, the cluster's, or
    /// else the configured default files, if any exist), then runs the manager and the alert sink until aborted.
    pub async fn run(self: Arc<Self>) {
        self.load_stored().await;
        let inbox = self.inbox.lock().expect("inbox").take();
        let sink = {
            let me = self.clone();
            async move {
                if let Some(inbox) = inbox {
                    me.sink(inbox).await;
                }
            }
        };
        let manage = async {
            loop {
                self.refresh().await;
                tokio::time::sleep(EVERY).await;
            }
        };
        tokio::join!(sink, manage);
    }

    async fn load_stored(&self) {
        match self.driver.ids.rules().await {
            Ok(Some(r)) => match self.parse(&r.files) {
                Ok(set) => self.use_rules(&r, set),
                Err(e) => tracing::warn!(error = %e, "ids: the stored rule set does not load"),
            },
            Ok(None) if self.driver.state.cluster_ids_rules().await.is_some() => {}
            Ok(None) => {
                let default = vec![self.config.default_rules.clone()];
                if let Ok((r, set)) = self.read_rules(&default) {
                    self.use_rules(&r, set);
                    if let Err(e) = self.driver.ids.adopt_rules(r).await {
                        tracing::warn!(error = %e, "ids: cannot store the default rule set");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "ids: cannot read the stored rule set"),
        }
    }

    /// One look at the watches: capture ports, threads, the watched addresses. One at a
    /// time: the threads' lock is held throughout.
    async fn manage(&self) -> anyhow::Result<()> {
        let mut threads = self.threads.lock().await;
        let state = &self.driver.state;
        self.adopt_cluster_rules().await;
        let watches = state.ids_watches().await?;
        if watches.is_empty() && threads.is_empty() {
            return Ok(());
        }
        if self.driver.ids.ensure_captures().await? {
            state.sync(false).await?;
        }
        let nets = state.networks().await?;
        let (hosts, bindings) = self.read_hosts(&watches).await?;
        *self.hosts.lock().await = hosts;
        if **self.shared.bindings.read().expect("bindings") != bindings {
            *self.shared.bindings.write().expect("bindings") = Arc::new(bindings);
            self.shared
                .bindings_generation
                .fetch_add(1, Ordering::SeqCst);
        }
        let prefix = &state.settings.prefix;
        let wanted: Vec<String> = ids::watched_bridges(&watches, &nets, prefix)
            .iter()
            .map(|b| ids::capture_ports(prefix, b).1)
            .collect();
        let gone: Vec<String> = threads
            .keys()
            .filter(|r| !wanted.contains(r) || threads[*r].join.is_finished())
            .cloned()
            .collect();
        for reader in gone {
            if let Some(t) = threads.remove(&reader) {
                t.stop.store(true, Ordering::SeqCst);
                let _ = tokio::task::spawn_blocking(move || t.join.join()).await;
            }
            self.stats.lock().expect("stats").remove(&reader);
        }
        for reader in wanted {
            if threads.contains_key(&reader) {
                continue;
            }
            let t = self.start(&reader)?;
            self.stats
                .lock()
                .expect("stats")
                .insert(reader.clone(), t.stats.clone());
            threads.insert(reader, t);
        }
        Ok(())
    }

    /// Runs the cluster's rule set when another host loaded one later than this host's.
    async fn adopt_cluster_rules(&self) {
        let Some(shared) = self.driver.state.cluster_ids_rules().await else {
            return;
        };
        let newer = self
            .current
            .lock()
            .expect("current rules")
            .as_ref()
            .is_none_or(|c| shared.loaded > c.loaded);
        if !newer {
            return;
        }
        match self.parse(&shared.files) {
            Ok(set) => {
                if let Err(e) = self.driver.ids.adopt_rules(shared.clone()).await {
                    tracing::warn!(error = %e, "ids: cannot store the cluster's rule set");
                    return;
                }
                tracing::info!(rules = set.len(), "ids: running the cluster's rule set");
                self.use_rules(&shared, set);
            }
            Err(e) => tracing::warn!(error = %e, "ids: the cluster's rule set does not load here"),
        }
    }

    /// The watched networks' container addresses here with their containers and networks,
    /// and their MACs.
    async fn read_hosts(
        &self,
        watches: &[ids::IdsWatch],
    ) -> anyhow::Result<(HashMap<IpAddr, Host>, HashMap<Ipv4Addr, [u8; 6]>)> {
        let state = &self.driver.state;
        let mut names = self.names.read().await.networks.clone();
        if watches.iter().any(|w| !names.contains_key(&w.network)) {
            let driver = state.settings.docker_driver();
            let read = crate::docker::networks(&self.docker, &driver);
            if let Ok(Ok(nets)) = tokio::time::timeout(Duration::from_secs(1), read).await {
                names.extend(nets.into_iter().map(|(id, n)| (id, n.name)));
            }
        }
        let watched: std::collections::HashSet<&str> =
            watches.iter().map(|w| w.network.as_str()).collect();
        let mut hosts = HashMap::new();
        let mut bindings = HashMap::new();
        for ep in state.endpoints().await? {
            if !watched.contains(ep.network_id.as_str()) {
                continue;
            }
            let addr = ep.address.addr();
            bindings.insert(addr, ep.mac.0);
            hosts.insert(
                IpAddr::V4(addr),
                Host {
                    container: ep.container.as_ref().map(|c| c.name.clone()),
                    network: ep.network_id.clone(),
                    network_name: names.get(&ep.network_id).cloned(),
                    mac: Some(ep.mac.0),
                },
            );
        }
        // Other hosts' containers on watched cluster networks are named too; their own host
        // quarantines them.
        let by_key = state.network_ids_by_key().await?;
        for r in state.remote_containers().await {
            let Some(id) = by_key
                .get(&r.network)
                .filter(|id| watched.contains(id.as_str()))
            else {
                continue;
            };
            hosts.entry(IpAddr::V4(r.address)).or_insert_with(|| Host {
                container: Some(r.container.name.clone()),
                network: id.clone(),
                network_name: names.get(id).cloned(),
                mac: None,
            });
        }
        Ok((hosts, bindings))
    }

    fn start(&self, reader: &str) -> anyhow::Result<Thread> {
        let capture = Capture::open(reader, POLL)
            .map_err(|e| anyhow::anyhow!("capture port {reader}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CaptureStats::default());
        let c = &self.config;
        let config = qingluan_ids::Config {
            vars: self.vars(),
            scan_ports: c.scan_ports,
            scan_window: Duration::from_secs(c.scan_window_secs),
            syn_flood_per_sec: c.syn_flood_per_sec,
            icmp_flood_per_sec: c.icmp_flood_per_sec,
            ..Default::default()
        };
        let inspect = Inspect {
            reader: reader.to_string(),
            capture,
            shared: self.shared.clone(),
            stop: stop.clone(),
            stats: stats.clone(),
            found: self.found.clone(),
        };
        let join = std::thread::Builder::new()
            .name(format!("ids {reader}"))
            .spawn(move || inspect.run(config))?;
        tracing::info!(capture = reader, "ids: inspecting");
        Ok(Thread { stop, stats, join })
    }

    /// Writes each alert to the EVE log, named with the containers and network of its
    /// addresses (read again when one is not known yet: a container's name is learnt
    /// after it joined), counts it, and in IPS mode quarantines its source.
    async fn sink(&self, mut inbox: mpsc::UnboundedReceiver<Found>) {
        let path = self.config.eve_log.clone();
        while let Some(f) = inbox.recv().await {
            let a = &f.alert;
            // The modes as they are now: another host may have changed one since the
            // manager last looked.
            let watches = self.driver.state.ids_watches().await.unwrap_or_default();
            let (src, dst) = {
                let mut hosts = self.hosts.lock().await;
                let known = |ip: &IpAddr| hosts.get(ip).is_some_and(|h| h.container.is_some());
                if !(known(&a.src_ip) && known(&a.dest_ip)) {
                    if let Ok((fresh, _)) = self.read_hosts(&watches).await {
                        *hosts = fresh;
                    }
                }
                // An ARP spoofing alert's source address is the one claimed: its sender
                // is who owns the frame's source MAC.
                let src = if a.sid == qingluan_ids::anomaly::SID_ARP_SPOOF {
                    a.src_mac
                        .and_then(|m| hosts.values().find(|h| h.mac == Some(m)))
                        .cloned()
                } else {
                    hosts.get(&a.src_ip).cloned()
                };
                (src, hosts.get(&a.dest_ip).cloned())
            };
            let on = src.as_ref().or(dst.as_ref());
            let ips = |h: &Host| {
                watches
                    .iter()
                    .any(|w| w.network == h.network && w.mode == IdsMode::Ips)
            };
            let names = EveNames {
                in_iface: Some(f.reader.clone()),
                src_container: src.as_ref().and_then(|h| h.container.clone()),
                dest_container: dst.as_ref().and_then(|h| h.container.clone()),
                network: on.map(|h| h.network_name.clone().unwrap_or_else(|| h.network.clone())),
                ips: on.is_some_and(ips),
            };
            if let Err(e) = append(&path, &a.eve_line(&names)) {
                tracing::warn!(error = %e, path = %path.display(), "ids: cannot write the EVE log");
            }
            let network = on.map(|h| h.network.clone());
            *self
                .counts
                .lock()
                .expect("counts")
                .entry((a.sid, network.clone().unwrap_or_default()))
                .or_default() += 1;
            let severe = a.action == Action::Drop || a.priority <= self.config.quarantine_priority;
            // A container of another host is quarantined by the detector of its own host.
            let Some(h) = src.filter(|h| h.local() && ips(h) && severe) else {
                continue;
            };
            let Some(container) = h.container else {
                continue;
            };
            match self.driver.ids.quarantine(&h.network, &container).await {
                Ok(true) => tracing::warn!(
                    container,
                    sid = a.sid,
                    network = %h.network,
                    "ids: quarantined"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    container,
                    error = %e,
                    network = %h.network,
                    "ids: cannot quarantine"
                ),
            }
        }
    }
}

/// Appends one line to the EVE log, creating it and its directory.
fn append(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

/// The files a rule path names: itself, or with one `*` in its file name the matching
/// files of its directory, sorted.
fn expand(pattern: &str) -> Result<Vec<String>, String> {
    let path = std::path::Path::new(pattern);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("rule path {pattern:?} names no file"))?;
    let Some((head, tail)) = name.split_once('*') else {
        return Ok(vec![pattern.to_string()]);
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let hit =
                n.len() >= head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail);
            hit.then(|| dir.join(n).display().to_string())
        })
        .collect();
    if out.is_empty() {
        return Err(format!("no rule file matches {pattern}"));
    }
    out.sort();
    Ok(out)
}

/// One capture thread.
struct Inspect {
    reader: String,
    capture: Capture,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    stats: Arc<CaptureStats>,
    found: mpsc::UnboundedSender<Found>,
}

impl Inspect {
    fn run(self, config: qingluan_ids::Config) {
        let s = &self.shared;
        let mut rules_gen = s.rules_generation.load(Ordering::SeqCst);
        let rules = (**s.rules.read().expect("rules")).clone();
        let mut detector = Detector::new(rules, config);
        let mut bindings_gen = u64::MAX;
        let mut buf = vec![0u8; 1 << 17];
        let mut counted = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let g = s.rules_generation.load(Ordering::SeqCst);
            if g != rules_gen {
                rules_gen = g;
                detector.replace_rules((**s.rules.read().expect("rules")).clone());
            }
            let g = s.bindings_generation.load(Ordering::SeqCst);
            if g != bindings_gen {
                bindings_gen = g;
                detector.set_bindings((**s.bindings.read().expect("bindings")).clone());
            }
            if counted.elapsed() >= Duration::from_secs(1) {
                counted = Instant::now();
                self.stats
                    .drops
                    .fetch_add(self.capture.drops(), Ordering::Relaxed);
            }
            let n = match self.capture.recv(&mut buf) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(capture = %self.reader, error = %e, "ids: capture failed");
                    return;
                }
            };
            self.stats.packets.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
            for alert in detector.inspect(&buf[..n], SystemTime::now()) {
                self.stats.alerts.fetch_add(1, Ordering::Relaxed);
                let _ = self.found.send(Found {
                    alert,
                    reader: self.reader.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_paths_expand_one_star_in_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.rules", "a.rules", "c.txt"] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        let d = dir.path().display();
        assert_eq!(
            expand(&format!("{d}/*.rules")).unwrap(),
            vec![format!("{d}/a.rules"), format!("{d}/b.rules")]
        );
        assert_eq!(
            expand(&format!("{d}/c.txt")).unwrap(),
            vec![format!("{d}/c.txt")]
        );
        assert!(expand(&format!("{d}/*.none"))
            .unwrap_err()
            .contains("no rule file matches"));
    }
}
