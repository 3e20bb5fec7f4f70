//! `qingluan top`: a live view of this host's containers, one row each, like `docker stats`
//! or iftop: rates in the container's directions with sparklines of the last minute, drops
//! per second, sorted and filtered by keys. On a terminal it takes the full screen (raw mode,
//! alternate screen, restored on every way out); otherwise it prints one line per refresh.
//!
//! The counters come from the daemon's `/v1/stats` (read from OVS), the names from the Docker
//! Engine API; rates are the differences between two refreshes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::{Attribute, Print, SetAttribute};
use crossterm::terminal::{self, ClearType};
use crossterm::{cursor, execute, queue};
use futures::StreamExt;
use qingluan_core::model::head;
use qingluan_core::service::EndpointStats;

use crate::cli::{bits, Client};
use crate::docker::Names;
use crate::host_stats::{rows, StatsRow};

/// What the rows are sorted by (highest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// What the containers receive.
    Rx,
    /// What they transmit.
    Tx,
    /// Their drops (port drops and spoofed frames) per second.
    Drops,
}

/// Options of `qingluan top`.
pub struct TopArgs {
    /// Only this network (Docker name or ID prefix).
    pub network: Option<String>,
    /// Initial sort.
    pub sort: SortKey,
    /// Time between refreshes.
    pub interval: Duration,
    /// Stop after this many refreshes.
    pub count: Option<u64>,
    /// Show the rows hosts publish in the cluster store: one host's, or `all`.
    pub host: Option<String>,
}

/// Parses `1s`, `500ms`, `2` (seconds) or `1.5s`; at least 100 ms.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let secs = number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .map(|n| n * unit)
        .ok_or_else(|| format!("invalid interval {s:?} (e.g. 1s, 500ms)"))?;
    if secs < 0.1 {
        return Err(format!("interval {s:?} is below 100ms"));
    }
    if secs > 3600.0 {
        return Err(format!("interval {s:?} is above 1h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Samples kept per row for its sparklines.
const HISTORY: usize = 60;
/// Width of a sparkline.
const SPARK: usize = 20;

/// One container's row.
#[derive(Debug)]
struct Row {
    container: String,
    network: String,
    address: String,
    tx: f64,
    rx: f64,
    drops: f64,
    spoofed: u64,
    tx_history: VecDeque<f64>,
    rx_history: VecDeque<f64>,
}

/// Everything the screen shows.
#[derive(Debug)]
struct Model {
    rows: BTreeMap<String, Row>,
    sort: SortKey,
    network: Option<String>,
    interval: Duration,
    /// Why the last refresh failed, shown until one succeeds.
    error: Option<String>,
}

fn push(history: &mut VecDeque<f64>, v: f64) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(v);
}

/// The last [`SPARK`] values as block characters, scaled to their maximum.
fn sparkline(history: &VecDeque<f64>) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let recent: Vec<f64> = history.iter().rev().take(SPARK).rev().copied().collect();
    let max = recent.iter().copied().fold(0.0, f64::max);
    let mut out: String = std::iter::repeat_n(' ', SPARK - recent.len()).collect();
    out.extend(recent.iter().map(|v| {
        if max <= 0.0 {
            BLOCKS[0]
        } else {
            BLOCKS[((v / max) * 7.0).round() as usize]
        }
    }));
    out
}

impl Model {
    /// Takes a new reading (rows keyed by host and endpoint); containers that are gone leave.
    fn update(&mut self, rows: Vec<StatsRow>) {
        let key =
            |r: &StatsRow| format!("{}/{}", r.host.as_deref().unwrap_or(""), r.stats.endpoint);
        let keys: BTreeSet<String> = rows.iter().map(key).collect();
        self.rows.retain(|k, _| keys.contains(k));
        for r in rows {
            let row = self.rows.entry(key(&r)).or_insert_with(|| Row {
                container: String::new(),
                network: String::new(),
                address: String::new(),
                tx: 0.0,
                rx: 0.0,
                drops: 0.0,
                spoofed: 0,
                tx_history: VecDeque::new(),
                rx_history: VecDeque::new(),
            });
            row.container = match &r.host {
                Some(h) => format!("{}@{h}", r.who()),
                None => r.who(),
            };
            row.network = r.network();
            row.address = r.stats.address.addr().to_string();
            row.tx = r.transmit_bits_per_second;
            row.rx = r.receive_bits_per_second;
            row.drops = r.drops_per_second;
            row.spoofed = r.stats.spoofed;
            push(&mut row.tx_history, row.tx);
            push(&mut row.rx_history, row.rx);
        }
    }

    /// The networks rows are on, sorted.
    fn networks(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.rows.values().map(|r| &r.network).collect();
        set.into_iter().cloned().collect()
    }

    /// The rows shown: the network filter applied, sorted by the key, then by name.
    fn visible(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self
            .rows
            .values()
            .filter(|r| self.network.as_ref().is_none_or(|n| &r.network == n))
            .collect();
        let key = |r: &Row| match self.sort {
            SortKey::Tx => r.tx,
            SortKey::Rx => r.rx,
            SortKey::Drops => r.drops,
        };
        rows.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then_with(|| a.container.cmp(&b.container))
        });
        rows
    }

    /// Cycles the network filter: all, then each network in turn.
    fn next_network(&mut self) {
        let nets = self.networks();
        self.network = match &self.network {
            None => nets.first().cloned(),
            Some(cur) => nets
                .iter()
                .position(|n| n == cur)
                .and_then(|i| nets.get(i + 1))
                .cloned(),
        };
    }

    fn sort_name(&self) -> &'static str {
        match self.sort {
            SortKey::Tx => "tx",
            SortKey::Rx => "rx",
            SortKey::Drops => "drops",
        }
    }

    /// The full screen, at most `height` lines of at most `width` characters.
    fn screen(&self, width: usize, height: usize) -> Vec<String> {
        let rows = self.visible();
        let (tx, rx, drops) = rows.iter().fold((0.0, 0.0, 0.0), |(t, r, d), row| {
            (t + row.tx, r + row.rx, d + row.drops)
        });
        let mut lines = vec![
            format!(
                "qingluan top - {} containers - sort: {} - network: {} - every {:?}",
                rows.len(),
                self.sort_name(),
                self.network.as_deref().unwrap_or("all"),
                self.interval
            ) + &self
                .error
                .as_ref()
                .map(|e| format!(" - refresh failed: {e}"))
                .unwrap_or_default(),
            format!(
                "total  tx {}  rx {}  drops {:.0}/s    keys: t r d sort, n network, a all, q quit",
                bits(tx),
                bits(rx),
                drops
            ),
            String::new(),
            format!(
                "{:<20} {:<16} {:<15} {:>12} {:<SPARK$} {:>12} {:<SPARK$} {:>8} {:>8}",
                "CONTAINER", "NETWORK", "ADDRESS", "TX", "", "RX", "", "DROPS/S", "SPOOFED"
            ),
        ];
        for r in rows {
            lines.push(format!(
                "{:<20} {:<16} {:<15} {:>12} {} {:>12} {} {:>8.0} {:>8}",
                head(&r.container, 20),
                head(&r.network, 16),
                r.address,
                bits(r.tx),
                sparkline(&r.tx_history),
                bits(r.rx),
                sparkline(&r.rx_history),
                r.drops,
                r.spoofed
            ));
        }
        lines.truncate(height);
        for l in &mut lines {
            if let Some((cut, _)) = l.char_indices().nth(width) {
                l.truncate(cut);
            }
        }
        lines
    }

    /// One line: the time and each shown container's rates.
    fn plain(&self) -> String {
        let now = qingluan_core::model::now();
        let mut line = format!(
            "{:02}:{:02}:{:02}",
            now / 3600 % 24,
            now / 60 % 60,
            now % 60
        );
        for r in self.visible() {
            line.push_str(&format!(
                "  {} tx={} rx={} drops={:.0}/s",
                r.container,
                bits(r.tx),
                bits(r.rx),
                r.drops
            ));
        }
        line
    }

    /// Applies a key; `false` means quit.
    fn key(&mut self, k: KeyEvent) -> bool {
        match k.code {
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return false,
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('t') => self.sort = SortKey::Tx,
            KeyCode::Char('r') => self.sort = SortKey::Rx,
            KeyCode::Char('d') => self.sort = SortKey::Drops,
            KeyCode::Char('n') => self.next_network(),
            KeyCode::Char('a') => self.network = None,
            _ => {}
        }
        true
    }
}

/// The terminal in full-screen mode; restored when dropped, whatever the way out.
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        terminal::enable_raw_mode()?;
        let screen = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(screen)
    }

    fn draw(&self, lines: &[String]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        queue!(out, cursor::MoveTo(0, 0), terminal::Clear(ClearType::All))?;
        for (i, l) in lines.iter().enumerate() {
            queue!(out, cursor::MoveTo(0, i as u16))?;
            if i == 3 {
                queue!(
                    out,
                    SetAttribute(Attribute::Reverse),
                    Print(l),
                    SetAttribute(Attribute::Reset)
                )?;
            } else {
                queue!(out, Print(l))?;
            }
        }
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// The next terminal event; never, without a terminal.
async fn next_event(keys: &mut Option<EventStream>) -> Option<std::io::Result<Event>> {
    match keys {
        Some(k) => k.next().await,
        None => std::future::pending().await,
    }
}

/// Where rows come from: this host's counters, rates against the previous reading; or the
/// rows hosts publish in the cluster store (`--host`).
struct Source<'a> {
    client: &'a Client,
    host: Option<String>,
    last: Option<(Instant, Vec<EndpointStats>)>,
    names: Names,
    reads: u64,
}

impl Source<'_> {
    /// The next rows; `None` while there is nothing to compare a first reading with.
    async fn next(&mut self) -> anyhow::Result<Option<Vec<StatsRow>>> {
        if let Some(h) = &self.host {
            return Ok(Some(self.client.host_rows(h).await?));
        }
        let now = self.client.endpoint_stats().await?;
        let at = Instant::now();
        if self.reads.is_multiple_of(10)
            || now
                .iter()
                .any(|s| !self.names.containers.contains_key(&s.endpoint))
        {
            self.names = self.client.names().await;
        }
        self.reads += 1;
        Ok(self.last.replace((at, now.clone())).map(|(t, before)| {
            rows(
                &before,
                now,
                at.duration_since(t).as_secs_f64(),
                &self.names,
            )
        }))
    }
}

/// Runs `qingluan top` until `q` (or `count` refreshes).
pub async fn run(client: &Client, args: TopArgs) -> anyhow::Result<()> {
    let mut model = Model {
        rows: BTreeMap::new(),
        sort: args.sort,
        network: None,
        interval: args.interval,
        error: None,
    };
    let mut source = Source {
        client,
        host: args.host.clone(),
        last: None,
        names: Names::default(),
        reads: 0,
    };
    let mut refreshes = 0u64;
    let tty = std::io::stdout().is_terminal();
    let screen = if tty { Some(Screen::enter()?) } else { None };
    let mut keys = tty.then(EventStream::new);
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // On a terminal a failed refresh (the daemon restarting) is shown and retried;
                // a script gets the error.
                let rows = match source.next().await {
                    Ok(Some(rows)) => rows,
                    Ok(None) => continue,
                    Err(e) if screen.is_some() => {
                        model.error = Some(format!("{e:#}"));
                        let (w, h) = terminal::size()?;
                        if let Some(s) = &screen {
                            s.draw(&model.screen(w.into(), h.into()))?;
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                model.error = None;
                if refreshes == 0 {
                    model.network = args.network.as_ref().map(|want| {
                        rows.iter()
                            .find(|r| r.network_name.as_ref() == Some(want) || r.stats.network.starts_with(want.as_str()))
                            .map_or_else(|| want.clone(), StatsRow::network)
                    });
                }
                model.update(rows);
                refreshes += 1;
                match &screen {
                    Some(s) => {
                        let (w, h) = terminal::size()?;
                        s.draw(&model.screen(w.into(), h.into()))?;
                    }
                    None => println!("{}", model.plain()),
                }
                if args.count.is_some_and(|c| refreshes >= c) {
                    return Ok(());
                }
            }
            ev = next_event(&mut keys) => match ev {
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => {
                    if !model.key(k) {
                        return Ok(());
                    }
                    if let Some(s) = &screen {
                        let (w, h) = terminal::size()?;
                        s.draw(&model.screen(w.into(), h.into()))?;
                    }
                }
                Some(Ok(Event::Resize(w, h))) => {
                    if let Some(s) = &screen {
                        s.draw(&model.screen(w.into(), h.into()))?;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingluan_core::service::Counters;

    fn stats(ep: &str, net: &str, tx: u64, rx: u64, spoofed: u64) -> EndpointStats {
        EndpointStats {
            endpoint: ep.into(),
            network: net.into(),
            mode: qingluan_core::model::Mode::Nat,
            address: "10.1.0.2/24".parse().unwrap(),
            port: format!("qlv{ep}"),
            transmit: Counters {
                bytes: tx,
                ..Default::default()
            },
            receive: Counters {
                bytes: rx,
                ..Default::default()
            },
            spoofed,
            started: 0,
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_interval("10ms").unwrap_err().contains("below 100ms"));
        assert!(parse_interval("1e20").unwrap_err().contains("above 1h"));
        assert!(parse_interval("fast")
            .unwrap_err()
            .contains("invalid interval"));
    }

    #[test]
    fn rates_sort_filter_and_sparklines() {
        let mut m = Model {
            rows: BTreeMap::new(),
            sort: SortKey::Tx,
            network: None,
            interval: Duration::from_secs(1),
            error: None,
        };
        let container = |id: &str, name: &str| crate::docker::Container {
            id: id.into(),
            name: name.into(),
        };
        let names = Names {
            containers: BTreeMap::from([
                ("e1".to_string(), container("c1", "alpha")),
                ("e2".to_string(), container("c2", "beta")),
            ]),
            networks: BTreeMap::from([
                ("n1".to_string(), "web".to_string()),
                ("n2".to_string(), "db".to_string()),
            ]),
            read: None,
        };
        let before = [stats("e1", "n1", 0, 0, 0), stats("e2", "n2", 0, 0, 0)];
        m.update(rows(
            &before,
            vec![
                stats("e1", "n1", 2_000_000, 1000, 0),
                stats("e2", "n2", 1000, 4_000_000, 10),
            ],
            2.0,
            &names,
        ));
        let names_of = |m: &Model| -> Vec<String> {
            m.visible().iter().map(|r| r.container.clone()).collect()
        };
        assert_eq!(m.rows["/e1"].tx, 8_000_000.0, "bits per second");
        assert_eq!(m.rows["/e2"].drops, 5.0);
        assert_eq!(names_of(&m), ["alpha", "beta"]);
        m.key(KeyEvent::from(KeyCode::Char('r')));
        assert_eq!(names_of(&m), ["beta", "alpha"]);
        m.key(KeyEvent::from(KeyCode::Char('d')));
        assert_eq!(names_of(&m), ["beta", "alpha"]);
        m.key(KeyEvent::from(KeyCode::Char('n')));
        assert_eq!(m.network.as_deref(), Some("db"));
        assert_eq!(names_of(&m), ["beta"]);
        m.key(KeyEvent::from(KeyCode::Char('n')));
        assert_eq!(m.network.as_deref(), Some("web"));
        m.key(KeyEvent::from(KeyCode::Char('n')));
        assert_eq!(m.network, None, "after the last network: all again");
        assert!(!m.key(KeyEvent::from(KeyCode::Char('q'))));

        let screen = m.screen(200, 50);
        assert!(screen[0].contains("2 containers"), "{screen:?}");
        assert!(screen[3].starts_with("CONTAINER"), "{screen:?}");
        assert!(
            screen[4].starts_with("beta") && screen[4].contains('█'),
            "{screen:?}"
        );
        assert_eq!(m.screen(10, 2).len(), 2);
        assert!(m.screen(10, 2).iter().all(|l| l.chars().count() <= 10));
        assert!(m.plain().contains("alpha tx=8.0Mbit/s"), "{}", m.plain());

        let mut remote = rows(&[], vec![stats("e1", "n1", 5, 5, 0)], 0.0, &names);
        remote[0].host = Some("h2".into());
        m.update(remote);
        assert_eq!(
            names_of(&m),
            ["alpha@h2"],
            "gone containers leave; hosts are named"
        );
    }

    #[test]
    fn sparklines_scale_to_their_peak() {
        let h: VecDeque<f64> = [0.0, 1.0, 2.0, 4.0].into_iter().collect();
        let s = sparkline(&h);
        assert_eq!(s.chars().count(), SPARK);
        assert!(s.ends_with("▁▃▅█"), "{s}");
    }
}
