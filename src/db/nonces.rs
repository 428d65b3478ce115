//! The nonce book on disk (issue 17 point 6): every accepted nonce with its `Expires`, so a signed
//! request seen just before a restart is still a replay just after it.
//!
//! A file of its own (`<data-dir>/nonces.sqlite`), not a table of `state.sqlite`: it takes one
//! commit per signed request, which the state database (`synchronous=FULL`, one mutex shared with
//! the installs) is not built for, and nothing in it outlives 15 minutes, so it needs no
//! migrations and may be deleted while the proxy is stopped. WAL with `synchronous=OFF`: a
//! commit is in the kernel's page cache when it returns, so it survives the process being killed
//! (the restart this is for) at 58 µs a request (20,000 nonces in 1.17 s in a debug build on a
//! loaded machine; 229 µs with `NORMAL`, whose checkpoints sync). A power cut may lose the last
//! commits or damage the file; a damaged book is started afresh, and a reboot outlasts most
//! signatures (the servlet's live 30 s).
//!
//! Nonces are kept as a 64-bit HMAC under a random key made with the file: the same 16 bytes an
//! entry as the book in memory, and no client text on disk.

use super::DbError;
use hmac::{Hmac, Mac};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::Sha256;
use std::path::Path;
use std::sync::Mutex;

pub struct NonceStore {
    conn: Mutex<Connection>,
    key: [u8; 32],
}

impl NonceStore {
    /// Opens (or creates) the book at `path`, dropping what expired before `now`; a damaged
    /// one (a power cut under `synchronous=OFF`) is removed and started afresh.
    pub fn open(path: &Path, now: i64) -> Result<Self, DbError> {
        match Self::open_as_is(path, now) {
            Err(DbError::Open {
                cause: rusqlite::Error::SqliteFailure(failure, _),
                ..
            }) if matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
            {
                tracing::warn!(
                    "nonce book {} is damaged; starting it afresh",
                    path.display()
                );
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.as_os_str().to_owned();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
                Self::open_as_is(path, now)
            }
            opened => opened,
        }
    }

    fn open_as_is(path: &Path, now: i64) -> Result<Self, DbError> {
        let open_err = |cause| DbError::Open {
            path: path.to_owned(),
            cause,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "OFF")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS book_key (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 key BLOB NOT NULL
             );
             CREATE TABLE IF NOT EXISTS nonces (
                 hash INTEGER PRIMARY KEY,
                 expires INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS nonces_by_expiry ON nonces (expires);",
        )
        .map_err(open_err)?;
        let stored: Option<Vec<u8>> = conn
            .query_row("SELECT key FROM book_key WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()
            .map_err(open_err)?;
        let key = match stored.and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()) {
            Some(key) => key,
            None => {
                let key: [u8; 32] = rand::random();
                conn.execute(
                    "INSERT OR REPLACE INTO book_key (id, key) VALUES (1, ?1)",
                    [&key[..]],
                )
                .map_err(open_err)?;
                // Hashes under another key mean nothing now.
                conn.execute("DELETE FROM nonces", []).map_err(open_err)?;
                key
            }
        };
        conn.execute("DELETE FROM nonces WHERE expires < ?1", [now])
            .map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            key,
        })
    }

    /// The book's hash of `nonce`: what memory and disk both keep.
    pub fn hash(&self, nonce: &str) -> u64 {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(nonce.as_bytes());
        let digest = mac.finalize().into_bytes();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    /// The nonces still live at `now`, with their `Expires`.
    pub fn live(&self, now: i64) -> Result<Vec<(u64, i64)>, DbError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT hash, expires FROM nonces WHERE expires >= ?1")?;
        let rows = stmt
            .query_map([now], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Writes `hash` down until `expires`; committed when this returns.
    pub fn remember(&self, hash: u64, expires: i64) -> Result<(), DbError> {
        self.lock()
            .prepare_cached("INSERT OR REPLACE INTO nonces (hash, expires) VALUES (?1, ?2)")?
            .execute(params![hash as i64, expires])?;
        Ok(())
    }

    /// Drops what expired before `now`.
    pub fn forget_expired(&self, now: i64) -> Result<(), DbError> {
        self.lock()
            .prepare_cached("DELETE FROM nonces WHERE expires < ?1")?
            .execute([now])?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_and_its_key_survive_a_reopen_and_expired_nonces_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces.sqlite");
        let store = NonceStore::open(&path, 100).unwrap();
        let (live, dead) = (store.hash("live"), store.hash("dead"));
        assert_ne!(live, dead);
        store.remember(live, 200).unwrap();
        store.remember(dead, 120).unwrap();
        drop(store);
        let again = NonceStore::open(&path, 150).unwrap();
        assert_eq!(again.hash("live"), live, "the key is kept with the book");
        assert_eq!(again.live(150).unwrap(), vec![(live, 200)]);
    }

    #[test]
    fn a_damaged_book_is_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let store = NonceStore::open(&path, 100).unwrap();
        assert!(store.live(100).unwrap().is_empty());
        store.remember(store.hash("n"), 200).unwrap();
    }
}
