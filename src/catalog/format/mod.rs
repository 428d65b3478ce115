//! The seam between the catalog service and the catalog formats upstream may speak (SPEC §5). A
//! format says which documents make up a catalog (relative to the upstream URL), how each proves
//! where it comes from (a detached signature, or an inline clear-signed message), when each was
//! last updated (for the rollback check), and how the verified documents become a validated
//! [`Catalog`]. The service (`catalog/mod.rs`) does the rest the same way for every format: fetch
//! with caps, verify through [`crate::trust::Trust`], refuse a rollback, store the documents tagged
//! with the format's name, and load them back through the format at start.
//!
//! `image-store/1` ([`image_store`]) is one document with a detached signature. Simplestreams
//! (issue 14) fits as a second implementation without changing the service: its [`roots`] is
//! `streams/v1/index.sjson` with [`Authentication::Inline`] (the service then hands
//! [`VerifiedDocument::text`], the clear-signed text, to the format); its [`read`] of the index
//! returns the index's `updated` and, in `next`, one request per products file of the configured
//! content ids (named by content id, so each file's rollback check compares it with the same
//! file accepted last time, and `read` of a products file can refuse a `content_id` other than
//! its name); its [`build`] resolves the inherited fields of every products file and turns each
//! (product, version) into an [`crate::catalog::model::Image`]. What it names must stay bounded
//! by what is configured (a limit in `limits.rs`), as the service fetches every request once.
//!
//! [`roots`]: CatalogFormat::roots
//! [`read`]: CatalogFormat::read
//! [`build`]: CatalogFormat::build

pub mod image_store;
pub mod simplestreams;

use super::model::{Catalog, StreamIdentity};
use reqwest::Url;
use time::OffsetDateTime;

/// How a document proves it comes from upstream, checked against the trusted keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// A detached OpenPGP signature over the document, fetched from `signature_url`.
    Detached { signature_url: Url },
    /// The document is an OpenPGP inline-signed (clear-signed) message; what it says is the text
    /// the signature covers.
    Inline,
    /// Not signed at all: only for an upstream the operator let go unsigned
    /// ([`CatalogFormat::accepts_unsigned`]).
    Unsigned,
}

/// One document of a catalog, to fetch and verify.
#[derive(Debug, Clone)]
pub struct DocumentRequest {
    /// Names the document from one refresh to the next: its rollback check compares it with the
    /// accepted document of the same name, and it is stored under it.
    pub name: String,
    pub url: Url,
    pub authentication: Authentication,
}

/// A document whose signature verified (or, loaded from the database, verified when accepted).
#[derive(Debug, Clone)]
pub struct VerifiedDocument {
    pub name: String,
    pub url: String,
    /// The bytes exactly as fetched: for an inline-signed document, the whole signed message.
    pub document: Vec<u8>,
    pub proof: Proof,
}

/// What verified a [`VerifiedDocument`].
#[derive(Debug, Clone)]
pub enum Proof {
    /// The detached signature, as fetched.
    Detached { signature: Vec<u8> },
    /// The document was inline-signed; this is the text its signature covers.
    Inline { text: Vec<u8> },
    /// Nothing: the upstream is configured to be taken unsigned.
    Unsigned,
}

impl VerifiedDocument {
    /// What the signature covers, and so what the format may read.
    pub fn text(&self) -> &[u8] {
        match &self.proof {
            Proof::Detached { .. } | Proof::Unsigned => &self.document,
            Proof::Inline { text } => text,
        }
    }

    /// The detached signature; `None` for an inline-signed document.
    pub fn signature(&self) -> Option<&[u8]> {
        match &self.proof {
            Proof::Detached { signature } => Some(signature),
            Proof::Inline { .. } | Proof::Unsigned => None,
        }
    }
}

/// What one verified document tells before the catalog is built.
pub struct DocumentSummary {
    /// When upstream last changed the document: it never goes backwards (a rollback is refused).
    pub updated: OffsetDateTime,
    /// The documents it names, to fetch and verify next (an index's products files).
    pub next: Vec<DocumentRequest>,
}

/// A validated catalog, and one line per entry dropped from it.
pub struct Parsed {
    pub catalog: Catalog,
    pub dropped: Vec<String>,
}

/// Why a format refused a verified document as a whole.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    ImageStore(#[from] image_store::ImageStoreError),
    #[error(transparent)]
    Simplestreams(#[from] simplestreams::SimplestreamsError),
    /// At start: the stored catalog is of another format than the upstream's (the operator
    /// pointed the proxy elsewhere).
    #[error("it is stored as {found:?}, but the upstream speaks {expected:?}")]
    Stored {
        found: String,
        expected: &'static str,
    },
}

/// A catalog format, as the catalog service drives it: [`roots`](Self::roots), then for each
/// document fetched and verified [`read`](Self::read) (whose `next` is fetched too), then
/// [`build`](Self::build) over all of them, in the order fetched.
pub trait CatalogFormat: Send + Sync {
    /// The tag the accepted documents are stored under (`image-store/1`).
    fn name(&self) -> &'static str;

    /// Whether its documents are taken unsigned ([`Authentication::Unsigned`]): the operator said
    /// so for this upstream, and the dashboard says so to everyone.
    fn accepts_unsigned(&self) -> bool {
        false
    }

    /// What to tell the operator when upstream has no `request` (HTTP 404), if the format knows
    /// a likely reason.
    fn missing_document_advice(&self, _request: &DocumentRequest) -> Option<&'static str> {
        None
    }

    /// Where upstream may publish a keyring for an in-band key rollover, beside its catalog
    /// (`keyring.gpg`, with its detached signature at `keyring.gpg.asc`); `None` for a format
    /// or an upstream with nothing to roll over (one taken unsigned).
    fn keyring_url(&self, upstream: &Url) -> Option<Url>;

    /// The documents to fetch first, relative to the upstream URL.
    fn roots(&self, upstream: &Url) -> Vec<DocumentRequest>;

    /// One verified document's `updated` time, and the documents it names.
    fn read(&self, document: &VerifiedDocument) -> Result<DocumentSummary, FormatError>;

    /// The validated catalog from every verified document; file URLs resolve against `upstream`.
    /// `installed` are the stream versions installed (or being installed) here: a format that
    /// chooses versions keeps offering them.
    fn build(
        &self,
        upstream: &Url,
        documents: &[VerifiedDocument],
        installed: &[StreamIdentity],
    ) -> Result<Parsed, FormatError>;
}
