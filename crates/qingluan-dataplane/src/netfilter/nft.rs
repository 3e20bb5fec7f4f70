//! The real netfilter adapter: renders the ruleset as an `nft -f` script and keeps dockerd's
//! DOCKER-USER chain accepting our bridges through `iptables` (iptables-nft on Debian).

use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{Firewall, FirewallError, Ruleset};

/// Applies rulesets with the `nft` and `iptables` commands.
#[derive(Default)]
pub struct NftFirewall {
    /// Hash of the last ruleset this process installed, to skip unchanged applies.
    last: Mutex<Option<String>>,
    /// Whether the last ruleset had segments (DOCKER-USER accepts wanted).
    segments: std::sync::atomic::AtomicBool,
}

impl NftFirewall {
    /// A new adapter; the first apply always checks the installed state.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Stable 64-bit FNV-1a hash, hex.
fn fnv(text: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The body (everything between the braces but the comment) of the `ip` table.
pub fn render_ip(rules: &Ruleset) -> String {
    let mut s = String::new();
    let gws: Vec<String> = rules
        .segments
        .iter()
        .map(|g| g.gateway.to_string())
        .collect();
    s.push_str("\tset gateways {\n\t\ttype ipv4_addr\n");
    if !gws.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", gws.join(", "));
    }
    s.push_str("\t}\n");
    let gws6: Vec<String> = rules
        .segments
        .iter()
        .filter_map(|g| g.gateway_v6)
        .map(|g| g.to_string())
        .collect();
    s.push_str("\tset gateways6 {\n\t\ttype ipv6_addr\n");
    if !gws6.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", gws6.join(", "));
    }
    s.push_str("\t}\n");
    let mut dnat = String::new();
    for seg in rules.segments.iter().filter(|g| g.external) {
        for d in &seg.dnat {
            let daddr = d
                .host_ip
                .map(|ip| format!("ip daddr {ip} "))
                .unwrap_or_default();
            let _ = writeln!(
                dnat,
                "\t\tmeta nfproto ipv4 {daddr}fib daddr type local {p} dport {hp} dnat ip to {to}:{tp}",
                p = d.proto,
                hp = d.host_port,
                to = d.to,
                tp = d.to_port
            );
        }
    }
    let _ = write!(
        s,
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{dnat}\t}}\n"
    );
    let _ = write!(
        s,
        "\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n{dnat}\t}}\n"
    );
    s.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for seg in rules.segments.iter().filter(|g| g.external) {
        let (br, net) = (&seg.bridge, seg.subnet);
        let _ = writeln!(s, "\t\tip saddr {net} oifname != \"{br}\" masquerade");
        let _ = writeln!(s, "\t\toifname \"{br}\" ip saddr 127.0.0.0/8 masquerade");
        let _ = writeln!(
            s,
            "\t\toifname \"{br}\" ip saddr {net} ct status dnat masquerade"
        );
    }
    s.push_str("\t}\n");
    s.push_str(
        "\tchain forward {\n\t\ttype filter hook forward priority filter - 1; policy accept;\n",
    );
    let all = rules.bridge_wildcard.replace('+', "*");
    for seg in &rules.segments {
        let br = &seg.bridge;
        let _ = writeln!(
            s,
            "\t\tiifname \"{br}\" oifname != \"{br}\" oifname \"{all}\" drop"
        );
        if seg.external {
            let _ = writeln!(
                s,
                "\t\toifname \"{br}\" iifname != \"{br}\" ct state established,related accept"
            );
            let _ = writeln!(
                s,
                "\t\toifname \"{br}\" iifname != \"{br}\" ct status dnat accept"
            );
            let _ = writeln!(s, "\t\toifname \"{br}\" iifname != \"{br}\" drop");
        } else {
            let _ = writeln!(s, "\t\tiifname \"{br}\" oifname != \"{br}\" drop");
            let _ = writeln!(s, "\t\toifname \"{br}\" iifname != \"{br}\" drop");
        }
    }
    s.push_str("\t}\n");
    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter - 1; policy accept;\n");
    for seg in &rules.segments {
        let (br, gw) = (&seg.bridge, seg.gateway);
        // IPv6 neighbour discovery and link-local traffic to the gateway port stay allowed.
        let gw6 = seg
            .gateway_v6
            .map(|g| g.to_string())
            .unwrap_or_else(|| "::1".into());
        if seg.external {
            let _ = writeln!(
                s,
                "\t\tiifname \"{br}\" ip daddr != {gw} ip daddr @gateways drop"
            );
            let _ = writeln!(
                s,
                "\t\tiifname \"{br}\" ip6 daddr != {gw6} ip6 daddr @gateways6 drop"
            );
        } else {
            let _ = writeln!(s, "\t\tiifname \"{br}\" ip daddr != {gw} drop");
            let _ = writeln!(
                s,
                "\t\tiifname \"{br}\" ip6 daddr != {{ {gw6}, fe80::/10, ff00::/8 }} drop"
            );
        }
    }
    s.push_str("\t}\n");
    s
}

/// The body of the `netdev` guard table.
pub fn render_guard(rules: &Ruleset) -> String {
    let mut s = String::new();
    for dev in &rules.guards {
        let _ = writeln!(
            s,
            "\tchain {dev} {{\n\t\ttype filter hook ingress device \"{dev}\" priority 0; policy drop;\n\t}}"
        );
    }
    s
}

/// The complete `nft -f` script that replaces both tables atomically (or removes them).
pub fn render_script(rules: &Ruleset) -> (String, String) {
    let ip = render_ip(rules);
    let guard = render_guard(rules);
    let hash = fnv(&format!("{ip}\n{guard}"));
    let n = &rules.name;
    let mut s = format!("table inet {n} {{}}\ndelete table inet {n}\ntable netdev {n}_guard {{}}\ndelete table netdev {n}_guard\n");
    if !rules.is_empty() {
        let _ = write!(s, "table inet {n} {{\n\tcomment \"{hash}\"\n{ip}}}\n");
        let _ = write!(
            s,
            "table netdev {n}_guard {{\n\tcomment \"{hash}\"\n{guard}}}\n"
        );
    }
    (s, hash)
}

async fn run(
    cmd: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(bool, String, String), FirewallError> {
    let spawn_err = |e| FirewallError::Spawn {
        cmd: cmd.to_string(),
        source: e,
    };
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(spawn_err)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

async fn installed_hash(family: &str, table: &str) -> Option<String> {
    let (ok, out, _) = run("nft", &["list", "table", family, table], None)
        .await
        .ok()?;
    if !ok {
        return None;
    }
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("comment \""))?;
    Some(
        line.trim()
            .trim_start_matches("comment \"")
            .trim_end_matches('"')
            .to_string(),
    )
}

/// Makes dockerd's DOCKER-USER chain accept (or stop accepting) our bridges' traffic.
async fn docker_user(rules: &Ruleset) -> Result<(), FirewallError> {
    let Ok((exists, _, _)) = run("iptables", &["-w", "-S", "DOCKER-USER"], None).await else {
        return Ok(());
    };
    if !exists {
        return Ok(());
    }
    for dir in ["-i", "-o"] {
        let spec = [
            dir,
            rules.bridge_wildcard.as_str(),
            "-m",
            "comment",
            "--comment",
            rules.name.as_str(),
            "-j",
            "ACCEPT",
        ];
        let check: Vec<&str> = ["-w", "-C", "DOCKER-USER"]
            .iter()
            .chain(spec.iter())
            .copied()
            .collect();
        let present = run("iptables", &check, None).await?.0;
        if rules.segments.is_empty() {
            if present {
                let del: Vec<&str> = ["-w", "-D", "DOCKER-USER"]
                    .iter()
                    .chain(spec.iter())
                    .copied()
                    .collect();
                run("iptables", &del, None).await?;
            }
        } else if !present {
            let ins: Vec<&str> = ["-w", "-I", "DOCKER-USER", "1"]
                .iter()
                .chain(spec.iter())
                .copied()
                .collect();
            let (ok, _, err) = run("iptables", &ins, None).await?;
            if !ok {
                return Err(FirewallError::Command {
                    cmd: format!("iptables {}", ins.join(" ")),
                    stderr: err,
                });
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Firewall for NftFirewall {
    async fn apply(&self, rules: &Ruleset, force: bool) -> Result<bool, FirewallError> {
        let (script, hash) = render_script(rules);
        let want = if rules.is_empty() {
            None
        } else {
            Some(hash.clone())
        };
        let last = self.last.lock().unwrap().clone();
        if !force && last.as_ref() == Some(&hash) {
            return Ok(false);
        }
        // Without `force`, what this process installed last is what is there; only a full
        // pass (start-up, periodic) reads the installed tables back.
        let changed = if force || last.is_none() {
            let ip = installed_hash("inet", &rules.name).await;
            let guard = installed_hash("netdev", &format!("{}_guard", rules.name)).await;
            !(ip == want && guard == want)
        } else {
            true
        };
        if changed {
            let (ok, _, err) = run("nft", &["-f", "-"], Some(&script)).await?;
            if !ok {
                *self.last.lock().unwrap() = None;
                return Err(FirewallError::Command {
                    cmd: format!("nft -f (tables {0}, {0}_guard)", rules.name),
                    stderr: err,
                });
            }
        }
        let had_segments = self.segments.swap(
            !rules.segments.is_empty(),
            std::sync::atomic::Ordering::SeqCst,
        );
        if force || last.is_none() || had_segments == rules.segments.is_empty() {
            docker_user(rules).await?;
        }
        *self.last.lock().unwrap() = Some(hash);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::{Dnat, Segment};

    #[test]
    fn renders_nat_segment() {
        let rules = Ruleset {
            name: "qingluan".into(),
            bridge_wildcard: "qlb+".into(),
            segments: vec![Segment {
                bridge: "qlb1".into(),
                subnet: "10.240.0.0/24".parse().unwrap(),
                gateway: "10.240.0.1".parse().unwrap(),
                gateway_v6: None,
                external: true,
                dnat: vec![Dnat {
                    proto: "tcp".into(),
                    host_ip: None,
                    host_port: 1080,
                    to: "10.240.0.2".parse().unwrap(),
                    to_port: 80,
                }],
            }],
            guards: vec!["qlv1".into()],
        };
        let (script, hash) = render_script(&rules);
        assert!(script.contains("fib daddr type local tcp dport 1080 dnat ip to 10.240.0.2:80"));
        assert!(script.contains("ip saddr 10.240.0.0/24 oifname != \"qlb1\" masquerade"));
        assert!(
            script.contains("type filter hook ingress device \"qlv1\" priority 0; policy drop;")
        );
        assert!(script.contains(&format!("comment \"{hash}\"")));
        assert_eq!(render_script(&rules).1, hash);
    }

    #[test]
    fn empty_ruleset_removes_tables() {
        let (script, _) = render_script(&Ruleset {
            name: "qingluan".into(),
            ..Default::default()
        });
        assert_eq!(
            script,
            "table inet qingluan {}\ndelete table inet qingluan\ntable netdev qingluan_guard {}\ndelete table netdev qingluan_guard\n"
        );
    }
}
