//! Prometheus metrics (SPEC §4, beside the UI API): counters the parts bump as work happens, and
//! the text exposition `GET /metrics` serves. One registry per process, as Prometheus client
//! libraries keep: a part records through [`global()`] without a handle threaded through every
//! constructor. Label values come from small fixed vocabularies (`&'static str`), so no label can
//! grow without bound. Gauges read at scrape time (installs by state, the catalog) are handed to
//! [`Metrics::render`] by the caller, which owns those parts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

/// Upper bounds of the API latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The exposition format's content type (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Default)]
struct Latency {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`] are built at render time; this holds
    /// the count of observations that fell in each bucket (the last slot: above every bound).
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    /// Bytes of verified cache files and bundles on disk, as the cache budget last measured.
    cache_bytes: AtomicU64,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    downloaded: AtomicU64,
    uploaded: AtomicU64,
    upstream_errors: Mutex<BTreeMap<&'static str, u64>>,
    cloud_errors: Mutex<BTreeMap<&'static str, u64>>,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Latency>>,
}

/// What the caller reads at scrape time from the parts it owns.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every install state with its count, zeros included (a series that vanishes reads as stale).
    pub installs_by_state: Vec<(&'static str, u64)>,
    pub catalog_images: u64,
    /// Seconds since the catalog last verified in this process; `None` before the first success.
    pub catalog_verified_seconds_ago: Option<u64>,
    /// The last catalog refresh failed (upstream down, or its catalog refused).
    pub catalog_stale: bool,
    /// `--cache-max-bytes` and `--min-free-bytes`, when set.
    pub cache_max_bytes: Option<u64>,
    pub min_free_bytes: Option<u64>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's registry.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere: take the data as it is.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// The cache budget measured the cache: verified files and bundles, in bytes.
    pub fn set_cache_bytes(&self, bytes: u64) {
        self.cache_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The cache budget evicted a verified file of `bytes`.
    pub fn evicted(&self, bytes: u64) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
        self.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes received from upstream (catalog, signatures, files), counted as they arrive.
    pub fn add_downloaded(&self, bytes: u64) {
        self.downloaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes handed to the cloud (bundle parts and manifests PUT, or written by the fake cloud).
    pub fn add_uploaded(&self, bytes: u64) {
        self.uploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// An exchange with upstream failed or brought something we refused, e.g. `transport`,
    /// `http-status`, `truncated`, `checksum`, `catalog-signature`, `file-signature`.
    pub fn upstream_error(&self, kind: &'static str) {
        *lock(&self.upstream_errors).entry(kind).or_default() += 1;
    }

    /// Publishing to the cloud failed, e.g. `unpack`, `write`, `refused`.
    pub fn cloud_error(&self, kind: &'static str) {
        *lock(&self.cloud_errors).entry(kind).or_default() += 1;
    }

    /// One API request answered: its endpoint, status and how long it took.
    pub fn api_request(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        *lock(&self.requests).entry((endpoint, status)).or_default() += 1;
        let seconds = elapsed.as_secs_f64();
        let mut latency = lock(&self.latency);
        let entry = latency.entry(endpoint).or_default();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        entry.buckets[slot] += 1;
        entry.sum += seconds;
        entry.count += 1;
    }

    pub fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of everything recorded, plus `snapshot`'s gauges.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "image_store_proxy_installs",
            "gauge",
            "Installs known to the proxy, by install state.",
        );
        for (state, count) in &snapshot.installs_by_state {
            sample(
                &mut out,
                "image_store_proxy_installs",
                &[("state", state)],
                *count,
            );
        }
        header(
            &mut out,
            "image_store_proxy_downloaded_bytes_total",
            "counter",
            "Bytes received from the upstream image store.",
        );
        sample(
            &mut out,
            "image_store_proxy_downloaded_bytes_total",
            &[],
            self.downloaded(),
        );
        header(
            &mut out,
            "image_store_proxy_uploaded_bytes_total",
            "counter",
            "Bytes handed to the cloud.",
        );
        sample(
            &mut out,
            "image_store_proxy_uploaded_bytes_total",
            &[],
            self.uploaded(),
        );
        for (name, help, errors) in [
            (
                "image_store_proxy_upstream_errors_total",
                "Failed or refused exchanges with the upstream image store, by kind.",
                &self.upstream_errors,
            ),
            (
                "image_store_proxy_cloud_errors_total",
                "Failures publishing to the cloud, by kind.",
                &self.cloud_errors,
            ),
        ] {
            header(&mut out, name, "counter", help);
            for (kind, count) in lock(errors).iter() {
                sample(&mut out, name, &[("kind", kind)], *count);
            }
        }
        header(
            &mut out,
            "image_store_proxy_api_requests_total",
            "counter",
            "API requests answered, by endpoint and HTTP status.",
        );
        for ((endpoint, status), count) in lock(&self.requests).iter() {
            sample(
                &mut out,
                "image_store_proxy_api_requests_total",
                &[("endpoint", endpoint), ("status", &status.to_string())],
                *count,
            );
        }
        let name = "image_store_proxy_api_request_duration_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time to answer an API request, by endpoint.",
        );
        for (endpoint, latency) in lock(&self.latency).iter() {
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(latency.buckets) {
                cumulative += count;
                sample(
                    &mut out,
                    &format!("{name}_bucket"),
                    &[("endpoint", endpoint), ("le", &bound.to_string())],
                    cumulative,
                );
            }
            sample(
                &mut out,
                &format!("{name}_bucket"),
                &[("endpoint", endpoint), ("le", "+Inf")],
                latency.count,
            );
            let _ = writeln!(out, "{name}_sum{{endpoint=\"{endpoint}\"}} {}", latency.sum);
            sample(
                &mut out,
                &format!("{name}_count"),
                &[("endpoint", endpoint)],
                latency.count,
            );
        }
        for (name, kind, help, value) in [
            (
                "image_store_proxy_cache_bytes",
                "gauge",
                "Bytes of verified cache files and bundles on disk, as the cache budget counts them.",
                Some(self.cache_bytes.load(Ordering::Relaxed)),
            ),
            (
                "image_store_proxy_cache_max_bytes",
                "gauge",
                "The cache budget (--cache-max-bytes); absent when unbounded.",
                snapshot.cache_max_bytes,
            ),
            (
                "image_store_proxy_cache_min_free_bytes",
                "gauge",
                "Bytes kept free on the data directory's file system (--min-free-bytes); absent when unset.",
                snapshot.min_free_bytes,
            ),
            (
                "image_store_proxy_cache_evictions_total",
                "counter",
                "Verified files evicted from the cache, least recently used first.",
                Some(self.evictions.load(Ordering::Relaxed)),
            ),
            (
                "image_store_proxy_cache_evicted_bytes_total",
                "counter",
                "Bytes of the verified files evicted from the cache.",
                Some(self.evicted_bytes.load(Ordering::Relaxed)),
            ),
        ] {
            if let Some(value) = value {
                header(&mut out, name, kind, help);
                sample(&mut out, name, &[], value);
            }
        }
        header(
            &mut out,
            "image_store_proxy_catalog_images",
            "gauge",
            "Images in the catalog the proxy serves.",
        );
        sample(
            &mut out,
            "image_store_proxy_catalog_images",
            &[],
            snapshot.catalog_images,
        );
        header(
            &mut out,
            "image_store_proxy_catalog_stale",
            "gauge",
            "1 when the last catalog refresh failed and an older catalog is served.",
        );
        sample(
            &mut out,
            "image_store_proxy_catalog_stale",
            &[],
            u64::from(snapshot.catalog_stale),
        );
        if let Some(age) = snapshot.catalog_verified_seconds_ago {
            header(
                &mut out,
                "image_store_proxy_catalog_verified_age_seconds",
                "gauge",
                "Seconds since the catalog last fetched and verified.",
            );
            sample(
                &mut out,
                "image_store_proxy_catalog_verified_age_seconds",
                &[],
                age,
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and newline (the text format's rules).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.add_downloaded(100);
        metrics.add_downloaded(23);
        metrics.add_uploaded(7);
        metrics.upstream_error("transport");
        metrics.upstream_error("transport");
        metrics.cloud_error("write");
        metrics.api_request("states", 200, Duration::from_micros(500));
        metrics.api_request("states", 200, Duration::from_millis(30));
        metrics.api_request("states", 401, Duration::from_secs(20));
        let text = metrics.render(&Snapshot {
            installs_by_state: vec![("queued", 1), ("installed", 0)],
            catalog_images: 2,
            catalog_verified_seconds_ago: Some(5),
            catalog_stale: true,
            ..Snapshot::default()
        });
        for line in [
            "# TYPE image_store_proxy_installs gauge",
            "image_store_proxy_installs{state=\"queued\"} 1",
            "image_store_proxy_installs{state=\"installed\"} 0",
            "image_store_proxy_downloaded_bytes_total 123",
            "image_store_proxy_uploaded_bytes_total 7",
            "image_store_proxy_upstream_errors_total{kind=\"transport\"} 2",
            "image_store_proxy_cloud_errors_total{kind=\"write\"} 1",
            "image_store_proxy_api_requests_total{endpoint=\"states\",status=\"200\"} 2",
            "image_store_proxy_api_requests_total{endpoint=\"states\",status=\"401\"} 1",
            "image_store_proxy_api_request_duration_seconds_bucket{endpoint=\"states\",le=\"0.001\"} 1",
            "image_store_proxy_api_request_duration_seconds_bucket{endpoint=\"states\",le=\"0.025\"} 1",
            "image_store_proxy_api_request_duration_seconds_bucket{endpoint=\"states\",le=\"0.05\"} 2",
            "image_store_proxy_api_request_duration_seconds_bucket{endpoint=\"states\",le=\"10\"} 2",
            "image_store_proxy_api_request_duration_seconds_bucket{endpoint=\"states\",le=\"+Inf\"} 3",
            "image_store_proxy_api_request_duration_seconds_count{endpoint=\"states\"} 3",
            "image_store_proxy_catalog_images 2",
            "image_store_proxy_catalog_stale 1",
            "image_store_proxy_catalog_verified_age_seconds 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` with a number for value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_cache_shows_its_bytes_budget_and_evictions() {
        let metrics = Metrics::default();
        metrics.set_cache_bytes(4096);
        metrics.evicted(1000);
        metrics.evicted(24);
        let text = metrics.render(&Snapshot {
            cache_max_bytes: Some(1 << 20),
            ..Snapshot::default()
        });
        for line in [
            "# TYPE image_store_proxy_cache_bytes gauge",
            "image_store_proxy_cache_bytes 4096",
            "image_store_proxy_cache_max_bytes 1048576",
            "# TYPE image_store_proxy_cache_evictions_total counter",
            "image_store_proxy_cache_evictions_total 2",
            "image_store_proxy_cache_evicted_bytes_total 1024",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        // Unset, the floor is not shown as 0 (which would read as a bound).
        assert!(
            !text.contains("image_store_proxy_cache_min_free_bytes"),
            "{text}"
        );
    }
}
