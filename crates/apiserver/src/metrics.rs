//! `/metrics` in the Prometheus text format: requests by verb, resource and code, request
//! latencies by verb, storage latencies by operation (`Measured` wraps the backend), open
//! watches, and the process's resident memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_store::{BoxFuture, KeyValue, ListResult, Result, Store, WatchStream};

const BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn add(&mut self, took: Duration) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        let seconds = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        for (bound, n) in BUCKETS.iter().zip(&self.counts) {
            out.push_str(&format!("{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {n}\n"));
        }
        out.push_str(&format!("{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}\n", self.count));
        out.push_str(&format!("{name}_sum{{{label}=\"{value}\"}} {}\n", self.sum));
        out.push_str(&format!("{name}_count{{{label}=\"{value}\"}} {}\n", self.count));
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    storage: Mutex<BTreeMap<&'static str, Histogram>>,
    watchers: AtomicI64,
}

impl Metrics {
    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((verb.to_owned(), resource.to_owned(), code)).or_default() += 1;
        }
        if let Ok(mut durations) = self.durations.lock() {
            durations.entry(verb.to_owned()).or_default().add(took);
        }
    }

    /// One call to the storage backend.
    pub fn observe_storage(&self, operation: &'static str, took: Duration) {
        if let Ok(mut storage) = self.storage.lock() {
            storage.entry(operation).or_default().add(took);
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
                h.render(&mut out, "apiserver_request_duration_seconds", "verb", verb);
            }
        }
        out.push_str("# HELP etcd_request_duration_seconds Storage latency by operation (SQLite or etcd).\n# TYPE etcd_request_duration_seconds histogram\n");
        if let Ok(storage) = self.storage.lock() {
            for (operation, h) in storage.iter() {
                h.render(&mut out, "etcd_request_duration_seconds", "operation", operation);
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

/// A store whose every call is timed into the metrics.
pub struct Measured {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Measured {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Measured {
        Measured { inner, metrics }
    }

    async fn time<T>(&self, operation: &'static str, call: BoxFuture<'_, T>) -> T {
        let started = Instant::now();
        let result = call.await;
        self.metrics.observe_storage(operation, started.elapsed());
        result
    }
}

impl Store for Measured {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(self.time("get", self.inner.get(key)))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
        revision: i64,
    ) -> BoxFuture<'a, Result<ListResult>> {
        Box::pin(self.time("list", self.inner.list(prefix, start_after, limit, revision)))
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(self.time("create", self.inner.create(key, value)))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(self.time("update", self.inner.update(key, value, expected)))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<i64>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(self.time("delete", self.inner.delete(key, expected)))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<WatchStream>> {
        Box::pin(self.time("watch", self.inner.watch(prefix, after)))
    }

    fn revision(&self) -> BoxFuture<'_, Result<i64>> {
        Box::pin(self.time("revision", self.inner.revision()))
    }

    fn under_pressure(&self) -> bool {
        self.inner.under_pressure()
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.time("compact", self.inner.compact(revision)))
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
        m.observe_storage("get", Duration::from_micros(300));
        let text = m.render();
        assert!(
            text.contains("etcd_request_duration_seconds_bucket{operation=\"get\",le=\"0.001\"} 1"),
            "{text}"
        );
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
