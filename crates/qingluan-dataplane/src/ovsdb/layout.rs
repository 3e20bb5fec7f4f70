//! Which bridges and ports exist, by name, and the checks [`OvsOp`]s must pass against it.
//!
//! Shared by the real adapter and the fake so both accept and refuse exactly the same op
//! lists. Ops are checked in order, each against the layout the previous ones left: a port
//! may be added to a bridge added earlier in the same list, and a port deleted earlier may
//! be added again.

use std::collections::{BTreeMap, BTreeSet};

use super::{OvsOp, OvsdbError};

/// Bridges by name, each with its port names (without its own LOCAL port).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Bridge name → its ports.
    pub bridges: BTreeMap<String, BTreeSet<String>>,
}

impl Layout {
    /// The bridge holding a port of this name; a bridge's LOCAL port has the bridge's name.
    pub(crate) fn owner_of(&self, port: &str) -> Option<&str> {
        self.bridges
            .iter()
            .find(|(b, ports)| b.as_str() == port || ports.contains(port))
            .map(|(b, _)| b.as_str())
    }

    fn port_exists(&self, name: &str) -> Result<(), OvsdbError> {
        match self.owner_of(name) {
            Some(b) => Err(OvsdbError::PortExists {
                bridge: b.to_string(),
                name: name.to_string(),
            }),
            None => Ok(()),
        }
    }

    fn ports_of(&mut self, bridge: &str) -> Result<&mut BTreeSet<String>, OvsdbError> {
        self.bridges
            .get_mut(bridge)
            .ok_or_else(|| OvsdbError::BridgeNotFound(bridge.to_string()))
    }

    /// Checks one op and applies it to the layout.
    pub(crate) fn apply(&mut self, op: &OvsOp) -> Result<(), OvsdbError> {
        match op {
            OvsOp::AddBridge(b) => {
                if self.bridges.contains_key(&b.name) {
                    return Err(OvsdbError::BridgeExists(b.name.clone()));
                }
                self.port_exists(&b.name)?;
                self.bridges.insert(b.name.clone(), BTreeSet::new());
            }
            OvsOp::UpdateBridge(b) => {
                self.ports_of(&b.name)?;
            }
            OvsOp::DeleteBridge(name) => {
                self.bridges.remove(name);
            }
            OvsOp::AddPort(p) => {
                self.ports_of(&p.bridge)?;
                self.port_exists(&p.name)?;
                self.ports_of(&p.bridge)?.insert(p.name.clone());
            }
            OvsOp::UpdatePort(p) => {
                if !self.ports_of(&p.bridge)?.contains(&p.name) {
                    return Err(OvsdbError::PortNotFound {
                        bridge: p.bridge.clone(),
                        name: p.name.clone(),
                    });
                }
            }
            OvsOp::DeletePort { bridge, name } => {
                if let Some(ports) = self.bridges.get_mut(bridge) {
                    ports.remove(name);
                }
            }
        }
        Ok(())
    }

    /// Checks every op in order, leaving the layout as after all of them.
    pub(crate) fn check(&mut self, ops: &[OvsOp]) -> Result<(), OvsdbError> {
        ops.iter().try_for_each(|op| self.apply(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::{BridgeSpec, PortSpec};

    fn br(name: &str) -> BridgeSpec {
        BridgeSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    fn port(bridge: &str, name: &str) -> PortSpec {
        PortSpec {
            bridge: bridge.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn err(layout: &Layout, ops: &[OvsOp]) -> String {
        layout.clone().check(ops).unwrap_err().to_string()
    }

    #[test]
    fn checks_in_order() {
        let mut l = Layout::default();
        l.check(&[
            OvsOp::AddBridge(br("b1")),
            OvsOp::AddPort(port("b1", "p1")),
            OvsOp::UpdatePort(port("b1", "p1")),
            OvsOp::DeletePort {
                bridge: "b1".into(),
                name: "p1".into(),
            },
            OvsOp::AddPort(port("b1", "p1")),
            OvsOp::DeletePort {
                bridge: "b1".into(),
                name: "gone".into(),
            },
            OvsOp::DeleteBridge("gone".into()),
        ])
        .unwrap();
        assert_eq!(l.owner_of("p1"), Some("b1"));
        assert_eq!(l.owner_of("b1"), Some("b1"));

        assert_eq!(
            err(&l, &[OvsOp::AddBridge(br("b1"))]),
            "bridge b1 already exists"
        );
        assert_eq!(
            err(&l, &[OvsOp::AddBridge(br("p1"))]),
            "port p1 already exists on bridge b1"
        );
        assert_eq!(
            err(&l, &[OvsOp::UpdateBridge(br("b9"))]),
            "bridge b9 not found"
        );
        assert_eq!(
            err(&l, &[OvsOp::AddPort(port("b9", "x"))]),
            "bridge b9 not found"
        );
        assert_eq!(
            err(&l, &[OvsOp::AddPort(port("b1", "b1"))]),
            "port b1 already exists on bridge b1"
        );
        assert_eq!(
            err(
                &l,
                &[OvsOp::AddBridge(br("b2")), OvsOp::AddPort(port("b2", "p1"))]
            ),
            "port p1 already exists on bridge b1"
        );
        assert_eq!(
            err(&l, &[OvsOp::UpdatePort(port("b1", "x"))]),
            "port x not found on bridge b1"
        );
        assert_eq!(
            err(
                &l,
                &[
                    OvsOp::DeleteBridge("b1".into()),
                    OvsOp::UpdatePort(port("b1", "p1"))
                ]
            ),
            "bridge b1 not found"
        );
    }
}
