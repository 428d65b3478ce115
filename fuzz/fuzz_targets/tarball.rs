//! `image_store_proxy::fuzzing::tarball`, in a scratch directory of this run's own.
#![no_main]
use std::sync::LazyLock;

static WORK_DIR: LazyLock<tempfile::TempDir> =
    LazyLock::new(|| tempfile::tempdir().expect("a scratch directory"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| image_store_proxy::fuzzing::tarball(
    data,
    WORK_DIR.path()
));
