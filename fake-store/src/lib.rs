//! fake-store: a fake upstream image store API (the proxy's SPEC §3, §5), for offline tests and
//! the demo. It serves a directory of image sets as a signed catalog, with files that support
//! HTTP Range and carry detached OpenPGP signatures, and it can misbehave on purpose (`Faults`).
//!
//! - `catalog.rs`: scans the directory and writes the catalog document
//! - `signing.rs`: detached armored signatures with an OpenPGP secret key (sequoia)
//! - `http.rs`: the HTTP API, the request log and the faults
//! - `range.rs`: `Range` header parsing
//! - `faults.rs`: per-path misbehaviour a test switches on at run time ([`Fault`])
//! - `simplestreams.rs`: the same image sets as a clear-signed simplestreams mirror under
//!   [`SIMPLESTREAMS_ROOT_PATH`] ([`simplestreams_root`]), with its own bad inputs ([`StreamFaults`])
//! - [`qcow2`]: the qcow2 writer of the simplestreams `disk1.img` items
//! - [`demo`]: generates the demo image sets

mod catalog;
pub mod demo;
mod faults;
mod http;
pub mod qcow2;
mod range;
mod signing;
mod simplestreams;

pub use catalog::Error;
pub use faults::{Fault, Link, PathFault, SignedCatalog};
pub use simplestreams::{
    DOWNLOAD_CONTENT_ID, IMAGE_IDS_CONTENT_ID, INDEX_PATH as SIMPLESTREAMS_INDEX_PATH,
    MISMATCHED_CONTENT_ID, ROOT_PATH as SIMPLESTREAMS_ROOT_PATH, StreamFaults, StreamItem,
};

use catalog::ImageSet;
use signing::SigningKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The test signing key: published, so anyone can sign with it. Tests and the demo only.
pub const TEST_SIGNING_KEY: &str = include_str!("../../keyrings/test-signing-key.asc");
/// The public keyring that trusts [`TEST_SIGNING_KEY`].
pub const TEST_KEYRING: &[u8] = include_bytes!("../../keyrings/test-keyring.gpg");

pub struct StoreConfig {
    /// The image directory: one set at the top level, or one per subdirectory.
    pub dir: PathBuf,
    /// Armored OpenPGP secret key; `None` is [`TEST_SIGNING_KEY`].
    pub signing_key: Option<String>,
    /// The catalog's `updated` (RFC 3339); `None` is now.
    pub updated: Option<String>,
    /// The API base URL written into the catalog; `None` is `http://<listener address>/api`.
    pub public_url: Option<String>,
}

/// What the next requests get wrong, on purpose.
#[derive(Default, Debug, Clone)]
pub struct Faults {
    /// Serve the catalog with one letter of a title changed after signing.
    pub tamper_catalog: bool,
    /// Answer every request with this status.
    pub status: Option<u16>,
    /// The next file download longer than this sends this many bytes, then cuts the connection.
    pub drop_file_after: Option<u64>,
    /// Serve file bodies no faster than this many bytes per second: a slow link, so that an
    /// install's progress can be watched (the demo, the browser test). Each response is held to
    /// it on its own: a client on several connections at once gets this rate on each.
    pub bytes_per_second: Option<u64>,
    /// One link all file bodies share (`--store-kib-per-second`): the store's whole uplink,
    /// however many connections a client opens.
    pub link: Option<Arc<Link>>,
    /// Answer a file request's `Range` with the whole file (200), as servers without range
    /// support do.
    pub ignore_range: bool,
    /// Misbehaviour of single paths (`files/karmic/image.gz`, `dashboard`), applied before
    /// the switches above; see [`FakeStore::inject`].
    pub paths: Vec<PathFault>,
    /// Serve this catalog and its signature instead of the current one: an old, genuinely signed
    /// catalog replayed by someone in the middle (a rollback).
    pub replay_catalog: Option<SignedCatalog>,
    /// Sign the served catalog with this armored secret key instead (the files keep theirs).
    pub catalog_signed_by: Option<String>,
    /// What the simplestreams tree gets wrong (the switches above apply to it too: `status`,
    /// and `drop_file_after` and `bytes_per_second` to its items).
    pub simplestreams: StreamFaults,
    /// A keyring published beside the catalog, for an in-band key rollover: served at
    /// `/api/keyring.gpg` (beside `/api/dashboard`) and at the mirror's
    /// `streams/v1/keyring.gpg` (beside `index.sjson`), its signature at `keyring.gpg.asc`.
    /// `None`: no keyring published (404), as most stores do.
    pub published_keyring: Option<PublishedKeyring>,
}

/// A keyring as an upstream publishes it for a rollover: the bytes and a detached signature over
/// them, both made by the test (GnuPG), served as given.
#[derive(Debug, Clone)]
pub struct PublishedKeyring {
    pub keyring: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
    /// When the request arrived: retry pauses are measured between records.
    pub at: std::time::Instant,
}

struct StoreState {
    dir: PathBuf,
    key: SigningKey,
    updated: String,
    base: Option<String>,
    /// Where the catalog says the files are, when not under `base` (`set_files_base`).
    files_base: Option<String>,
    sets: Vec<ImageSet>,
    file_signatures: HashMap<PathBuf, Vec<u8>>,
    catalog: Vec<u8>,
    catalog_signature: Vec<u8>,
}

struct Inner {
    state: RwLock<StoreState>,
    /// The simplestreams items, built on first use (compressing them takes a while) and
    /// forgotten when the sets or the time change.
    stream_payload: Mutex<Option<Arc<simplestreams::Payload>>>,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<RequestRecord>>,
    /// Bytes of file bodies handed to the connections so far: a client's download rate, as
    /// this side sees it.
    file_bytes_sent: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Clone)]
pub struct FakeStore {
    inner: Arc<Inner>,
}

fn check_time(text: &str) -> Result<String, Error> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| Error::Time(text.to_string()))?;
    Ok(text.to_string())
}

fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 ns is valid");
    now.format(&Rfc3339).expect("UTC formats")
}

impl StoreState {
    fn sign_files(&mut self) -> Result<(), Error> {
        self.file_signatures.clear();
        for file in self.sets.iter().flat_map(|s| &s.files) {
            let io = |source| Error::Io {
                path: file.path.clone(),
                source,
            };
            let data = std::fs::File::open(&file.path).map_err(io)?;
            let signature = self.key.sign(std::io::BufReader::new(data)).map_err(io)?;
            self.file_signatures.insert(file.path.clone(), signature);
        }
        Ok(())
    }

    fn sign_catalog(&mut self) -> Result<(), Error> {
        let Some(base) = &self.base else {
            return Ok(()); // built when serving starts and the address is known
        };
        self.catalog =
            catalog::document(&self.sets, base, self.files_base.as_deref(), &self.updated);
        self.catalog_signature = self
            .key
            .sign(&self.catalog[..])
            .map_err(|source| Error::Io {
                path: self.dir.clone(),
                source,
            })?;
        Ok(())
    }
}

impl FakeStore {
    /// Scans the directory, hashes and signs every file and (once the base URL is known) the catalog.
    pub fn open(config: StoreConfig) -> Result<FakeStore, Error> {
        let key =
            SigningKey::from_armored(config.signing_key.as_deref().unwrap_or(TEST_SIGNING_KEY))
                .map_err(Error::Key)?;
        let updated = match config.updated {
            Some(text) => check_time(&text)?,
            None => now_rfc3339(),
        };
        let mut state = StoreState {
            sets: catalog::scan(&config.dir)?,
            dir: config.dir,
            key,
            updated,
            base: config
                .public_url
                .map(|u| u.trim_end_matches('/').to_string()),
            files_base: None,
            file_signatures: HashMap::new(),
            catalog: Vec::new(),
            catalog_signature: Vec::new(),
        };
        state.sign_files()?;
        state.sign_catalog()?;
        Ok(FakeStore {
            inner: Arc::new(Inner {
                state: RwLock::new(state),
                stream_payload: Mutex::default(),
                faults: Mutex::default(),
                requests: Mutex::default(),
                file_bytes_sent: Default::default(),
            }),
        })
    }

    fn update(
        &self,
        change: impl FnOnce(&mut StoreState) -> Result<(), Error>,
    ) -> Result<(), Error> {
        {
            let mut state = self.inner.state.write().expect("state lock");
            change(&mut state)?;
            state.sign_catalog()?;
        }
        // After the state lock is let go: a build holds this lock, then reads the state.
        *self.inner.stream_payload.lock().expect("payload lock") = None;
        Ok(())
    }

    /// Re-scans the directory (files may have changed) and signs everything again.
    pub fn reload(&self) -> Result<(), Error> {
        self.update(|state| {
            state.sets = catalog::scan(&state.dir)?;
            state.sign_files()
        })
    }

    pub fn set_updated(&self, rfc3339: &str) -> Result<(), Error> {
        let updated = check_time(rfc3339)?;
        self.update(|state| {
            state.updated = updated;
            Ok(())
        })
    }

    /// Writes absolute file URLs under `base` (an API URL, e.g. `http://localhost:PORT/api`)
    /// into the catalog instead of relative ones: files that live on another host. `None`: back
    /// to relative URLs.
    pub fn set_files_base(&self, base: Option<&str>) -> Result<(), Error> {
        let base = base.map(|b| b.trim_end_matches('/').to_string());
        self.update(|state| {
            state.files_base = base;
            Ok(())
        })
    }

    /// Bytes of file bodies handed to connections so far (Range answers included).
    pub fn file_bytes_sent(&self) -> u64 {
        self.inner
            .file_bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Signs the catalog and the files with another key from now on.
    pub fn set_signing_key(&self, armored_secret_key: &str) -> Result<(), Error> {
        let key = SigningKey::from_armored(armored_secret_key).map_err(Error::Key)?;
        self.update(|state| {
            state.key = key;
            state.sign_files()
        })
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.inner.faults.lock().expect("faults lock")
    }

    /// The next `times` requests for `path` (after `/api/`, or after `/` outside the API:
    /// `simplestreams/streams/v1/index.sjson`; `None`: all of them) get `fault`.
    /// Rules apply in the order they were added; a used-up rule is skipped.
    pub fn inject(&self, path: &str, fault: Fault, times: Option<u32>) {
        self.faults().paths.push(PathFault {
            path: path.trim_start_matches('/').to_string(),
            fault,
            times,
        });
    }

    /// The catalog served now, with its signature: for a later replay.
    pub fn signed_catalog(&self) -> SignedCatalog {
        let state = self.inner.state.read().expect("state lock");
        SignedCatalog {
            document: state.catalog.clone(),
            signature: state.catalog_signature.clone(),
        }
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.requests.lock().expect("requests lock").clone()
    }

    /// The exact catalog bytes served at `/api/dashboard` (empty before `serve` knows its address,
    /// unless a public URL was given).
    pub fn catalog_json(&self) -> Vec<u8> {
        self.inner.state.read().expect("state lock").catalog.clone()
    }

    /// The image set names, in catalog order.
    pub fn set_names(&self) -> Vec<String> {
        self.inner
            .state
            .read()
            .expect("state lock")
            .sets
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }
}

impl Inner {
    /// The simplestreams items, built now unless they already are.
    fn stream_payload(&self) -> Result<Arc<simplestreams::Payload>, Error> {
        let mut payload = self.stream_payload.lock().expect("payload lock");
        if let Some(built) = &*payload {
            return Ok(built.clone());
        }
        let built = {
            let state = self.state.read().expect("state lock");
            Arc::new(simplestreams::Payload::build(&state.sets, &state.updated)?)
        };
        *payload = Some(built.clone());
        Ok(built)
    }

    /// What is served at `path` under the simplestreams root now, faults included.
    fn stream_file(&self, path: &str) -> Result<Option<axum::body::Bytes>, Error> {
        let payload = self.stream_payload()?;
        let (updated, key) = {
            let state = self.state.read().expect("state lock");
            (state.updated.clone(), state.key.clone())
        };
        let faults = self
            .faults
            .lock()
            .expect("faults lock")
            .simplestreams
            .clone();
        payload
            .serve(path, &updated, &key, &faults)
            .map_err(|cause| Error::StreamDocument {
                path: path.to_owned(),
                cause,
            })
    }
}

impl FakeStore {
    /// Every image-downloads item of the simplestreams tree, as it truly is (whatever the
    /// faults make the documents say). Builds the tree unless it is built: call it before
    /// pointing a client at the tree, so that its first request does not wait for compression.
    pub fn simplestreams_items(&self) -> Result<Vec<StreamItem>, Error> {
        Ok(self.inner.stream_payload()?.items())
    }

    /// The bytes served now at `path` under the simplestreams root (`streams/v1/index.sjson`,
    /// an item's path), faults included; `None` where nothing is served.
    pub fn simplestreams_file(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.inner.stream_file(path)?.map(|bytes| bytes.to_vec()))
    }
}

/// The simplestreams mirror root of a fake-store listening at `addr`:
/// `http://ADDR/simplestreams/`. The signed index is [`SIMPLESTREAMS_INDEX_PATH`] under it.
pub fn simplestreams_root(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}{SIMPLESTREAMS_ROOT_PATH}")
}

/// Serves until `shutdown` resolves. The caller binds (tests bind 127.0.0.1:0).
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: FakeStore,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    store
        .update(|state| {
            state
                .base
                .get_or_insert_with(|| format!("http://{addr}/api"));
            Ok(())
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    axum::serve(listener, http::router(store.inner.clone()))
        .with_graceful_shutdown(shutdown)
        .await
}
