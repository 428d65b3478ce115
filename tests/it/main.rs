//! Every integration test of the proxy, in one test binary: one module per area, each with the
//! doc comment that says what it proves. One binary links the crate once, where one binary per
//! file linked it nineteen times. Run one area with `cargo test --test it <module>::`, e.g.
//! `cargo test --test it crash_safety::`. The tests of all modules share one process and run on
//! parallel threads, so none may change process-wide state (the environment, the current
//! directory); each starts what it drives (fake-store on its own runtime, the proxy as a child
//! process) in its own temp dir. The Debian package test (`tests/debian_package/`) stays a binary
//! of its own: it builds a release and runs as root.

mod common;
mod webdriver;

mod allowed_hosts;
mod bad_requests;
mod bad_upstream;
mod bundle_format;
mod cloud_credentials;
mod crash_safety;
mod dashboard_cache;
mod demo;
mod download_rate;
mod freshness;
mod full_disk;
mod fuzz_regressions;
mod hostile_requests;
mod hostile_tarballs;
mod hostile_upstream;
mod install_road;
mod key_rollover;
mod load;
mod monitoring;
mod moto_cloud;
mod openapi;
mod overlap;
mod parallel_transfers;
mod qcow2;
mod replay_across_restart;
mod service_readiness;
mod simplestreams_model;
mod simplestreams_peer;
mod simplestreams_upstream;
mod store_page;
mod subscriptions;
mod uec_and_hvm_installs;
mod upgrade_from_0_1_0;
