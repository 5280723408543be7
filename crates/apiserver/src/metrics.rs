//! `/metrics` in the Prometheus text format: requests by verb, resource and code, request
//! latencies by verb, open watches, and the process's resident memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    watchers: AtomicI64,
}

impl Metrics {
    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((verb.to_owned(), resource.to_owned(), code)).or_default() += 1;
        }
        if let Ok(mut durations) = self.durations.lock() {
            let h = durations.entry(verb.to_owned()).or_default();
            if h.counts.is_empty() {
                h.counts = vec![0; BUCKETS.len()];
            }
            let seconds = took.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        }
    }

    pub fn watch_started(&self) {
        self.watchers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watch_ended(&self) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Requests by verb, resource and HTTP code.\n# TYPE apiserver_request_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for ((verb, resource, code), n) in requests.iter() {
                out.push_str(&format!("apiserver_request_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}\n"));
            }
        }
        out.push_str("# HELP apiserver_request_duration_seconds Request latency by verb.\n# TYPE apiserver_request_duration_seconds histogram\n");
        if let Ok(durations) = self.durations.lock() {
            for (verb, h) in durations.iter() {
                for (bound, n) in BUCKETS.iter().zip(&h.counts) {
                    out.push_str(&format!("apiserver_request_duration_seconds_bucket{{verb=\"{verb}\",le=\"{bound}\"}} {n}\n"));
                }
                out.push_str(&format!(
                    "apiserver_request_duration_seconds_bucket{{verb=\"{verb}\",le=\"+Inf\"}} {}\n",
                    h.count
                ));
                out.push_str(&format!(
                    "apiserver_request_duration_seconds_sum{{verb=\"{verb}\"}} {}\n",
                    h.sum
                ));
                out.push_str(&format!(
                    "apiserver_request_duration_seconds_count{{verb=\"{verb}\"}} {}\n",
                    h.count
                ));
            }
        }
        out.push_str("# HELP apiserver_registered_watchers Open watches.\n# TYPE apiserver_registered_watchers gauge\n");
        out.push_str(&format!(
            "apiserver_registered_watchers {}\n",
            self.watchers.load(Ordering::Relaxed)
        ));
        let rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmRSS:")
                        .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
                })
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        out.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n");
        out.push_str(&format!("process_resident_memory_bytes {}\n", rss * 1024));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render() {
        let m = Metrics::default();
        m.observe("create", "pods", 201, Duration::from_millis(3));
        m.observe("create", "pods", 201, Duration::from_millis(30));
        m.watch_started();
        let text = m.render();
        assert!(
            text.contains(
                "apiserver_request_total{verb=\"create\",resource=\"pods\",code=\"201\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "apiserver_request_duration_seconds_bucket{verb=\"create\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "apiserver_request_duration_seconds_bucket{verb=\"create\",le=\"0.05\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("apiserver_request_duration_seconds_count{verb=\"create\"} 2"),
            "{text}"
        );
        assert!(text.contains("apiserver_registered_watchers 1"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
