//! Doctor checks of Open vSwitch: OVSDB reachable, ovs-vswitchd running and its version, the
//! datapath qingluan will use and userspace TSO, the kernel modules.

use std::path::Path;

use qingluan_core::service::choose_datapath;
use qingluan_dataplane::ovsdb::{Ovs, OvsdbOvs, SystemInfo};
use qingluan_dataplane::vswitchd::Vswitchd;

use super::{Check, PROBE};
use crate::config::Config;

/// Whether a kernel module is loaded, and whether this kernel has it at all.
fn module(name: &str) -> (bool, bool) {
    if Path::new("/sys/module").join(name).exists() {
        return (true, true);
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let dep =
        std::fs::read_to_string(format!("/lib/modules/{release}/modules.dep")).unwrap_or_default();
    let file = format!("{name}.ko");
    let available = dep.lines().any(|l| {
        let path = l.split(':').next().unwrap_or_default();
        let base = path.rsplit('/').next().unwrap_or_default();
        base == file || base.starts_with(&format!("{file}."))
    });
    (false, available)
}

/// Every OVS check, over the doctor's one OVSDB connection to `db`.
pub async fn checks(config: &Config, ovs: &OvsdbOvs, db: &str) -> Vec<Check> {
    let sys = match tokio::time::timeout(PROBE, ovs.system()).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE:?}")),
    };
    let mut out = vec![match &sys {
        Ok(_) => Check::pass("ovsdb-server", format!("reachable at {db}")),
        Err(e) => Check::fail(
            "ovsdb-server",
            format!("cannot reach OVSDB at {db}: {e}"),
            "start Open vSwitch: systemctl start openvswitch-switch (or ovs-ctl start); \
             set ovs.db in the config if it listens elsewhere",
        ),
    }];
    let vswitchd = Vswitchd::new(config.ovs.rundir.clone());
    out.push(match vswitchd.pid() {
        Some(pid) => match vswitchd.version().await {
            Ok(v) => Check::pass("ovs-vswitchd", format!("running (pid {pid}): {v}")),
            Err(e) => Check::fail(
                "ovs-vswitchd",
                format!("pid {pid} runs but does not answer: {e}"),
                "restart it: systemctl restart ovs-vswitchd (or ovs-ctl restart)",
            ),
        },
        None => Check::fail(
            "ovs-vswitchd",
            format!(
                "not running: no live process in {}",
                vswitchd.pidfile().display()
            ),
            "start it: systemctl start ovs-vswitchd (or ovs-ctl --no-ovsdb-server start); \
             qingluan re-programs every bridge when it is back",
        ),
    });
    let kernel = module("openvswitch").0;
    let datapath = choose_datapath(&config.ovs.datapath, kernel);
    out.extend(datapath_checks(&datapath, sys.as_ref().ok()));
    out.extend(module_checks(&datapath));
    out
}

/// The datapath qingluan uses and, on the userspace one, TSO.
fn datapath_checks(datapath: &str, sys: Option<&SystemInfo>) -> Vec<Check> {
    let Some(sys) = sys else {
        return vec![
            Check::skip("datapath", "OVSDB is unreachable"),
            Check::skip("userspace TSO", "OVSDB is unreachable"),
        ];
    };
    let what = if datapath == "netdev" {
        "netdev (userspace)"
    } else {
        "system (kernel)"
    };
    let dp = if sys.datapath_types.is_empty() || sys.datapath_types.iter().any(|t| t == datapath) {
        Check::pass(
            "datapath",
            format!("{what}; ovs-vswitchd supports {:?}", sys.datapath_types),
        )
    } else {
        Check::fail(
            "datapath",
            format!(
                "{what} is configured but ovs-vswitchd supports only {:?}",
                sys.datapath_types
            ),
            "set ovs.datapath = \"auto\" in the config",
        )
    };
    let tso = sys
        .other_config
        .get("userspace-tso-enable")
        .map(String::as_str)
        == Some("true");
    let tso = if datapath != "netdev" {
        Check::skip("userspace TSO", "the kernel datapath segments by itself")
    } else if tso {
        Check::pass("userspace TSO", "on")
    } else {
        Check::fail(
            "userspace TSO",
            "off: TCP between containers runs 5-10 times slower",
            "ovs-vsctl set Open_vSwitch . other_config:userspace-tso-enable=true, \
             then restart ovs-vswitchd",
        )
    };
    vec![dp, tso]
}

/// The kernel modules OVS may need, judged by the datapath in use.
fn module_checks(datapath: &str) -> Vec<Check> {
    let userspace = datapath == "netdev";
    let (loaded, available) = module("openvswitch");
    let ovs = if loaded {
        Check::pass("openvswitch.ko", "loaded: the kernel datapath is available")
    } else if userspace {
        Check::skip(
            "openvswitch.ko",
            "not loaded: the userspace (netdev) datapath is used",
        )
    } else {
        Check::fail(
            "openvswitch.ko",
            if available {
                "not loaded, and ovs.datapath = \"system\" needs it"
            } else {
                "this kernel has no openvswitch module, and ovs.datapath = \"system\" needs it"
            },
            "modprobe openvswitch, or set ovs.datapath = \"auto\" to use the userspace datapath",
        )
    };
    let (loaded, available) = module("vxlan");
    let vxlan = if loaded || available {
        Check::pass("vxlan.ko", if loaded { "loaded" } else { "available" })
    } else if userspace {
        Check::skip(
            "vxlan.ko",
            "absent; the userspace datapath encapsulates VXLAN itself",
        )
    } else {
        Check::fail(
            "vxlan.ko",
            "absent: vxlan networks on the kernel datapath need it",
            "install this kernel's modules (linux-image-*) or use the userspace datapath",
        )
    };
    let (loaded, available) = module("8021q");
    let vlan = if loaded || available {
        Check::pass("8021q.ko", if loaded { "loaded" } else { "available" })
    } else {
        Check::skip(
            "8021q.ko",
            "absent; not needed: OVS tags VLAN frames itself",
        )
    };
    vec![ovs, vxlan, vlan]
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;

    fn sys(tso: bool) -> SystemInfo {
        SystemInfo {
            datapath_types: vec!["netdev".into(), "system".into()],
            other_config: [("userspace-tso-enable".to_string(), tso.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn tso_matters_only_on_the_userspace_datapath() {
        let [dp, tso] = &datapath_checks("netdev", Some(&sys(false)))[..] else {
            panic!("two checks")
        };
        assert_eq!(dp.outcome, Outcome::Pass);
        assert_eq!(tso.outcome, Outcome::Fail);
        assert!(tso
            .advice
            .as_deref()
            .unwrap()
            .contains("userspace-tso-enable=true"));
        assert_eq!(
            datapath_checks("netdev", Some(&sys(true)))[1].outcome,
            Outcome::Pass
        );
        assert_eq!(
            datapath_checks("system", Some(&sys(false)))[1].outcome,
            Outcome::Skip
        );
        assert!(datapath_checks("netdev", None)
            .iter()
            .all(|c| c.outcome == Outcome::Skip));
    }

    #[test]
    fn a_datapath_vswitchd_lacks_fails() {
        let only_netdev = SystemInfo {
            datapath_types: vec!["netdev".into()],
            ..Default::default()
        };
        assert_eq!(
            datapath_checks("system", Some(&only_netdev))[0].outcome,
            Outcome::Fail
        );
    }
}
