//! Wire types of the two interfaces and their translation to service calls.
//!
//! Field names are Go's (PascalCase); every field is optional on input (Go zero values),
//! `Options` maps may be `null`, and empty bodies mean "no arguments".

use std::collections::BTreeMap;

use qingluan_core::model::check_id;
use qingluan_core::options::RawPort;
use qingluan_core::service::{CreateEndpoint, CreateNetwork, IpamData};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::Plugin;

/// Docker's gateway hint in RequestAddress options.
const GATEWAY_HINT: &str = "com.docker.network.gateway";
const GENERIC: &str = "com.docker.network.generic";
const PORTMAP: &str = "com.docker.network.portmap";

/// A protocol-level failure, with its text for the user.
#[derive(Debug)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for WireError {
    fn from(e: E) -> Self {
        WireError(e.to_string())
    }
}

fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, WireError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| WireError(format!("malformed request body: {e}")))
}

/// The IDs most NetworkDriver requests carry.
struct Ids {
    network_id: String,
    endpoint_id: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct IpamDataWire {
    pool: String,
    gateway: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateNetworkWire {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "Options")]
    options: Option<Map<String, Value>>,
    #[serde(rename = "IPv4Data")]
    ipv4: Option<Vec<IpamDataWire>>,
    #[serde(rename = "IPv6Data")]
    ipv6: Option<Vec<IpamDataWire>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct InterfaceWire {
    address: String,
    #[serde(rename = "AddressIPv6")]
    address_v6: String,
    mac_address: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateEndpointWire {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(rename = "Interface")]
    interface: Option<InterfaceWire>,
    #[serde(rename = "Options")]
    options: Option<Map<String, Value>>,
}

/// The network and endpoint IDs of a request, each checked to be one of Docker's.
fn ids(body: &[u8]) -> Result<Ids, WireError> {
    let v: Value = parse(body)?;
    let ids = Ids {
        network_id: id_field(&v, "NetworkID", "network")?,
        endpoint_id: id_field(&v, "EndpointID", "endpoint")?,
    };
    Ok(ids)
}

/// The ID in field `key` of a request, checked to be one of Docker's.
fn id_field(v: &Value, key: &str, kind: &'static str) -> Result<String, WireError> {
    let id = v.get(key).and_then(Value::as_str).unwrap_or_default();
    check_id(kind, id)?;
    Ok(id.to_string())
}

fn strings(map: Option<&Value>) -> BTreeMap<String, String> {
    map.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The port map of a request's options; a number that is not an integer is refused.
fn ports(options: Option<&Map<String, Value>>) -> Result<Vec<RawPort>, WireError> {
    let Some(list) = options
        .and_then(|o| o.get(PORTMAP))
        .and_then(Value::as_array)
    else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|p| {
            let n = |k: &str| match p.get(k) {
                None | Some(Value::Null) => Ok(0),
                Some(v) => v.as_i64().ok_or_else(|| {
                    WireError(format!("invalid port mapping: {k} {v} is not an integer"))
                }),
            };
            Ok(RawPort {
                proto: n("Proto")?,
                host_ip: p
                    .get("HostIP")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                host_port: n("HostPort")?,
                host_port_end: n("HostPortEnd")?,
                port: n("Port")?,
            })
        })
        .collect()
}

/// NetworkDriver methods; `Ok(None)` for methods we do not serve (404).
pub async fn network(p: &Plugin, method: &str, body: &[u8]) -> Result<Option<Value>, WireError> {
    let d = &p.driver;
    let v = match method {
        "NetworkDriver.GetCapabilities" => json!({"Scope": "local", "ConnectivityScope": "local"}),
        "NetworkDriver.CreateNetwork" => {
            let w: CreateNetworkWire = parse(body)?;
            check_id("network", &w.network_id)?;
            let opts = w.options.unwrap_or_default();
            for k in opts.keys() {
                if !k.starts_with("com.docker.network.") {
                    return Err(WireError(format!("unknown network option {k:?}")));
                }
            }
            let data = |list: Option<Vec<IpamDataWire>>| -> Vec<IpamData> {
                list.unwrap_or_default()
                    .into_iter()
                    .map(|x| IpamData {
                        pool: x.pool,
                        gateway: x.gateway,
                    })
                    .collect()
            };
            d.networks
                .create(CreateNetwork {
                    id: w.network_id,
                    generic: strings(opts.get(GENERIC)),
                    internal: opts
                        .get("com.docker.network.internal")
                        .and_then(Value::as_bool)
                        == Some(true),
                    v4: data(w.ipv4),
                    v6: data(w.ipv6),
                })
                .await?;
            json!({})
        }
        "NetworkDriver.DeleteNetwork" => {
            let v: Value = parse(body)?;
            d.networks
                .delete(&id_field(&v, "NetworkID", "network")?)
                .await?;
            json!({})
        }
        "NetworkDriver.CreateEndpoint" => {
            let w: CreateEndpointWire = parse(body)?;
            check_id("network", &w.network_id)?;
            check_id("endpoint", &w.endpoint_id)?;
            let iface = w.interface.unwrap_or_default();
            let opts = w.options.unwrap_or_default();
            let driver_opts = opts
                .iter()
                .filter(|(k, _)| !k.starts_with("com.docker."))
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), String::from),
                    )
                })
                .collect();
            let mac = d
                .endpoints
                .create(CreateEndpoint {
                    network_id: w.network_id,
                    endpoint_id: w.endpoint_id,
                    address: iface.address,
                    address_v6: iface.address_v6,
                    mac: iface.mac_address,
                    ports: ports(Some(&opts))?,
                    driver_opts,
                })
                .await?;
            match mac {
                Some(mac) => json!({"Interface": {"MacAddress": mac.to_string()}}),
                None => json!({}),
            }
        }
        "NetworkDriver.EndpointOperInfo" => {
            let i = ids(body)?;
            json!({"Value": d.endpoints.info(&i.endpoint_id).await.unwrap_or_else(|_| json!({}))})
        }
        "NetworkDriver.DeleteEndpoint" => {
            let i = ids(body)?;
            d.endpoints.delete(&i.network_id, &i.endpoint_id).await?;
            json!({})
        }
        "NetworkDriver.Join" => {
            let v: Value = parse(body)?;
            let i = ids(body)?;
            let sandbox = v
                .get("SandboxKey")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let opts = v.get("Options").and_then(Value::as_object);
            let info = d
                .endpoints
                .join(&i.network_id, &i.endpoint_id, sandbox, &ports(opts)?)
                .await?;
            let mut r = json!({
                "InterfaceName": {"SrcName": info.src_name, "DstPrefix": "eth"},
                "DisableGatewayService": info.disable_gateway_service,
            });
            if let Some(gw) = info.gateway {
                r["Gateway"] = json!(gw.to_string());
            }
            if let Some(gw) = info.gateway_v6 {
                r["GatewayIPv6"] = json!(gw.to_string());
            }
            if !info.routes.is_empty() {
                let routes: Vec<Value> = info
                    .routes
                    .iter()
                    .map(|(dst, via)| {
                        json!({"Destination": dst.to_string(), "RouteType": 0, "NextHop": via.to_string()})
                    })
                    .collect();
                r["StaticRoutes"] = json!(routes);
            }
            r
        }
        "NetworkDriver.Leave" => {
            d.endpoints.leave(&ids(body)?.endpoint_id).await?;
            json!({})
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            let v: Value = parse(body)?;
            let i = ids(body)?;
            let opts = v.get("Options").and_then(Value::as_object);
            d.publishing
                .program(&i.network_id, &i.endpoint_id, &ports(opts)?)
                .await?;
            json!({})
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            d.publishing.revoke(&ids(body)?.endpoint_id).await?;
            json!({})
        }
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => json!({}),
        _ => return Ok(None),
    };
    Ok(Some(v))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RequestPoolWire {
    #[serde(rename = "Pool")]
    pool: String,
    #[serde(rename = "SubPool")]
    sub_pool: String,
    #[serde(rename = "Options")]
    options: Option<Map<String, Value>>,
    #[serde(rename = "V6")]
    v6: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AddressWire {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(rename = "Address")]
    address: String,
    #[serde(rename = "Options")]
    options: Option<Map<String, Value>>,
}

/// IpamDriver methods; `Ok(None)` for methods we do not serve (404).
pub async fn ipam(p: &Plugin, method: &str, body: &[u8]) -> Result<Option<Value>, WireError> {
    let ipam = &p.ipam;
    let v = match method {
        "IpamDriver.GetCapabilities" => {
            json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
        }
        "IpamDriver.GetDefaultAddressSpaces" => json!({
            "LocalDefaultAddressSpace": "qingluan-local",
            "GlobalDefaultAddressSpace": "qingluan-global",
        }),
        "IpamDriver.RequestPool" => {
            let w: RequestPoolWire = parse(body)?;
            let opts = strings(w.options.map(Value::Object).as_ref());
            let s = ipam.request_pool(&w.pool, &w.sub_pool, &opts, w.v6).await?;
            json!({"PoolID": s.id, "Pool": s.cidr.to_string(), "Data": {}})
        }
        "IpamDriver.ReleasePool" => {
            let w: AddressWire = parse(body)?;
            ipam.release_pool(&w.pool_id).await?;
            json!({})
        }
        "IpamDriver.RequestAddress" => {
            let w: AddressWire = parse(body)?;
            let gateway = w
                .options
                .as_ref()
                .and_then(|o| o.get("RequestAddressType"))
                .and_then(Value::as_str)
                == Some(GATEWAY_HINT);
            let a = ipam
                .request_address(&w.pool_id, &w.address, gateway)
                .await?;
            json!({"Address": a.to_string(), "Data": {}})
        }
        "IpamDriver.ReleaseAddress" => {
            let w: AddressWire = parse(body)?;
            ipam.release_address(&w.pool_id, &w.address).await?;
            json!({})
        }
        _ => return Ok(None),
    };
    Ok(Some(v))
}
