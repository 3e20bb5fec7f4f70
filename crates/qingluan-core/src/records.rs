//! This host's records in its store, by type: each record kind knows its key prefix, so no
//! caller spells a key.
//!
//! | record | key |
//! |---|---|
//! | [`Network`] | `networks/<network id>` |
//! | [`Endpoint`] | `endpoints/<endpoint id>` |
//! | [`QosOverride`] | `qos/<network id>/network`, `qos/<network id>/container/<id>`, `qos/<network id>/endpoint/<id>` |
//! | [`AclRule`] | `acl/<rule id>` |
//! | [`Connection`] | `connect/<connection id>` |
//! | [`crate::mirror::Mirror`] | `mirror/<mirror id>` |
//! | [`crate::ids::IdsWatch`] | `ids/watch/<network id>` |
//! | [`crate::ids::ContainerWatch`] | `ids/container/<container name>` |
//! | [`crate::ids::IdsRules`] | `ids/rules/current` |
//!
//! Besides the records, `cluster-cache/view` and `cluster-cache/intent` hold what the
//! cluster store last said (`State::restore_cluster`).

use qingluan_store::{get_json, list_json, to_json, Op, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::acl::AclRule;
use crate::connect::Connection;
use crate::model::{Endpoint, Network};
use crate::qos::QosOverride;

/// A record stored under `<PREFIX><id>`.
pub trait Record: Serialize + DeserializeOwned {
    /// The key prefix of this kind.
    const PREFIX: &'static str;
    /// The record's ID.
    fn id(&self) -> &str;
}

impl Record for Network {
    const PREFIX: &'static str = "networks/";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for Endpoint {
    const PREFIX: &'static str = "endpoints/";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for AclRule {
    const PREFIX: &'static str = "acl/";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for Connection {
    const PREFIX: &'static str = "connect/";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for crate::mirror::Mirror {
    const PREFIX: &'static str = "mirror/";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for crate::ids::IdsWatch {
    const PREFIX: &'static str = "ids/watch/";
    fn id(&self) -> &str {
        &self.network
    }
}

impl Record for crate::ids::ContainerWatch {
    const PREFIX: &'static str = "ids/container/";
    fn id(&self) -> &str {
        &self.container
    }
}

impl Record for crate::ids::IdsRules {
    const PREFIX: &'static str = "ids/rules/";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for QosOverride {
    const PREFIX: &'static str = "qos/";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The key of the record of kind `R` with ID `id`.
pub fn key<R: Record>(id: &str) -> String {
    format!("{}{id}", R::PREFIX)
}

/// The record of kind `R` with ID `id`, if stored.
pub async fn get<R: Record>(store: &dyn Store, id: &str) -> Result<Option<R>, StoreError> {
    get_json(store, &key::<R>(id)).await
}

/// Every record of kind `R`.
pub async fn list<R: Record>(store: &dyn Store) -> Result<Vec<R>, StoreError> {
    list_json(store, R::PREFIX).await
}

/// The write that stores `r`.
pub fn put<R: Record>(r: &R) -> Op {
    Op::Put(key::<R>(r.id()), to_json(r))
}

/// The write that deletes the record of kind `R` with ID `id`.
pub fn delete<R: Record>(id: &str) -> Op {
    Op::Delete(key::<R>(id))
}
