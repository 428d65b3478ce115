//! moto, the S3/EC2 server nobody here wrote (SPEC §8), started per test on free loopback ports with
//! separate S3 and EC2 endpoints (`tests/peers/moto_peer.py`), its request recorder on, and boto3
//! (`tests/peers/moto_check.py`) to look at what landed. `./test.sh` installs both into a
//! virtualenv; the tests refuse to run without it rather than pass without a peer.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Moto {
    child: Child,
    pub s3_url: String,
    pub ec2_url: String,
    pub recording: PathBuf,
    python: PathBuf,
    /// The IAM key boto3 signs with once signature checking is on.
    check_key: Option<(String, String)>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// The virtualenv's python: `$IMAGE_STORE_PROXY_TEST_VENV` or `target/test-peers/venv`.
fn python() -> PathBuf {
    let venv = std::env::var_os("IMAGE_STORE_PROXY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-peers/venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the S3/EC2 test peer is not installed ({} is missing): run ./test.sh, which installs \
         moto and boto3 into that virtualenv",
        python.display()
    );
    python
}

impl Moto {
    pub fn start(dir: &Path) -> Self {
        let python = python();
        let recording = dir.join("moto-requests.jsonl");
        let log = dir.join("moto.log");
        let mut child = Command::new(&python)
            .arg(peers_dir().join("moto_peer.py"))
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .env("MOTO_ENABLE_RECORDING", "true")
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("moto starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<&str> = line.split_whitespace().collect();
        assert!(
            ports.len() == 3 && ports[0] == "ready",
            "moto did not start: {line:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Moto {
            s3_url: format!("http://127.0.0.1:{}/", ports[1]),
            ec2_url: format!("http://127.0.0.1:{}/", ports[2]),
            child,
            recording,
            python,
            check_key: None,
        }
    }

    /// The images moto has registered (`check images`) and their ids.
    pub fn images(&self) -> (Value, Vec<Value>) {
        let images = self.check(&["images"]);
        let ids = images
            .as_array()
            .unwrap()
            .iter()
            .map(|image| image["id"].clone())
            .collect();
        (images, ids)
    }

    /// Runs `moto_check.py` and returns the JSON it prints.
    pub fn check(&self, args: &[&str]) -> Value {
        let output = Command::new(&self.python)
            .arg(peers_dir().join("moto_check.py"))
            .args([&self.s3_url, &self.ec2_url])
            .args(args)
            .envs(
                self.check_key
                    .iter()
                    .flat_map(|(key, secret)| [("CHECK_KEY", key), ("CHECK_SECRET", secret)]),
            )
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "moto_check {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Makes an IAM user with an access key and turns SigV4 checking on: from now on moto refuses
    /// requests not signed with that key. Returns (key id, secret).
    pub fn require_signatures(&mut self) -> (String, String) {
        let key = self.check(&["setup-auth"]);
        let pair = (
            key["id"].as_str().unwrap().to_string(),
            key["secret"].as_str().unwrap().to_string(),
        );
        self.check_key = Some(pair.clone());
        pair
    }

    /// Every request moto received so far, parsed (method, path, params, acl, authorization).
    pub fn requests(&self) -> Vec<Value> {
        if !self.recording.exists() {
            return Vec::new();
        }
        let recording = self.recording.to_str().unwrap().to_string();
        self.check(&["recorded", &recording])
            .as_array()
            .unwrap()
            .clone()
    }

    /// Object PUTs moto received (bucket creation excluded), by path, in order.
    pub fn object_puts(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r["method"] == "PUT")
            .map(|r| r["path"].as_str().unwrap().to_string())
            .filter(|path| path.matches('/').count() >= 2)
            .collect()
    }

    /// The RegisterImage calls moto received.
    pub fn registrations(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["params"]["Action"] == "RegisterImage")
            .collect()
    }

    /// The bundle `prefix` as moto holds it in `bucket`: every object fetched back by boto3 into
    /// `dir/landed`, then opened with the standard tools as the cloud opens it, the AES key
    /// unwrapped with `user_key` (`openssl::open_bundle`).
    pub fn open_bundle(
        &self,
        bucket: &str,
        prefix: &str,
        user_key: &Path,
        dir: &Path,
    ) -> super::openssl::Opened {
        let landed = dir.join("landed");
        self.check(&["download", bucket, landed.to_str().unwrap()]);
        super::openssl::open_bundle(
            &landed.join(format!("{prefix}.manifest.xml")),
            user_key,
            super::openssl::WrappedFor::User,
            &dir.join("scratch"),
        )
    }

    /// Switches the fault injector in front of moto (see `moto_peer.py`).
    pub async fn faults(&self, settings: Value) {
        let reply = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}_faults", self.ec2_url))
            .body(settings.to_string())
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success());
    }

    /// The requests the fault injector holds so far ("PUT /bucket/key", "RegisterImage NAME").
    pub async fn held(&self) -> Vec<String> {
        let body = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{}_faults", self.ec2_url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&body).unwrap();
        serde_json::from_value(reply["held"].clone()).unwrap()
    }

    /// Waits until the fault injector holds a request; returns what it holds.
    pub async fn wait_until_held(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let held = self.held().await;
            if !held.is_empty() {
                return held;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no request was held in 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A `--cloud-config` for this moto in `dir`, with keys and certificates made by openssl.
    /// `format` is "toml" or "eucarc".
    pub fn cloud_config(
        &self,
        dir: &Path,
        format: &str,
        key: &str,
        secret: &str,
        signature: &str,
    ) -> PathBuf {
        let creds = dir.join("credentials");
        std::fs::create_dir_all(&creds).unwrap();
        super::openssl::make_identity(&creds, "user");
        super::openssl::make_identity(&creds, "cloud");
        let config = match format {
            "toml" => {
                let path = creds.join("cloud.toml");
                std::fs::write(
                    &path,
                    format!(
                        "ec2-url = \"{}\"\ns3-url = \"{}\"\naccess-key = \"{key}\"\nsecret-key = \"{secret}\"\n\
                         user-id = \"123456789012\"\nuser-cert = \"user-cert.pem\"\nuser-key = \"user-pk.pem\"\n\
                         cloud-cert = \"cloud-cert.pem\"\nsignature-version = \"{signature}\"\n",
                        self.ec2_url, self.s3_url
                    ),
                )
                .unwrap();
                path
            }
            _ => {
                // As euca_conf's zip has it: quoted keys, paths under ${EUCA_KEY_DIR}.
                let path = creds.join("eucarc");
                std::fs::write(
                    &path,
                    format!(
                        "EUCA_KEY_DIR=$(cd $(dirname ${{BASH_SOURCE:-$0}}); pwd -P)\n\
                         export EC2_URL={}\nexport S3_URL={}\n\
                         export EC2_PRIVATE_KEY=${{EUCA_KEY_DIR}}/user-pk.pem\n\
                         export EC2_CERT=${{EUCA_KEY_DIR}}/user-cert.pem\n\
                         export EUCALYPTUS_CERT=${{EUCA_KEY_DIR}}/cloud-cert.pem\n\
                         export EC2_ACCESS_KEY='{key}'\nexport EC2_SECRET_KEY='{secret}'\n\
                         export EC2_USER_ID='123456789012'\n\
                         export IMAGE_STORE_SIGNATURE_VERSION={signature}\n\
                         alias ec2-bundle-image=\"ec2-bundle-image --cert ${{EC2_CERT}} --privatekey ${{EC2_PRIVATE_KEY}} --user 123456789012\"\n",
                        self.ec2_url, self.s3_url
                    ),
                )
                .unwrap();
                path
            }
        };
        // As an operator keeps them: the proxy refuses credentials others may read.
        super::close_to_others(&creds);
        config
    }
}
