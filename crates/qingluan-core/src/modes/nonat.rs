//! nonat: a private L2 segment on this host for internal services.
//!
//! Containers reach each other and the gateway address on the host, nothing else: Join
//! returns no default gateway and disables Docker's `docker_gwbridge`, the forward chain
//! drops everything entering or leaving the segment through the host, and the input chain
//! drops traffic to any host address but the segment's own gateway. Publishing is refused.
//! Only `qingluan connect` opens a way to another network (`connect.rs`): a route to it
//! through the gateway, at Join and in running containers.

use super::Ctx;
use super::{local_segment, JoinInfo, ModeDriver};
use crate::desired::Desired;
use crate::model::{Endpoint, Network};

/// The nonat mode.
pub struct Nonat;

impl ModeDriver for Nonat {
    fn allows_publishing(&self, _net: &Network) -> bool {
        false
    }

    fn join(&self, _net: &Network, ep: &Endpoint) -> JoinInfo {
        JoinInfo {
            src_name: ep.peer_veth(),
            gateway: None,
            gateway_v6: None,
            disable_gateway_service: true,
            routes: Vec::new(),
        }
    }

    fn build(&self, ctx: &Ctx, net: &Network, eps: &[&Endpoint], out: &mut Desired) {
        local_segment(ctx, net, eps, false, out);
    }
}
