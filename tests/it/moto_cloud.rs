//! Installs into a real S3/EC2 server nobody here wrote: moto, with S3 and EC2 on separate ports as
//! Eucalyptus has them. The proxy installs images offered by fake-store through the UI API; boto3
//! and moto's request recorder then check what landed and what was sent (moto stores neither the
//! manifest location, the architecture nor the kernel and ramdisk ids of a registration).

use crate::common;

use common::moto::Moto;
use common::openssl::{self, WrappedFor};
use common::{SECRET, TestEnv};
use serde_json::{Value, json};

const ACCESS_KEY: &str = "AKIDPROXYTEST";

async fn env_with_cloud(
    moto: &Moto,
    format: &str,
    key: &str,
    secret: &str,
    signature: &str,
) -> TestEnv {
    let mut env = TestEnv::with_store().await;
    let config = moto.cloud_config(env.dir.path(), format, key, secret, signature);
    env.cloud = Some((config, secret.to_string()));
    env.start_proxy();
    let images = env.dashboard().await["images"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(images, 2, "log:\n{}", env.proxy_log());
    env
}

/// The bucket and manifest name of a recorded RegisterImage.
fn location(registration: &Value) -> (String, String) {
    let location = registration["params"]["ImageLocation"].as_str().unwrap();
    let (bucket, manifest) = location.split_once('/').unwrap();
    (bucket.to_string(), manifest.to_string())
}

/// Object PUTs moto received (bucket creation excluded), by key path.
fn object_puts(moto: &Moto) -> Vec<Value> {
    moto.requests()
        .into_iter()
        .filter(|r| r["method"] == "PUT" && r["path"].as_str().unwrap().matches('/').count() >= 2)
        .collect()
}

fn count_puts(puts: &[Value], key_part: &str) -> usize {
    puts.iter()
        .filter(|r| r["path"].as_str().unwrap().contains(key_part))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_offered_by_fake_store_lands_registered_in_moto_through_the_ui_api() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let env = env_with_cloud(&moto, "toml", ACCESS_KEY, SECRET, "2").await;
    // The first two part PUTs (the kernel's one part, twice) answer 500: retried with backoff,
    // not fatal.
    moto.faults(json!({"s3_put_500": 2, "s3_put_500_on": ".part."}))
        .await;

    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    let installed = env.wait_for_status(&karmic, "installed").await;
    let (emi, eki, eri) = (&installed["emi"], &installed["eki"], &installed["eri"]);
    for id in [emi, eki, eri] {
        assert!(
            id.as_str().unwrap().starts_with("ami-"),
            "moto's ids: {installed}"
        );
    }

    // What was sent: kernel, then ramdisk, then the machine image linked to both; V2-signed.
    let registrations = moto.registrations();
    assert_eq!(registrations.len(), 3, "{registrations:#?}");
    let (bucket, _) = location(&registrations[0]);
    assert!(bucket.starts_with("image-store-"), "{bucket}");
    for (registration, prefix) in registrations.iter().zip([
        "ubuntu-server-amd64-9.10-kernel",
        "ubuntu-server-amd64-9.10-ramdisk",
        "ubuntu-server-amd64-9.10-image",
    ]) {
        let params = &registration["params"];
        assert_eq!(
            params["ImageLocation"],
            format!("{bucket}/{prefix}.manifest.xml")
        );
        assert_eq!(params["Name"], prefix);
        assert_eq!(params["Architecture"], "x86_64");
        assert_eq!(params["SignatureVersion"], "2");
        assert_eq!(params["SignatureMethod"], "HmacSHA256");
        assert_eq!(params["AWSAccessKeyId"], ACCESS_KEY);
    }
    assert!(registrations[0]["params"].get("KernelId").is_none());
    assert_eq!(&registrations[2]["params"]["KernelId"], eki);
    assert_eq!(&registrations[2]["params"]["RamdiskId"], eri);

    // Every object upload asked for aws-exec-read and was V2-signed with our key.
    let puts = object_puts(&moto);
    assert!(!puts.is_empty());
    for put in &puts {
        assert_eq!(put["acl"], "aws-exec-read", "{put}");
        let authorization = put["authorization"].as_str().unwrap();
        assert!(
            authorization.starts_with(&format!("AWS {ACCESS_KEY}:")),
            "{put}"
        );
    }

    // Each bundle was made by this run under a fresh key: no part is looked for before its first
    // PUT. A retry looks first (the cloud may have kept a try whose reply was lost).
    let part_heads: Vec<String> = moto
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "HEAD")
        .map(|r| r["path"].as_str().unwrap().to_string())
        .filter(|path| path.contains(".part."))
        .collect();
    assert_eq!(
        part_heads,
        vec![format!("/{bucket}/ubuntu-server-amd64-9.10-kernel.part.00"); 2]
    );

    // moto checks no V2 signature: botocore's signers recompute every one as the oracle, and a
    // wrong secret shows the check can fail.
    let recording = moto.recording.to_str().unwrap().to_string();
    let verdict = moto.check(&["verify-v2", &recording, ACCESS_KEY, SECRET]);
    assert!(
        verdict["checked"].as_u64().unwrap() >= puts.len() as u64 + 3,
        "{verdict}"
    );
    assert_eq!(verdict["mismatches"], json!([]), "{verdict}");
    let wrong = moto.check(&["verify-v2", &recording, ACCESS_KEY, "not-the-secret"]);
    assert_eq!(
        wrong["mismatches"].as_array().unwrap().len() as u64,
        wrong["checked"].as_u64().unwrap()
    );

    // What landed: every part and manifest, which openssl, gzip and tar open into the originals.
    let landed = dir.path().join("landed");
    let objects = moto.check(&["download", &bucket, landed.to_str().unwrap()]);
    let keys: Vec<&str> = objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    let user_key = env.dir.path().join("credentials/user-pk.pem");
    for (prefix, original) in [
        ("ubuntu-server-amd64-9.10-kernel", &env.originals.kernel),
        ("ubuntu-server-amd64-9.10-ramdisk", &env.originals.ramdisk),
        ("ubuntu-server-amd64-9.10-image", &env.originals.karmic),
    ] {
        let manifest = landed.join(format!("{prefix}.manifest.xml"));
        let text = std::fs::read_to_string(&manifest).unwrap();
        for part in openssl::part_names(&text) {
            assert!(
                keys.contains(&part.as_str()),
                "{part} in the bucket: {keys:?}"
            );
        }
        if prefix.ends_with("-image") {
            // The links travel in the manifest too, as Eucalyptus reads them.
            assert_eq!(openssl::element(&text, "kernel_id"), eki.as_str().unwrap());
            assert_eq!(openssl::element(&text, "ramdisk_id"), eri.as_str().unwrap());
            assert_eq!(openssl::element(&text, "user"), "123456789012");
        }
        let opened = openssl::open_bundle(
            &manifest,
            &user_key,
            WrappedFor::User,
            &dir.path().join(prefix),
        );
        assert!(&opened.image == original, "{prefix} as it landed in S3");
        openssl::verify_manifest_signature(
            &manifest,
            &env.dir.path().join("credentials/user-cert.pem"),
            &dir.path().join(format!("{prefix}-signature")),
        );
    }
    assert_eq!(moto.check(&["images"]).as_array().unwrap().len(), 3);

    // The second image shares the kernel and ramdisk: only its machine image is registered.
    let kernel_puts = count_puts(&puts, "kernel");
    let lucid = env.image_uri("lucid");
    env.act(&lucid, "install").await;
    let lucid_installed = env.wait_for_status(&lucid, "installed").await;
    assert_eq!(&lucid_installed["eki"], eki);
    assert_eq!(&lucid_installed["eri"], eri);
    let registrations = moto.registrations();
    assert_eq!(
        registrations.len(),
        4,
        "no second kernel or ramdisk: {registrations:#?}"
    );
    assert_eq!(&registrations[3]["params"]["KernelId"], eki);
    assert!(
        registrations[3]["params"]["ImageLocation"]
            .as_str()
            .unwrap()
            .ends_with("/ubuntu-server-amd64-10.04-image.manifest.xml")
    );
    assert_eq!(
        count_puts(&object_puts(&moto), "kernel"),
        kernel_puts,
        "the kernel is not uploaded again"
    );
    assert_eq!(moto.check(&["images"]).as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cloud_ends_in_a_clear_error_and_the_retry_registers_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    // Credentials as euca_conf's zip has them.
    let env = env_with_cloud(&moto, "eucarc", ACCESS_KEY, SECRET, "2").await;
    moto.faults(json!({"ec2": "down"})).await;

    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    let failed = env.wait_for_failure(&karmic).await;
    assert_eq!(failed["status"], "uninstalled");
    assert_eq!(
        failed["error-message"],
        "Failure encountered while: Registering kernel: the cloud refused DescribeImages: \
         InternalError: injected by the test peer",
        "{failed}"
    );
    assert!(
        failed["actions"]["install"].is_string() && failed["actions"]["clear-error"].is_string()
    );
    let puts_before = object_puts(&moto);
    assert_eq!(count_puts(&puts_before, "kernel.part.00"), 1);
    assert!(moto.registrations().is_empty());

    // Now every RegisterImage reaches moto but its reply is lost: the proxy must find each
    // registration with DescribeImages instead of registering again.
    moto.faults(json!({"ec2": "lose-register"})).await;
    env.act(&karmic, "install").await;
    let installed = env.wait_for_status(&karmic, "installed").await;
    let registrations = moto.registrations();
    let locations: Vec<String> = registrations
        .iter()
        .map(|r| r["params"]["ImageLocation"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(locations.len(), 3, "each registered once: {locations:?}");
    let (images, ids) = moto.images();
    assert_eq!(ids.len(), 3, "{images}");
    for kind in ["emi", "eki", "eri"] {
        assert!(
            ids.contains(&installed[kind]),
            "{kind} {installed} among {images}"
        );
    }
    // The kernel's bundle was already in the bucket with the same MD5: not sent again.
    let puts_after = object_puts(&moto);
    assert_eq!(
        count_puts(&puts_after, "kernel.part.00"),
        1,
        "{puts_after:#?}"
    );
    assert_eq!(count_puts(&puts_after, "kernel.manifest.xml"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_signatures_pass_moto_s_checker_and_a_wrong_secret_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut moto = Moto::start(dir.path());
    let (key, secret) = moto.require_signatures();

    let mut env = env_with_cloud(&moto, "toml", &key, "not-the-secret", "4").await;
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    let failed = env.wait_for_failure(&karmic).await;
    let line = failed["error-message"].as_str().unwrap();
    assert!(
        line.starts_with(
            "Failure encountered while: Uploading kernel bundle: checking the bucket: \
                          the cloud refused checking the bucket: SignatureDoesNotMatch"
        ),
        "{line}"
    );

    // The operator fixes the secret; the retry goes through with the right one.
    let config = moto.cloud_config(env.dir.path(), "toml", &key, &secret, "4");
    env.cloud = Some((config, secret.clone()));
    env.start_proxy();
    env.act(&karmic, "install").await;
    env.wait_for_status(&karmic, "installed").await;
    let registrations = moto.registrations();
    assert_eq!(registrations.len(), 3);
    for registration in &registrations {
        let authorization = registration["authorization"].as_str().unwrap();
        assert!(
            authorization.starts_with(&format!("AWS4-HMAC-SHA256 Credential={key}/")),
            "{authorization}"
        );
    }
    assert_eq!(moto.check(&["images"]).as_array().unwrap().len(), 3);
}

/// Says nothing: the publish below is judged by what moto received.
struct NoProgress;

impl image_store_proxy::publish::Progress for NoProgress {
    fn report(&self, _: image_store_proxy::status::Step, _: u64) {}
}

/// An HVM qcow2 disk published through the real Eucalyptus client: moto records a RegisterImage
/// with `VirtualizationType=hvm`, no kernel or ramdisk and the stream identity as its Description
/// (cut at 255 characters); the parts fetched back from moto, decrypted by openssl with the key
/// and IV from the manifest, gunzipped by gzip and untarred by tar are byte for byte
/// what `qemu-img convert -O raw` makes of the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hvm_qcow2_disk_lands_in_moto_as_qemu_s_raw_disk_registered_hvm_with_its_description() {
    use image_store_proxy::catalog::model::{Compression, FileKind, Packing, Virtualization};
    use image_store_proxy::cloud::{credentials, eucalyptus::EucalyptusCloud};
    use image_store_proxy::fetch::RetryPolicy;
    use image_store_proxy::publish::{Artifact, Publisher};
    use std::io::{Seek, SeekFrom, Write};
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let config = moto.cloud_config(dir.path(), "toml", ACCESS_KEY, SECRET, "2");
    let cloud =
        EucalyptusCloud::new(credentials::load(&config).unwrap(), RetryPolicy::default()).unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();

    // A disk with text, a run of zeros, a hole and noise, compressed by qemu-img as Ubuntu's are.
    let raw = dir.path().join("disk.raw");
    let mut disk = std::fs::File::create(&raw).unwrap();
    disk.write_all(&common::image_bytes(21, 2 << 20)).unwrap();
    disk.write_all(&vec![0; 1 << 20]).unwrap();
    disk.seek(SeekFrom::Current(3 << 20)).unwrap();
    disk.write_all(&common::noise(22, 200_000)).unwrap();
    drop(disk);
    let qcow2 = dir.path().join("disk1.img");
    let qemu_raw = dir.path().join("qemu.raw");
    for args in [
        vec!["convert", "-c", "-f", "raw", "-O", "qcow2"],
        vec!["convert", "-f", "qcow2", "-O", "raw"],
    ] {
        let (from, to) = if args.contains(&"-c") {
            (&raw, &qcow2)
        } else {
            (&qcow2, &qemu_raw)
        };
        let status = Command::new("qemu-img")
            .args(&args)
            .args([from, to])
            .status()
            .expect("qemu-img runs (Debian qemu-utils; test.sh installs it)");
        assert!(status.success(), "qemu-img {args:?}");
    }

    let description = format!(
        "simplestreams com.ubuntu.cloud:released:download com.ubuntu.cloud:server:24.04:amd64 \
         20240725 disk1.img {}",
        "x".repeat(300)
    );
    let artifact = Artifact {
        kind: FileKind::Image,
        source_size: std::fs::metadata(&qcow2).unwrap().len(),
        source: qcow2.clone(),
        compression: Compression::None,
        packing: Packing::Qcow2,
        name: "noble-20240725-image".into(),
        arch: "x86_64".into(),
        bucket: "image-store-1".into(),
        kernel_id: None,
        ramdisk_id: None,
        virtualization: Virtualization::Hvm,
        description: Some(description.clone()),
        identity: "image:test:hvm".into(),
        trailer_isize: None,
    };
    let publisher = Publisher::new(std::sync::Arc::new(cloud), &data_dir);
    let published = publisher
        .publish(
            &artifact,
            &NoProgress,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(
        published.image_id.starts_with("ami-"),
        "{}",
        published.image_id
    );

    let registrations = moto.registrations();
    assert_eq!(registrations.len(), 1, "{registrations:#?}");
    let params = &registrations[0]["params"];
    assert_eq!(params["VirtualizationType"], "hvm");
    assert!(
        params.get("KernelId").is_none() && params.get("RamdiskId").is_none(),
        "{params}"
    );
    let capped: String = description.chars().take(255).collect();
    assert_eq!(params["Description"], capped.as_str());
    assert_eq!(
        params["ImageLocation"],
        "image-store-1/noble-20240725-image.manifest.xml"
    );

    // The parts as moto holds them, opened with openssl, gzip and tar.
    let opened = moto.open_bundle(
        "image-store-1",
        "noble-20240725-image",
        &dir.path().join("credentials/user-pk.pem"),
        dir.path(),
    );
    assert_eq!(opened.member, "noble-20240725-image");
    assert!(
        opened.image == std::fs::read(&qemu_raw).unwrap(),
        "the registered bundle holds qemu-img's raw disk"
    );
}
