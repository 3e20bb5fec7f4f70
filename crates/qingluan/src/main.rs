//! `qingluan`: the daemon (`qingluan daemon`) and its command-line client.
//!
//! The binary is thin: it parses the command line and the config file, picks the backends
//! once, and hands over to `daemon` or `cli`.

mod acl;
mod api;
mod cli;
mod config;
mod connect;
mod containers;
mod daemon;
mod docker;
mod doctor;
mod host_stats;
mod http;
mod ids;
mod metrics;
mod mirror;
mod qos;
mod routes;
mod top;
mod trace;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Open vSwitch network plugin for Docker.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        default_value = "/etc/qingluan/config.toml",
        env = "QINGLUAN_CONFIG"
    )]
    config: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the plugin daemon.
    Daemon {
        /// `text` or `json` log lines (default: `daemon.log_format`, `text`).
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Show the daemon's state.
    Status,
    /// Check what breaks deployments on this host and say how to fix each; exit code 0 only
    /// when every check that applies passes. Works whether the daemon runs or not.
    Doctor,
    /// The path a packet takes from FROM to TO through the pipeline, netfilter and tunnels,
    /// and whether it arrives: `verdict: allowed` or `verdict: dropped (<reason>)`.
    Trace(trace::TraceRequest),
    /// Print the shell completion script for bash, zsh or fish.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (qingluan.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    ManPages {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// IPAM resource pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Traffic scheduling: rate limits and priority classes, changed live.
    #[command(subcommand)]
    Qos(QosCmd),
    /// ACL control: stateful allow and deny rules per network.
    #[command(subcommand)]
    Acl(AclCmd),
    /// Port mirrors: copies of a network's traffic to an analyzer container's port.
    #[command(subcommand)]
    Mirror(MirrorCmd),
    /// Intrusion detection: watch networks, alerts, IPS quarantines.
    #[command(subcommand)]
    Ids(IdsCmd),
    /// Let two networks (nat) or two containers talk: `connect A B`; `connect ls` lists.
    Connect {
        /// A network or container, or `ls`.
        a: String,
        /// The other network or container.
        b: Option<String>,
    },
    /// Isolate two connected networks or containers again.
    Disconnect {
        /// A network or container.
        a: String,
        /// The other.
        b: String,
    },
    /// Traffic of this host's containers: counters and rates per endpoint, in the
    /// container's directions (transmit = what it sent).
    Stats {
        /// Only this network (Docker name or ID prefix).
        #[arg(long)]
        network: Option<String>,
        /// Only this container (name or ID prefix).
        #[arg(long)]
        container: Option<String>,
        /// The rows hosts publish in the cluster store (every 5 s, with etcd): this host
        /// ID's, or `all`.
        #[arg(long)]
        host: Option<String>,
    },
    /// A live view of this host's containers: rates with sparklines, drops; keys t, r, d
    /// sort, n cycles networks, a shows all, q quits. One line per refresh when stdout is
    /// not a terminal.
    Top {
        /// Only this network (Docker name or ID prefix).
        #[arg(long)]
        network: Option<String>,
        /// Sort by what the containers transmit, receive, or drop.
        #[arg(long, value_enum, default_value = "tx")]
        sort: top::SortKey,
        /// Time between refreshes (e.g. 1s, 500ms).
        #[arg(long, default_value = "1s", value_parser = top::parse_interval)]
        interval: std::time::Duration,
        /// Stop after this many refreshes.
        #[arg(short = 'n', long)]
        count: Option<u64>,
        /// The rows hosts publish in the cluster store: this host ID's, or `all`.
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// List this host's networks, or with --cluster the cluster's networks.
    Ls {
        /// List the cluster networks (flat, vlan, vxlan) and the hosts that have them.
        #[arg(long)]
        cluster: bool,
    },
    /// Remove a cluster network from every host (refused while any host has endpoints).
    Rm {
        /// Docker name or cluster key (`vxlan-5001`).
        network: String,
    },
    /// Show one network (Docker name or ID prefix) with its endpoints.
    Inspect {
        /// Name or ID.
        network: String,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// List this host's endpoints, or with --all every endpoint of the cluster.
    Ls {
        /// Every endpoint of every host.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum QosCmd {
    /// Override a container's (or endpoint's) QoS, or with only --network the network's
    /// defaults; values not given stay as they were. Rates like 100mbit, sizes like 256kb.
    Set {
        #[command(flatten)]
        at: QosTarget,
        /// Rate limit of what the container sends.
        #[arg(long)]
        egress_rate: Option<String>,
        /// Rate limit of what the container receives.
        #[arg(long)]
        ingress_rate: Option<String>,
        /// Burst of both directions (needs a rate).
        #[arg(long)]
        burst: Option<String>,
        /// Priority class: high, normal or low.
        #[arg(long)]
        priority: Option<String>,
        /// With only --network: the total of what the network sends out through its
        /// gateway, shared by the priority classes.
        #[arg(long)]
        aggregate_rate: Option<String>,
    },
    /// Effective limits of every endpoint and where each came from.
    Ls {
        /// Only this network (Docker name or ID prefix).
        #[arg(long)]
        network: Option<String>,
    },
    /// Remove a `qos set` override: the next source applies again.
    Rm {
        #[command(flatten)]
        at: QosTarget,
    },
}

/// What `qos set` and `qos rm` act on.
#[derive(clap::Args)]
struct QosTarget {
    /// Container (name or ID prefix) or endpoint (ID prefix); none with --network: the
    /// network's defaults.
    target: Option<String>,
    /// The network (Docker name or ID prefix); needed when the container is on several.
    #[arg(long)]
    network: Option<String>,
}

#[derive(Subcommand)]
enum AclCmd {
    /// Add a rule, enforced on --network's bridge; prints its ID.
    Add(acl::AclRequest),
    /// Every rule with its hits and drops, and the spoof guard's drops.
    Ls {
        /// Only this network (Docker name or ID prefix).
        #[arg(long)]
        network: Option<String>,
    },
    /// Remove a rule by ID (or a unique prefix of it).
    Rm {
        /// The rule's ID.
        id: String,
    },
}

#[derive(Subcommand)]
enum IdsCmd {
    /// Watch --network with the detector (again: change its mode or, with --rules, the rules).
    Enable(ids::EnableRequest),
    /// Stop watching --network.
    Disable(ids::DisableRequest),
    /// Load the rule files again (or --rules instead); a file that does not parse keeps the
    /// running rules.
    Reload(ids::ReloadRequest),
    /// What is watched, packets inspected and dropped, rules loaded, quarantines.
    Status,
    /// Alerts from the EVE log.
    Alerts {
        /// Keep printing new alerts.
        #[arg(long)]
        follow: bool,
        /// Only alerts of the last 30s, 10m, 2h, 1d...
        #[arg(long)]
        since: Option<String>,
    },
    /// Lift the quarantine of a container.
    Release {
        /// The container (name or ID prefix).
        container: String,
    },
}

#[derive(Subcommand)]
enum MirrorCmd {
    /// Copy what --network's containers here send and receive to --to; prints its ID.
    Add(mirror::MirrorRequest),
    /// Every mirror with its port and how many endpoints it copies.
    Ls,
    /// Remove a mirror by ID (or a unique prefix of it).
    Rm {
        /// The mirror's ID.
        id: String,
    },
}

#[derive(Subcommand)]
enum PoolCmd {
    /// List pools with their subnets and address usage.
    Ls,
    /// Create a pool.
    Create {
        /// Pool name.
        name: String,
        /// Supernet subnets are carved from.
        #[arg(long)]
        subnet: String,
        /// Prefix length of carved subnets.
        #[arg(long, default_value_t = 24)]
        prefix: u8,
        /// Routing domain kind: host (nat, nonat), vlan or vxlan.
        #[arg(long, default_value = "host")]
        kind: String,
    },
    /// Remove a pool no network uses.
    Rm {
        /// Pool name.
        name: String,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qingluan: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let reniced = (matches!(args.command, Command::Daemon { .. }) && config.daemon.nice != 0)
        .then(|| daemon::renice(config.daemon.nice));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args, config, reniced)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qingluan: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes `qingluan.1` and `qingluan-<sub>[-<sub>].1` for every visible subcommand.
fn man_pages(cmd: clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let cmd = cmd.name(name.to_string());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub.clone(), &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

/// Runs a command; `reniced` is how setting the daemon's nice value went.
async fn run(
    args: Args,
    config: config::Config,
    reniced: Option<std::io::Result<()>>,
) -> anyhow::Result<()> {
    let client = cli::Client {
        socket: config.daemon.api_socket.clone(),
        docker: config.daemon.docker_socket.clone(),
        driver: config.settings().docker_driver(),
        json: args.json,
    };
    match args.command {
        Command::Daemon { log_format } => {
            let format = log_format.unwrap_or_else(|| config.daemon.log_format.clone());
            config::check_log_format(&format)?;
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.daemon.log.clone());
            let logs = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr);
            if format == "json" {
                logs.json().init();
            } else {
                logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .init();
            }
            if let Some(Err(e)) = reniced {
                tracing::warn!(error = %e, nice = config.daemon.nice, "cannot set the daemon's nice value; its calls may wait for a core while the host is busy");
            }
            let _crash_points = fail::FailScenario::setup();
            std::panic::set_hook(Box::new(|info| {
                let backtrace = std::backtrace::Backtrace::force_capture();
                tracing::error!(%info, %backtrace, "defect: a task panicked");
            }));
            daemon::run(config).await
        }
        Command::Status => client.status().await,
        Command::Doctor => doctor::run(&config, args.json).await,
        Command::Trace(r) => client.trace(&r).await,
        Command::Completions { shell } => {
            let mut cmd = <Args as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "qingluan", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(())
        }
        Command::ManPages { dir } => {
            std::fs::create_dir_all(&dir)?;
            man_pages(<Args as clap::CommandFactory>::command(), "qingluan", &dir)
        }
        Command::Network(NetworkCmd::Ls { cluster: false }) => client.network_ls().await,
        Command::Network(NetworkCmd::Ls { cluster: true }) => client.cluster_network_ls().await,
        Command::Network(NetworkCmd::Rm { network }) => client.network_rm(&network).await,
        Command::Network(NetworkCmd::Inspect { network }) => client.network_inspect(&network).await,
        Command::Endpoint(EndpointCmd::Ls { all: false }) => client.endpoint_ls().await,
        Command::Endpoint(EndpointCmd::Ls { all: true }) => client.endpoint_ls_all().await,
        Command::Pool(PoolCmd::Ls) => client.pool_ls().await,
        Command::Pool(PoolCmd::Create {
            name,
            subnet,
            prefix,
            kind,
        }) => client.pool_create(&name, &subnet, prefix, &kind).await,
        Command::Pool(PoolCmd::Rm { name }) => client.pool_rm(&name).await,
        Command::Qos(QosCmd::Set {
            at,
            egress_rate,
            ingress_rate,
            burst,
            priority,
            aggregate_rate,
        }) => {
            client
                .qos_set(&qos::QosRequest {
                    target: at.target,
                    network: at.network,
                    egress_rate,
                    ingress_rate,
                    burst,
                    priority,
                    aggregate_rate,
                })
                .await
        }
        Command::Qos(QosCmd::Ls { network }) => client.qos_ls(network.as_deref()).await,
        Command::Qos(QosCmd::Rm { at }) => {
            client
                .qos_rm(&qos::QosRequest {
                    target: at.target,
                    network: at.network,
                    ..Default::default()
                })
                .await
        }
        Command::Acl(AclCmd::Add(rule)) => client.acl_add(&rule).await,
        Command::Connect { a, b: None } if a == "ls" => client.connect_ls().await,
        Command::Connect { a, b: None } => {
            anyhow::bail!("give two networks or two containers to connect {a} with")
        }
        Command::Connect { a, b: Some(b) } => client.connect(&a, &b, true).await,
        Command::Disconnect { a, b } => client.connect(&a, &b, false).await,
        Command::Acl(AclCmd::Ls { network }) => client.acl_ls(network.as_deref()).await,
        Command::Acl(AclCmd::Rm { id }) => client.acl_rm(&id).await,
        Command::Ids(IdsCmd::Enable(r)) => client.ids_enable(&r).await,
        Command::Ids(IdsCmd::Disable(r)) => client.ids_disable(&r).await,
        Command::Ids(IdsCmd::Reload(r)) => client.ids_reload(&r).await,
        Command::Ids(IdsCmd::Status) => client.ids_status().await,
        Command::Ids(IdsCmd::Alerts { follow, since }) => {
            let since = since.as_deref().map(ids::parse_since).transpose()?;
            client.ids_alerts(since, follow).await
        }
        Command::Ids(IdsCmd::Release { container }) => client.ids_release(&container).await,
        Command::Mirror(MirrorCmd::Add(r)) => client.mirror_add(&r).await,
        Command::Mirror(MirrorCmd::Ls) => client.mirror_ls().await,
        Command::Mirror(MirrorCmd::Rm { id }) => client.mirror_rm(&id).await,
        Command::Stats {
            network,
            container,
            host,
        } => {
            client
                .stats(network.as_deref(), container.as_deref(), host.as_deref())
                .await
        }
        Command::Top {
            network,
            sort,
            interval,
            count,
            host,
        } => {
            top::run(
                &client,
                top::TopArgs {
                    network,
                    sort,
                    interval,
                    count,
                    host,
                },
            )
            .await
        }
    }
}
