//! The durable state (SPEC §6): one SQLite file, WAL mode, migrations versioned in code
//! (`PRAGMA user_version`). Every state change is one transaction that also appends to `events`.
//!
//! Calls are short and synchronous under one mutex; nothing here is on the hot path of the UI's
//! polls, which read the in-memory board (`install::board`).

pub mod installs;
pub mod nonces;

pub use installs::{InstallRow, RegisteredIds};

use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// What went wrong with the state database. SQLite's errors are kept typed and printed in the
/// message, so they are not also reported as `source()` (which would print them twice under `{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("state database {path}: {cause}")]
    Open {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Sqlite(rusqlite::Error),
    #[error(
        "state database: the schema is version {found}, newer than this proxy knows ({known}); upgrade the proxy"
    )]
    TooNew { found: i64, known: i64 },
    #[error("install of {uri}: {from} cannot become {to}")]
    IllegalTransition {
        uri: String,
        from: String,
        to: String,
    },
    #[error("state database: install of {uri} is stored damaged: {cause}")]
    Corrupt { uri: String, cause: String },
}

impl From<rusqlite::Error> for DbError {
    fn from(error: rusqlite::Error) -> Self {
        DbError::Sqlite(error)
    }
}

/// Each entry upgrades the schema by one version; never edit a shipped entry, append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE catalog (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         updated TEXT NOT NULL,
         updated_unix INTEGER NOT NULL,
         document BLOB NOT NULL,
         signature BLOB NOT NULL,
         accepted_at INTEGER NOT NULL
     );
     CREATE TABLE files (
         sha256 TEXT PRIMARY KEY,
         size INTEGER NOT NULL,
         url TEXT NOT NULL,
         verified_at INTEGER NOT NULL
     );
     CREATE TABLE installs (
         image_uri TEXT PRIMARY KEY,
         image TEXT NOT NULL,
         state TEXT NOT NULL,
         status_detail TEXT NOT NULL,
         error TEXT,
         attempt INTEGER NOT NULL,
         bucket TEXT NOT NULL,
         eki TEXT,
         eri TEXT,
         emi TEXT,
         queued_at INTEGER NOT NULL,
         updated_at INTEGER NOT NULL
     );
     CREATE TABLE cloud_objects (
         cloud TEXT NOT NULL,
         artifact TEXT NOT NULL,
         image_id TEXT NOT NULL,
         location TEXT NOT NULL,
         registered_at INTEGER NOT NULL,
         PRIMARY KEY (cloud, artifact)
     );
     CREATE TABLE events (
         id INTEGER PRIMARY KEY,
         image_uri TEXT NOT NULL,
         at INTEGER NOT NULL,
         state TEXT NOT NULL,
         detail TEXT NOT NULL
     );",
    // 2: the catalog as documents tagged by format (a format may have several, inline-signed
    // ones have no detached signature); `catalog` keeps the accepted catalog's format and time.
    "CREATE TABLE catalog_documents (
         name TEXT PRIMARY KEY,
         url TEXT NOT NULL,
         document BLOB NOT NULL,
         signature BLOB,
         updated TEXT NOT NULL,
         updated_unix INTEGER NOT NULL
     );
     INSERT INTO catalog_documents (name, url, document, signature, updated, updated_unix)
         SELECT 'dashboard', '', document, signature, updated, updated_unix FROM catalog;
     CREATE TABLE catalog_accepted (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         format TEXT NOT NULL,
         updated TEXT NOT NULL,
         updated_unix INTEGER NOT NULL,
         accepted_at INTEGER NOT NULL
     );
     INSERT INTO catalog_accepted (id, format, updated, updated_unix, accepted_at)
         SELECT id, 'image-store/1', updated, updated_unix, accepted_at FROM catalog;
     DROP TABLE catalog;
     ALTER TABLE catalog_accepted RENAME TO catalog;",
    // 3: one accepted catalog per upstream, keyed by its URL; the one catalog of schema 2 is
    // kept under '' until an upstream of its format adopts it.
    "CREATE TABLE catalogs (
         upstream TEXT PRIMARY KEY,
         format TEXT NOT NULL,
         updated TEXT NOT NULL,
         updated_unix INTEGER NOT NULL,
         accepted_at INTEGER NOT NULL
     );
     INSERT INTO catalogs (upstream, format, updated, updated_unix, accepted_at)
         SELECT '', format, updated, updated_unix, accepted_at FROM catalog;
     CREATE TABLE catalog_documents_v3 (
         upstream TEXT NOT NULL,
         name TEXT NOT NULL,
         url TEXT NOT NULL,
         document BLOB NOT NULL,
         signature BLOB,
         updated TEXT NOT NULL,
         updated_unix INTEGER NOT NULL,
         PRIMARY KEY (upstream, name)
     );
     INSERT INTO catalog_documents_v3
         (upstream, name, url, document, signature, updated, updated_unix)
         SELECT '', name, url, document, signature, updated, updated_unix FROM catalog_documents;
     DROP TABLE catalog;
     DROP TABLE catalog_documents;
     ALTER TABLE catalog_documents_v3 RENAME TO catalog_documents;",
    // 4: who asked for an install (the operator, or a subscription, whose installs alone it may
    // retire), and when each verified file was last used (the cache budget evicts the least
    // recently used first; a file from before counts as used when it verified).
    "ALTER TABLE installs ADD COLUMN origin TEXT NOT NULL DEFAULT 'operator';
     ALTER TABLE files ADD COLUMN last_used INTEGER NOT NULL DEFAULT 0;
     UPDATE files SET last_used = verified_at;",
    // 5: the certificates upstreams rolled over to in-band, by the keyring file they extend.
    "CREATE TABLE keyring_rollovers (
        keyring TEXT PRIMARY KEY,
        certs BLOB NOT NULL,
        upstream TEXT NOT NULL,
        accepted_at INTEGER NOT NULL
     );",
];

/// Where the one catalog of schema 2 waits for its upstream (migration 3).
const UNKEYED_UPSTREAM: &str = "";

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The last catalog accepted from one upstream: its format, its time, and its documents exactly
/// as they were signed.
pub struct StoredCatalog {
    /// The format's name (`image-store/1`): what reads the documents back.
    pub format: String,
    /// The catalog's `updated`, RFC 3339, and in Unix seconds.
    pub updated: String,
    pub updated_unix: i64,
    pub accepted_at: i64,
    pub documents: Vec<StoredDocument>,
}

/// One accepted catalog document (`catalog_documents`).
pub struct StoredDocument {
    /// The format's name for it: its rollback check compares with the document of this name.
    pub name: String,
    /// Where it was fetched from (empty for documents stored before schema version 2).
    pub url: String,
    pub document: Vec<u8>,
    /// The detached signature; `None` for an inline-signed document.
    pub signature: Option<Vec<u8>>,
    /// The document's own `updated`, RFC 3339, and in Unix seconds.
    pub updated: String,
    pub updated_unix: i64,
}

/// A verified file as the cache budget sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFile {
    pub sha256: String,
    pub size: u64,
    /// When an install last used it (Unix seconds).
    pub last_used: i64,
}

#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let open_err = |cause| DbError::Open {
            path: path.to_owned(),
            cause,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // FULL: a committed state change survives power loss, and commits are rare (state changes only).
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent (transactions roll back).
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the installs table: the database answers and its pages read back (`/healthz`).
    pub fn ping(&self) -> Result<(), DbError> {
        self.lock()
            .query_row("SELECT COUNT(*) FROM installs", [], |_| Ok(()))?;
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64, DbError> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    /// The catalog last accepted from `upstream` (its URL); else the one catalog an earlier
    /// schema kept for whichever upstream it had (the caller checks its format).
    pub fn load_catalog(&self, upstream: &str) -> Result<Option<StoredCatalog>, DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for key in [upstream, UNKEYED_UPSTREAM] {
            let found = tx
                .query_row(
                    "SELECT format, updated, updated_unix, accepted_at FROM catalogs
                     WHERE upstream = ?1",
                    [key],
                    |row| {
                        Ok(StoredCatalog {
                            format: row.get(0)?,
                            updated: row.get(1)?,
                            updated_unix: row.get(2)?,
                            accepted_at: row.get(3)?,
                            documents: Vec::new(),
                        })
                    },
                )
                .optional()?;
            let Some(mut catalog) = found else {
                continue;
            };
            let mut stmt = tx.prepare(
                "SELECT name, url, document, signature, updated, updated_unix
                 FROM catalog_documents WHERE upstream = ?1 ORDER BY rowid",
            )?;
            catalog.documents = stmt
                .query_map([key], |row| {
                    Ok(StoredDocument {
                        name: row.get(0)?,
                        url: row.get(1)?,
                        document: row.get(2)?,
                        signature: row.get(3)?,
                        updated: row.get(4)?,
                        updated_unix: row.get(5)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            return Ok(Some(catalog));
        }
        Ok(None)
    }

    /// Replaces the catalog stored for `upstream` with `catalog`, documents and all, in one
    /// transaction (adopting the unkeyed one of an earlier schema, if there was one).
    pub fn store_catalog(&self, upstream: &str, catalog: &StoredCatalog) -> Result<(), DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for key in [upstream, UNKEYED_UPSTREAM] {
            tx.execute("DELETE FROM catalogs WHERE upstream = ?1", [key])?;
            tx.execute("DELETE FROM catalog_documents WHERE upstream = ?1", [key])?;
        }
        tx.execute(
            "INSERT INTO catalogs (upstream, format, updated, updated_unix, accepted_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                upstream,
                catalog.format,
                catalog.updated,
                catalog.updated_unix,
                catalog.accepted_at
            ],
        )?;
        for document in &catalog.documents {
            tx.execute(
                "INSERT INTO catalog_documents
                     (upstream, name, url, document, signature, updated, updated_unix)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    upstream,
                    document.name,
                    document.url,
                    document.document,
                    document.signature,
                    document.updated,
                    document.updated_unix
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The certificates accepted through rollovers for the keyring file `keyring` (a binary
    /// OpenPGP keyring), if any was.
    pub fn load_rollover(&self, keyring: &str) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT certs FROM keyring_rollovers WHERE keyring = ?1",
                [keyring],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Keeps every certificate accepted through rollovers for `keyring`, replacing the last set
    /// (`certs` holds them all); `upstream` offered the latest.
    pub fn store_rollover(
        &self,
        keyring: &str,
        certs: &[u8],
        upstream: &str,
    ) -> Result<(), DbError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO keyring_rollovers (keyring, certs, upstream, accepted_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![keyring, certs, upstream, now_unix()],
        )?;
        Ok(())
    }

    pub fn file_is_verified(&self, sha256: &str, size: u64) -> Result<bool, DbError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT 1 FROM files WHERE sha256 = ?1 AND size = ?2",
                params![sha256, size as i64],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn mark_file_verified(&self, sha256: &str, size: u64, url: &str) -> Result<(), DbError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO files (sha256, size, url, verified_at, last_used) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![sha256, size as i64, url, now_unix()],
        )?;
        Ok(())
    }

    /// An install used the verified file `sha256` now: the cache budget evicts it last.
    pub fn touch_file(&self, sha256: &str) -> Result<(), DbError> {
        self.lock().execute(
            "UPDATE files SET last_used = ?2 WHERE sha256 = ?1",
            params![sha256, now_unix()],
        )?;
        Ok(())
    }

    /// Every verified file, least recently used first (ties by digest, so the order is stable).
    pub fn verified_files(&self) -> Result<Vec<VerifiedFile>, DbError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT sha256, size, last_used FROM files ORDER BY last_used, sha256")?;
        let rows = stmt.query_map([], |row| {
            Ok(VerifiedFile {
                sha256: row.get(0)?,
                size: row.get::<_, i64>(1)? as u64,
                last_used: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets that `sha256` verified: done before its cache file is removed, so that a crash
    /// in between leaves a file nobody counts as verified (swept at the next start), never a
    /// record of a file that is gone.
    pub fn forget_file(&self, sha256: &str) -> Result<(), DbError> {
        self.lock()
            .execute("DELETE FROM files WHERE sha256 = ?1", [sha256])?;
        Ok(())
    }

    /// The artifact and manifest location this cloud registered as `image_id`, if recorded.
    pub fn cloud_object_by_id(
        &self,
        cloud: &str,
        image_id: &str,
    ) -> Result<Option<(String, String)>, DbError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT artifact, location FROM cloud_objects WHERE cloud = ?1 AND image_id = ?2",
                params![cloud, image_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    /// Forgets one registration of this cloud (it was deregistered).
    pub fn forget_cloud_object(&self, cloud: &str, artifact: &str) -> Result<(), DbError> {
        self.lock().execute(
            "DELETE FROM cloud_objects WHERE cloud = ?1 AND artifact = ?2",
            params![cloud, artifact],
        )?;
        Ok(())
    }

    /// The id a cloud gave an artifact (a kernel, a ramdisk, a machine image with its kernel and
    /// ramdisk), so that it is registered once per cloud.
    pub fn cloud_object(&self, cloud: &str, artifact: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT image_id FROM cloud_objects WHERE cloud = ?1 AND artifact = ?2",
                params![cloud, artifact],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Forgets this cloud's registrations made before `listed_at` whose ids `listed` lacks: the
    /// cloud no longer has them, so installing again must register anew. Returns how many.
    pub fn forget_cloud_objects(
        &self,
        cloud: &str,
        listed: &std::collections::HashSet<String>,
        listed_at: i64,
    ) -> Result<usize, DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let gone: Vec<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT artifact, image_id FROM cloud_objects WHERE cloud = ?1 AND registered_at < ?2",
            )?;
            stmt.query_map(params![cloud, listed_at], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<Vec<(String, String)>, _>>()?
            .into_iter()
            .filter(|(_, id)| !listed.contains(id))
            .collect()
        };
        for (artifact, _) in &gone {
            tx.execute(
                "DELETE FROM cloud_objects WHERE cloud = ?1 AND artifact = ?2",
                params![cloud, artifact],
            )?;
        }
        tx.commit()?;
        Ok(gone.len())
    }

    pub fn record_cloud_object(
        &self,
        cloud: &str,
        artifact: &str,
        image_id: &str,
        location: &str,
    ) -> Result<(), DbError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO cloud_objects (cloud, artifact, image_id, location, registered_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![cloud, artifact, image_id, location, now_unix()],
        )?;
        Ok(())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(DbError::TooNew { found, known });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let db = Db::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        db.mark_file_verified(&"a".repeat(64), 3, "http://x/")
            .unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        assert!(db.file_is_verified(&"a".repeat(64), 3).unwrap());
        assert!(!db.file_is_verified(&"a".repeat(64), 4).unwrap());
        db.lock().pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        assert!(matches!(
            Db::open(&path),
            Err(DbError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn a_catalog_stored_by_schema_1_becomes_an_image_store_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO catalog (id, updated, updated_unix, document, signature, accepted_at)
                 VALUES (1, '2026-11-21T10:00:00Z', 1795255200, X'7b7d', X'0102', 7)",
                [],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        // Schema 3 keeps it for whichever upstream asks first.
        let stored = db
            .load_catalog("http://store.example/api")
            .unwrap()
            .unwrap();
        assert_eq!(stored.format, "image-store/1");
        assert_eq!(
            (
                stored.updated.as_str(),
                stored.updated_unix,
                stored.accepted_at
            ),
            ("2026-11-21T10:00:00Z", 1795255200, 7)
        );
        let [document] = stored.documents.as_slice() else {
            panic!("one document");
        };
        assert_eq!(document.name, "dashboard");
        assert_eq!(document.document, b"{}");
        assert_eq!(document.signature.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(document.updated_unix, 1795255200);

        // Storing replaces the documents; an inline-signed one has no signature. Each upstream
        // has its own, and the first to store adopts the unkeyed one.
        let mirror = "http://mirror.example/";
        db.store_catalog(
            mirror,
            &StoredCatalog {
                format: "other/1".into(),
                updated: "2026-11-22T10:00:00Z".into(),
                updated_unix: 1795341600,
                accepted_at: 8,
                documents: vec![StoredDocument {
                    name: "index".into(),
                    url: "http://mirror.example/streams/v1/index.sjson".into(),
                    document: b"signed".to_vec(),
                    signature: None,
                    updated: "2026-11-22T10:00:00Z".into(),
                    updated_unix: 1795341600,
                }],
            },
        )
        .unwrap();
        let stored = db.load_catalog(mirror).unwrap().unwrap();
        assert_eq!(stored.format, "other/1");
        assert_eq!(stored.documents.len(), 1);
        assert_eq!(stored.documents[0].signature, None);
        assert!(
            db.load_catalog("http://store.example/api")
                .unwrap()
                .is_none()
        );
    }
}
