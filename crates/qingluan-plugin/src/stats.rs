//! Per-method handling times of plugin calls (the plugin's own share of `docker run`):
//! recent samples for the percentiles of `qingluan status`, and a cumulative histogram per
//! method for Prometheus.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;

/// How many recent samples are kept per method.
const KEEP: usize = 4096;

/// The label of a call histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// `NetworkDriver.Join`, ...
    pub method: String,
}

/// Call durations in seconds by method: buckets from 0.5 ms doubling to about 8 s.
pub type CallHistograms = Family<MethodLabel, Histogram, fn() -> Histogram>;

fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Recent handling times by method.
pub struct CallStats {
    samples: Mutex<BTreeMap<String, Vec<f64>>>,
    histograms: CallHistograms,
}

impl Default for CallStats {
    fn default() -> Self {
        CallStats {
            samples: Mutex::default(),
            histograms: Family::new_with_constructor(call_histogram),
        }
    }
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
        self.histograms
            .get_or_create(&MethodLabel {
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The cumulative histograms (shared: register a clone).
    pub fn histograms(&self) -> CallHistograms {
        self.histograms.clone()
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
