//! Where a real cloud's credentials come from, checked at start-up: a `--cloud-config` that lacks a
//! field or names an unreadable key stops the daemon with one line naming the file and the field;
//! without one, the daemon runs `euca_conf --get-credentials ZIP` once, as the original did, and
//! signs the UI's requests with the administrator's secret key from the zip.

use crate::common;

use common::openssl;
use image_store_proxy::client::ProxyClient;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn daemon(data_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_image-store-proxy"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-url",
            "http://127.0.0.1:9/api",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args);
    command
}

/// Starts the daemon on `config` in `data_dir` and returns its stderr, which must end in a refusal.
fn refused_start(data_dir: &Path, config: &Path) -> String {
    let output = run_to_exit(daemon(
        data_dir,
        &["--cloud-config", config.to_str().unwrap()],
    ));
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn run_to_exit(mut command: Command) -> Output {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_missing_or_unreadable_credential_is_one_line_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let eucarc = dir.path().join("eucarc");
    std::fs::write(
        &eucarc,
        "export EC2_URL=http://10.1.1.1:8773/services/Eucalyptus\nexport EC2_ACCESS_KEY='a'\nexport EC2_SECRET_KEY='b'\n",
    )
    .unwrap();
    let stderr = refused_start(dir.path(), &eucarc);
    assert!(
        stderr.contains(&format!(
            "Proxy failed to retrieve Eucalyptus credentials: {} has no S3_URL (is Walrus registered?)",
            eucarc.display()
        )),
        "{stderr}"
    );

    let toml = dir.path().join("cloud.toml");
    std::fs::write(
        &toml,
        "ec2-url = \"http://h/\"\ns3-url = \"http://h/\"\naccess-key = \"a\"\nsecret-key = \"b\"\n\
         user-id = \"1\"\nuser-cert = \"nowhere/cert.pem\"\n",
    )
    .unwrap();
    let stderr = refused_start(dir.path(), &toml);
    assert!(stderr.contains("cloud.toml: user-cert"), "{stderr}");
    assert!(stderr.contains("nowhere/cert.pem"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cloud_config_the_credentials_come_from_euca_conf_once() {
    image_store_proxy::fetch::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // What euca_conf's zip holds: eucarc, the user's key and certificate, the cloud's certificate.
    let zip_source = dir.path().join("zip-source");
    std::fs::create_dir_all(&zip_source).unwrap();
    openssl::make_identity(&zip_source, "euca2-admin-1234abcd");
    openssl::make_identity(&zip_source, "cloud");
    std::fs::remove_file(zip_source.join("cloud-pk.pem")).unwrap();
    let admin_secret = "AdminSecretKey0123456789abcdefghijklmnop";
    std::fs::write(
        zip_source.join("eucarc"),
        format!(
            "EUCA_KEY_DIR=$(cd $(dirname ${{BASH_SOURCE:-$0}}); pwd -P)\n\
             export EC2_URL=http://127.0.0.1:9/services/compute\n\
             export S3_URL=http://127.0.0.1:9/services/objectstorage\n\
             export EC2_PRIVATE_KEY=${{EUCA_KEY_DIR}}/euca2-admin-1234abcd-pk.pem\n\
             export EC2_CERT=${{EUCA_KEY_DIR}}/euca2-admin-1234abcd-cert.pem\n\
             export EUCALYPTUS_CERT=${{EUCA_KEY_DIR}}/cloud-cert.pem\n\
             export EC2_ACCESS_KEY='AKIADMIN'\nexport EC2_SECRET_KEY='{admin_secret}'\n\
             export EC2_USER_ID='000100729354'\n"
        ),
    )
    .unwrap();
    // A stand-in for Eucalyptus' euca_conf: writes that zip where it is told, counts its calls.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.path().join("euca_conf.calls");
    let script = bin.join("euca_conf");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = --get-credentials ] || exit 2\necho \"$2\" >> '{calls}'\n\
             exec python3 -m zipfile -c \"$2\" '{source}'/*\n",
            calls = calls.display(),
            source = zip_source.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let data_dir = dir.path().join("data");

    for start in 1..=2 {
        let mut child = daemon(&data_dir, &[])
            .env("PATH", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let url = common::listening_url(&mut child)
            .unwrap_or_else(|line| panic!("start {start}: {line:?}"));
        // The UI's requests are signed with the administrator's secret key from the zip.
        let signed = ProxyClient::new(&url, admin_secret, "AKIADMIN").unwrap();
        let reply = loop {
            match signed.dashboard().await {
                Ok(reply) => break reply,
                Err(_) if child.try_wait().unwrap().is_none() => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(error) => {
                    let output = child.wait_with_output().unwrap();
                    panic!("{error}: {}", String::from_utf8_lossy(&output.stderr));
                }
            }
        };
        assert!(reply.body.get("sections").is_some() || reply.body.get("error-message").is_some());
        assert_ne!(
            reply.body["error-message"], "Bad request signature",
            "{}",
            reply.body
        );
        let wrong = ProxyClient::new(&url, "not-the-admin-secret", "AKIADMIN").unwrap();
        assert_eq!(
            wrong.dashboard().await.unwrap().body["error-message"],
            "Bad request signature"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(data_dir.join("eucalyptus/eucarc").exists());
    assert!(
        data_dir
            .join("eucalyptus/euca2-admin-1234abcd-pk.pem")
            .exists()
    );
    let calls = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        calls.lines().count(),
        1,
        "euca_conf mints a key pair per call: called once"
    );
}

/// A start-up failure is said once: the path of a missing `--cloud-config` appears once on the one
/// line (no wrapper repeats the message it wraps), and nothing announced "listening" before it.
#[test]
fn a_missing_cloud_config_is_said_once_and_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let output = run_to_exit(daemon(
        dir.path(),
        &["--cloud-config", missing.to_str().unwrap()],
    ));
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(!stderr.contains("listening"), "{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.starts_with("image-store-proxy: "))
        .unwrap_or_else(|| panic!("a failure line in {stderr}"));
    let path = missing.display().to_string();
    assert_eq!(line.matches(&path).count(), 1, "{line}");
    assert!(
        line.contains("Proxy failed to retrieve Eucalyptus credentials"),
        "{line}"
    );
    assert_eq!(
        line.matches("Proxy failed to retrieve Eucalyptus credentials")
            .count(),
        1,
        "{line}"
    );
}

/// The cloud administrator's secret and private key are refused, with one line naming the file
/// and its mode, when other users may read them; closed, the same credentials get further.
#[test]
fn credentials_that_others_may_read_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    common::openssl::make_identity(&creds, "user");
    common::openssl::make_identity(&creds, "cloud");
    let toml = creds.join("cloud.toml");
    std::fs::write(
        &toml,
        "ec2-url = \"http://127.0.0.1:9/services/compute\"\ns3-url = \"http://127.0.0.1:9/services/objectstorage\"\n\
         access-key = \"a\"\nsecret-key = \"b\"\nuser-id = \"123456789012\"\nuser-cert = \"user-cert.pem\"\n\
         user-key = \"user-pk.pem\"\ncloud-cert = \"cloud-cert.pem\"\n",
    )
    .unwrap();
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let refusal = |expected: &Path, shown: &str| {
        let stderr = refused_start(dir.path(), &toml);
        let line = format!(
            "{} is readable by every user (mode {shown})",
            expected.display()
        );
        assert!(stderr.contains(&line), "{stderr}");
    };
    mode(&toml, 0o644);
    refusal(&toml, "0644");
    mode(&toml, 0o600);
    let key = creds.join("user-pk.pem");
    mode(&key, 0o604);
    refusal(&key, "0604");
}
