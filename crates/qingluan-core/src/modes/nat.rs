//! nat: what docker0 gives, on OVS.
//!
//! The gateway sits on the bridge's internal port on the host; outbound traffic is
//! masqueraded; `-p` ports are DNATed in the kernel (no docker-proxy), including from the
//! host itself on 127.0.0.1 (route_localnet plus a masquerade of loopback sources) and hairpin
//! from the same network. `--internal` turns a nat network into nonat: no masquerade, no
//! publishing, no default route.

use super::Ctx;
use super::{local_segment, publish, JoinInfo, ModeDriver};
use crate::desired::Desired;
use crate::model::{Endpoint, Network};

/// The nat mode.
pub struct Nat;

impl ModeDriver for Nat {
    fn allows_publishing(&self, net: &Network) -> bool {
        net.external()
    }

    fn join(&self, net: &Network, ep: &Endpoint) -> JoinInfo {
        let external = net.external();
        JoinInfo {
            src_name: ep.peer_veth(),
            gateway: external.then_some(net.gateway),
            gateway_v6: net.ipv6.filter(|_| external).map(|(_, gw)| gw),
            disable_gateway_service: !external,
            routes: Vec::new(),
        }
    }

    fn build(&self, ctx: &Ctx, net: &Network, eps: &[&Endpoint], out: &mut Desired) {
        let external = net.external();
        local_segment(ctx, net, eps, external, out);
        if external {
            publish(&net.bridge(), eps, out);
        }
    }
}
