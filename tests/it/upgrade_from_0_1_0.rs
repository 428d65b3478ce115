//! Upgrades lose nothing (issue 17, point 7). `tests/fixtures/upgrade-0.1.0/data` is a data
//! directory written by release 0.1.0 itself (schema 2; `make-fixture.sh` beside it says how it
//! was made, and is never run by the tests): two paravirtual installs (kernel, ramdisk and
//! machine image each) into the fake cloud, their verified files, the cloud's bundles and
//! registrations, and the accepted catalog. This release opens a copy of it: the schema migrates,
//! and every install, verified file, cloud object and accepted catalog document is kept; the
//! installs still read as installed; nothing is downloaded, uploaded or registered again.

use crate::common;

use common::TestEnv;
use rusqlite::types::ValueRef;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade-0.1.0/data")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir` (relative path) with its bytes.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, found);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_owned();
                found.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(dir, dir, &mut found);
    found
}

/// The rows `sql` selects, each column as text (blobs as their length and a prefix).
fn rows(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let columns = stmt.column_count();
    stmt.query_map([], |row| {
        Ok((0..columns)
            .map(|i| match row.get_ref(i).unwrap() {
                ValueRef::Null => "NULL".to_string(),
                ValueRef::Integer(n) => n.to_string(),
                ValueRef::Real(x) => x.to_string(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                ValueRef::Blob(b) => format!("blob of {} bytes: {}", b.len(), hex::encode(b)),
            })
            .collect())
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn schema_version(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap()
}

const INSTALLS: &str = "SELECT image_uri, image, state, status_detail, error, attempt, bucket, eki, eri, emi, queued_at, updated_at FROM installs ORDER BY image_uri";
const FILES: &str = "SELECT sha256, size, url, verified_at FROM files ORDER BY sha256";
const CLOUD_OBJECTS: &str = "SELECT cloud, artifact, image_id, location, registered_at FROM cloud_objects ORDER BY cloud, artifact";
const DOCUMENTS: &str = "SELECT name, url, document, signature, updated, updated_unix FROM catalog_documents ORDER BY name";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_written_by_0_1_0_keeps_every_install_file_cloud_object_and_catalog() {
    let mut env = TestEnv::with_store().await;
    copy_dir(&fixture(), &env.data_dir);
    let db = env.data_dir.join("state.sqlite");
    assert_eq!(schema_version(&db), 2, "the fixture is 0.1.0's schema");
    let installs = rows(&db, INSTALLS);
    let files = rows(&db, FILES);
    let cloud_objects = rows(&db, CLOUD_OBJECTS);
    let documents = rows(&db, DOCUMENTS);
    assert_eq!(installs.len(), 2, "{installs:?}");
    assert!(
        installs.iter().all(|row| row[2] == "installed"),
        "{installs:?}"
    );
    assert!(
        installs
            .iter()
            .all(|row| row[7..10].iter().all(|id| id != "NULL")),
        "paravirtual: kernel, ramdisk and machine image registered: {installs:?}"
    );
    assert!(files.len() >= 4, "{files:?}");
    // karmic and lucid share their kernel and ramdisk: registered once.
    assert_eq!(cloud_objects.len(), 4, "{cloud_objects:?}");
    assert_eq!(documents.len(), 1, "{documents:?}");
    let cloud_before = files_under(&env.data_dir.join("fake-cloud"));
    let cache_before = files_under(&env.data_dir.join("cache"));
    assert!(!cloud_before.is_empty() && !cache_before.is_empty());

    // The upstream 0.1.0 used is gone: whatever the proxy shows comes from the data directory.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/api", listener.local_addr().unwrap())
    };
    env.upstream_args = Some(vec!["--api-url".into(), dead]);
    env.start_proxy();
    let dashboard = env.dashboard().await;
    let line = dashboard["error-message"].as_str().unwrap_or_default();
    assert!(
        line.contains("showing the catalog of 2026-11-20T10:00:00Z"),
        "the accepted catalog is kept: {line}; log:\n{}",
        env.proxy_log()
    );
    assert_eq!(dashboard["images"].as_array().unwrap().len(), 2);
    for row in &installs {
        let state = common::state_in(&dashboard, &row[0])
            .unwrap_or_else(|| panic!("no state for {}: {dashboard}", row[0]));
        assert_eq!(state["status"], "installed", "{state}");
    }
    // Reconciled with the fake cloud's registrations, and still installed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    while !env
        .proxy_log()
        .contains("reconciled the installs with the cloud's images")
    {
        assert!(std::time::Instant::now() < deadline, "{}", env.proxy_log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for row in &installs {
        assert_eq!(env.state(&row[0]).await["status"], "installed");
    }

    assert!(schema_version(&db) > 2, "migrated");
    assert_eq!(
        rows(&db, INSTALLS),
        installs,
        "every install kept as it was"
    );
    assert_eq!(rows(&db, FILES), files, "every verified file kept");
    assert_eq!(
        rows(&db, CLOUD_OBJECTS),
        cloud_objects,
        "every cloud object kept"
    );
    assert_eq!(rows(&db, DOCUMENTS), documents, "the accepted catalog kept");
    assert_eq!(
        files_under(&env.data_dir.join("fake-cloud")),
        cloud_before,
        "nothing uploaded or registered again"
    );
    assert_eq!(
        files_under(&env.data_dir.join("cache")),
        cache_before,
        "nothing downloaded again"
    );
    assert!(env.store.requests().is_empty());
}
