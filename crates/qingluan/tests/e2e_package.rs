//! Packaging end to end: `scripts/package.sh` (with this build's binary) makes a .deb that
//! installs into a clean root with its files where Debian puts them, a unit that
//! `systemd-analyze verify` accepts, `remove` keeping the data and `purge` removing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{enabled, ok, run};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs scripts/package.sh on the binary under test; returns the .deb.
fn package() -> PathBuf {
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
    repo.join(lines.next().expect("the .deb"))
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
    let deb = package();
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
    assert!(text(&o).trim().is_empty(), "verify warned: {}", text(&o));

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
