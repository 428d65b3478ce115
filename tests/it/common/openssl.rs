//! Opening an EC2 image bundle with the standard tools only, the way the cloud does: the AES key
//! and IV unwrapped with `openssl pkeyutl` and a private key, the parts concatenated, decrypted
//! with `openssl enc -d -aes-128-cbc`, gunzipped and untarred by `gzip` and `tar`; the manifest's
//! signature checked with `openssl dgst -sha1 -verify`. Nothing here uses the proxy's code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs a command, feeding `input`, and returns its stdout; panics with its stderr on failure.
pub fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} starts: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || stdin.write_all(&input).unwrap());
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A self-signed RSA certificate and its key, made by `openssl req`: (key path, cert path).
pub fn make_identity(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}-pk.pem"));
    let cert = dir.join(format!("{name}-cert.pem"));
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
        None,
    );
    (key, cert)
}

/// The text of the first `<name ...>text</name>` element.
pub fn element<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = xml
        .find(&format!("<{name}"))
        .unwrap_or_else(|| panic!("no <{name}> in the manifest"));
    let start = open + xml[open..].find('>').unwrap() + 1;
    let end = start + xml[start..].find(&format!("</{name}>")).unwrap();
    &xml[start..end]
}

/// Every `<filename>` of the manifest's parts, in order.
pub fn part_names(manifest: &str) -> Vec<String> {
    manifest
        .split("<filename>")
        .skip(1)
        .map(|rest| rest[..rest.find("</filename>").unwrap()].to_string())
        .collect()
}

/// Decrypts a hex-encoded RSA PKCS#1 v1.5 ciphertext with `key` (PEM): the wrapped key or IV text.
pub fn unwrap_hex(dir: &Path, key: &Path, hex_text: &str) -> String {
    let bin = dir.join("wrapped.bin");
    std::fs::write(&bin, hex::decode(hex_text).expect("hex in the manifest")).unwrap();
    let plain = run(
        "openssl",
        &[
            "pkeyutl",
            "-decrypt",
            "-pkeyopt",
            "rsa_padding_mode:pkcs1",
            "-inkey",
            key.to_str().unwrap(),
            "-in",
            bin.to_str().unwrap(),
        ],
        None,
    );
    String::from_utf8(plain).expect("the wrapped key is hex text")
}

/// What a bundle holds, opened with the standard tools.
pub struct Opened {
    /// The decrypted gzip stream, as `openssl enc -d` wrote it.
    pub compressed: Vec<u8>,
    /// The gunzipped tar stream (its SHA-1 is the manifest's digest).
    pub tar: Vec<u8>,
    /// The one member's name and bytes, as `tar` extracted them.
    pub member: String,
    pub image: Vec<u8>,
}

/// Whose copy of the wrapped AES key and IV to unwrap.
#[derive(Clone, Copy)]
pub enum WrappedFor {
    User,
    Cloud,
}

/// Opens the bundle whose manifest is `manifest` (parts beside it), unwrapping the AES key with
/// `key`, the user's or the cloud's private key.
pub fn open_bundle(manifest: &Path, key: &Path, wrapped_for: WrappedFor, scratch: &Path) -> Opened {
    std::fs::create_dir_all(scratch).unwrap();
    let text = std::fs::read_to_string(manifest).unwrap();
    let dir = manifest.parent().unwrap();
    let (key_tag, iv_tag) = match wrapped_for {
        WrappedFor::Cloud => ("ec2_encrypted_key", "ec2_encrypted_iv"),
        WrappedFor::User => ("user_encrypted_key", "user_encrypted_iv"),
    };
    let aes_key = unwrap_hex(scratch, key, element(&text, key_tag));
    let aes_iv = unwrap_hex(scratch, key, element(&text, iv_tag));
    assert_eq!(aes_key.len(), 32, "{aes_key:?}");
    assert_eq!(aes_iv.len(), 32, "{aes_iv:?}");
    let mut encrypted = Vec::new();
    for name in part_names(&text) {
        encrypted.extend(std::fs::read(dir.join(name)).unwrap());
    }
    let compressed = run(
        "openssl",
        &["enc", "-d", "-aes-128-cbc", "-K", &aes_key, "-iv", &aes_iv],
        Some(&encrypted),
    );
    let tar = run("gzip", &["-dc"], Some(&compressed));
    let out = scratch.join("untarred");
    std::fs::create_dir_all(&out).unwrap();
    run("tar", &["-x", "-C", out.to_str().unwrap()], Some(&tar));
    let mut members: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(members.len(), 1, "one member: {members:?}");
    let path = members.pop().unwrap();
    Opened {
        compressed,
        tar,
        member: path.file_name().unwrap().to_string_lossy().into_owned(),
        image: std::fs::read(&path).unwrap(),
    }
}

/// Checks the manifest's signature over `<machine_configuration>…</image>` with the certificate.
pub fn verify_manifest_signature(manifest: &Path, cert: &Path, scratch: &Path) {
    std::fs::create_dir_all(scratch).unwrap();
    let text = std::fs::read_to_string(manifest).unwrap();
    let start = text.find("<machine_configuration>").unwrap();
    let end = text.find("</image>").unwrap() + "</image>".len();
    let signed = scratch.join("signed.txt");
    std::fs::write(&signed, &text[start..end]).unwrap();
    let signature = scratch.join("signature.bin");
    std::fs::write(
        &signature,
        hex::decode(element(&text, "signature")).unwrap(),
    )
    .unwrap();
    let public = scratch.join("public.pem");
    std::fs::write(
        &public,
        run(
            "openssl",
            &["x509", "-pubkey", "-noout", "-in", cert.to_str().unwrap()],
            None,
        ),
    )
    .unwrap();
    let verdict = run(
        "openssl",
        &[
            "dgst",
            "-sha1",
            "-verify",
            public.to_str().unwrap(),
            "-signature",
            signature.to_str().unwrap(),
            signed.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&verdict).trim(), "Verified OK");
}

/// `openssl dgst -sha1` of a file, as hex.
pub fn sha1_of(path: &Path) -> String {
    let out = run(
        "openssl",
        &["dgst", "-sha1", "-r", path.to_str().unwrap()],
        None,
    );
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `openssl dgst -sha1` of bytes, as hex.
pub fn sha1_of_bytes(bytes: &[u8]) -> String {
    let out = run("openssl", &["dgst", "-sha1", "-r"], Some(bytes));
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// What Python's `tarfile` reads from the gzipped tar stream `compressed` as a stream (`r|gz`,
/// the first gzip member only, as euca2ools' and OpenStack's unbundlers read a bundle): its one
/// member as "NAME LENGTH SHA1", and nothing after it.
pub fn python_tarfile_member(compressed: &[u8]) -> String {
    let listed = run(
        "python3",
        &[
            "-c",
            "import hashlib, sys, tarfile\n\
             t = tarfile.open(fileobj=sys.stdin.buffer, mode='r|gz')\n\
             m = t.next()\n\
             data = t.extractfile(m).read()\n\
             assert t.next() is None\n\
             print(m.name, len(data), hashlib.sha1(data).hexdigest())",
        ],
        Some(compressed),
    );
    String::from_utf8_lossy(&listed).trim().to_string()
}
