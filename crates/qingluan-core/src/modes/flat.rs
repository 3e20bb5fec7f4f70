//! flat: containers directly on the physical network of an interface, untagged.
//!
//! The interface (`--opt parent`, or the default uplink) becomes a port of its uplink bridge
//! (`uplink.rs`), shared by every flat and vlan network on it; the host's addresses move to
//! the bridge's internal port, so the host keeps its connectivity and still reaches the
//! network. Containers' ports are access ports of VLAN 0: they see untagged frames only,
//! never another VLAN's. Several flat networks on one interface share its untagged segment.
//! The gateway is the physical router, given with `--gateway`; publishing is refused, since
//! containers are reached at their own addresses.

use super::Ctx;
use super::{on_uplink, physical_join, JoinInfo, ModeDriver};
use crate::desired::Desired;
use crate::model::{Endpoint, Network};

/// The flat mode.
pub struct Flat;

impl ModeDriver for Flat {
    fn allows_publishing(&self, _net: &Network) -> bool {
        false
    }

    fn join(&self, net: &Network, ep: &Endpoint) -> JoinInfo {
        physical_join(net, ep)
    }

    fn build(&self, ctx: &Ctx, net: &Network, eps: &[&Endpoint], out: &mut Desired) {
        on_uplink(ctx, net, eps, 0, out);
    }
}
