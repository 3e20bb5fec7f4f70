//! Packaging end to end: `scripts/package.sh` (with this build's binary) makes a .deb that
//! installs into a clean root with its files where Debian puts them, a unit that
//! `systemd-analyze verify` accepts, `remove` keeping the data and `purge` removing it; and
//! a managed-plugin directory that the real dockerd creates and enables, whose networks
//! carry containers that ping each other.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{enabled, ok, pings, run, wait_for, IMAGE};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs scripts/package.sh on the binary under test; returns the .deb and plugin dir.
fn package() -> (PathBuf, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = repo.join("scripts/package.sh");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .env("QL_PACKAGE_BINARY", env!("CARGO_BIN_EXE_qingluan"))
        .output()
        .unwrap();
    assert!(o.status.success(), "package.sh failed: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let mut lines = out.lines().filter(|l| !l.is_empty());
    let deb = repo.join(lines.next().expect("the .deb"));
    let plugin = repo.join(lines.next().expect("the plugin dir"));
    (deb, plugin)
}

/// dpkg on the clean root `root`, its maintainer scripts run outside it with DPKG_ROOT set.
fn dpkg(root: &Path, args: &[&str]) -> Output {
    let root_arg = format!("--root={}", root.display());
    let mut all = vec![root_arg.as_str(), "--force-script-chrootless"];
    all.extend_from_slice(args);
    run("dpkg", &all)
}

#[test]
fn the_deb_installs_into_a_clean_root() {
    if !enabled("the_deb_installs_into_a_clean_root") {
        return;
    }
    let (deb, _) = package();
    let dir = tempfile::Builder::new()
        .prefix("qlt-deb")
        .tempdir()
        .unwrap();
    let root = dir.path();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // The root has none of the dependencies (libc6, openvswitch-switch...): only this
    // package is under test.
    let o = dpkg(root, &["--force-depends", "-i", deb.to_str().unwrap()]);
    assert!(o.status.success(), "install: {}", text(&o));

    for f in [
        "usr/bin/qingluan",
        "lib/systemd/system/qingluan.service",
        "etc/qingluan/config.toml",
        "usr/share/bash-completion/completions/qingluan",
        "usr/share/zsh/vendor-completions/_qingluan",
        "usr/share/fish/vendor_completions.d/qingluan.fish",
        "usr/share/man/man1/qingluan.1.gz",
        "usr/share/man/man1/qingluan-doctor.1.gz",
        "usr/share/man/man1/qingluan-acl-add.1.gz",
        "usr/share/doc/qingluan/README.md",
        "var/lib/qingluan",
        "var/log/qingluan",
    ] {
        assert!(root.join(f).exists(), "{f} is not installed");
    }
    let bin = root.join("usr/bin/qingluan");
    let v = ok(bin.to_str().unwrap(), &["--version"]);
    assert!(v.starts_with("qingluan "), "{v}");
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/qingluan.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/qingluan daemon"),
        "{unit}"
    );
    assert!(unit.contains("Before=docker.service"), "{unit}");
    assert!(unit.contains("After=") && unit.contains("ovs-vswitchd.service"));
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/qingluan"))
        .unwrap();
    assert!(
        bash.contains("doctor") && bash.contains("complete"),
        "bash completion"
    );
    let conffiles = std::fs::read_to_string(root.join("var/lib/dpkg/info/qingluan.conffiles"))
        .unwrap_or_default();
    assert!(conffiles.contains("/etc/qingluan/config.toml"));

    // systemd-analyze verify, with the package's binary and unit seen at their installed
    // paths: overlays in a private mount namespace, so the host is not touched.
    let script = format!(
        "mount --make-rprivate / && \
         mount -t overlay overlay -o lowerdir={r}/usr/bin:/usr/bin /usr/bin && \
         mount -t overlay overlay -o lowerdir={r}/lib/systemd/system:/lib/systemd/system /lib/systemd/system && \
         systemd-analyze verify /lib/systemd/system/qingluan.service",
        r = root.display()
    );
    let o = run("unshare", &["-m", "sh", "-c", &script]);
    assert!(o.status.success(), "systemd-analyze verify: {}", text(&o));
    assert!(
        !text(&o).contains("qingluan.service"),
        "verify warned about the unit: {}",
        text(&o)
    );

    // remove keeps the configuration and the data; purge removes both.
    std::fs::write(root.join("var/lib/qingluan/state.redb"), "records").unwrap();
    let o = dpkg(root, &["-r", "qingluan"]);
    assert!(o.status.success(), "remove: {}", text(&o));
    assert!(!root.join("usr/bin/qingluan").exists());
    assert!(root.join("etc/qingluan/config.toml").exists());
    assert!(root.join("var/lib/qingluan/state.redb").exists());
    let o = dpkg(root, &["-P", "qingluan"]);
    assert!(o.status.success(), "purge: {}", text(&o));
    for f in ["etc/qingluan", "var/lib/qingluan", "var/log/qingluan"] {
        assert!(!root.join(f).exists(), "{f} survived the purge");
    }
}

/// Removes the test's plugin, its network and containers, even when the test fails.
struct PluginGuard(&'static str);

impl Drop for PluginGuard {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", "qltmp1", "qltmp2"]);
        let _ = run("docker", &["network", "rm", "qltmpnet"]);
        let _ = run("docker", &["plugin", "disable", "-f", self.0]);
        let _ = run("docker", &["plugin", "rm", "-f", self.0]);
    }
}

#[test]
fn the_managed_plugin_carries_a_network() {
    if !enabled("the_managed_plugin_carries_a_network") {
        return;
    }
    common::cleanup_docker();
    common::ensure_image();
    let (_, plugin_dir) = package();
    let reference = "qltmp:latest";
    let dir = tempfile::Builder::new().prefix("qlt-mp").tempdir().unwrap();
    // Dropped before `dir`: the plugin goes before the directories it mounts.
    let _guard = PluginGuard(reference);
    let d = dir.path();
    for sub in ["etc", "lib", "run", "log"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    // The plugin's view (paths inside it) and the host CLI's view of the same instance.
    let instance = "[daemon]\nname = \"qltmp\"\nprefix = \"qm\"\nlog = \"info,qingluan=debug\"\n";
    let rest = "[monitoring]\nlisten = \"\"\n\n[ipam.pools.nat]\nsubnet = \"10.251.0.0/16\"\n";
    std::fs::write(
        d.join("etc/config.toml"),
        format!("{instance}\n[store]\npath = \"/var/lib/qingluan/state.redb\"\n\n{rest}"),
    )
    .unwrap();
    let host_config = d.join("host.toml");
    std::fs::write(
        &host_config,
        format!(
            "{instance}managed_plugin = \"{reference}\"\napi_socket = \"{}\"\n\n\
             [store]\npath = \"{}\"\n\n{rest}",
            d.join("run/qingluan.sock").display(),
            d.join("lib/state.redb").display()
        ),
    )
    .unwrap();

    ok(
        "docker",
        &["plugin", "create", "qltmp", plugin_dir.to_str().unwrap()],
    );
    let set = |k: &str, v: &Path| format!("{k}.source={}", v.display());
    ok(
        "docker",
        &[
            "plugin",
            "set",
            reference,
            &set("config", &d.join("etc")),
            &set("state", &d.join("lib")),
            &set("api", &d.join("run")),
            &set("logs", &d.join("log")),
            &format!("QINGLUAN_MANAGED_PLUGIN={reference}"),
        ],
    );
    ok("docker", &["plugin", "enable", reference]);
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", host_config.to_str().unwrap()];
        all.extend_from_slice(args);
        run(env!("CARGO_BIN_EXE_qingluan"), &all)
    };
    assert!(
        wait_for(Duration::from_secs(20), || cli(&["status"])
            .status
            .success()),
        "the plugin's daemon never answered the host CLI: {}",
        text(&cli(&["status"]))
    );

    // Users type the plugin's reference for both drivers.
    ok(
        "docker",
        &[
            "network",
            "create",
            "--driver",
            reference,
            "--ipam-driver",
            reference,
            "--opt",
            "model=nat",
            "--ipam-opt",
            "pool=nat",
            "qltmpnet",
        ],
    );
    for c in ["qltmp1", "qltmp2"] {
        ok(
            "docker",
            &[
                "run", "-d", "--name", c, "--net", "qltmpnet", IMAGE, "sleep", "600",
            ],
        );
    }
    let peer = common::ip_of("qltmp2", "qltmpnet");
    assert!(
        peer.starts_with("10.251."),
        "address from the plugin's pool: {peer}"
    );
    assert!(pings("qltmp1", &peer), "qltmp1 cannot ping its peer {peer}");

    let ls = text(&cli(&["network", "ls"]));
    assert!(
        ls.contains("qltmpnet"),
        "the host CLI names the network: {ls}"
    );
    let t = cli(&["--json", "trace", "qltmp1", "qltmp2"]);
    let report: serde_json::Value = serde_json::from_slice(&t.stdout)
        .unwrap_or_else(|e| panic!("trace in the managed plugin ({e}): {}", text(&t)));
    assert_eq!(report["verdict"], "allowed", "{report:#}");
    let o = cli(&["doctor"]);
    assert!(
        o.status.success(),
        "doctor with the managed plugin: {}",
        text(&o)
    );
    assert!(text(&o).contains(&format!("managed plugin {reference} is enabled")));
}
