//! The RSA keys a bundle needs (SPEC §7): the user's certificate and private key (the manifest is
//! signed with the key, the AES key is wrapped for the certificate), the cloud's certificate (the
//! AES key is wrapped for it, so the cloud can decrypt), and the account the manifest names.

use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use std::path::{Path, PathBuf};
use x509_cert::der::{DecodePem, Encode};

#[derive(Clone)]
pub struct BundleKeys {
    /// The account number, without dashes: the manifest's `<user>`.
    pub user_id: String,
    pub user_cert: RsaPublicKey,
    pub user_key: RsaPrivateKey,
    pub cloud_cert: RsaPublicKey,
}

impl std::fmt::Debug for BundleKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleKeys")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("{path}: not a PEM RSA private key (\"RSA PRIVATE KEY\" or \"PRIVATE KEY\")")]
    NotPrivateKey { path: PathBuf },
    #[error("{path}: not a PEM X.509 certificate with an RSA key: {cause}")]
    NotCertificate { path: PathBuf, cause: String },
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|e| KeyError::Read {
        path: path.to_owned(),
        cause: e.to_string(),
    })
}

/// A PEM private key, PKCS#1 (Eucalyptus' `*-pk.pem`) or PKCS#8 (`openssl req -newkey`).
pub fn load_private_key(path: &Path) -> Result<RsaPrivateKey, KeyError> {
    let pem = read(path)?;
    RsaPrivateKey::from_pkcs1_pem(&pem)
        .or_else(|_| RsaPrivateKey::from_pkcs8_pem(&pem))
        .map_err(|_| KeyError::NotPrivateKey {
            path: path.to_owned(),
        })
}

/// The RSA public key of a PEM X.509 certificate.
pub fn load_certificate_key(path: &Path) -> Result<RsaPublicKey, KeyError> {
    let pem = read(path)?;
    let invalid = |cause: String| KeyError::NotCertificate {
        path: path.to_owned(),
        cause,
    };
    let certificate =
        x509_cert::Certificate::from_pem(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let spki = certificate
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| invalid(e.to_string()))?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| invalid(e.to_string()))
}

/// The fake cloud's keys: made once under `dir` (`user-pk.pem`, `cloud-pk.pem` and their public
/// halves), so that anyone can decrypt a fake-cloud bundle with `openssl` as the cloud would.
pub fn fake_cloud_keys(dir: &Path) -> Result<BundleKeys, KeyError> {
    let user = fake_key(dir, "user")?;
    let cloud = fake_key(dir, "cloud")?;
    Ok(BundleKeys {
        user_id: "000000000000".into(),
        user_cert: user.to_public_key(),
        user_key: user,
        cloud_cert: cloud.to_public_key(),
    })
}

fn fake_key(dir: &Path, who: &str) -> Result<RsaPrivateKey, KeyError> {
    let path = dir.join(format!("{who}-pk.pem"));
    if path.exists() {
        return load_private_key(&path);
    }
    let write_error = |path: &Path, e: &dyn std::fmt::Display| KeyError::Read {
        path: path.to_owned(),
        cause: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, &e))?;
    let key =
        RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| write_error(&path, &e))?;
    let pem = key
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(|e| write_error(&path, &e))?;
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| write_error(&path, &e))?;
    let public_path = dir.join(format!("{who}-public.pem"));
    std::fs::write(&public_path, public).map_err(|e| write_error(&public_path, &e))?;
    // Written under a temporary name and renamed: a half-written key is never loaded.
    let partial = dir.join(format!("{who}-pk.pem.part"));
    write_private(&partial, pem.as_bytes()).map_err(|e| write_error(&partial, &e))?;
    std::fs::rename(&partial, &path).map_err(|e| write_error(&path, &e))?;
    Ok(key)
}

/// Writes a file only its owner may read (0600), whatever the umask: a private key, the cloud
/// administrator's credentials.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}
