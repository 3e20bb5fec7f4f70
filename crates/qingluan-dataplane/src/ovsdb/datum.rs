//! OVSDB's JSON encoding of values (RFC 7047 section 5.1), both ways.
//!
//! Sets are `["set", [..]]` unless they hold exactly one element, which is sent bare; maps are
//! `["map", [[k, v], ..]]`; row references are `["uuid", ".."]` or, for rows inserted earlier
//! in the same transaction, `["named-uuid", ".."]`. Readers here accept both set forms.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A reference to an existing row.
pub(crate) fn uuid(u: &str) -> Value {
    json!(["uuid", u])
}

/// A reference to a row inserted earlier in the same transaction.
pub(crate) fn named(n: &str) -> Value {
    json!(["named-uuid", n])
}

/// The uuid string of a `["uuid", ".."]` value.
pub(crate) fn uuid_of(v: &Value) -> Option<String> {
    match v.as_array()?.as_slice() {
        [t, u] if t == "uuid" => u.as_str().map(String::from),
        _ => None,
    }
}

/// The elements of a set (a bare value is a set of one).
pub(crate) fn set_items(v: &Value) -> Vec<Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([t, items]) if t == "set" => items.as_array().cloned().unwrap_or_default(),
        _ if v.is_null() => Vec::new(),
        _ => vec![v.clone()],
    }
}

/// The strings of a set of strings.
pub(crate) fn strings_of(v: &Value) -> Vec<String> {
    set_items(v)
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

/// An optional string (a set of zero or one string).
pub(crate) fn opt_str(v: &Value) -> Option<String> {
    set_items(v)
        .first()
        .and_then(|x| x.as_str().map(String::from))
}

/// An optional integer (a set of zero or one integer).
pub(crate) fn opt_i64(v: &Value) -> Option<i64> {
    set_items(v).first().and_then(Value::as_i64)
}

/// A string-to-string map.
pub(crate) fn map_of(v: &Value) -> BTreeMap<String, String> {
    match v.as_array().map(Vec::as_slice) {
        Some([t, pairs]) if t == "map" => pairs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Encodes a string-to-string map.
pub(crate) fn map(m: &BTreeMap<String, String>) -> Value {
    json!([
        "map",
        m.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

/// Encodes an optional value as a set of zero or one.
pub(crate) fn opt<T: serde::Serialize>(v: &Option<T>) -> Value {
    match v {
        Some(x) => json!(x),
        None => json!(["set", []]),
    }
}

/// Encodes a set of strings.
pub(crate) fn strings(v: &[String]) -> Value {
    json!(["set", v])
}

/// Encodes a set of row references.
pub(crate) fn refs(v: Vec<Value>) -> Value {
    json!(["set", v])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        assert_eq!(map_of(&map(&m)), m);
        assert_eq!(map_of(&json!(["map", []])), BTreeMap::new());
        assert_eq!(opt_str(&json!("secure")), Some("secure".into()));
        assert_eq!(opt_str(&json!(["set", []])), None);
        assert_eq!(opt_i64(&json!(["set", [7]])), Some(7));
        assert_eq!(strings_of(&json!("OpenFlow15")), vec!["OpenFlow15"]);
        assert_eq!(strings_of(&json!(["set", ["a", "b"]])), vec!["a", "b"]);
        assert_eq!(uuid_of(&uuid("u-1")), Some("u-1".into()));
        assert_eq!(uuid_of(&named("n")), None);
    }
}
