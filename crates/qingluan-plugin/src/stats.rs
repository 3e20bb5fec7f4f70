//! Per-method handling times of plugin calls (the plugin's own share of `docker run`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// How many recent samples are kept per method.
const KEEP: usize = 4096;

/// Recent handling times by method.
#[derive(Default)]
pub struct CallStats {
    samples: Mutex<BTreeMap<String, Vec<f64>>>,
}

/// Percentiles of one method, in milliseconds.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct MethodStats {
    /// `NetworkDriver.Join`, ...
    pub method: String,
    /// Number of samples kept.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

impl CallStats {
    /// Records one call.
    pub fn record(&self, method: &str, took: Duration) {
        let mut s = self.samples.lock().unwrap();
        let v = s.entry(method.to_string()).or_default();
        if v.len() == KEEP {
            v.remove(0);
        }
        v.push(took.as_secs_f64() * 1e3);
    }

    /// Percentiles per method.
    pub fn summary(&self) -> Vec<MethodStats> {
        let s = self.samples.lock().unwrap();
        s.iter()
            .map(|(m, v)| {
                let mut sorted = v.clone();
                sorted.sort_by(|a, b| a.total_cmp(b));
                let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
                MethodStats {
                    method: m.clone(),
                    count: sorted.len(),
                    p50_ms: pick(0.5),
                    p99_ms: pick(0.99),
                }
            })
            .collect()
    }
}
