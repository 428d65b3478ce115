//! The API's request signature check: `image_store_proxy::fuzzing::SignatureCheck`, on one proxy
//! state (data dir, nonce book) kept for the whole run.
#![no_main]
use image_store_proxy::fuzzing::SignatureCheck;
use std::sync::LazyLock;

static WORK_DIR: LazyLock<tempfile::TempDir> =
    LazyLock::new(|| tempfile::tempdir().expect("a scratch directory"));
static CHECK: LazyLock<SignatureCheck> = LazyLock::new(|| SignatureCheck::new(WORK_DIR.path()));

libfuzzer_sys::fuzz_target!(|data: &[u8]| CHECK.check(data));
