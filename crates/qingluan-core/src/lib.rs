//! The domain of qingluan: networks, endpoints, IPAM, modes and the dataplane they imply.
//!
//! Pure where it can be: option validation, IPAM arithmetic, mode planning and the
//! OpenFlow pipeline are plain functions over plain data. `service` is the one place that
//! sequences a plugin call (validate → persist → apply) and `reconcile` the one place that
//! drives the system adapters of `qingluan-dataplane`.

/// A crash point for the crash-consistency tests: built with the `failpoints` feature and
/// run with `FAILPOINTS=<name>=return`, the daemon aborts here, as a kill -9 would stop it.
/// Without the feature it is nothing.
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| std::process::abort())
    };
}

pub mod acl;
pub mod cluster;
pub mod connect;
pub mod desired;
#[cfg(test)]
mod fixtures;
pub mod ids;
pub mod ipam;
pub mod membership;
pub mod mirror;
pub mod model;
pub mod modes;
pub mod options;
pub mod pipeline;
pub mod policy;
pub mod qos;
pub mod reconcile;
pub mod records;
pub mod service;
pub mod settings;
pub mod uplink;
