//! Simplestreams (SPEC §5.2, issue 14), the second catalog format: Canonical's mirrors of its
//! cloud images. A mirror root holds `streams/v1/index.sjson`, clear-signed; the index names one
//! products file per content id, clear-signed too. This file only says which documents to follow
//! and turns the verified ones into `model` images; the vocabulary (inheritance, filters, version
//! choice, path checks) is `crate::simplestreams`'s, and the checks an install depends on are
//! `model`'s.

use super::{
    Authentication, CatalogFormat, DocumentRequest, DocumentSummary, FormatError, Parsed,
    VerifiedDocument,
};
use crate::catalog::model::{
    self, CatalogBuilder, Compression, FileKind, FileRef, Image, ImageDraft, Packing, Provider,
    Section, StreamIdentity,
};
use crate::config::SimplestreamsSettings;
use crate::simplestreams::{
    Checksum, DownloadEntry, Index, InstalledVersions, ItemFilter, ItemPath, ItemPathError, Offer,
    Products, Selection, StreamError, Virtualization, printable,
};
use reqwest::Url;
use std::str::FromStr;

/// The tag the accepted documents are stored under.
pub const FORMAT: &str = "simplestreams/v1";

/// The index's place under the mirror root, and the name its stored copy is kept under.
const INDEX_PATH: &str = "streams/v1/index.sjson";
const UNSIGNED_INDEX_PATH: &str = "streams/v1/index.json";
const INDEX: &str = "index";
/// A keyring published for a rollover, beside the signed index.
const KEYRING_PATH: &str = "streams/v1/keyring.gpg";

/// Why a simplestreams document, or the set of them, was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SimplestreamsError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("simplestreams document URL {url:?} is not a URL: {source}")]
    DocumentUrl {
        url: String,
        source: <Url as FromStr>::Err,
    },
    #[error("simplestreams index entry {content_id}: {source}")]
    EntryPath {
        content_id: String,
        source: ItemPathError,
    },
    #[error(
        "the simplestreams index names none of the configured content ids ({configured}); it has {found}"
    )]
    NoDownloads { configured: String, found: String },
    #[error("no simplestreams {document} among the catalog's documents")]
    Missing { document: String },
}

/// A simplestreams mirror, as [`CatalogFormat`] drives it. What it follows and offers is held
/// here so that an upstream's configuration can set it.
#[derive(Debug, Clone)]
pub struct SimplestreamsFormat {
    /// The index entries followed (`com.ubuntu.cloud:released:download`), in this order.
    pub content_ids: Vec<String>,
    /// Filters, how many versions, HVM or paravirtual.
    pub selection: Selection,
    /// The Store tab heading of each products file's images (its content id is the summary).
    pub section_title: String,
    /// Read the unsigned `.json` tree instead of the clear-signed `.sjson` one.
    pub allow_unsigned: bool,
}

impl SimplestreamsFormat {
    /// The format as an upstream's settings say (`config` owns their defaults); a filter that
    /// does not compile is refused with its own line.
    pub fn from_settings(
        settings: &SimplestreamsSettings,
    ) -> Result<Self, crate::simplestreams::FilterError> {
        Ok(Self {
            content_ids: settings.content_ids.clone(),
            selection: Selection {
                filters: settings
                    .filters
                    .iter()
                    .map(|filter| ItemFilter::parse(filter))
                    .collect::<Result<_, _>>()?,
                max_versions: settings.max_versions,
                virtualization: settings.virtualization,
            },
            section_title: settings.section_title.clone(),
            allow_unsigned: settings.allow_unsigned,
        })
    }

    /// The entries of `index` to follow: the configured content ids it has, refusing an index
    /// that has none of them (an empty catalog would hide the last good one for nothing).
    fn downloads(&self, index: &Index) -> Result<Vec<DownloadEntry>, SimplestreamsError> {
        let mut entries = index.downloads(&self.content_ids)?;
        // The index document's own name is no products file's.
        entries.retain(|entry| entry.content_id != INDEX);
        if entries.is_empty() {
            const NAMED: usize = 8;
            let mut found: Vec<String> = index
                .content_ids()
                .take(NAMED + 1)
                .map(|id| printable(id).into_owned())
                .collect();
            if found.len() > NAMED {
                found[NAMED] = "...".to_owned();
            }
            return Err(SimplestreamsError::NoDownloads {
                configured: self.content_ids.join(", "),
                found: if found.is_empty() {
                    "none".to_owned()
                } else {
                    found.join(", ")
                },
            });
        }
        Ok(entries)
    }
}

impl Default for SimplestreamsFormat {
    /// Canonical's released images, as an upstream with no settings of its own gets them.
    fn default() -> Self {
        Self::from_settings(&SimplestreamsSettings::default()).expect("the default filters parse")
    }
}

impl CatalogFormat for SimplestreamsFormat {
    fn name(&self) -> &'static str {
        FORMAT
    }

    fn accepts_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    fn missing_document_advice(&self, request: &DocumentRequest) -> Option<&'static str> {
        (request.authentication == Authentication::Inline).then_some(
            "a mirror of unsigned .json files only is refused unless its upstream sets allow-unsigned = true",
        )
    }

    /// Beside the index: `streams/v1/keyring.gpg` next to `streams/v1/index.sjson`. An unsigned
    /// mirror has no keys to roll over.
    fn keyring_url(&self, upstream: &Url) -> Option<Url> {
        (!self.allow_unsigned).then(|| model::document_url(upstream, KEYRING_PATH))
    }

    fn roots(&self, upstream: &Url) -> Vec<DocumentRequest> {
        let (path, authentication) = if self.allow_unsigned {
            (UNSIGNED_INDEX_PATH, Authentication::Unsigned)
        } else {
            (INDEX_PATH, Authentication::Inline)
        };
        vec![DocumentRequest {
            name: INDEX.to_owned(),
            url: model::document_url(upstream, path),
            authentication,
        }]
    }

    fn read(&self, document: &VerifiedDocument) -> Result<DocumentSummary, FormatError> {
        if document.name == INDEX {
            let index = Index::parse(document.text()).map_err(SimplestreamsError::from)?;
            let root = mirror_root(&document.url)?;
            let next = self
                .downloads(&index)?
                .into_iter()
                .map(|entry| products_request(&root, &entry, self.allow_unsigned))
                .collect::<Result<_, _>>()?;
            return Ok(DocumentSummary {
                updated: index.updated,
                next,
            });
        }
        let products = Products::parse(document.text()).map_err(SimplestreamsError::from)?;
        // Requested by its content id: the file must say it is that one. (`build` checks it
        // again against the index entry itself, for catalogs read back from the database.)
        if products.content_id != document.name {
            return Err(SimplestreamsError::from(StreamError::ContentIdMismatch {
                path: document.url.clone(),
                expected: document.name.clone(),
                found: products.content_id,
            })
            .into());
        }
        Ok(DocumentSummary {
            updated: products.updated,
            next: Vec::new(),
        })
    }

    fn build(
        &self,
        upstream: &Url,
        documents: &[VerifiedDocument],
        installed: &[StreamIdentity],
    ) -> Result<Parsed, FormatError> {
        let document = |name: &str| {
            documents
                .iter()
                .find(|document| document.name == name)
                .ok_or_else(|| SimplestreamsError::Missing {
                    document: if name == INDEX {
                        "index".to_owned()
                    } else {
                        format!("products file {name}")
                    },
                })
        };
        let index = Index::parse(document(INDEX)?.text()).map_err(SimplestreamsError::from)?;
        let mut builder = CatalogBuilder::default();
        let mut dropped = Vec::new();
        let mut sections = Vec::new();
        for entry in self.downloads(&index)? {
            let products = Products::parse(document(&entry.content_id)?.text())
                .map_err(SimplestreamsError::from)?;
            products
                .check_entry(&entry)
                .map_err(SimplestreamsError::from)?;
            let installed: InstalledVersions = installed
                .iter()
                .filter(|identity| identity.content_id == entry.content_id)
                .map(|identity| (identity.product.as_str(), identity.version.as_str()))
                .collect();
            let offers = self.selection.offers(&products, &installed);
            dropped.extend(offers.passed_over);
            let mut image_uris = Vec::new();
            for offer in offers.offers {
                let uri = match offer.path.join_onto(upstream) {
                    Ok(url) => url.to_string(),
                    Err(error) => {
                        dropped.push(format!("stream item {}: {error}", offer.identity));
                        continue;
                    }
                };
                builder.offer(&uri, || image(&offer, &uri, upstream));
                image_uris.push(uri);
            }
            sections.push(Section {
                title: self.section_title.clone(),
                summary: entry.content_id.clone(),
                image_uris,
            });
        }
        let (catalog, refused) = builder.finish(index.updated, sections);
        dropped.extend(refused);
        Ok(Parsed { catalog, dropped })
    }
}

/// The mirror root an index was fetched from: `<root>/streams/v1/index.sjson`.
fn mirror_root(index_url: &str) -> Result<Url, SimplestreamsError> {
    Url::parse(index_url)
        .and_then(|url| url.join("../../"))
        .map_err(|source| SimplestreamsError::DocumentUrl {
            url: index_url.to_owned(),
            source,
        })
}

/// The clear-signed products file an index entry names: real mirrors serve `<name>.sjson`
/// beside the `<name>.json` an unsigned index may name. Unsigned: the `.json` as named.
fn products_request(
    root: &Url,
    entry: &DownloadEntry,
    unsigned: bool,
) -> Result<DocumentRequest, SimplestreamsError> {
    let entry_path = |source| SimplestreamsError::EntryPath {
        content_id: printable(&entry.content_id).into_owned(),
        source,
    };
    let signed_path = match entry.path.as_str().strip_suffix(".json") {
        Some(stem) if !unsigned => ItemPath::parse(&format!("{stem}.sjson")).map_err(entry_path)?,
        _ => entry.path.clone(),
    };
    Ok(DocumentRequest {
        name: entry.content_id.clone(),
        url: signed_path.join_onto(root).map_err(entry_path)?,
        authentication: if unsigned {
            Authentication::Unsigned
        } else {
            Authentication::Inline
        },
    })
}

/// One offer as a catalog image: `uri` is the item's URL under the mirror root.
fn image(offer: &Offer, uri: &str, upstream: &Url) -> Result<Image, String> {
    let arch = match offer.arch.as_deref() {
        Some("amd64" | "x86_64") => "x86_64",
        Some("i386" | "i686") => "i386",
        Some(other) => return Err(format!("unknown architecture {other:?}")),
        None => return Err("no architecture".into()),
    };
    // `disk1.img` is a qcow2 whole disk (its clusters compressed inside); a UEC `tar.gz` holds
    // the machine image, its kernel and its ramdisk.
    let (compression, packing, provides, virtualization) = match offer.virtualization {
        Virtualization::Hvm => (
            Compression::None,
            Packing::Qcow2,
            Vec::new(),
            model::Virtualization::Hvm,
        ),
        Virtualization::Paravirtual => (
            Compression::Gzip,
            Packing::Tar,
            vec![FileKind::Kernel, FileKind::Ramdisk, FileKind::Image],
            model::Virtualization::Paravirtual,
        ),
    };
    let kind = FileKind::Image;
    let sha256 = match &offer.checksum {
        Checksum::Sha256(sha256) => sha256.clone(),
        Checksum::Md5(_) => {
            return Err(format!(
                "stream item {} has only an MD5 checksum, and a SHA-256 is needed",
                offer.identity
            ));
        }
    };
    let mut files = Vec::new();
    model::add_file(
        &mut files,
        FileRef {
            kind,
            url: model::fetchable_url(upstream, uri)?,
            size: model::checked_size(kind, offer.size)?,
            sha256,
            signature_url: None,
            compression,
            packing,
            provides,
        },
    )?;
    let mut tags = vec![offer.virtualization.to_string()];
    tags.extend(offer.release.clone());
    Image::from_draft(
        ImageDraft {
            uri: uri.to_owned(),
            product: Some(offer.identity.product_name.clone()),
            title: offer.title.clone(),
            version: offer.version.clone(),
            summary: offer.summary.clone(),
            description_html: String::new(),
            icon_uri: None,
            provider: Some(Provider {
                title: "Canonical".to_owned(),
                uri: None,
            }),
            tags,
            arch,
            files,
            virtualization,
            stream: Some(StreamIdentity {
                content_id: offer.identity.content_id.clone(),
                product: offer.identity.product_name.clone(),
                version: offer.identity.version_name.clone(),
                item: offer.identity.item_name.clone(),
            }),
            fields: offer.fields.clone(),
        },
        upstream,
    )
}

#[cfg(test)]
mod tests {
    //! The format over the fixtures of `tests/data/simplestreams/`, clear-signed by a fresh
    //! GnuPG key: through the catalog service from a mirror on loopback, and through the trait.
    use super::*;
    use crate::catalog::CatalogService;
    use crate::catalog::format::Proof;
    use crate::simplestreams::DEFAULT_CONTENT_ID;
    use crate::trust::Keyring;
    use crate::trust::tests::Gpg;

    const INDEX_JSON: &str = include_str!("../../../tests/data/simplestreams/index.json");
    const RELEASED: &str = include_str!("../../../tests/data/simplestreams/released-download.json");
    const PRODUCTS_PATH: &str = "streams/v1/com.ubuntu.cloud:released:download.sjson";
    const NOBLE_PATH: &str =
        "server/releases/noble/release-20240725/ubuntu-24.04-server-cloudimg-amd64.img";
    /// The jammy `tar.gz` is md5-only in the fixture; this gives it a SHA-256.
    const JAMMY_MD5: &str = r#""md5": "00000000000000000000000000000022","#;
    const JAMMY_SHA256: &str =
        r#""sha256": "2222222222222222222222222222222222222222222222222222222222222222","#;

    use crate::catalog::tests::Files;

    /// Publishes the index and `products`, each clear-signed.
    fn publish(gpg: &Gpg, files: &Files, products: &str) {
        let mut files = files.lock().unwrap();
        files.insert(
            "/mirror/streams/v1/index.sjson".into(),
            gpg.clearsign(INDEX_JSON.as_bytes()),
        );
        files.insert(
            format!("/mirror/{PRODUCTS_PATH}"),
            gpg.clearsign(products.as_bytes()),
        );
    }

    fn images(service: &CatalogService) -> Vec<(String, String, String, u64)> {
        service
            .current()
            .images
            .iter()
            .map(|image| {
                (
                    image.uri.clone(),
                    image.title.clone(),
                    image.version.clone(),
                    image.total_bytes(),
                )
            })
            .collect()
    }

    fn assert_one_line(line: &str) {
        assert!(!line.contains(['\n', '\r']), "{line:?}");
    }

    #[tokio::test]
    async fn the_service_offers_the_newest_amd64_images_and_refuses_bad_products_files() {
        let mirror =
            crate::catalog::tests::upstream("Ubuntu Cloud Image Builder <c@example.invalid>");
        let mirror = mirror.await;
        let (gpg, files, upstream) = (&mirror.gpg, &mirror.files, &mirror.upstream);
        let format = || Box::new(SimplestreamsFormat::default());
        let start = || {
            let (trust, fetcher, db) = (&mirror.trust, &mirror.fetcher, &mirror.db);
            crate::catalog::tests::service(upstream, format(), trust, fetcher, db)
        };
        let service = start();

        // Of the three products: s390x is filtered out, jammy's md5-only tar.gz is dropped.
        publish(gpg, files, RELEASED);
        assert_eq!(service.refresh().await, None);
        let noble = (
            format!("{upstream}{NOBLE_PATH}"),
            "Ubuntu 24.04 LTS (Noble Numbat) amd64".to_owned(),
            "20240725".to_owned(),
            585_498_624,
        );
        assert_eq!(images(&service), std::slice::from_ref(&noble));
        let catalog = service.current();
        let image = &catalog.images[0];
        assert_eq!(image.key, model::image_key(&image.uri));
        assert_eq!(image.product, "com.ubuntu.cloud:server:24.04:amd64");
        assert_eq!(image.arch, "x86_64");
        assert_eq!(
            image.summary,
            "ubuntu-noble-24.04-amd64-server-20240725 (release), HVM disk image"
        );
        assert_eq!(image.provider.as_ref().unwrap().title, "Canonical");
        let file = &image.files[0];
        assert_eq!(image.files.len(), 1);
        assert_eq!(
            (file.kind, file.compression, file.packing),
            (FileKind::Image, Compression::None, Packing::Qcow2)
        );
        assert_eq!(image.virtualization, model::Virtualization::Hvm);
        assert_eq!(
            image
                .stream
                .as_ref()
                .map(StreamIdentity::description)
                .as_deref(),
            Some(
                "simplestreams com.ubuntu.cloud:released:download com.ubuntu.cloud:server:24.04:amd64 20240725 disk1.img"
            )
        );
        assert_eq!(file.url, image.uri);
        assert_eq!(
            file.sha256.as_str(),
            "d237766700000000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(file.signature_url, None);
        assert_eq!(
            catalog.sections[0].image_uris,
            std::slice::from_ref(&image.uri)
        );
        assert_eq!(catalog.sections[0].summary, DEFAULT_CONTENT_ID);

        // A restart reads the stored documents back through the format.
        let service = start();
        assert_eq!(images(&service), std::slice::from_ref(&noble));

        // A products file that is not the one its index entry names.
        publish(
            gpg,
            files,
            &RELEASED.replace(
                r#""content_id": "com.ubuntu.cloud:released:download""#,
                r#""content_id": "com.ubuntu.cloud:daily:download""#,
            ),
        );
        let line = service.refresh().await.unwrap();
        assert_one_line(&line);
        assert!(
            line.contains(&format!(
                "simplestreams products file {upstream}{PRODUCTS_PATH} has content_id \"com.ubuntu.cloud:daily:download\", but its index entry names \"com.ubuntu.cloud:released:download\""
            )),
            "{line}"
        );
        assert_eq!(images(&service), std::slice::from_ref(&noble));

        // A clear-signed products file changed after signing.
        publish(gpg, files, RELEASED);
        {
            let mut files = files.lock().unwrap();
            let signed = files.get_mut(&format!("/mirror/{PRODUCTS_PATH}")).unwrap();
            let text = String::from_utf8(signed.clone())
                .unwrap()
                .replace("\"size\": 585498624", "\"size\": 585498625");
            assert_ne!(signed, text.as_bytes());
            *signed = text.into_bytes();
        }
        let line = service.refresh().await.unwrap();
        assert_one_line(&line);
        assert!(
            line.contains("its signature was refused: bad signature"),
            "{line}"
        );
        assert_eq!(images(&service), std::slice::from_ref(&noble));

        // An item path that leaves the mirror root: the model refuses the file as a whole.
        publish(
            gpg,
            files,
            &RELEASED.replace(NOBLE_PATH, "server/releases/../../../etc/passwd"),
        );
        let line = service.refresh().await.unwrap();
        assert_one_line(&line);
        assert!(
            line.contains(
                "stream path \"server/releases/../../../etc/passwd\" has a \"..\" or \".\" segment"
            ),
            "{line}"
        );
        assert_eq!(images(&service), [noble]);
    }

    /// `text` clear-signed and verified, as the service hands it to the format.
    fn verified(gpg: &Gpg, name: &str, url: &str, text: &str) -> VerifiedDocument {
        let document = gpg.clearsign(text.as_bytes());
        let keyring = Keyring::from_bytes(&gpg.export()).unwrap();
        let text = keyring.verify_inline(&document).unwrap();
        VerifiedDocument {
            name: name.to_owned(),
            url: url.to_owned(),
            document,
            proof: Proof::Inline { text },
        }
    }

    fn root() -> Url {
        Url::parse("https://mirror.example/releases/").unwrap()
    }

    #[test]
    fn the_index_names_the_signed_products_file_of_each_configured_content_id() {
        let gpg = Gpg::new("Mirror <mirror@example.invalid>");
        let format = SimplestreamsFormat::default();
        let roots = format.roots(&Url::parse("https://mirror.example/releases").unwrap());
        assert_eq!(roots.len(), 1);
        assert_eq!(
            roots[0].url.as_str(),
            "https://mirror.example/releases/streams/v1/index.sjson"
        );
        assert_eq!(roots[0].authentication, Authentication::Inline);

        // An index that names `.json` files (an unsigned tree's) is followed to the `.sjson`.
        let unsigned_names = INDEX_JSON.replace(".sjson", ".json");
        for text in [INDEX_JSON, unsigned_names.as_str()] {
            let index = verified(&gpg, INDEX, roots[0].url.as_str(), text);
            let summary = format.read(&index).unwrap();
            assert_eq!(
                summary.updated,
                time::OffsetDateTime::from_unix_timestamp(1478230441).unwrap()
            );
            let next: Vec<_> = summary
                .next
                .iter()
                .map(|request| {
                    (
                        request.name.as_str(),
                        request.url.as_str(),
                        &request.authentication,
                    )
                })
                .collect();
            assert_eq!(
                next,
                [(
                    DEFAULT_CONTENT_ID,
                    "https://mirror.example/releases/streams/v1/com.ubuntu.cloud:released:download.sjson",
                    &Authentication::Inline
                )]
            );
        }

        // None of the configured content ids: refused, naming those it has.
        let daily = SimplestreamsFormat {
            content_ids: vec!["com.ubuntu.cloud:daily:download".to_owned()],
            ..SimplestreamsFormat::default()
        };
        let index = verified(&gpg, INDEX, roots[0].url.as_str(), INDEX_JSON);
        let Err(error) = daily.read(&index) else {
            panic!("an index without the configured content id was accepted");
        };
        assert_eq!(
            error.to_string(),
            "the simplestreams index names none of the configured content ids (com.ubuntu.cloud:daily:download); it has com.ubuntu.cloud:released:aws, com.ubuntu.cloud:released:download"
        );
    }

    #[test]
    fn builds_a_uec_tarball_and_drops_what_an_install_cannot_check_with_a_reason() {
        let gpg = Gpg::new("Mirror <mirror@example.invalid>");
        let format = SimplestreamsFormat::default();
        let index = verified(
            &gpg,
            INDEX,
            "https://mirror.example/releases/streams/v1/index.sjson",
            INDEX_JSON,
        );
        let products_url = format!("{}{PRODUCTS_PATH}", root());
        let products = |text: &str| verified(&gpg, DEFAULT_CONTENT_ID, &products_url, text);

        // md5 only: dropped with a line naming the item.
        let released = products(RELEASED);
        assert_eq!(
            format.read(&released).unwrap().updated,
            time::OffsetDateTime::from_unix_timestamp(1478230438).unwrap()
        );
        let Parsed { catalog, dropped } = format
            .build(&root(), &[index.clone(), released], &[])
            .unwrap();
        assert_eq!(catalog.images.len(), 1);
        assert_eq!(
            dropped,
            [format!(
                "image \"{}server/releases/jammy/release-20220923/ubuntu-22.04-server-cloudimg-amd64.tar.gz\": stream item com.ubuntu.cloud:released:download/com.ubuntu.cloud:server:22.04:amd64/20220923/tar.gz has only an MD5 checksum, and a SHA-256 is needed",
                root()
            )]
        );

        // With a SHA-256 the version without a disk1.img is offered as its UEC tarball.
        let with_sha256 = products(&RELEASED.replace(JAMMY_MD5, JAMMY_SHA256));
        let Parsed { catalog, dropped } = format
            .build(&root(), &[index.clone(), with_sha256], &[])
            .unwrap();
        assert!(dropped.is_empty(), "{dropped:?}");
        let jammy = catalog
            .images
            .iter()
            .find(|image| image.version == "20220923")
            .unwrap();
        assert_eq!(jammy.title, "Ubuntu 22.04 LTS (Jammy Jellyfish) amd64");
        assert_eq!(jammy.total_bytes(), 610_831_936);
        let file = &jammy.files[0];
        assert_eq!(
            (file.compression, file.packing),
            (Compression::Gzip, Packing::Tar)
        );
        assert!(
            jammy.summary.ends_with("paravirtual UEC tarball"),
            "{}",
            jammy.summary
        );

        // An architecture EC2 has no name for, let through by the filters: dropped.
        let everything = SimplestreamsFormat {
            selection: Selection::default(),
            ..SimplestreamsFormat::default()
        };
        let Parsed { dropped, .. } = everything
            .build(&root(), &[index.clone(), products(RELEASED)], &[])
            .unwrap();
        assert!(
            dropped
                .iter()
                .any(|line| line.contains("unknown architecture \"s390x\"")),
            "{dropped:?}"
        );

        // A stored products file that is not the one the index entry names.
        let daily = products(&RELEASED.replace(
            r#""content_id": "com.ubuntu.cloud:released:download""#,
            r#""content_id": "com.ubuntu.cloud:daily:download""#,
        ));
        let Err(error) = format.build(&root(), &[index.clone(), daily], &[]) else {
            panic!("a products file of another content id was built");
        };
        assert_eq!(
            error.to_string(),
            "simplestreams products file streams/v1/com.ubuntu.cloud:released:download.sjson has content_id \"com.ubuntu.cloud:daily:download\", but its index entry names \"com.ubuntu.cloud:released:download\""
        );

        // Without the products file the index names (a stored catalog cut short): refused.
        let Err(error) = format.build(&root(), &[index], &[]) else {
            panic!("a catalog without its products file was built");
        };
        assert_eq!(
            error.to_string(),
            "no simplestreams products file com.ubuntu.cloud:released:download among the catalog's documents"
        );
    }
}
