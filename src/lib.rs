//! image-store-proxy: installs OS images from an upstream image store into a Eucalyptus (or any
//! EC2/S3) cloud, driven by the Eucalyptus admin UI's Store tab. The code map:
//!
//! - [`config`]: flags, environment and config file -> [`config::Config`]
//! - [`app`]: builds the parts and runs them until shutdown
//! - [`api`]: the UI side: routes, the servlet's request signature, JSON shapes, errors -> HTTP
//! - [`catalog`]: the upstream side: fetch, verify, keep and search the signed catalog
//! - [`trust`]: OpenPGP trust as one service: the keyring (reloaded when it changes), detached and
//!   clear-signed checks (sequoia), and whose fault a refusal is
//! - [`logging`]: log lines on a terminal, or with the journal's priorities under systemd
//! - [`limits`]: every bound on what others may ask of the proxy, with its unit and reason
//! - [`simplestreams`]: Canonical's simplestreams format: index, inherited item fields, filters, offers
//! - [`fetch`]: HTTP downloads with resume, size cap and hashing as bytes flow
//! - [`cache`]: content-addressed files, promoted only once verified; the budget that evicts them
//! - [`db`]: SQLite state: catalog, files, installs (the job queue), cloud objects, events
//! - [`subscribe`]: subscriptions: what the proxy installs and retires by itself (`plan`)
//! - [`install`]: the state machine, the workers, the live board the UI polls
//! - [`status`]: every status line's wording, and the typed steps publishing reports
//! - [`unpack`]: gunzip, tarball members and qcow2 whole disks (`unpack::qcow2`) streamed out as
//!   what gets installed, every structure judged first
//! - [`bundle`]: the EC2 image bundle: tar, gzip, AES, parts, manifest, keys; the reading pipeline
//! - [`publish`]: bundle -> upload -> register with recovery, once for every cloud
//! - [`cloud`]: the transport a cloud implements: S3 upload, EC2 registration, request signing,
//!   credentials; the fake cloud
//! - [`pause`]: the crash tests' hook that parks an install at a chosen point
//! - [`client`]: a client that signs like the servlet (CLI and tests)
//! - [`json`]: ASCII-only JSON, as the servlet needs
//! - [`rfc3986`]: the percent-encoding every signature here uses
//! - [`metrics`]: Prometheus counters and their text exposition (`/metrics`)
//! - [`fuzzing`]: the fuzz harnesses (`fuzz/`), here so regression tests replay them exactly
//! - [`report`]: an error and its causes as one line, each cause said once
//! - [`notify`]: readiness for systemd and `start-stop-daemon` (the `sd_notify` protocol)
//! - `demo`: fake-store and the proxy together, for a first run

pub mod api;
pub mod app;
pub mod bundle;
pub mod cache;
pub mod catalog;
pub mod client;
pub mod cloud;
pub mod config;
pub mod db;
#[cfg(feature = "demo")]
pub mod demo;
pub mod fetch;
pub mod fuzzing;
pub mod install;
pub mod json;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pause;
pub mod publish;
pub mod report;
pub mod rfc3986;
pub mod simplestreams;
pub mod status;
pub mod subscribe;
#[cfg(test)]
mod testing;
pub mod trust;
pub mod unpack;
