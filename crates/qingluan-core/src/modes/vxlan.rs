//! vxlan: an overlay segment shared by every host of the cluster, keyed by its VNI.
//!
//! On each host the network is an L2 switch with anti-spoofing and no address on the host
//! (the gateway is not on any host): containers get no default route and Docker's
//! `docker_gwbridge` is disabled. Publishing is refused: there is no way out.

use super::{switch, JoinInfo, ModeDriver};
use crate::desired::{Ctx, Desired};
use crate::model::{Endpoint, Network};

/// The vxlan mode.
pub struct Vxlan;

impl ModeDriver for Vxlan {
    fn allows_publishing(&self, _net: &Network) -> bool {
        false
    }

    fn join(&self, _net: &Network, ep: &Endpoint) -> JoinInfo {
        JoinInfo {
            src_name: ep.peer_veth(),
            gateway: None,
            gateway_v6: None,
            disable_gateway_service: true,
        }
    }

    fn build(&self, ctx: &Ctx, net: &Network, eps: &[&Endpoint], out: &mut Desired) {
        switch(ctx, net, eps, out);
    }
}
