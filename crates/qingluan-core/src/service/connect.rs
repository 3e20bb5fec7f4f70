//! `qingluan connect|disconnect`: group connections as records (`connect/<id>`), applied
//! as links in the host's netfilter and allows in the networks' `POLICY` stage (see
//! `connect.rs`). Every change is written, then applied, and undone when the dataplane
//! refuses it; a network's connections go with it.

use std::collections::BTreeMap;

use super::ServiceError;
use crate::connect::{self, ConnectError, Connection, Pair};
use crate::records;

handle! {
    /// Group connections.
    Connect
}

impl Connect {
    /// `qingluan connect`: checks and applies `pair`. `names` are the user's words for
    /// both sides, in the order typed, and `network_names` the networks' names by ID, for
    /// messages.
    pub async fn connect(
        &self,
        pair: Pair,
        names: (&str, &str),
        network_names: &BTreeMap<String, String>,
    ) -> Result<Connection, ServiceError> {
        let _g = self.lock.lock().await;
        if let Pair::Networks(a, b) = &pair {
            let (na, nb) = (self.network(a).await?, self.network(b).await?);
            let name = |n: &crate::model::Network| {
                network_names
                    .get(&n.id)
                    .cloned()
                    .unwrap_or_else(|| n.short_id().to_string())
            };
            connect::check_networks(&na, &nb, &name)?;
        }
        if let Pair::Containers(a, b) = &pair {
            if a == b {
                return Err(ConnectError::Itself(names.0.to_string()).into());
            }
        }
        let c = Connection::new(pair);
        if records::get::<Connection>(&*self.store, &c.id)
            .await?
            .is_some()
        {
            return Err(ConnectError::Exists(names.0.into(), names.1.into()).into());
        }
        self.commit(
            vec![records::put(&c)],
            vec![records::delete::<Connection>(&c.id)],
        )
        .await?;
        Ok(c)
    }

    /// `qingluan disconnect`: removes the connection of `pair`.
    pub async fn disconnect(
        &self,
        pair: Pair,
        names: (&str, &str),
    ) -> Result<Connection, ServiceError> {
        let _g = self.lock.lock().await;
        let id = pair.id();
        let Some(c) = records::get::<Connection>(&*self.store, &id).await? else {
            return Err(ConnectError::Missing(names.0.into(), names.1.into()).into());
        };
        self.commit(
            vec![records::delete::<Connection>(&id)],
            vec![records::put(&c)],
        )
        .await?;
        Ok(c)
    }
}
