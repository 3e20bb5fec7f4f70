//! Doctor checks of Docker's side: dockerd reachable and its version, qingluan ordered before
//! dockerd at boot, both plugin sockets answering, and forwarding (ip_forward, the FORWARD
//! policy and our DOCKER-USER accepts).

use std::path::Path;

use super::{Check, Records, PROBE};
use crate::config::Config;
use crate::http::request;

/// Every Docker check.
pub async fn checks(config: &Config, daemon_up: bool, records: Option<&Records>) -> Vec<Check> {
    vec![
        dockerd(&config.daemon.docker_socket).await,
        start_order(config.daemon.managed_plugin.as_deref()).await,
        sockets(config, daemon_up).await,
        forwarding(&config.daemon.name, records).await,
    ]
}

async fn dockerd(socket: &Path) -> Check {
    let version = async {
        let (code, body) = request(socket, "GET", "/version", None, PROBE).await?;
        anyhow::ensure!(code == 200, "answered {code}");
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        anyhow::Ok(format!(
            "{} (API {})",
            v["Version"].as_str().unwrap_or("?"),
            v["ApiVersion"].as_str().unwrap_or("?")
        ))
    };
    match version.await {
        Ok(v) => Check::pass("dockerd", format!("version {v} at {}", socket.display())),
        Err(e) => Check::fail(
            "dockerd",
            format!("no Engine API at {}: {e:#}", socket.display()),
            "start dockerd: systemctl start docker; set daemon.docker_socket if it listens elsewhere",
        ),
    }
}

/// Runs a command; `None` when it cannot run, else whether it succeeded and its stdout.
async fn output(cmd: &str, args: &[&str]) -> Option<(bool, String)> {
    let o = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    Some((
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    ))
}

/// With systemd: qingluan.service is installed and ordered before docker.service, so dockerd
/// finds the plugin sockets when it restores its networks.
async fn start_order(managed: Option<&str>) -> Check {
    const NAME: &str = "start order";
    if let Some(plugin) = managed {
        return Check::skip(
            NAME,
            format!("dockerd starts the managed plugin {plugin} itself"),
        );
    }
    if !Path::new("/run/systemd/system").exists() {
        return Check::skip(
            NAME,
            "no systemd: start qingluan before dockerd yourself (dockerd waits about 15 s \
             for each missing plugin)",
        );
    }
    let Some((_, show)) = output(
        "systemctl",
        &[
            "show",
            "qingluan.service",
            "-p",
            "LoadState",
            "-p",
            "Before",
        ],
    )
    .await
    else {
        return Check::skip(NAME, "systemctl cannot run");
    };
    let loaded = show.lines().any(|l| l == "LoadState=loaded");
    let before = show
        .lines()
        .any(|l| l.starts_with("Before=") && l.split([' ', '=']).any(|u| u == "docker.service"));
    match (loaded, before) {
        (true, true) => Check::pass(NAME, "qingluan.service starts before docker.service"),
        (true, false) => Check::fail(
            NAME,
            "qingluan.service is not ordered before docker.service",
            "add Before=docker.service to its [Unit] section, then systemctl daemon-reload",
        ),
        (false, _) => Check::fail(
            NAME,
            "qingluan.service is not installed",
            "install the .deb (scripts/package.sh), or copy packaging/qingluan.service to \
             /etc/systemd/system/ and systemctl enable qingluan",
        ),
    }
}

/// Both plugin sockets answer `Plugin.Activate` with their interface.
async fn sockets(config: &Config, daemon_up: bool) -> Check {
    const NAME: &str = "plugin sockets";
    if !daemon_up {
        return Check::skip(NAME, "the daemon is not running");
    }
    if let Some(plugin) = &config.daemon.managed_plugin {
        return managed(&config.daemon.docker_socket, plugin).await;
    }
    let name = &config.daemon.name;
    let mut found = Vec::new();
    for (file, implements) in [
        (format!("{name}.sock"), "NetworkDriver"),
        (format!("{name}Ipam.sock"), "IpamDriver"),
    ] {
        let path = config.daemon.plugin_dir.join(file);
        let answer = request(
            &path,
            "POST",
            "/Plugin.Activate",
            Some(b"{}".to_vec()),
            PROBE,
        )
        .await
        .ok()
        .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok());
        let ok = answer.as_ref().is_some_and(|v| {
            v["Implements"]
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i == implements))
        });
        if !ok {
            return Check::fail(
                NAME,
                format!("{} does not answer as {implements}", path.display()),
                format!(
                    "restart qingluan; dockerd looks for plugins in {} (daemon.plugin_dir)",
                    config.daemon.plugin_dir.display()
                ),
            );
        }
        found.push(format!("{} ({implements})", path.display()));
    }
    Check::pass(NAME, found.join(", "))
}

/// A managed plugin's socket lives in its own directory: dockerd says whether it is enabled.
async fn managed(docker: &Path, plugin: &str) -> Check {
    const NAME: &str = "plugin sockets";
    let path = format!("/plugins/{plugin}/json");
    let enabled = match request(docker, "GET", &path, None, PROBE).await {
        Ok((200, body)) => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["Enabled"].as_bool()),
        _ => None,
    };
    match enabled {
        Some(true) => Check::pass(NAME, format!("managed plugin {plugin} is enabled")),
        Some(false) => Check::fail(
            NAME,
            format!("managed plugin {plugin} is disabled"),
            format!("docker plugin enable {plugin}"),
        ),
        None => Check::fail(
            NAME,
            format!("dockerd has no plugin {plugin}"),
            "docker plugin create it from target/plugin (scripts/package.sh), or unset \
             daemon.managed_plugin",
        ),
    }
}

/// Routed networks need `ip_forward`, and under dockerd's FORWARD policy DROP our accepts in
/// DOCKER-USER.
async fn forwarding(name: &str, records: Option<&Records>) -> Check {
    const NAME: &str = "forwarding";
    let routed = records.map_or(0, |r| {
        r.networks
            .iter()
            .filter(|n| super::network::routed(n))
            .count()
    });
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    if !forward && routed > 0 {
        return Check::fail(
            NAME,
            format!("net.ipv4.ip_forward is 0: {routed} routed networks cannot reach out"),
            "sysctl -w net.ipv4.ip_forward=1 (dockerd sets it unless run with --ip-forward=false)",
        );
    }
    let Some((true, policy)) = output("iptables", &["-w", "-S", "FORWARD"]).await else {
        return Check::skip(NAME, "iptables cannot list FORWARD here");
    };
    if !policy.lines().any(|l| l == "-P FORWARD DROP") {
        return Check::pass(
            NAME,
            format!(
                "ip_forward {}, FORWARD policy ACCEPT",
                if forward {
                    "on"
                } else {
                    "off (no routed network needs it)"
                }
            ),
        );
    }
    let Some((true, user)) = output("iptables", &["-w", "-S", "DOCKER-USER"]).await else {
        return Check::skip(
            NAME,
            "FORWARD policy DROP and no DOCKER-USER chain: dockerd runs with --iptables=false",
        );
    };
    let ours = user
        .lines()
        .filter(|l| l.contains(&format!("--comment {name} ")) && l.ends_with("-j ACCEPT"))
        .count();
    if routed > 0 && ours < 2 {
        return Check::fail(
            NAME,
            format!(
                "FORWARD policy DROP and DOCKER-USER lacks qingluan's accepts: {routed} routed \
                 networks are cut off"
            ),
            "restart qingluan (it inserts them again); look for a firewall reload that flushed DOCKER-USER",
        );
    }
    Check::pass(
        NAME,
        format!("FORWARD policy DROP, DOCKER-USER accepts {routed} routed networks' bridges"),
    )
}
