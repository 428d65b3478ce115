//! OpenPGP trust (SPEC §5): the keyring the operator trusts, and detached-signature checks of the
//! catalog and of each file, in-process with sequoia-openpgp under its standard policy (which, as it
//! should, refuses SHA-1 signatures and expired or revoked keys).

use sequoia_openpgp as openpgp;

use openpgp::cert::CertParser;
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationError, VerificationHelper,
};
use openpgp::policy::StandardPolicy;
use openpgp::{Cert, KeyHandle};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TrustError {
    #[error(
        "keyring {path} does not exist (import the store's public key there, see keyrings/README.md)"
    )]
    KeyringMissing { path: PathBuf },
    #[error("keyring {path} is unreadable: {cause}")]
    KeyringUnreadable { path: PathBuf, cause: String },
    #[error("keyring {path} holds no OpenPGP certificate")]
    KeyringEmpty { path: PathBuf },
    #[error("the signature is unreadable: {0}")]
    Malformed(String),
    #[error("made by a key not in the keyring ({0})")]
    UnknownKey(String),
    #[error("the signing key {key} is not valid: {cause}")]
    BadKey { key: String, cause: String },
    #[error("bad signature: the signed data does not match ({0})")]
    BadSignature(String),
    #[error("reading the signed data failed: {0}")]
    Read(String),
}

/// The certificates trusted to sign the catalog and the files.
pub struct Keyring {
    certs: Vec<Cert>,
}

impl Keyring {
    /// Reads a binary or armored keyring (one or more certificates, as GnuPG exports them).
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TrustError::KeyringMissing {
                path: path.to_owned(),
            },
            _ => TrustError::KeyringUnreadable {
                path: path.to_owned(),
                cause: e.to_string(),
            },
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            TrustError::KeyringEmpty { .. } => TrustError::KeyringEmpty {
                path: path.to_owned(),
            },
            TrustError::KeyringUnreadable { cause, .. } => TrustError::KeyringUnreadable {
                path: path.to_owned(),
                cause,
            },
            other => other,
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let unreadable = |e: anyhow::Error| TrustError::KeyringUnreadable {
            path: PathBuf::new(),
            cause: e.to_string(),
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
        let helper = Helper {
            certs: &self.certs,
            failure: None,
        };
        let mut verifier = DetachedVerifierBuilder::from_bytes(signature)
            .map_err(|e| TrustError::Malformed(e.to_string()))?
            .with_policy(&policy, None, helper)
            .map_err(|e| TrustError::Malformed(e.to_string()))?;
        match verifier.verify_reader(data) {
            Ok(()) => Ok(()),
            Err(error) => Err(verifier
                .helper_ref()
                .failure
                .clone()
                .unwrap_or_else(|| classify_io(error))),
        }
    }
}

fn classify_io(error: anyhow::Error) -> TrustError {
    match error.downcast_ref::<std::io::Error>() {
        Some(io) => TrustError::Read(io.to_string()),
        None => TrustError::Malformed(error.to_string()),
    }
}

struct Helper<'a> {
    certs: &'a [Cert],
    /// Why verification failed, kept typed for the caller (sequoia returns an opaque error).
    failure: Option<TrustError>,
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
                        cause: error.to_string(),
                    },
                    Err(VerificationError::UnboundKey { cert, error, .. }) => TrustError::BadKey {
                        key: format!("0x{}", cert.keyid().to_hex()),
                        cause: error.to_string(),
                    },
                    Err(VerificationError::BadSignature { error, .. }) => {
                        TrustError::BadSignature(error.to_string())
                    }
                    Err(other) => TrustError::Malformed(other.to_string()),
                };
                first_failure.get_or_insert(failure);
            }
        }
        let failure =
            first_failure.unwrap_or_else(|| TrustError::Malformed("no signature in it".into()));
        let message = failure.to_string();
        self.failure = Some(failure);
        Err(anyhow::anyhow!(message))
    }
}
