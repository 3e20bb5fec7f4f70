//! The rows of the tables the OVS adapter owns, kept current by a monitor, so a reconcile
//! pass reads memory instead of asking ovsdb-server, and `apply` learns from the same
//! stream when ovs-vswitchd has caught up.
//!
//! The monitor uses the `monitor` format (every monitored column of a changed row), so an
//! update simply replaces the row; nothing is merged. After a reconnect the client
//! re-issues the monitor and its first message carries the full contents again, which
//! replaces everything. Between a disconnect and that message the replica is not `ready`,
//! and readers fall back to asking the server (which fails fast while it is down).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::Notify;

use super::client::MonitorUpdate;

/// Rows by table and uuid, as the monitor last reported them.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    /// Whether the contents are current (the monitor's first message arrived since the
    /// last disconnect).
    pub(crate) ready: bool,
    /// Table → uuid → row (the monitored columns).
    pub(crate) tables: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Rows {
    /// The rows of `table`.
    pub(crate) fn table(&self, table: &str) -> Option<&BTreeMap<String, Value>> {
        self.tables.get(table)
    }

    /// The uuid and row of the single `Open_vSwitch` row.
    pub(crate) fn root(&self) -> Option<(&String, &Value)> {
        self.tables.get("Open_vSwitch")?.iter().next()
    }
}

/// The replica, shared between the task that feeds it and the readers.
#[derive(Default)]
pub(crate) struct Replica {
    rows: Mutex<Rows>,
    changed: Notify,
}

impl Replica {
    /// Applies one monitor message; returns whether a table other than `Open_vSwitch`
    /// changed (what owners of bridges and ports care about).
    pub(crate) fn apply(&self, u: &MonitorUpdate) -> bool {
        let mut changed = false;
        {
            let mut rows = self.rows.lock().expect("replica lock");
            if u.initial {
                rows.tables.clear();
                rows.ready = true;
            }
            for (table, updates) in u.tables.as_object().into_iter().flatten() {
                let t = rows.tables.entry(table.clone()).or_default();
                for (uuid, change) in updates.as_object().into_iter().flatten() {
                    match change.get("new") {
                        Some(new) => t.insert(uuid.clone(), new.clone()),
                        None => t.remove(uuid),
                    };
                }
                changed |= table != "Open_vSwitch";
            }
        }
        self.changed.notify_waiters();
        changed
    }

    /// Marks the contents stale (the connection dropped).
    pub(crate) fn stale(&self) {
        self.rows.lock().expect("replica lock").ready = false;
        self.changed.notify_waiters();
    }

    /// Runs `f` on the rows if they are current.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Rows) -> T) -> Option<T> {
        let rows = self.rows.lock().expect("replica lock");
        rows.ready.then(|| f(&rows))
    }

    /// Waits until `f` returns `Some` on current rows, or the rows go stale (`None`).
    pub(crate) async fn wait_for<T>(&self, mut f: impl FnMut(&Rows) -> Option<T>) -> Option<T> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.read(&mut f) {
                Some(Some(v)) => return Some(v),
                Some(None) => notified.await,
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::client::UpdateFormat;
    use super::*;

    fn update(initial: bool, tables: Value) -> MonitorUpdate {
        MonitorUpdate {
            initial,
            format: UpdateFormat::Update,
            tables,
        }
    }

    #[test]
    fn replaces_rows_and_goes_stale() {
        let r = Replica::default();
        assert!(
            r.read(|_| ()).is_none(),
            "not ready before the first message"
        );
        r.apply(&update(
            true,
            json!({"Bridge": {"u1": {"new": {"name": "a"}}}, "Open_vSwitch": {"o": {"new": {"cur_cfg": 1}}}}),
        ));
        assert_eq!(r.read(|rows| rows.root().unwrap().0.clone()).unwrap(), "o");
        assert!(!r.apply(&update(
            false,
            json!({"Open_vSwitch": {"o": {"old": {"cur_cfg": 1}, "new": {"cur_cfg": 2}}}})
        )));
        assert!(r.apply(&update(
            false,
            json!({"Bridge": {"u1": {"old": {"name": "a"}}, "u2": {"new": {"name": "b"}}}}),
        )));
        let names = r
            .read(|rows| {
                rows.table("Bridge")
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(names, ["u2"]);
        r.stale();
        assert!(r.read(|_| ()).is_none());
        r.apply(&update(true, json!({"Bridge": {}})));
        assert!(r
            .read(|rows| rows.table("Bridge").unwrap().is_empty())
            .unwrap());
    }

    #[tokio::test]
    async fn waits_for_a_condition_or_staleness() {
        let r = std::sync::Arc::new(Replica::default());
        r.apply(&update(
            true,
            json!({"Open_vSwitch": {"o": {"new": {"cur_cfg": 1}}}}),
        ));
        let cfg = |rows: &Rows| {
            rows.root()
                .and_then(|(_, v)| v["cur_cfg"].as_i64())
                .filter(|c| *c >= 3)
        };
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.wait_for(cfg).await }
        });
        tokio::task::yield_now().await;
        r.apply(&update(
            false,
            json!({"Open_vSwitch": {"o": {"new": {"cur_cfg": 2}}}}),
        ));
        r.apply(&update(
            false,
            json!({"Open_vSwitch": {"o": {"new": {"cur_cfg": 3}}}}),
        ));
        assert_eq!(waiter.await.unwrap(), Some(3));
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.wait_for(|_| None::<()>).await }
        });
        tokio::task::yield_now().await;
        r.stale();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
