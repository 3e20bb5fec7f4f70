//! vlan: containers on an 802.1Q VLAN of an interface's physical network.
//!
//! Like flat (`flat.rs`), on the same uplink bridge, but each container's port is an access
//! port of the network's VLAN ID: OVS tags its frames on the way out of the interface (a
//! trunk) and delivers only that VLAN's frames to it, so two VLANs are isolated at L2 even on
//! one host and interface, with no 8021q module, macvlan or sub-interface. A router on the
//! trunk connects VLANs at L3; it is the network's gateway.

use super::Ctx;
use super::{on_uplink, physical_join, JoinInfo, ModeDriver};
use crate::desired::Desired;
use crate::model::{Endpoint, Network};

/// The vlan mode.
pub struct Vlan;

impl ModeDriver for Vlan {
    fn allows_publishing(&self, _net: &Network) -> bool {
        false
    }

    fn join(&self, net: &Network, ep: &Endpoint) -> JoinInfo {
        physical_join(net, ep)
    }

    fn build(&self, ctx: &Ctx, net: &Network, eps: &[&Endpoint], out: &mut Desired) {
        let tag = net.vni.and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
        on_uplink(ctx, net, eps, tag, out);
    }
}
