//! OpenPGP trust (SPEC §5), as one service: the keyring the operator trusts, loaded at start and
//! reloaded when its file changes, and every signature check the proxy makes against it, in
//! process with sequoia-openpgp under its standard policy (which, as it should, refuses SHA-1
//! signatures and expired or revoked keys): detached signatures over the catalog and each file
//! (bytes, or a stream for GiB files) and inline clear-signed documents (RFC 9580 §7, the
//! cleartext signature framework of simplestreams' `.sjson`). It also judges its own failures:
//! [`TrustError::is_upstream_fault`] is the one place that says whose fault a refusal is.
//!
//! Key rollover: the keyring file is read again when it changes (at every check) and on `SIGHUP`
//! ([`Trust::forget`]); an upstream may also offer a keyring beside its catalog, signed by a key
//! trusted now ([`Trust::check_rollover`]), whose certificates are then merged into the file's at
//! every load ([`Trust::adopt`]; the caller persists them, [`Trust::restore`] brings them back at
//! start). Merging is how a revocation published that way counts: the known certificate gains
//! its revocation signature, and the policy refuses what the key signs from then on.

use sequoia_openpgp as openpgp;

use crate::report::flat;
use openpgp::cert::CertParser;
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationError, VerificationHelper,
    VerifierBuilder,
};
use openpgp::policy::StandardPolicy;
use openpgp::serialize::SerializeInto;
use openpgp::{Cert, KeyHandle};
use std::cell::Cell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Why a signature check failed. Causes that are errors are kept typed; each is printed in its
/// variant's message, so none is also reported as `source()` (that would print it twice under
/// `{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("keyring {path} does not exist ({})", missing_keyring_hint(path))]
    KeyringMissing { path: PathBuf },
    #[error("keyring {path} is unreadable: {cause}")]
    KeyringUnreadable { path: PathBuf, cause: KeyringCause },
    #[error("keyring {path} holds no OpenPGP certificate")]
    KeyringEmpty { path: PathBuf },
    #[error("the signature is unreadable: {}", flat(.0))]
    Malformed(anyhow::Error),
    #[error("made by a key not in the keyring ({0})")]
    UnknownKey(String),
    #[error("the signing key {key} is not valid: {}", flat(cause))]
    BadKey { key: String, cause: anyhow::Error },
    #[error("bad signature: the signed data does not match ({})", flat(.0))]
    BadSignature(anyhow::Error),
    #[error("reading the signed data failed: {0}")]
    Read(std::io::Error),
    /// A keyring offered for a rollover verified but holds nothing usable.
    #[error("it holds no usable OpenPGP certificate: {}", flat(.0))]
    OfferedKeyring(anyhow::Error),
}

/// What to do about a keyring that is not there.
fn missing_keyring_hint(path: &std::path::Path) -> &'static str {
    if path == std::path::Path::new(crate::config::DEFAULT_SIMPLESTREAMS_KEYRING) {
        "install the Debian package ubuntu-keyring, which holds the key Canonical signs its cloud images with"
    } else {
        "import the store's public key there: see FILES in image-store-proxy(1)"
    }
}

/// Whether `document` is an OpenPGP clear-signed message (RFC 4880 §7), not plain text.
pub fn is_clear_signed(document: &[u8]) -> bool {
    document
        .trim_ascii_start()
        .starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----")
}

/// Why a keyring file could not be used: reading it, or parsing what it holds.
#[derive(Debug, thiserror::Error)]
pub enum KeyringCause {
    #[error(transparent)]
    Io(std::io::Error),
    #[error("{}", flat(.0))]
    Parse(anyhow::Error),
}

impl TrustError {
    /// Whether upstream is to blame (a bad, unknown or malformed signature, an invalid key: count
    /// it as upstream's error, throw away what it signed) or we are (our keyring is missing,
    /// unreadable or empty, or we could not read the signed data back: nothing upstream did).
    pub fn is_upstream_fault(&self) -> bool {
        match self {
            TrustError::Malformed(_)
            | TrustError::UnknownKey(_)
            | TrustError::BadKey { .. }
            | TrustError::BadSignature(_)
            | TrustError::OfferedKeyring(_) => true,
            TrustError::KeyringMissing { .. }
            | TrustError::KeyringUnreadable { .. }
            | TrustError::KeyringEmpty { .. }
            | TrustError::Read(_) => false,
        }
    }
}

/// The trust service: built once at start and shared by the catalog service and the installer.
/// The operator may install or replace the keyring while the proxy runs; every check first calls
/// [`Trust::reload_if_changed`], so the new keyring counts from the next check on, without a
/// restart, and a missing one is reported at every check, as it was when each check read the file.
pub struct Trust {
    path: PathBuf,
    /// The keyring last read, and the file's stamp when it was read. `None`: missing or refused
    /// last time, so the next check reads the file again.
    loaded: Mutex<Option<(FileStamp, Arc<Keyring>)>>,
    /// The certificates accepted in-band (rollovers), merged into the file's at every load.
    rolled: Mutex<Vec<Cert>>,
}

/// A keyring offered beside a catalog whose signature verified against the keys trusted now:
/// the certificates in it that would change what is trusted (new keys, or known keys with new
/// signatures such as a revocation). Nothing counts until [`Trust::adopt`].
pub struct RolloverOffer {
    certs: Vec<Cert>,
}

impl RolloverOffer {
    /// Whether the offer changes nothing (the same keyring offered again).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// What tells one version of the keyring file from the next without reading it.
#[derive(Debug, Clone)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
    /// Whether the file was older than [`SETTLE_TIME`] when stamped: a younger one may be
    /// written again within the same tick of a coarse modification time, keeping its stamp, so
    /// its stamp is not trusted and the file is read again (git's "racily clean" rule).
    settled: bool,
}

const SETTLE_TIME: std::time::Duration = std::time::Duration::from_secs(2);

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        let modified = metadata.modified().ok();
        Self {
            len: metadata.len(),
            modified,
            #[cfg(unix)]
            inode: (metadata.dev(), metadata.ino()),
            settled: modified
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age >= SETTLE_TIME),
        }
    }

    /// Whether the file now stamped `now` is surely the version read under `self`.
    fn still_describes(&self, now: &FileStamp) -> bool {
        #[cfg(unix)]
        if self.inode != now.inode {
            return false;
        }
        self.settled && self.len == now.len && self.modified == now.modified
    }
}

impl Trust {
    /// Loads the keyring at `path` now. A keyring that cannot be used yet is not an error here:
    /// the proxy starts, and each check reports why until the operator installs it.
    pub fn new(path: PathBuf) -> Self {
        let trust = Self {
            path,
            loaded: Mutex::new(None),
            rolled: Mutex::new(Vec::new()),
        };
        match trust.reload_if_changed() {
            Ok(_) => {}
            Err(TrustError::KeyringMissing { path }) => tracing::warn!(
                "keyring {} does not exist: no catalog can be verified until it does",
                path.display()
            ),
            Err(error) => tracing::warn!("{error}: no catalog can be verified until it is fixed"),
        }
        trust
    }

    /// The keyring file this service trusts.
    pub fn keyring_path(&self) -> &Path {
        &self.path
    }

    /// The keyring to check against: the one already loaded while its file is unchanged (same
    /// size, modification time and inode), else the file read anew, with the certificates of
    /// accepted rollovers merged in. Key rollover lands here.
    pub fn reload_if_changed(&self) -> Result<Arc<Keyring>, TrustError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let known = loaded.take();
        let (stamp, keyring) = match read_keyring(&self.path, known.as_ref()) {
            Ok(Some((stamp, keyring))) => {
                if known.is_some() {
                    tracing::info!("keyring {} changed: reloaded it", self.path.display());
                }
                let rolled = self.rolled.lock().unwrap_or_else(|p| p.into_inner());
                (stamp, Arc::new(keyring.merged(&rolled)))
            }
            Ok(None) => known.expect("unchanged means it was loaded"),
            Err(error) => return Err(error),
        };
        *loaded = Some((stamp, keyring.clone()));
        Ok(keyring)
    }

    /// Reads the keyring file again at the next check, even if its stamp looks unchanged (a
    /// `SIGHUP`: the operator says it changed).
    pub fn forget(&self) {
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Brings back the certificates of rollovers accepted by an earlier run (as [`Trust::adopt`]
    /// handed them to be persisted).
    pub fn restore(&self, certs: &[u8]) -> Result<(), TrustError> {
        let restored = Keyring::from_bytes(certs)?;
        *self.rolled.lock().unwrap_or_else(|p| p.into_inner()) = restored.certs;
        self.forget();
        Ok(())
    }

    /// Checks a keyring offered for a rollover: its detached `signature` must verify against the
    /// keys trusted now (the file's and earlier rollovers'). Returns what in it is news.
    pub fn check_rollover(
        &self,
        keyring: &[u8],
        signature: &[u8],
    ) -> Result<RolloverOffer, TrustError> {
        let trusted = self.reload_if_changed()?;
        trusted.verify_bytes(keyring, signature)?;
        let offered = CertParser::from_bytes(keyring)
            .and_then(|parser| parser.collect::<Result<Vec<Cert>, _>>())
            .map_err(TrustError::OfferedKeyring)?;
        if offered.is_empty() {
            return Err(TrustError::OfferedKeyring(anyhow::anyhow!(
                "it holds no certificate"
            )));
        }
        let certs = offered
            .into_iter()
            .map(Cert::strip_secret_key_material)
            .filter(|cert| {
                let known = trusted
                    .certs
                    .iter()
                    .find(|known| known.fingerprint() == cert.fingerprint());
                match known {
                    None => true,
                    Some(known) => merge(known.clone(), cert).to_vec().ok() != known.to_vec().ok(),
                }
            })
            .collect();
        Ok(RolloverOffer { certs })
    }

    /// Trusts `offer` from now on: merged with the rollovers accepted before, handed to
    /// `persist` (all of them, as one binary keyring), and counted only once that succeeded.
    /// Returns the keys it added or changed, as `0x<key id>`.
    pub fn adopt<E>(
        &self,
        offer: RolloverOffer,
        persist: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<Vec<String>, E> {
        let mut rolled = self.rolled.lock().unwrap_or_else(|p| p.into_inner());
        let merged = Keyring {
            certs: rolled.clone(),
        }
        .merged(&offer.certs);
        let mut bytes = Vec::new();
        for cert in &merged.certs {
            bytes.extend(cert.to_vec().unwrap_or_default());
        }
        persist(&bytes)?;
        *rolled = merged.certs;
        drop(rolled);
        self.forget();
        Ok(offer
            .certs
            .iter()
            .map(|cert| format!("0x{}", cert.keyid().to_hex()))
            .collect())
    }

    /// Checks an inline-signed message (a clear-signed `.sjson` document) and returns the text
    /// its signature covers.
    pub fn verify_inline(&self, message: &[u8]) -> Result<Vec<u8>, TrustError> {
        self.reload_if_changed()?.verify_inline(message)
    }
}

/// The certificates trusted to sign the catalog and the files: one version of the keyring file.
pub struct Keyring {
    certs: Vec<Cert>,
}

impl Keyring {
    /// Reads a binary or armored keyring (one or more certificates, as GnuPG exports them).
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let (_, keyring) = read_keyring(path, None)?.expect("nothing known, so read");
        Ok(keyring)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let unreadable = |e: anyhow::Error| TrustError::KeyringUnreadable {
            path: PathBuf::new(),
            cause: KeyringCause::Parse(e),
        };
        let certs = CertParser::from_bytes(bytes)
            .map_err(unreadable)?
            .collect::<Result<Vec<Cert>, _>>()
            .map_err(unreadable)?;
        if certs.is_empty() {
            return Err(TrustError::KeyringEmpty {
                path: PathBuf::new(),
            });
        }
        Ok(Self { certs })
    }

    /// This keyring with `others` merged in: a certificate already here gains theirs (a
    /// revocation, a new subkey), the rest are added.
    fn merged(&self, others: &[Cert]) -> Keyring {
        let mut certs = self.certs.clone();
        for other in others {
            match certs
                .iter()
                .position(|cert| cert.fingerprint() == other.fingerprint())
            {
                Some(at) => certs[at] = merge(certs[at].clone(), other),
                None => certs.push(other.clone()),
            }
        }
        Keyring { certs }
    }

    /// Checks a detached signature (binary or armored) over `data`.
    pub fn verify_bytes(&self, data: &[u8], signature: &[u8]) -> Result<(), TrustError> {
        self.verify_reader(data, signature)
    }

    /// Checks a detached signature over everything `data` yields, streaming (files can be GiBs).
    pub fn verify_reader<R: Read + Send + Sync>(
        &self,
        data: R,
        signature: &[u8],
    ) -> Result<(), TrustError> {
        let policy = StandardPolicy::new();
        let failure = Cell::new(None);
        // Building the verifier reads the signature: what fails there is the signature's fault,
        // even an early EOF; only reading `data` afterwards can fail on our side.
        let unreadable = |error| failure.take().unwrap_or(TrustError::Malformed(error));
        let refused = |error| failure.take().unwrap_or_else(|| classify(error));
        let mut verifier = DetachedVerifierBuilder::from_bytes(signature)
            .map_err(TrustError::Malformed)?
            .with_policy(&policy, None, self.helper(&failure))
            .map_err(unreadable)?;
        verifier.verify_reader(data).map_err(refused)
    }

    /// Checks an inline-signed message, clear-signed (RFC 9580 §7: dash-escaped lines, trailing
    /// whitespace not hashed, line ends made CRLF before hashing; sequoia's cleartext
    /// transformation) or not, and returns the text its signature covers. Nothing of the text is
    /// returned unless the whole message verified.
    pub fn verify_inline(&self, message: &[u8]) -> Result<Vec<u8>, TrustError> {
        let policy = StandardPolicy::new();
        let failure = Cell::new(None);
        // Reading an in-memory message fails only on what the message holds: upstream's doing.
        let refused = |error| failure.take().unwrap_or(TrustError::Malformed(error));
        // Small messages are verified already while the builder reads ahead.
        let mut verifier = VerifierBuilder::from_bytes(message)
            .map_err(TrustError::Malformed)?
            .with_policy(&policy, None, self.helper(&failure))
            .map_err(refused)?;
        let mut text = Vec::new();
        verifier
            .read_to_end(&mut text)
            .map_err(|error| refused(error.into()))?;
        if !verifier.message_processed() {
            return Err(TrustError::Malformed(anyhow::anyhow!(
                "the message ends before its signature"
            )));
        }
        Ok(text)
    }

    fn helper<'a>(&'a self, failure: &'a Cell<Option<TrustError>>) -> Helper<'a> {
        Helper {
            certs: &self.certs,
            failure,
        }
    }
}

/// Reads the keyring file at `path` unless its stamp is still `known`'s (then `None`). Stamp and
/// bytes come from one open file, so they describe the same version of it.
fn read_keyring(
    path: &Path,
    known: Option<&(FileStamp, Arc<Keyring>)>,
) -> Result<Option<(FileStamp, Keyring)>, TrustError> {
    let unreadable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => TrustError::KeyringMissing {
            path: path.to_owned(),
        },
        _ => TrustError::KeyringUnreadable {
            path: path.to_owned(),
            cause: KeyringCause::Io(e),
        },
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let stamp = FileStamp::of(&file.metadata().map_err(unreadable)?);
    if known.is_some_and(|(known, _)| known.still_describes(&stamp)) {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(unreadable)?;
    let keyring = Keyring::from_bytes(&bytes).map_err(|e| match e {
        TrustError::KeyringUnreadable { cause, .. } => TrustError::KeyringUnreadable {
            path: path.to_owned(),
            cause,
        },
        TrustError::KeyringEmpty { .. } => TrustError::KeyringEmpty {
            path: path.to_owned(),
        },
        other => other,
    })?;
    Ok(Some((stamp, keyring)))
}

/// `known` with `other`'s packets (same fingerprint); `known` as it was if they cannot merge.
fn merge(known: Cert, other: &Cert) -> Cert {
    known.clone().merge_public(other.clone()).unwrap_or(known)
}

/// A failure sequoia reports opaquely: a read error of the signed data, or else a malformed message.
fn classify(error: anyhow::Error) -> TrustError {
    match error.downcast::<std::io::Error>() {
        Ok(io) => TrustError::Read(io),
        Err(other) => TrustError::Malformed(other),
    }
}

struct Helper<'a> {
    certs: &'a [Cert],
    /// Why verification failed, kept typed for the caller (sequoia returns an opaque error, and
    /// drops the helper when the failure comes while the verifier is being built).
    failure: &'a Cell<Option<TrustError>>,
}

fn key_name(handle: Option<KeyHandle>) -> String {
    match handle {
        Some(KeyHandle::KeyID(id)) => format!("0x{}", id.to_hex()),
        Some(KeyHandle::Fingerprint(fp)) => format!("0x{}", openpgp::KeyID::from(fp).to_hex()),
        None => "no issuer named".to_string(),
    }
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.certs.to_vec())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        let mut first_failure = None;
        for layer in structure {
            let MessageLayer::SignatureGroup { results } = layer else {
                continue;
            };
            for result in results {
                let failure = match result {
                    Ok(_) => return Ok(()),
                    Err(VerificationError::MissingKey { sig }) => {
                        TrustError::UnknownKey(key_name(sig.get_issuers().into_iter().next()))
                    }
                    Err(VerificationError::BadKey { ka, error, .. }) => TrustError::BadKey {
                        key: format!("0x{}", ka.key().keyid().to_hex()),
                        cause: error,
                    },
                    Err(VerificationError::UnboundKey { cert, error, .. }) => TrustError::BadKey {
                        key: format!("0x{}", cert.keyid().to_hex()),
                        cause: error,
                    },
                    Err(VerificationError::BadSignature { error, .. }) => {
                        TrustError::BadSignature(error)
                    }
                    Err(other) => TrustError::Malformed(anyhow::anyhow!("{other}")),
                };
                first_failure.get_or_insert(failure);
            }
        }
        let failure = first_failure
            .unwrap_or_else(|| TrustError::Malformed(anyhow::anyhow!("no signature in it")));
        let message = failure.to_string();
        self.failure.set(Some(failure));
        Err(anyhow::anyhow!(message))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A GnuPG home in a temp dir with one fresh Ed25519 key: the keyring (exported) and a
    /// signer that clear-signs as `gpg --clearsign` does for a real mirror.
    pub(crate) struct Gpg {
        home: tempfile::TempDir,
    }

    impl Gpg {
        pub(crate) fn new(uid: &str) -> Self {
            let gpg = Self {
                home: tempfile::tempdir().unwrap(),
            };
            gpg.run(&["--quick-gen-key", uid, "ed25519", "sign", "never"], b"");
            gpg
        }

        pub(crate) fn run(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
            let mut child = Command::new("gpg")
                .env("GNUPGHOME", self.home.path())
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("gpg runs");
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }

        fn keyring(&self) -> Keyring {
            Keyring::from_bytes(&self.run(&["--export"], b"")).unwrap()
        }

        pub(crate) fn clearsign(&self, text: &[u8]) -> Vec<u8> {
            self.run(&["--clearsign", "--digest-algo", "SHA256"], text)
        }

        pub(crate) fn detach_sign(&self, data: &[u8]) -> Vec<u8> {
            self.run(
                &["--detach-sign", "--armor", "--digest-algo", "SHA256"],
                data,
            )
        }

        pub(crate) fn export(&self) -> Vec<u8> {
            self.run(&["--export"], b"")
        }
    }

    /// What a simplestreams `.sjson` holds: trailing spaces on lines, and a line that starts with
    /// a dash (which the signer dash-escapes).
    const TEXT: &str = "{\n \"format\": \"products:1.0\", \n \"updated\": \"Thu, 01 Dec 2026 09:00:00 +0000\",   \n-----BEGIN not a header\n- a dash line\n}\n";

    fn without_trailing_space(text: &[u8]) -> String {
        String::from_utf8_lossy(text)
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn verifies_a_gnupg_clear_signed_message_and_refuses_it_tampered() {
        let gpg = Gpg::new("Mirror <mirror@example.invalid>");
        let keyring = gpg.keyring();
        let signed = gpg.clearsign(TEXT.as_bytes());
        let armored = String::from_utf8(signed.clone()).unwrap();
        assert!(
            armored.starts_with("-----BEGIN PGP SIGNED MESSAGE-----"),
            "{armored}"
        );
        assert!(
            armored.contains("\n- -----BEGIN not a header\n"),
            "dash-escaped: {armored}"
        );

        let text = keyring.verify_inline(&signed).unwrap();
        assert_eq!(
            without_trailing_space(&text),
            without_trailing_space(TEXT.as_bytes())
        );
        assert!(String::from_utf8_lossy(&text).contains("\n-----BEGIN not a header\n"));

        // Trailing whitespace is not hashed (RFC 9580 §7.2): more of it still verifies; and so
        // does the message with CRLF line ends.
        let spaced = armored.replace("\"products:1.0\", \n", "\"products:1.0\",  \t \n");
        assert_ne!(spaced, armored);
        keyring.verify_inline(spaced.as_bytes()).unwrap();
        keyring
            .verify_inline(armored.replace('\n', "\r\n").as_bytes())
            .unwrap();

        // One changed character in the text, or a dash line no longer escaped: refused.
        let tampered = armored.replace("products:1.0", "products:1.1");
        let error = keyring.verify_inline(tampered.as_bytes()).unwrap_err();
        assert!(matches!(error, TrustError::BadSignature(_)), "{error}");
        assert!(error.is_upstream_fault());
        assert!(error.to_string().starts_with("bad signature"), "{error}");
        let unescaped = armored.replace("\n- - a dash line\n", "\n- a dash line\n");
        assert_ne!(unescaped, armored);
        assert!(keyring.verify_inline(unescaped.as_bytes()).is_err());

        // Signed by a key outside the keyring; or not signed at all.
        let stranger = Gpg::new("Stranger <stranger@example.invalid>");
        let error = keyring
            .verify_inline(&stranger.clearsign(TEXT.as_bytes()))
            .unwrap_err();
        assert!(matches!(error, TrustError::UnknownKey(_)), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("made by a key not in the keyring (0x")
        );
        let error = keyring.verify_inline(TEXT.as_bytes()).unwrap_err();
        assert!(error.is_upstream_fault(), "{error}");
    }

    #[test]
    fn reloads_the_keyring_when_its_file_changes_or_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.gpg");
        let trust = Trust::new(path.clone());
        let error = trust.reload_if_changed().err().expect("no keyring yet");
        assert!(
            matches!(error, TrustError::KeyringMissing { .. }),
            "{error}"
        );
        assert!(!error.is_upstream_fault());
        assert_eq!(
            error.to_string(),
            format!(
                "keyring {} does not exist (import the store's public key there: see FILES in image-store-proxy(1))",
                path.display()
            )
        );

        let first = Gpg::new("First <first@example.invalid>");
        std::fs::write(&path, first.run(&["--export"], b"")).unwrap();
        // A file modified just now is read at every check (it may change within the same tick).
        let backdate = |path: &Path, seconds| {
            let long_ago = SystemTime::now() - std::time::Duration::from_secs(seconds);
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(long_ago)
                .unwrap()
        };
        let young = trust.reload_if_changed().unwrap();
        assert!(!Arc::ptr_eq(&young, &trust.reload_if_changed().unwrap()));
        backdate(&path, 60);
        let signed = first.clearsign(TEXT.as_bytes());
        trust.verify_inline(&signed).unwrap();
        let loaded = trust.reload_if_changed().unwrap();
        assert!(
            Arc::ptr_eq(&loaded, &trust.reload_if_changed().unwrap()),
            "unchanged: kept"
        );

        let second = Gpg::new("Second <second@example.invalid>");
        std::fs::write(&path, second.run(&["--export"], b"")).unwrap();
        backdate(&path, 30);
        assert!(matches!(
            trust.verify_inline(&signed),
            Err(TrustError::UnknownKey(_))
        ));
        trust
            .verify_inline(&second.clearsign(TEXT.as_bytes()))
            .unwrap();

        std::fs::write(&path, b"").unwrap();
        let error = trust.reload_if_changed().err().unwrap();
        assert!(matches!(error, TrustError::KeyringEmpty { .. }), "{error}");
        assert!(!error.is_upstream_fault());
    }
}
