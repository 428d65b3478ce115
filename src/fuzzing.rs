//! The fuzz harnesses (`fuzz/`, cargo fuzz) live here rather than in the fuzz crate so that the
//! regression tests (`tests/fuzz_regressions.rs`) replay a saved input through exactly the code the
//! fuzzer ran, under plain `cargo test`. Each harness feeds hostile bytes to one parser the proxy
//! exposes to the outside and panics only when the code under test does, or when an outcome breaks
//! a promise: every refusal is one clear line, a request the server's own signer signed verifies,
//! a replay is refused, a tarball member never yields more bytes than its header declares.

use crate::api::auth::{parse_form, verify};
use crate::api::nonce::NonceBook;
use crate::api::{AppState, signature};
use crate::cache::Cache;
use crate::catalog::format::{Parsed, image_store};
use crate::catalog::model::{Compression, FileKind, Packing};
use crate::catalog::{self, CatalogService};
use crate::cloud::{aws, credentials, fake::FakeCloud};
use crate::db::{Db, now_unix};
use crate::fetch::{Fetcher, RetryPolicy};
use crate::install::Installer;
use crate::trust::Trust;
use crate::unpack::{UnpackError, check_members, with_artifact_bytes};
use reqwest::{StatusCode, Url};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Panics unless `text` is one non-empty line: what an operator reads in a log or a status.
fn assert_one_line(what: &str, text: &str) {
    assert!(!text.trim().is_empty(), "{what}: empty message");
    assert!(
        !text.contains(['\n', '\r']),
        "{what}: message spans lines: {text:?}"
    );
}

/// The catalog parser (`image_store::parse`, the `image-store/1` format) and what the proxy does next with an accepted catalog:
/// look images up by URI and key, and search it.
pub fn catalog(data: &[u8]) {
    let api = Url::parse("http://store.example:52781/api").expect("a fixed URL");
    let Parsed {
        catalog: parsed,
        dropped,
    } = match image_store::parse(data, &api) {
        Ok(parsed) => parsed,
        Err(error) => return assert_one_line("catalog refusal", &error.to_string()),
    };
    for reason in &dropped {
        assert_one_line("dropped catalog entry", reason);
    }
    for image in &parsed.images {
        assert!(image.file(FileKind::Image).is_some(), "{image:?}");
        for file in &image.files {
            assert!(file.size > 0, "{file:?}");
            assert!(
                file.url.starts_with("http://") || file.url.starts_with("https://"),
                "{file:?}"
            );
        }
        assert_eq!(parsed.by_uri(&image.uri).map(|i| &i.uri), Some(&image.uri));
        assert_eq!(parsed.by_key(&image.key).map(|i| &i.key), Some(&image.key));
        let _ = catalog::search(&parsed, &image.title);
    }
    let _ = catalog::search(&parsed, &String::from_utf8_lossy(data));
}

/// The cloud's XML error parser: input = two bytes of HTTP status, then the body.
pub fn cloud_error(data: &[u8]) {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = 100 + u16::from_be_bytes(*status) % 500;
    let status = StatusCode::from_u16(status).expect("100..=599 is a status");
    assert_one_line(
        "cloud error line",
        &aws::error_line(status, &String::from_utf8_lossy(body)),
    );
}

/// A fresh file name under `dir` for this process's next input.
fn scratch_file(dir: &Path, name: &str) -> std::path::PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let sub = dir.join(format!("{}-{n}", std::process::id()));
    std::fs::create_dir_all(&sub).expect("scratch dir");
    sub.join(name)
}

/// The eucarc (or TOML) `--cloud-config` reader, on a file holding `data`. Key paths resolve
/// against the file's own directory, so `EC2_CERT=eucarc` makes the key loaders parse the input too.
pub fn eucarc(data: &[u8], work_dir: &Path) {
    let text = String::from_utf8_lossy(data);
    // Reading a device or /proc file would only test the machine, not the parser.
    if text.contains("/dev") || text.contains("/proc") || text.contains("/sys") {
        return;
    }
    let _ = credentials::parse_eucarc(&text, work_dir);
    let file = scratch_file(work_dir, "eucarc");
    std::fs::write(&file, data).expect("writing the scratch eucarc");
    let outcome = credentials::load(&file);
    let _ = std::fs::remove_dir_all(file.parent().expect("scratch dir"));
    if let Err(error) = outcome {
        assert_one_line("credentials refusal", &error.to_string());
    }
}

/// The tarball reader (`with_artifact_bytes` on `Packing::Tar`), plain and gzipped: input = one
/// byte choosing gzip (odd) or not, then the file. The `*.img` member is read to its end, and the
/// UEC census (`check_members`) walks it for all three roles.
pub fn tarball(data: &[u8], work_dir: &Path) {
    let Some((&choice, file_bytes)) = data.split_first() else {
        return;
    };
    let compression = if choice % 2 == 1 {
        Compression::Gzip
    } else {
        Compression::None
    };
    let file = scratch_file(work_dir, "image.tar");
    std::fs::write(&file, file_bytes).expect("writing the scratch tarball");
    let census = check_members(
        &file,
        compression,
        &[FileKind::Kernel, FileKind::Ramdisk, FileKind::Image],
        &|_| {},
    );
    if let Err(error) = census {
        assert_one_line("tarball census refusal", &error.to_string());
    }
    let drain = |stream: crate::unpack::ImageStream<'_>| {
        let mut read = 0u64;
        let mut buffer = [0u8; 8192];
        loop {
            let n = stream
                .reader
                .read(&mut buffer)
                .map_err(|source| UnpackError::Read {
                    path: file.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            read += n as u64;
        }
        if let Some(declared) = stream.size {
            assert!(
                read <= declared,
                "{read} bytes read from a member declared as {declared}"
            );
        }
        Ok::<_, UnpackError>(read)
    };
    let outcome = with_artifact_bytes(
        &file,
        compression,
        Packing::Tar,
        FileKind::Image,
        &|_| {},
        drain,
    );
    let _ = std::fs::remove_dir_all(file.parent().expect("scratch dir"));
    if let Err(error) = outcome {
        assert_one_line("tarball refusal", &error.to_string());
    }
}

/// The request signature check as the API runs it (`auth::verify`), with the state the server
/// keeps: its secret and its nonce book.
pub struct SignatureCheck {
    state: AppState,
}

/// The secret the harness signs with, as the admin UI's servlet would.
const SECRET: &[u8] = b"fuzzing-secret";

impl SignatureCheck {
    /// A proxy's state on a fresh data dir in `work_dir` (no catalog, the fake cloud).
    pub fn new(work_dir: &Path) -> Self {
        let api_url = Url::parse("http://store.example:52781/api").expect("a fixed URL");
        let db = Db::open(&work_dir.join("state.sqlite")).expect("opening the state database");
        let fetcher = Fetcher::new(RetryPolicy::default()).expect("an HTTP client");
        let trust = Arc::new(Trust::new(work_dir.join("keyring.gpg")));
        let catalog = CatalogService::new(
            api_url,
            Box::new(image_store::ImageStoreFormat),
            trust.clone(),
            fetcher.clone(),
            db.clone(),
            Duration::from_secs(3600),
        )
        .expect("the catalog service");
        let installer = Installer::new(
            db,
            Cache::new(work_dir),
            fetcher,
            trust,
            crate::publish::Publisher::new(Arc::new(FakeCloud::new(work_dir)), work_dir),
            1,
        )
        .expect("the installer");
        Self {
            state: AppState {
                catalog: Arc::new(catalog::upstreams::Catalogs::single(catalog)),
                installer,
                secret: Arc::from(SECRET),
                // Small, so that a long run also exercises the full book.
                nonces: Arc::new(NonceBook::new(1024)),
                dashboards: Arc::default(),
            },
        }
    }

    /// Input: lines `method`, `Host` header, path, query string; the rest is the form body. The
    /// request is checked as sent (its signature is almost never right), then signed by the
    /// server's own canonicalisation and checked again, twice: the first may only be refused for
    /// freshness, never as a mismatch; the second is a replay and must be refused.
    pub fn check(&self, data: &[u8]) {
        let mut lines = data.splitn(5, |&b| b == b'\n');
        let mut next = || String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let (method, host, path, query) = (next(), next(), next(), next());
        let body = next();
        let mut params = parse_form(query.as_bytes());
        params.extend(parse_form(body.as_bytes()));

        if let Err(error) = verify(&self.state, &method, &host, &path, &params) {
            assert_one_line("signature refusal", &format!("{error}: {error:?}"));
        }

        params.retain(|(name, _)| name != "Signature");
        let now = now_unix();
        for (name, value) in [
            ("SignatureMethod", signature::SIGNATURE_METHOD.to_string()),
            ("SignatureVersion", signature::SIGNATURE_VERSION.to_string()),
            ("Expires", (now + signature::CLIENT_TTL_SECS).to_string()),
            ("Nonce", format!("{now}-{}", data.len())),
        ] {
            if !params.iter().any(|(n, _)| n == name) {
                params.push((name.to_string(), value));
            }
        }
        let string_to_sign = signature::string_to_sign(
            &method,
            &signature::signing_host_from_header(&host),
            &path,
            &params,
        );
        params.push((
            "Signature".to_string(),
            signature::sign(SECRET, &string_to_sign),
        ));
        let first = verify(&self.state, &method, &host, &path, &params);
        if let Err(error) = &first {
            let reason = format!("{error:?}");
            assert_one_line("signature refusal", &reason);
            assert!(
                !reason.contains("signature mismatch"),
                "a request signed with the server's own canonicalisation was refused: {reason}"
            );
        }
        let replay = verify(&self.state, &method, &host, &path, &params);
        if first.is_ok() {
            assert!(replay.is_err(), "a replayed request was accepted");
        }
    }
}

/// Any bytes as a qcow2 image file: opened, walked and read (`unpack::qcow2::fuzz_qcow2` holds what must
/// hold of every input).
pub fn qcow2(data: &[u8]) {
    crate::unpack::qcow2::fuzz_qcow2(data);
}

/// Any bytes as a simplestreams index, then as a products file, through what the catalog does
/// next (`simplestreams::fuzz_products` holds what must hold of every input).
pub fn simplestreams(data: &[u8]) {
    crate::simplestreams::fuzz_products(data);
}

/// Any bytes as a clear-signed (or inline-signed) message, through `Keyring::verify_inline` as the
/// catalog verifies a simplestreams document: never a panic, a refusal always one line. And any
/// text free of carriage returns, clear-signed by a key of the keyring, verifies and reads back as
/// that text (trailing whitespace and the final newline aside, which the cleartext framework does
/// not keep).
pub fn clearsign(data: &[u8]) {
    let (keyring, signer) = clearsign_keys();
    if let Err(refusal) = keyring.verify_inline(data) {
        assert_one_line("clear-signed refusal", &refusal.to_string());
    }
    if data.contains(&b'\r') {
        return;
    }
    let signed = clear_sign(signer, data);
    let text = keyring
        .verify_inline(&signed)
        .unwrap_or_else(|refusal| panic!("our own clear-signed message was refused: {refusal}"));
    let lines = |bytes: &[u8]| -> Vec<Vec<u8>> {
        let mut lines: Vec<Vec<u8>> = bytes
            .split(|&b| b == b'\n')
            .map(|line| line.trim_ascii_end().to_vec())
            .collect();
        while lines.last().is_some_and(Vec::is_empty) {
            lines.pop();
        }
        lines
    };
    assert_eq!(
        lines(&text),
        lines(data),
        "the text read back is not what was signed"
    );
}

/// A keyring of one fresh key, and that key's signer: made once per process.
fn clearsign_keys() -> &'static (crate::trust::Keyring, sequoia_openpgp::crypto::KeyPair) {
    use sequoia_openpgp::cert::CertBuilder;
    use sequoia_openpgp::policy::StandardPolicy;
    use sequoia_openpgp::serialize::Serialize;
    static KEYS: std::sync::OnceLock<(crate::trust::Keyring, sequoia_openpgp::crypto::KeyPair)> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let (cert, _) = CertBuilder::general_purpose(Some("fuzzing <fuzz@example.invalid>"))
            .generate()
            .expect("a fresh key");
        let mut public = Vec::new();
        cert.serialize(&mut public).expect("a key serialises");
        let keyring = crate::trust::Keyring::from_bytes(&public).expect("its own keyring");
        let policy = StandardPolicy::new();
        let signer = cert
            .keys()
            .with_policy(&policy, None)
            .secret()
            .for_signing()
            .next()
            .expect("a signing key")
            .key()
            .clone()
            .into_keypair()
            .expect("an unencrypted key");
        (keyring, signer)
    })
}

fn clear_sign(signer: &sequoia_openpgp::crypto::KeyPair, text: &[u8]) -> Vec<u8> {
    use sequoia_openpgp::serialize::stream::{Message, Signer};
    use std::io::Write;
    let mut signed = Vec::new();
    let message = Message::new(&mut signed);
    let mut writer = Signer::new(message, signer.clone())
        .expect("a signer")
        .cleartext()
        .build()
        .expect("a cleartext signer");
    writer.write_all(text).expect("writing to memory");
    writer.finalize().expect("finishing the signature");
    signed
}

/// A splicer's output held to recompression: `member` inflates (its first member only, as
/// Python's `tarfile` `r|gz` reads it) to exactly the tar stream of `image` named `disk.img`,
/// nothing follows it, and `digest` is that stream's SHA-1.
fn assert_spliced_member(member: &[u8], image: &[u8], digest: &str) {
    use crate::bundle::format;
    use sha1::{Digest, Sha1};
    use std::io::Read;
    let size = image.len() as u64;
    let mut expected = format::tar_header("disk.img", size).to_vec();
    expected.extend_from_slice(image);
    expected.resize(expected.len() + format::tar_tail_len(size) as usize, 0);
    let mut first_member = flate2::bufread::GzDecoder::new(member);
    let mut got = Vec::new();
    first_member
        .read_to_end(&mut got)
        .expect("the spliced member inflates");
    assert!(got == expected, "the spliced tar stream differs");
    assert!(
        first_member.into_inner().is_empty(),
        "bytes after the spliced member"
    );
    assert_eq!(digest, hex::encode(Sha1::digest(&expected)));
}

/// The bundle's splicer (`bundle::splice`): any bytes as a gzipped upstream raw image, then as a
/// gzipped UEC tarball ([`splice_as_tarball`]). Where it
/// splices, the one member it writes inflates (read as Python's `tarfile` `r|gz` reads it, the
/// first member only) to exactly the tar stream recompression writes, whose SHA-1 it returns, and
/// nothing follows the member; where it refuses, recompression takes over (the refusal is one
/// line), and a stated size it disagrees with is only ever one the gzip did not decode to.
pub fn splice(data: &[u8]) {
    use crate::bundle::{BundleError, splice};
    use std::io::Read;
    /// Bigger images are not worth a fuzzer's time (a gzip bomb would be all it tried).
    const CAP: u64 = 16 << 20;
    let mut decoded = Vec::new();
    let gunzipped = flate2::read::MultiGzDecoder::new(data)
        .take(CAP + 1)
        .read_to_end(&mut decoded)
        .is_ok();
    if decoded.len() as u64 > CAP {
        return;
    }
    // What recompression would be asked to bundle: the gunzipped length, or a guess.
    let size = if gunzipped {
        decoded.len() as u64
    } else {
        data.len() as u64
    };
    let mut member = Vec::new();
    match splice::write_member(
        &mut &data[..],
        "disk.img",
        size,
        1,
        &mut member,
        &mut |_| true,
    ) {
        Ok(digest) => {
            assert!(gunzipped, "spliced what gunzip refuses");
            assert_spliced_member(&member, &decoded, &digest);
        }
        Err(BundleError::NotSpliceable(why)) => {
            assert_one_line("splice refusal", &BundleError::from(why).to_string());
        }
        Err(BundleError::SizeMismatch { .. }) => {
            assert!(!gunzipped, "a size mismatch on a gzip that gunzips whole");
        }
        Err(other) => panic!("the splicer failed otherwise: {other}"),
    }
    splice_as_tarball(data);
}

/// The same bytes as a gzipped UEC tarball (`bundle::splice` for `Packing::Tar`): where the
/// splicer splices the image member, its one gzip member inflates to exactly the tar stream
/// recompression writes of the member `unpack` reads (gunzipped as recompression gunzips it);
/// where it refuses the gzip, recompression takes over; where it refuses the tarball, it is
/// `unpack`'s own refusal, word for word. The hold on a block varies with the input, so that
/// blocks too big to hold are met too.
fn splice_as_tarball(data: &[u8]) {
    use crate::bundle::{BundleError, splice};
    let path = Path::new("/cache/fuzz.tar.gz");
    let recompressed = crate::unpack::with_tar_member(
        path,
        flate2::read::MultiGzDecoder::new(data),
        FileKind::Image,
        |_, stream| {
            let mut image = Vec::new();
            stream
                .reader
                .read_to_end(&mut image)
                .map_err(|source| UnpackError::reading(path, source))?;
            Ok::<_, UnpackError>(image)
        },
    );
    let hold = 256usize << (data.len() % 12);
    let mut member = Vec::new();
    match splice::write_tarball_member(
        &mut &data[..],
        path,
        FileKind::Image,
        "disk.img",
        1,
        hold,
        &mut member,
        &mut |_| true,
    ) {
        Ok(spliced) => {
            let image = match recompressed {
                Ok(image) => image,
                Err(error) => panic!("spliced what unpack refuses: {error}"),
            };
            let size = image.len() as u64;
            assert_eq!(spliced.size, size);
            assert_spliced_member(&member, &image, &spliced.digest);
        }
        Err(BundleError::NotSpliceable(why)) => {
            assert_one_line("splice refusal", &BundleError::from(why).to_string());
        }
        Err(BundleError::Unpack(refusal)) => match recompressed {
            Err(error) => assert_eq!(refusal.to_string(), error.to_string()),
            Ok(_) => panic!("the splicer refused what unpack reads: {refusal}"),
        },
        Err(other) => panic!("the tarball splicer failed otherwise: {other}"),
    }
}

/// The qcow2 splicer (`bundle::splice::cluster`): any bytes as a qcow2 disk the walker opens.
/// Where it splices, the one member it writes inflates (first member only, as `tarfile` `r|gz`
/// reads it) to exactly the tar stream conversion (`Qcow2Reader`, the raw disk) and
/// recompression give, whose SHA-1 it returns, and nothing follows the member; a disk the
/// converter refuses is never spliced; a refusal is one line.
pub fn splice_qcow2(data: &[u8]) {
    use crate::bundle::{BundleError, splice::cluster};
    use crate::unpack::qcow2::Qcow2Image;
    use std::io::{Cursor, Read};
    /// Bigger disks are not worth a fuzzer's time (zeros, mostly).
    const CAP: u64 = 4 << 20;
    // What the walker refuses on opening is the qcow2 target's to judge.
    let Ok(mut disk) = Qcow2Image::open(Cursor::new(data)) else {
        return;
    };
    let size = disk.virtual_size();
    if size > CAP {
        return;
    }
    let mut converted = Vec::new();
    let convertible = Qcow2Image::open(Cursor::new(data))
        .expect("it opened once")
        .into_reader()
        .read_to_end(&mut converted)
        .is_ok();
    let mut member = Vec::new();
    let path = Path::new("fuzz.qcow2");
    match cluster::write_member(&mut disk, path, "disk.img", 1, &mut member, &mut |_| true) {
        Ok(spliced) => {
            assert!(convertible, "spliced a disk the converter refuses");
            assert_spliced_member(&member, &converted, &spliced.digest);
        }
        Err(BundleError::NotSpliceable(why)) => {
            assert_one_line("qcow2 splice refusal", &BundleError::from(why).to_string());
        }
        Err(other) => panic!("the qcow2 splicer failed otherwise: {other}"),
    }
}
