//! Install rows: both the job queue and the state the UI sees (`installs`), with an event per change.

use super::{Db, DbError, now_unix};
use crate::catalog::model::Image;
use crate::install::state::InstallState;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use std::sync::Arc;

/// The ids the cloud gave an image's parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisteredIds {
    pub eki: Option<String>,
    pub eri: Option<String>,
    pub emi: Option<String>,
}

/// Who asked for an install: a subscription retires only the installs it made itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Install was pressed (or asked for through the API).
    Operator,
    /// A subscription's refresh asked for it.
    Subscription,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Operator => "operator",
            Origin::Subscription => "subscription",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "operator" => Some(Origin::Operator),
            "subscription" => Some(Origin::Subscription),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InstallRow {
    /// The catalog entry as it was when install was pressed: an install survives catalog changes.
    pub image: Arc<Image>,
    pub state: InstallState,
    pub status_detail: String,
    pub error: Option<String>,
    pub attempt: i64,
    /// `image-store-<unix seconds>`, fixed when the attempt is queued (the original's naming).
    pub bucket: String,
    pub ids: RegisteredIds,
    pub queued_at: i64,
    /// When the row last changed (Unix seconds).
    pub updated_at: i64,
    /// Who asked for the attempt.
    pub origin: Origin,
}

const COLUMNS: &str = "image, state, status_detail, error, attempt, bucket, eki, eri, emi, queued_at, image_uri, updated_at, origin";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Result<InstallRow, DbError>> {
    let uri: String = row.get(10)?;
    let image_json: String = row.get(0)?;
    let state_text: String = row.get(1)?;
    let corrupt = |cause: String| DbError::Corrupt {
        uri: uri.clone(),
        cause,
    };
    let image = match read_image_snapshot(&image_json) {
        Ok(image) => image,
        Err(e) => return Ok(Err(corrupt(format!("image snapshot: {e}")))),
    };
    let Some(state) = InstallState::parse(&state_text) else {
        return Ok(Err(corrupt(format!("unknown state {state_text:?}"))));
    };
    let origin_text: String = row.get(12)?;
    let Some(origin) = Origin::parse(&origin_text) else {
        return Ok(Err(corrupt(format!("unknown origin {origin_text:?}"))));
    };
    Ok(Ok(InstallRow {
        image: Arc::new(image),
        state,
        status_detail: row.get(2)?,
        error: row.get(3)?,
        attempt: row.get(4)?,
        bucket: row.get(5)?,
        ids: RegisteredIds {
            eki: row.get(6)?,
            eri: row.get(7)?,
            emi: row.get(8)?,
        },
        queued_at: row.get(9)?,
        updated_at: row.get(11)?,
        origin,
    }))
}

/// The shape of the `image` JSON of an install row: the catalog entry as it was when install was
/// pressed, a serialised [`Image`]. A change of `Image` that rows already written cannot be read
/// as (a field renamed, removed or made required) bumps this, and [`read_image_snapshot`] learns
/// to read the old shape; the test `the_image_snapshot_shape_is_pinned` fails on any change of the
/// JSON, so none goes unnoticed. Rows written before the shape was recorded have no `shape`
/// field and are shape 1.
const IMAGE_SHAPE: u64 = 2;

/// An install row's image snapshot, tagged with its shape.
fn image_snapshot(image: &Image) -> String {
    #[derive(serde::Serialize)]
    struct Snapshot<'a> {
        shape: u64,
        #[serde(flatten)]
        image: &'a Image,
    }
    serde_json::to_string(&Snapshot {
        shape: IMAGE_SHAPE,
        image,
    })
    .expect("an image always serialises")
}

/// Reads an image snapshot of any shape this proxy knows.
fn read_image_snapshot(json: &str) -> Result<Image, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let shape = match value.get("shape") {
        None => 1,
        Some(shape) => shape
            .as_u64()
            .ok_or_else(|| format!("shape {shape} is not a number"))?,
    };
    match shape {
        // 2 added `virtualization` (1 was always paravirtual, its default), `stream` and a file's
        // `provides` (absent in 1: none).
        1 | 2 => serde_json::from_value::<Image>(value).map_err(|e| e.to_string()),
        newer => Err(format!(
            "shape {newer} is newer than this proxy knows ({IMAGE_SHAPE}); upgrade the proxy"
        )),
    }
}

fn get(tx: &Transaction<'_>, uri: &str) -> Result<Option<InstallRow>, DbError> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM installs WHERE image_uri = ?1"),
        [uri],
        from_row,
    )
    .optional()?
    .transpose()
}

fn log_event(tx: &Transaction<'_>, uri: &str, state: &str, detail: &str) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO events (image_uri, at, state, detail) VALUES (?1, ?2, ?3, ?4)",
        params![uri, now_unix(), state, detail],
    )?;
    Ok(())
}

/// What a state change writes besides the state itself.
pub struct Change<'a> {
    pub to: InstallState,
    pub detail: &'a str,
    pub error: Option<&'a str>,
    pub ids: Option<&'a RegisteredIds>,
}

impl Db {
    pub fn installs(&self) -> Result<Vec<InstallRow>, DbError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM installs ORDER BY queued_at, image_uri"
        ))?;
        let rows = stmt.query_map([], from_row)?;
        let mut installs = Vec::new();
        for row in rows {
            installs.push(row??);
        }
        Ok(installs)
    }

    pub fn install(&self, uri: &str) -> Result<Option<InstallRow>, DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        get(&tx, uri)
    }

    /// Queues a new attempt unless one is queued, running or done; returns the row as it now is and
    /// whether a new attempt was queued. The attempt is `origin`'s (an operator pressing Install
    /// on a subscription's failed install makes it the operator's).
    pub fn request_install(
        &self,
        image: &Image,
        detail: &str,
        origin: Origin,
    ) -> Result<(InstallRow, bool), DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let existing = get(&tx, &image.uri)?;
        if let Some(row) = existing
            .as_ref()
            .filter(|row| row.state.is_active() || row.state == InstallState::Installed)
        {
            return Ok((row.clone(), false));
        }
        let attempt = existing.as_ref().map_or(1, |row| row.attempt + 1);
        let now = now_unix();
        let image_json = image_snapshot(image);
        tx.execute(
            "INSERT INTO installs (image_uri, image, state, status_detail, error, attempt, bucket, eki, eri, emi, queued_at, updated_at, origin)
             VALUES (?1, ?2, 'queued', ?3, NULL, ?4, ?5, NULL, NULL, NULL, ?6, ?6, ?7)
             ON CONFLICT (image_uri) DO UPDATE SET image = ?2, state = 'queued', status_detail = ?3, error = NULL,
                 attempt = ?4, bucket = COALESCE(installs.bucket, ?5), eki = NULL, eri = NULL, emi = NULL, queued_at = ?6, updated_at = ?6, origin = ?7",
            params![image.uri, image_json, detail, attempt, format!("image-store-{now}"), now, origin.as_str()],
        )?;
        log_event(&tx, &image.uri, "queued", &format!("attempt {attempt}"))?;
        let row = get(&tx, &image.uri)?.expect("the row was just written");
        tx.commit()?;
        Ok((row, true))
    }

    /// Moves an install to `change.to`, refusing transitions the state machine does not allow.
    pub fn transition(&self, uri: &str, change: Change<'_>) -> Result<InstallRow, DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(current) = get(&tx, uri)? else {
            return Err(DbError::IllegalTransition {
                uri: uri.into(),
                from: "nothing".into(),
                to: change.to.to_string(),
            });
        };
        if current.state != change.to && !current.state.can_become(change.to) {
            return Err(DbError::IllegalTransition {
                uri: uri.into(),
                from: current.state.to_string(),
                to: change.to.to_string(),
            });
        }
        let ids = change.ids.unwrap_or(&current.ids);
        tx.execute(
            "UPDATE installs SET state = ?2, status_detail = ?3, error = ?4, eki = ?5, eri = ?6, emi = ?7, updated_at = ?8
             WHERE image_uri = ?1",
            params![uri, change.to.as_str(), change.detail, change.error, ids.eki, ids.eri, ids.emi, now_unix()],
        )?;
        if current.state != change.to {
            log_event(
                &tx,
                uri,
                change.to.as_str(),
                change.error.unwrap_or(change.detail),
            )?;
        }
        let row = get(&tx, uri)?.expect("the row exists");
        tx.commit()?;
        Ok(row)
    }

    /// `clear-error`: forgets a failed attempt, so the image reads plain `uninstalled` again.
    pub fn clear_error(&self, uri: &str) -> Result<bool, DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let cleared = tx.execute(
            "DELETE FROM installs WHERE image_uri = ?1 AND state = 'failed'",
            [uri],
        )? > 0;
        if cleared {
            log_event(&tx, uri, "cleared", "error cleared by the operator")?;
        }
        tx.commit()?;
        Ok(cleared)
    }

    /// At start-up: every install a previous run left in flight goes back to the queue.
    pub fn requeue_interrupted(&self) -> Result<usize, DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let uris: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT image_uri FROM installs WHERE state IN ('downloading', 'verifying', 'installing')",
            )?;
            stmt.query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?
        };
        for uri in &uris {
            tx.execute(
                "UPDATE installs SET state = 'queued', status_detail = 'Resuming after a restart', updated_at = ?2
                 WHERE image_uri = ?1",
                params![uri, now_unix()],
            )?;
            log_event(&tx, uri, "queued", "resumed after a restart")?;
        }
        tx.commit()?;
        Ok(uris.len())
    }

    pub fn events(&self, uri: &str) -> Result<Vec<(String, String)>, DbError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT state, detail FROM events WHERE image_uri = ?1 ORDER BY id")?;
        let rows = stmt.query_map([uri], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An install row's image exactly as this proxy wrote it before the shape was recorded.
    const SHAPE_1_UNTAGGED: &str = r#"{"uri":"http://store.example/api/images/karmic","key":"0123456789abcdef","product":"Ubuntu","title":"Ubuntu 9.10","version":"9.10","summary":"Karmic","description_html":"<p>hi</p>","icon_uri":null,"provider":{"title":"Canonical","uri":"http://canonical.com"},"tags":["ubuntu"],"arch":"x86_64","files":[{"kind":"kernel","url":"http://store.example/api/files/k","size":5,"sha256":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","signature_url":null,"compression":"none","packing":"raw"},{"kind":"image","url":"http://store.example/api/files/i.tar.gz","size":10,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","signature_url":"http://store.example/api/files/i.tar.gz.asc","compression":"gzip","packing":"tar"}]}"#;

    #[test]
    fn an_install_row_written_before_the_shape_was_recorded_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.sqlite")).unwrap();
        db.lock()
            .execute(
                "INSERT INTO installs (image_uri, image, state, status_detail, error, attempt, bucket, queued_at, updated_at)
                 VALUES ('http://store.example/api/images/karmic', ?1, 'failed', 'x', 'boom', 1, 'image-store-1', 1, 1)",
                [SHAPE_1_UNTAGGED],
            )
            .unwrap();
        let row = db
            .install("http://store.example/api/images/karmic")
            .unwrap()
            .unwrap();
        assert_eq!(row.image.title, "Ubuntu 9.10");
        assert_eq!(row.image.files.len(), 2);
        assert_eq!(
            row.image.files[1].packing,
            crate::catalog::model::Packing::Tar
        );
        assert_eq!(
            row.image.provider.as_ref().map(|p| p.title.as_str()),
            Some("Canonical")
        );
        assert_eq!(row.error.as_deref(), Some("boom"));
    }

    #[test]
    fn the_image_snapshot_shape_is_pinned() {
        // A change here is a change of what install rows hold: bump IMAGE_SHAPE and read the old
        // shape in read_image_snapshot rather than edit this text alone.
        let image = read_image_snapshot(SHAPE_1_UNTAGGED).unwrap();
        let written = image_snapshot(&image);
        // A paravirtual image with no stream writes what shape 1 did, tagged 2: a proxy that
        // knows only shape 1 refuses the row instead of installing an HVM disk as paravirtual.
        assert_eq!(
            written,
            format!(r#"{{"shape":2,{}"#, &SHAPE_1_UNTAGGED[1..])
        );
        let again = read_image_snapshot(&written).unwrap();
        assert_eq!(image_snapshot(&again), written);
        let mut image = again;
        image.virtualization = crate::catalog::model::Virtualization::Hvm;
        image.stream = Some(crate::catalog::model::StreamIdentity {
            content_id: "com.ubuntu.cloud:released:download".into(),
            product: "com.ubuntu.cloud:server:24.04:amd64".into(),
            version: "20240725".into(),
            item: "disk1.img".into(),
        });
        {
            use crate::catalog::model::FileKind;
            image.files[1].provides = vec![FileKind::Kernel, FileKind::Ramdisk, FileKind::Image];
        }
        let stream = image_snapshot(&image);
        assert!(
            stream.ends_with(r#""packing":"tar","provides":["kernel","ramdisk","image"]}],"virtualization":"hvm","stream":{"content_id":"com.ubuntu.cloud:released:download","product":"com.ubuntu.cloud:server:24.04:amd64","version":"20240725","item":"disk1.img"}}"#),
            "{stream}"
        );
        assert_eq!(
            image_snapshot(&read_image_snapshot(&stream).unwrap()),
            stream
        );
        let newer = written.replace(r#""shape":2"#, r#""shape":3"#);
        assert!(read_image_snapshot(&newer).unwrap_err().contains("newer"));
    }
}
