//! The real netfilter adapter: renders the ruleset as an `nft -f` script and keeps dockerd's
//! DOCKER-USER chain accepting our bridges through `iptables` (iptables-nft on Debian).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use ipnet::Ipv6Net;

use super::{Cond, Firewall, FirewallError, Iface, Rule, Ruleset, Verdict};

/// What this process knows to be installed: the `inet` table's hash and the guard chains.
#[derive(Clone, Debug, PartialEq)]
struct Installed {
    hash: Option<String>,
    guards: BTreeSet<String>,
}

/// Applies rulesets with the `nft` and `iptables` commands.
#[derive(Default)]
pub struct NftFirewall {
    /// What the last apply of this process left, to change only what differs; `None` when
    /// unknown (nothing applied yet, or the last apply failed).
    last: Mutex<Option<Installed>>,
    /// The ruleset generation at which a full pass last found the tables as `last` says
    /// (`generation.rs`); `None` after any change of ours.
    verified: Mutex<Option<u32>>,
    /// Whether the last ruleset wanted DOCKER-USER to accept our bridges.
    accepting: std::sync::atomic::AtomicBool,
}

impl NftFirewall {
    /// A new adapter; the first apply always checks the installed state.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Stable 64-bit FNV-1a hash, hex.
fn fnv(text: &str) -> String {
    format!("{:016x}", crate::fnv1a(text.as_bytes()))
}

fn render_iface(s: &mut String, dir: &str, i: &Iface) {
    let _ = match i {
        Iface::Is(n) | Iface::Matches(n) => write!(s, "{dir}name \"{n}\""),
        Iface::IsNot(n) => write!(s, "{dir}name != \"{n}\""),
    };
}

/// An IPv6 prefix as nft writes it: a /128 as the bare address.
fn v6(n: &Ipv6Net) -> String {
    if n.prefix_len() == 128 {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// One rule in nft syntax.
fn render_rule(r: &Rule) -> String {
    let mut s = String::new();
    for c in &r.when {
        let _ = match c {
            Cond::Iif(i) => {
                render_iface(&mut s, "iif", i);
                Ok(())
            }
            Cond::Oif(i) => {
                render_iface(&mut s, "oif", i);
                Ok(())
            }
            Cond::Ipv4 => write!(s, "meta nfproto ipv4"),
            Cond::IpSaddr(n) => write!(s, "ip saddr {n}"),
            Cond::IpDaddr(a) => write!(s, "ip daddr {a}"),
            Cond::IpDaddrNot(a) => write!(s, "ip daddr != {a}"),
            Cond::IpDaddrGateway => write!(s, "ip daddr @gateways"),
            Cond::Ip6DaddrNot(nets) if nets.len() == 1 => {
                write!(s, "ip6 daddr != {}", v6(&nets[0]))
            }
            Cond::Ip6DaddrNot(nets) => write!(
                s,
                "ip6 daddr != {{ {} }}",
                nets.iter().map(v6).collect::<Vec<_>>().join(", ")
            ),
            Cond::Ip6DaddrGateway => write!(s, "ip6 daddr @gateways6"),
            Cond::LocalDaddr => write!(s, "fib daddr type local"),
            Cond::Dport(proto, port) => write!(s, "{proto} dport {port}"),
            Cond::Established => write!(s, "ct state established,related"),
            Cond::Dnatted => write!(s, "ct status dnat"),
        };
        s.push(' ');
    }
    let _ = match r.then {
        Verdict::Accept => write!(s, "accept"),
        Verdict::Drop => write!(s, "drop"),
        Verdict::Masquerade => write!(s, "masquerade"),
        Verdict::Dnat(to, port) => write!(s, "dnat ip to {to}:{port}"),
    };
    s
}

fn render_set<T: std::fmt::Display>(s: &mut String, name: &str, ty: &str, elements: &[T]) {
    let _ = writeln!(s, "\tset {name} {{\n\t\ttype {ty}");
    if !elements.is_empty() {
        let e: Vec<String> = elements.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", e.join(", "));
    }
    s.push_str("\t}\n");
}

fn render_chain(s: &mut String, name: &str, hook: &str, rules: &[Rule]) {
    let _ = writeln!(s, "\tchain {name} {{\n\t\ttype {hook}; policy accept;");
    for r in rules {
        let _ = writeln!(s, "\t\t{}", render_rule(r));
    }
    s.push_str("\t}\n");
}

/// The body (everything between the braces but the comment) of the `inet` table.
pub fn render_ip(rules: &Ruleset) -> String {
    let mut s = String::new();
    render_set(&mut s, "gateways", "ipv4_addr", &rules.gateways);
    render_set(&mut s, "gateways6", "ipv6_addr", &rules.gateways6);
    render_chain(
        &mut s,
        "prerouting",
        "nat hook prerouting priority dstnat",
        &rules.dnat,
    );
    render_chain(
        &mut s,
        "output",
        "nat hook output priority -100",
        &rules.dnat,
    );
    render_chain(
        &mut s,
        "postrouting",
        "nat hook postrouting priority srcnat",
        &rules.postrouting,
    );
    render_chain(
        &mut s,
        "forward",
        "filter hook forward priority filter - 1",
        &rules.forward,
    );
    render_chain(
        &mut s,
        "input",
        "filter hook input priority filter - 1",
        &rules.input,
    );
    s
}

/// The hook of a guard chain: ingress of the OVS-side veth `dev` is dropped.
fn guard_hook(dev: &str) -> String {
    format!("{{ type filter hook ingress device \"{dev}\" priority 0; policy drop; }}")
}

/// The body of the `netdev` guard table.
pub fn render_guard(rules: &Ruleset) -> String {
    let mut s = String::new();
    for dev in &rules.guards {
        let _ = writeln!(s, "\tchain {dev} {}", guard_hook(dev));
    }
    s
}

/// The complete `nft -f` script that replaces both tables atomically (or removes them), and
/// the `inet` table's hash.
pub fn render_script(rules: &Ruleset) -> (String, String) {
    let ip = render_ip(rules);
    let hash = fnv(&ip);
    let n = &rules.name;
    let mut s = format!("table inet {n} {{}}\ndelete table inet {n}\ntable netdev {n}_guard {{}}\ndelete table netdev {n}_guard\n");
    if !rules.is_empty() {
        let _ = write!(s, "table inet {n} {{\n\tcomment \"{hash}\"\n{ip}}}\n");
        let _ = write!(s, "table netdev {n}_guard {{\n{}}}\n", render_guard(rules));
    }
    (s, hash)
}

/// The `nft -f` script that turns `have` into `rules` (whose `inet` table renders as `ip`
/// with hash `hash`) by what differs: the `inet` table replaced when its hash differs,
/// guard chains added and deleted one by one.
fn render_delta(rules: &Ruleset, ip: &str, hash: &str, have: &Installed) -> String {
    if rules.is_empty() {
        return render_script(rules).0;
    }
    let n = &rules.name;
    let mut s = String::new();
    if have.hash.as_deref() != Some(hash) {
        let _ = write!(s, "table inet {n} {{}}\ndelete table inet {n}\ntable inet {n} {{\n\tcomment \"{hash}\"\n{ip}}}\n");
    }
    let want: BTreeSet<&str> = rules.guards.iter().map(String::as_str).collect();
    for gone in have.guards.iter().filter(|g| !want.contains(g.as_str())) {
        let _ = writeln!(s, "delete chain netdev {n}_guard {gone}");
    }
    let new: Vec<_> = want.iter().filter(|g| !have.guards.contains(**g)).collect();
    if !new.is_empty() {
        let _ = writeln!(s, "table netdev {n}_guard {{}}");
    }
    for dev in new {
        let _ = writeln!(s, "add chain netdev {n}_guard {dev} {}", guard_hook(dev));
    }
    s
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
        if !rules.docker_user_accept {
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

/// The guard chains installed in `table` (none when it does not exist).
async fn installed_guards(table: &str) -> BTreeSet<String> {
    let Ok((true, out, _)) = run("nft", &["list", "table", "netdev", table], None).await else {
        return BTreeSet::new();
    };
    out.lines()
        .filter_map(|l| l.trim_start().strip_prefix("chain "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

impl NftFirewall {
    /// Runs `script`; when it was a delta and fails (something changed the tables behind
    /// our back), replaces both tables whole instead.
    async fn install(&self, rules: &Ruleset, script: &str) -> Result<(), FirewallError> {
        let (ok, _, err) = run("nft", &["-f", "-"], Some(script)).await?;
        if ok {
            return Ok(());
        }
        let (full, _) = render_script(rules);
        if full != script {
            tracing::warn!(table = %rules.name, error = %err, "nft delta refused, replacing the tables");
            let (ok, _, again) = run("nft", &["-f", "-"], Some(&full)).await?;
            if ok {
                return Ok(());
            }
            return Err(FirewallError::Command {
                cmd: format!("nft -f (tables {0}, {0}_guard)", rules.name),
                stderr: again,
            });
        }
        Err(FirewallError::Command {
            cmd: format!("nft -f (tables {0}, {0}_guard)", rules.name),
            stderr: err,
        })
    }
}

impl NftFirewall {
    /// Adds and deletes guard chains to turn `have` into `rules`, which differ in nothing
    /// else, in one netlink batch (`guards.rs`); when the kernel refuses it, runs `script`,
    /// the same delta, with `nft`.
    async fn change_guards(
        &self,
        rules: &Ruleset,
        have: &Installed,
        script: &str,
    ) -> Result<(), FirewallError> {
        let table = format!("{}_guard", rules.name);
        let gone: Vec<String> = have
            .guards
            .iter()
            .filter(|g| !rules.guards.contains(g))
            .cloned()
            .collect();
        let new: Vec<String> = rules
            .guards
            .iter()
            .filter(|g| !have.guards.contains(*g))
            .cloned()
            .collect();
        let sent = tokio::task::spawn_blocking(move || {
            let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
            let new: Vec<&str> = new.iter().map(String::as_str).collect();
            super::guards::change(&table, &gone, &new)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = sent {
            tracing::debug!(error = %e, "guard chains not taken over netlink, trying nft");
            return self.install(rules, script).await;
        }
        Ok(())
    }
}

#[async_trait]
impl Firewall for NftFirewall {
    async fn apply(&self, rules: &Ruleset, force: bool) -> Result<bool, FirewallError> {
        let known = self.last.lock().unwrap().clone();
        // Without `force`, what this process installed last is what is there; only a full
        // pass (start-up, periodic) reads the installed tables back, and only when the
        // ruleset changed since one last found them so.
        let generation = if force {
            super::generation::current()
        } else {
            None
        };
        let unchanged =
            known.is_some() && generation.is_some() && *self.verified.lock().unwrap() == generation;
        let read_back = force && !unchanged;
        let have = match (&known, read_back) {
            (Some(k), false) => k.clone(),
            _ => Installed {
                hash: installed_hash("inet", &rules.name).await,
                guards: installed_guards(&format!("{}_guard", rules.name)).await,
            },
        };
        let ip = render_ip(rules);
        let hash = fnv(&ip);
        let want = Installed {
            hash: (!rules.is_empty()).then(|| hash.clone()),
            guards: rules.guards.iter().cloned().collect(),
        };
        let changed = have != want;
        if changed {
            *self.verified.lock().unwrap() = None;
            let script = render_delta(rules, &ip, &hash, &have);
            let installed = if have.hash == want.hash && !rules.is_empty() {
                self.change_guards(rules, &have, &script).await
            } else {
                self.install(rules, &script).await
            };
            if let Err(e) = installed {
                *self.last.lock().unwrap() = None;
                return Err(e);
            }
        } else if read_back {
            *self.verified.lock().unwrap() = generation;
        }
        let accepted = self.accepting.swap(
            rules.docker_user_accept,
            std::sync::atomic::Ordering::SeqCst,
        );
        if force || known.is_none() || accepted != rules.docker_user_accept {
            docker_user(rules).await?;
        }
        *self.last.lock().unwrap() = Some(want);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_typed_rules() {
        let br = || Iface::Is("qlb1".into());
        let rules = Ruleset {
            name: "qingluan".into(),
            bridge_wildcard: "qlb+".into(),
            docker_user_accept: true,
            gateways: vec!["10.240.0.1".parse().unwrap()],
            dnat: vec![Rule {
                when: vec![Cond::Ipv4, Cond::LocalDaddr, Cond::Dport("tcp", 1080)],
                then: Verdict::Dnat("10.240.0.2".parse().unwrap(), 80),
            }],
            postrouting: vec![Rule {
                when: vec![
                    Cond::IpSaddr("10.240.0.0/24".parse().unwrap()),
                    Cond::Oif(Iface::IsNot("qlb1".into())),
                ],
                then: Verdict::Masquerade,
            }],
            forward: vec![Rule {
                when: vec![Cond::Iif(br()), Cond::Oif(Iface::Matches("qlb*".into()))],
                then: Verdict::Drop,
            }],
            input: vec![Rule {
                when: vec![
                    Cond::Iif(br()),
                    Cond::Ip6DaddrNot(vec![
                        "fd00::1/128".parse().unwrap(),
                        "fe80::/10".parse().unwrap(),
                    ]),
                ],
                then: Verdict::Drop,
            }],
            guards: vec!["qlv1".into()],
            ..Default::default()
        };
        let (script, hash) = render_script(&rules);
        assert!(script.contains(
            "\t\tmeta nfproto ipv4 fib daddr type local tcp dport 1080 dnat ip to 10.240.0.2:80\n"
        ));
        assert_eq!(
            script.matches("dnat ip to").count(),
            2,
            "prerouting and output"
        );
        assert!(script.contains("\t\tip saddr 10.240.0.0/24 oifname != \"qlb1\" masquerade\n"));
        assert!(script.contains("\t\tiifname \"qlb1\" oifname \"qlb*\" drop\n"));
        assert!(script.contains("\t\tiifname \"qlb1\" ip6 daddr != { fd00::1, fe80::/10 } drop\n"));
        assert!(script.contains("elements = { 10.240.0.1 }"));
        assert!(
            script.contains("type filter hook ingress device \"qlv1\" priority 0; policy drop;")
        );
        assert!(script.contains(&format!("comment \"{hash}\"")));
        assert_eq!(render_script(&rules).1, hash);
    }

    #[test]
    fn a_delta_changes_only_the_guards_that_differ() {
        let rules = Ruleset {
            name: "qingluan".into(),
            gateways: vec!["10.240.0.1".parse().unwrap()],
            guards: vec!["qlv1".into(), "qlv3".into()],
            ..Default::default()
        };
        let ip = render_ip(&rules);
        let hash = fnv(&ip);
        let have = Installed {
            hash: Some(hash.clone()),
            guards: ["qlv1".to_string(), "qlv2".to_string()].into(),
        };
        assert_eq!(
            render_delta(&rules, &ip, &hash, &have),
            "delete chain netdev qingluan_guard qlv2\ntable netdev qingluan_guard {}\n\
             add chain netdev qingluan_guard qlv3 { type filter hook ingress device \"qlv3\" priority 0; policy drop; }\n"
        );
        let stale = Installed {
            hash: Some("0".into()),
            guards: have.guards.clone(),
        };
        let script = render_delta(&rules, &ip, &hash, &stale);
        assert!(script.starts_with("table inet qingluan {}\ndelete table inet qingluan\n"));
        assert!(script.contains(&format!("comment \"{hash}\"")));
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

    #[tokio::test]
    async fn a_full_pass_puts_back_a_table_deleted_behind_its_back() {
        let name = format!("qltfw{}", std::process::id());
        let nft = |args: &[&str]| {
            std::process::Command::new("nft")
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !nft(&["list", "tables"]) {
            println!("SKIP: nft does not run here (needs root)");
            return;
        }
        let rules = Ruleset {
            name: name.clone(),
            bridge_wildcard: "qltfwb+".into(),
            gateways: vec!["10.250.7.1".parse().unwrap()],
            ..Default::default()
        };
        let fw = NftFirewall::new();
        let passes = async {
            let mut out = Vec::new();
            for _ in 0..3 {
                out.push(fw.apply(&rules, true).await.unwrap());
            }
            assert!(nft(&["delete", "table", "inet", &name]));
            out.push(fw.apply(&rules, true).await.unwrap());
            out.push(nft(&["list", "table", "inet", &name]));
            out
        }
        .await;
        nft(&["delete", "table", "inet", &name]);
        nft(&["delete", "table", "netdev", &format!("{name}_guard")]);
        // Installed, found intact twice (the second time by the generation alone), put
        // back after the deletion.
        assert_eq!(passes, [true, false, false, true, true]);
    }
}
