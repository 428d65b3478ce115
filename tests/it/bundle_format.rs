//! The bundle format, proved with the standard tools only: keys and certificates made by `openssl`,
//! the AES key and IV recovered with `openssl pkeyutl`, the parts decrypted by `openssl enc`,
//! gunzipped and untarred, the image compared byte for byte, the manifest's signature checked by
//! `openssl dgst -sha1 -verify`, and every digest and size recomputed.

use crate::common;

use common::openssl::{self, WrappedFor};
use image_store_proxy::bundle::gzip::GzipSettings;
use image_store_proxy::bundle::keys::{self, BundleKeys};
use image_store_proxy::bundle::{self, BundleSpec, PART_SIZE};
use image_store_proxy::catalog::model::FileKind;
use std::path::Path;

fn keys(dir: &Path) -> (BundleKeys, [std::path::PathBuf; 4]) {
    let (user_key, user_cert) = openssl::make_identity(dir, "user");
    let (cloud_key, cloud_cert) = openssl::make_identity(dir, "cloud");
    let keys = BundleKeys {
        user_id: "123456789012".into(),
        user_cert: keys::load_certificate_key(&user_cert).unwrap(),
        user_key: keys::load_private_key(&user_key).unwrap(),
        cloud_cert: keys::load_certificate_key(&cloud_cert).unwrap(),
    };
    (keys, [user_key, user_cert, cloud_key, cloud_cert])
}

#[test]
fn a_machine_image_bundle_opens_with_openssl_gzip_and_tar() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, [user_key, user_cert, cloud_key, _]) = keys(dir.path());
    // Disk-image-like bytes, then enough noise (which gzip cannot shrink) for three parts.
    let mut image = common::image_bytes(7, 3_000_001);
    image.extend(common::noise(0x9E37_79B9, 2 * PART_SIZE as usize + 123));
    let out = dir.path().join("bundle");
    std::fs::create_dir_all(&out).unwrap();
    let spec = BundleSpec {
        prefix: "ubuntu-9.10-image",
        kind: FileKind::Image,
        arch: "x86_64",
        kernel_id: Some("eki-1234ABCD"),
        ramdisk_id: Some("eri-5678EF01"),
        size: image.len() as u64,
        // The block-parallel deflate: still one gzip member that gzip and tar read unchanged.
        gzip: GzipSettings {
            level: 6,
            threads: 2,
            recompress: false,
        },
    };
    let mut reported = 0;
    let made = bundle::write_bundle(&mut &image[..], &spec, &keys, &out, &mut |done| {
        reported = done;
        true
    })
    .unwrap();
    assert_eq!(reported, image.len() as u64);

    // The image comes back byte for byte through the user's key and through the cloud's.
    let opened = openssl::open_bundle(
        &made.manifest_path,
        &user_key,
        WrappedFor::User,
        &dir.path().join("u"),
    );
    assert_eq!(opened.member, "ubuntu-9.10-image");
    assert!(opened.image == image, "the untarred image differs");
    let by_cloud = openssl::open_bundle(
        &made.manifest_path,
        &cloud_key,
        WrappedFor::Cloud,
        &dir.path().join("c"),
    );
    assert!(by_cloud.image == image);
    // A tar stream as Python's tarfile writes it: whole 10240-byte records.
    assert_eq!(opened.tar.len() % 10240, 0);
    let listing = openssl::run("tar", &["-tvf", "-"], Some(&opened.tar));
    let listing = String::from_utf8_lossy(&listing);
    assert!(listing.starts_with("-rw-r--r-- 0/0"), "{listing}");

    openssl::verify_manifest_signature(&made.manifest_path, &user_cert, &dir.path().join("s"));

    // Every digest and size the manifest states, recomputed.
    let manifest = std::fs::read_to_string(&made.manifest_path).unwrap();
    assert!(manifest.starts_with(
        "<?xml version='1.0' encoding='ASCII'?>\n<manifest><version>2007-10-10</version>"
    ));
    assert_eq!(
        openssl::element(&manifest, "digest"),
        openssl::sha1_of_bytes(&opened.tar)
    );
    assert_eq!(openssl::element(&manifest, "size"), image.len().to_string());
    assert_eq!(openssl::element(&manifest, "user"), "123456789012");
    assert_eq!(openssl::element(&manifest, "type"), "machine");
    assert_eq!(openssl::element(&manifest, "architecture"), "x86_64");
    assert_eq!(openssl::element(&manifest, "kernel_id"), "eki-1234ABCD");
    assert_eq!(openssl::element(&manifest, "ramdisk_id"), "eri-5678EF01");
    let names = openssl::part_names(&manifest);
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(manifest.contains("<parts count=\"3\">"));
    let mut bundled = 0;
    for (index, name) in names.iter().enumerate() {
        assert_eq!(name, &format!("ubuntu-9.10-image.part.{index:02}"));
        let path = out.join(name);
        let size = std::fs::metadata(&path).unwrap().len();
        if index < 2 {
            assert_eq!(size, PART_SIZE, "every part but the last is 10 MiB");
        }
        bundled += size;
        let digest = openssl::sha1_of(&path);
        assert!(
            manifest.contains(&format!(
                "<part index=\"{index}\"><filename>{name}</filename><digest algorithm=\"SHA1\">{digest}</digest></part>"
            )),
            "part {index}'s digest"
        );
    }
    assert_eq!(
        openssl::element(&manifest, "bundled_size"),
        bundled.to_string()
    );
    assert_eq!(made.bundled_size, bundled);
}

#[test]
fn kernels_and_ramdisks_carry_eucalyptus_marks_and_a_bad_signature_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, [user_key, user_cert, _, _]) = keys(dir.path());
    let kernel = common::image_bytes(3, 100_000);
    let out = dir.path().join("k");
    std::fs::create_dir_all(&out).unwrap();
    let spec = BundleSpec {
        prefix: "vmlinuz-2.6.31",
        kind: FileKind::Kernel,
        arch: "i386",
        kernel_id: None,
        ramdisk_id: None,
        size: kernel.len() as u64,
        gzip: GzipSettings {
            level: 1,
            threads: 1,
            recompress: false,
        },
    };
    let made = bundle::write_bundle(&mut &kernel[..], &spec, &keys, &out, &mut |_| true).unwrap();
    let manifest = std::fs::read_to_string(&made.manifest_path).unwrap();
    assert_eq!(openssl::element(&manifest, "type"), "kernel");
    assert_eq!(openssl::element(&manifest, "kernel_id"), "true");
    assert!(!manifest.contains("block_device_mapping"));
    assert_eq!(made.parts.len(), 1);
    let opened = openssl::open_bundle(
        &made.manifest_path,
        &user_key,
        WrappedFor::User,
        &dir.path().join("o"),
    );
    assert!(opened.image == kernel);
    openssl::verify_manifest_signature(&made.manifest_path, &user_cert, &dir.path().join("s"));

    // The check above can fail: one changed byte in the signed text and openssl says no.
    let tampered = manifest.replace("<architecture>i386<", "<architecture>i686<");
    std::fs::write(&made.manifest_path, tampered).unwrap();
    let result = std::panic::catch_unwind(|| {
        openssl::verify_manifest_signature(&made.manifest_path, &user_cert, &dir.path().join("t"))
    });
    assert!(result.is_err(), "a tampered manifest must not verify");
}

#[test]
fn an_image_shorter_or_longer_than_declared_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, _) = keys(dir.path());
    let bytes = vec![1u8; 5000];
    for declared in [4000u64, 6000] {
        let spec = BundleSpec {
            prefix: "short",
            kind: FileKind::Ramdisk,
            arch: "x86_64",
            kernel_id: None,
            ramdisk_id: None,
            size: declared,
            gzip: GzipSettings {
                level: 1,
                threads: 1,
                recompress: false,
            },
        };
        let error = bundle::write_bundle(&mut &bytes[..], &spec, &keys, dir.path(), &mut |_| true)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("{declared} were expected")),
            "{error}"
        );
    }
}

/// A gzipped raw image bundled by splicing its own deflate data in: what `openssl enc -d`
/// decrypts is one gzip member that `gzip -t` passes and Python's `tarfile` `r|gz` (euca2ools
/// 1.x/2.x, OpenStack nova's unbundler: first member only) reads whole; its tar stream and every
/// digest are those of the same image bundled with `--recompress`.
#[test]
fn a_spliced_bundle_opens_with_openssl_gzip_and_python_tarfile_as_the_recompressed_one_does() {
    use image_store_proxy::bundle::SourceImage;
    use image_store_proxy::catalog::model::{Compression, Packing};
    let dir = tempfile::tempdir().unwrap();
    let (keys, [user_key, user_cert, cloud_key, _]) = keys(dir.path());
    let mut image = common::image_bytes(17, 4_000_003);
    image.extend(common::noise(0x2545_F491, PART_SIZE as usize + 4321));
    let upstream = openssl::run("gzip", &["-6", "-c"], Some(&image));
    let source = dir.path().join("disk.img.gz");
    std::fs::write(&source, &upstream).unwrap();
    let bundle_with = |recompress: bool, out: &str| {
        let image = SourceImage {
            kind: FileKind::Image,
            path: &source,
            size: upstream.len() as u64,
            compression: Compression::Gzip,
            packing: Packing::Raw,
            prefix: "ubuntu-disk.img",
            arch: "x86_64",
            kernel_id: None,
            ramdisk_id: None,
            arriving: None,
            trailer_isize: None,
        };
        common::bundle_at_level_1(&image, &keys, &dir.path().join(out), recompress)
    };
    let spliced = bundle_with(false, "spliced");
    let recompressed = bundle_with(true, "recompressed");

    let opened = openssl::open_bundle(
        &spliced.manifest_path,
        &user_key,
        WrappedFor::User,
        &dir.path().join("u"),
    );
    assert_eq!(opened.member, "ubuntu-disk.img");
    assert!(opened.image == image, "the untarred image differs");
    let by_cloud = openssl::open_bundle(
        &spliced.manifest_path,
        &cloud_key,
        WrappedFor::Cloud,
        &dir.path().join("c"),
    );
    assert!(by_cloud.tar == opened.tar);
    // The upstream's level-6 data, not a level-1 recompression: its size plus the framing.
    assert!(
        opened.compressed.len() <= upstream.len() + 700,
        "{} spliced from {}",
        opened.compressed.len(),
        upstream.len()
    );
    openssl::run("gzip", &["-t"], Some(&opened.compressed));
    let listed = openssl::run("gzip", &["-lv"], Some(&opened.compressed));
    assert!(
        String::from_utf8_lossy(&listed).contains(&opened.tar.len().to_string()),
        "gzip -l sees the whole stream: {}",
        String::from_utf8_lossy(&listed)
    );
    assert_eq!(
        openssl::python_tarfile_member(&opened.compressed),
        format!(
            "ubuntu-disk.img {} {}",
            image.len(),
            openssl::sha1_of_bytes(&image)
        )
    );
    openssl::verify_manifest_signature(&spliced.manifest_path, &user_cert, &dir.path().join("s"));

    // The manifest's digests and sizes, recomputed, and the same as recompression's.
    let manifest = std::fs::read_to_string(&spliced.manifest_path).unwrap();
    assert_eq!(
        openssl::element(&manifest, "digest"),
        openssl::sha1_of_bytes(&opened.tar)
    );
    assert_eq!(spliced.digest, recompressed.digest);
    assert_eq!(openssl::element(&manifest, "size"), image.len().to_string());
    let mut bundled = 0;
    for (index, name) in openssl::part_names(&manifest).iter().enumerate() {
        let path = spliced.manifest_path.parent().unwrap().join(name);
        bundled += std::fs::metadata(&path).unwrap().len();
        let digest = openssl::sha1_of(&path);
        assert!(
            manifest.contains(&format!(
                "<part index=\"{index}\"><filename>{name}</filename><digest algorithm=\"SHA1\">{digest}</digest></part>"
            )),
            "part {index}'s digest"
        );
    }
    assert_eq!(
        openssl::element(&manifest, "bundled_size"),
        bundled.to_string()
    );
    assert!(bundled < recompressed.bundled_size);
}

/// Log-like lines with random fields and bits of noise: about 3:1, so gzip makes many blocks of
/// it (an image of long runs makes a few huge ones, and a splice of them proves little).
fn semi_compressible(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(len + 100);
    while out.len() < len {
        let r = next();
        if r % 16 == 0 {
            out.extend((0..(r >> 8) % 200).map(|_| next() as u8));
        } else {
            let line = format!(
                "Dec  1 {:02}:{:02} host kernel: [{}.{:06}] eth{} 0x{:08x}\n",
                (r >> 8) % 24,
                (r >> 16) % 60,
                (r >> 24) % 100_000,
                next() % 1_000_000,
                (r >> 44) % 4,
                next() as u32
            );
            out.extend_from_slice(line.as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// A UEC tarball made by GNU tar and `gzip -9`, its image after the kernel: the image member's
/// bundle, spliced, opens with `openssl enc -d`, passes `gzip -t` and Python's `tarfile` `r|gz`,
/// and its tar stream, digests and size are those of the same member bundled with `--recompress`;
/// it is the upstream's level-9 data, not a level-1 recompression.
#[test]
fn a_uec_tarball_s_spliced_image_opens_with_openssl_gzip_and_python_tarfile() {
    use image_store_proxy::bundle::SourceImage;
    use image_store_proxy::catalog::model::{Compression, Packing};
    let dir = tempfile::tempdir().unwrap();
    let (keys, [user_key, user_cert, _, _]) = keys(dir.path());
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let image = semi_compressible(23, 12 << 20);
    std::fs::write(
        files.join("vmlinuz-virtual"),
        semi_compressible(24, 700_000),
    )
    .unwrap();
    std::fs::write(files.join("precise-server-cloudimg-amd64.img"), &image).unwrap();
    std::fs::write(files.join("initrd.img"), semi_compressible(25, 300_000)).unwrap();
    let tar = openssl::run(
        "tar",
        &[
            "-cf",
            "-",
            "-C",
            files.to_str().unwrap(),
            "vmlinuz-virtual",
            "precise-server-cloudimg-amd64.img",
            "initrd.img",
        ],
        None,
    );
    let upstream = openssl::run("gzip", &["-9", "-c"], Some(&tar));
    let source = dir.path().join("precise.tar.gz");
    std::fs::write(&source, &upstream).unwrap();
    let bundle_with = |recompress: bool, out: &str| {
        let image = SourceImage {
            kind: FileKind::Image,
            path: &source,
            size: upstream.len() as u64,
            compression: Compression::Gzip,
            packing: Packing::Tar,
            prefix: "precise.img",
            arch: "x86_64",
            kernel_id: Some("eki-1234ABCD"),
            ramdisk_id: Some("eri-5678EF01"),
            arriving: None,
            trailer_isize: None,
        };
        common::bundle_at_level_1(&image, &keys, &dir.path().join(out), recompress)
    };
    let spliced = bundle_with(false, "spliced");
    let recompressed = bundle_with(true, "recompressed");

    let opened = openssl::open_bundle(
        &spliced.manifest_path,
        &user_key,
        WrappedFor::User,
        &dir.path().join("u"),
    );
    assert_eq!(opened.member, "precise.img");
    assert!(opened.image == image, "the untarred image differs");
    let again = openssl::open_bundle(
        &recompressed.manifest_path,
        &user_key,
        WrappedFor::User,
        &dir.path().join("r"),
    );
    assert!(
        opened.tar == again.tar,
        "the tar stream differs from recompression's"
    );
    openssl::run("gzip", &["-t"], Some(&opened.compressed));
    assert_eq!(
        openssl::python_tarfile_member(&opened.compressed),
        format!(
            "precise.img {} {}",
            image.len(),
            openssl::sha1_of_bytes(&image)
        )
    );
    openssl::verify_manifest_signature(&spliced.manifest_path, &user_cert, &dir.path().join("s"));
    let manifest = std::fs::read_to_string(&spliced.manifest_path).unwrap();
    assert_eq!(
        openssl::element(&manifest, "digest"),
        openssl::sha1_of_bytes(&opened.tar)
    );
    assert_eq!(spliced.digest, recompressed.digest);
    assert_eq!(openssl::element(&manifest, "size"), image.len().to_string());
    assert_eq!(openssl::element(&manifest, "kernel_id"), "eki-1234ABCD");
    // The image's share of the level-9 upstream, not a level-1 deflate of it.
    let alone = openssl::run("gzip", &["-9", "-c"], Some(&image)).len();
    let level_1 = openssl::run("gzip", &["-1", "-c"], Some(&image)).len();
    assert!(
        opened.compressed.len() < alone + alone / 100 && opened.compressed.len() < level_1,
        "{} spliced; gzip -9 of the image {alone}, gzip -1 {level_1}",
        opened.compressed.len()
    );
    assert!(spliced.bundled_size < recompressed.bundled_size);
}
