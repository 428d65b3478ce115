//! Replays every input the fuzzer ever crashed on (`fuzz/regressions/<target>/`) and every seed
//! (`fuzz/corpus/<target>/seed-*`) through the same harnesses `cargo fuzz` runs
//! (`image_store_proxy::fuzzing`), so a fixed crash stays fixed under plain `cargo test`.

use image_store_proxy::fuzzing;
use std::path::{Path, PathBuf};

const TARGETS: [&str; 10] = [
    "catalog",
    "signature",
    "eucarc",
    "tarball",
    "cloud_error",
    "qcow2",
    "simplestreams",
    "clearsign",
    "splice",
    "splice_qcow2",
];

/// The saved inputs of `target`: its regressions, then its seeds.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for (dir, seeds_only) in [("regressions", false), ("corpus", true)] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                !seeds_only
                    || path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("seed-"))
            })
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// Runs `harness` on each saved input of `target`; a panic names the file it came from.
fn replay(target: &str, harness: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no seeds for {target}: fuzz/corpus/{target}/seed-*"
    );
    for file in files {
        let data = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| harness(&data)));
        assert!(outcome.is_ok(), "{} fails again", file.display());
    }
}

#[test]
fn every_target_has_a_harness_here() {
    let built: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets"))
            .unwrap()
            .map(|entry| {
                entry
                    .unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
    for target in &built {
        assert!(
            TARGETS.contains(&target.as_str()),
            "{target} is not replayed here"
        );
    }
    assert_eq!(built.len(), TARGETS.len(), "{built:?}");
}

#[test]
fn eucarc_inputs() {
    let dir = tempfile::tempdir().unwrap();
    replay("eucarc", |data| fuzzing::eucarc(data, dir.path()));
}

#[test]
fn tarball_inputs() {
    let dir = tempfile::tempdir().unwrap();
    replay("tarball", |data| fuzzing::tarball(data, dir.path()));
}

#[test]
fn signature_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let check = fuzzing::SignatureCheck::new(dir.path());
    replay("signature", |data| check.check(data));
}

/// One named test per harness that needs nothing but the bytes.
macro_rules! replays {
    ($($test:ident: $target:ident),* $(,)?) => {$(
        #[test]
        fn $test() {
            replay(stringify!($target), fuzzing::$target);
        }
    )*};
}

replays! {
    catalog_inputs: catalog,
    cloud_error_inputs: cloud_error,
    qcow2_inputs: qcow2,
    simplestreams_inputs: simplestreams,
    clearsign_inputs: clearsign,
    splice_inputs: splice,
    splice_qcow2_inputs: splice_qcow2,
}
