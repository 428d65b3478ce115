//! Detached, armored OpenPGP signatures made in-process with sequoia, from an armored secret key
//! (the test key GnuPG made, or another one a test hands over).

use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::crypto::KeyPair;
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Message, Signer};
use openpgp::types::HashAlgorithm;
use std::io::{self, Read, Write};

#[derive(Clone)]
pub struct SigningKey {
    keypair: KeyPair,
}

impl SigningKey {
    pub fn from_armored(armored: &str) -> Result<Self, String> {
        let cert =
            Cert::from_bytes(armored.as_bytes()).map_err(|e| format!("not an OpenPGP key: {e}"))?;
        let policy = StandardPolicy::new();
        let key = cert
            .keys()
            .with_policy(&policy, None)
            .alive()
            .revoked(false)
            .for_signing()
            .unencrypted_secret()
            .next()
            .ok_or("the key has no usable unencrypted signing (sub)key")?;
        let keypair = key
            .key()
            .clone()
            .into_keypair()
            .map_err(|e| e.to_string())?;
        Ok(Self { keypair })
    }

    /// Signs everything `data` yields; returns the armored detached signature.
    pub fn sign(&self, mut data: impl Read) -> io::Result<Vec<u8>> {
        let other = |e: anyhow::Error| io::Error::other(e.to_string());
        let mut sink = Vec::new();
        {
            let message = Message::new(&mut sink);
            let message = Armorer::new(message)
                .kind(openpgp::armor::Kind::Signature)
                .build()
                .map_err(other)?;
            let mut signer = Signer::new(message, self.keypair.clone())
                .map_err(other)?
                .detached()
                .build()
                .map_err(other)?;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = data.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                signer.write_all(&buffer[..n])?;
            }
            signer.finalize().map_err(other)?;
        }
        Ok(sink)
    }

    /// `text` clear-signed (RFC 4880 §7) with SHA-512, as Canonical signs its `.sjson` files:
    /// the text stays readable, and `gpgv` verifies it as it is. Lines lose trailing spaces, as
    /// the framework requires; the JSON this signs has none.
    pub fn clearsign(&self, text: &[u8]) -> io::Result<Vec<u8>> {
        let other = |e: anyhow::Error| io::Error::other(e.to_string());
        let mut sink = Vec::new();
        {
            let message = Message::new(&mut sink);
            let mut signer = Signer::new(message, self.keypair.clone())
                .map_err(other)?
                .hash_algo(HashAlgorithm::SHA512)
                .map_err(other)?
                .cleartext()
                .build()
                .map_err(other)?;
            signer.write_all(text)?;
            signer.finalize().map_err(other)?;
        }
        Ok(sink)
    }
}
