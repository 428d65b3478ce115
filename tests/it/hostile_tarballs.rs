//! Hostile UEC-style tarballs (image.tar.gz), signed by the trusted key and installed for real
//! from fake-store: absolute paths, `..`, links pointing out, devices, a member shorter than its
//! header, two images. Each is refused with one line naming the member; nothing appears outside
//! the data dir (every directory from the cache up to `/` is checked for the names the tarball
//! carries); a tarball whose links stay inside still installs.

use crate::common;

use common::{TestEnv, gzip, openssl, openssl::WrappedFor};
use std::path::{Path, PathBuf};
use tar::EntryType::{self, Block, Char, Link, Regular, Symlink};

/// A member written byte by byte: the tar crate refuses to write such names itself.
fn member(kind: EntryType, name: &str, link: &str, data: &[u8], declared: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(declared);
    header.set_mode(0o644);
    let gnu = header.as_gnu_mut().unwrap();
    assert!(name.len() <= 100 && link.len() <= 100, "{name} {link}");
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

fn regular(name: &str, data: &[u8]) -> Vec<u8> {
    member(Regular, name, "", data, data.len() as u64)
}

fn tarball(members: &[Vec<u8>]) -> Vec<u8> {
    let mut tar = members.concat();
    tar.extend_from_slice(&[0; 1024]);
    gzip(&tar)
}

/// Every regular file and link under `root`, as paths relative to it.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                pending.push(path.clone());
            }
            found.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    found.sort();
    found
}

/// Nothing named `name` in any directory from the cache up to `/`, nor anywhere in the test's
/// directory (data dir included).
fn assert_nowhere(env: &TestEnv, names: &[&str]) {
    let cache_dir = env.data_dir.join("cache/sha256/00");
    for name in names {
        for dir in cache_dir.ancestors() {
            let candidate = dir.join(name);
            assert!(
                std::fs::symlink_metadata(&candidate).is_err(),
                "{} was written",
                candidate.display()
            );
        }
        for path in tree(env.dir.path()) {
            assert!(
                path.file_name().and_then(|n| n.to_str()) != Some(*name),
                "{} was written",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tarballs_are_refused_naming_the_member_and_write_nothing_outside() {
    let env = TestEnv::start().await;
    let lucid = env.image_uri("lucid");
    let tarball_path = env.images.join("lucid/image.tar.gz");
    let image = env.originals.lucid.clone();
    let img = || regular("lucid-server-uec-amd64.img", &image);
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let absolute = format!("{}/abs-escape", outside.display());
    let before_outside = tree(env.dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("data"))
        .collect::<Vec<_>>();

    let cases: Vec<(&str, Vec<Vec<u8>>, String)> = vec![
        (
            "an absolute path",
            vec![regular(&absolute, b"pwned"), img()],
            format!("member {absolute:?} has an absolute path"),
        ),
        (
            "a .. path after the image",
            vec![img(), regular("../../../../../../dotdot-escape", b"pwned")],
            "member \"../../../../../../dotdot-escape\" has \"..\" in its path".into(),
        ),
        (
            "the image itself through ..",
            vec![regular("../lucid-server-uec-amd64.img", &image)],
            "member \"../lucid-server-uec-amd64.img\" has \"..\" in its path".into(),
        ),
        (
            "a symbolic link out",
            vec![member(Symlink, "link-escape", "/etc/passwd", b"", 0), img()],
            "member \"link-escape\" is a symbolic link pointing out of the archive (to \"/etc/passwd\")".into(),
        ),
        (
            "a hard link out",
            vec![img(), member(Link, "hard-escape", "../../../etc/shadow", b"", 0)],
            "member \"hard-escape\" is a hard link pointing out of the archive (to \"../../../etc/shadow\")".into(),
        ),
        (
            "a character device",
            vec![member(Char, "char-escape", "", b"", 0), img()],
            "member \"char-escape\" is a character device".into(),
        ),
        (
            "a block device",
            vec![img(), member(Block, "block-escape", "", b"", 0)],
            "member \"block-escape\" is a block device".into(),
        ),
        (
            "an image shorter than its header says",
            vec![member(Regular, "lucid-server-uec-amd64.img", "", &image[..1 << 20], 4 << 20)],
            // What follows the header is 1 MiB of data and the two zero blocks that end an archive.
            format!(
                "member \"lucid-server-uec-amd64.img\" is cut short, {} of the {} bytes its header declares",
                (1 << 20) + 1024,
                4 << 20
            ),
        ),
        (
            "two images",
            vec![img(), regular("other/second.img", b"which one?")],
            "it holds two *.img files, \"lucid-server-uec-amd64.img\" and \"other/second.img\", and which one to install is ambiguous".into(),
        ),
    ];
    let names = [
        "abs-escape",
        "dotdot-escape",
        "link-escape",
        "hard-escape",
        "char-escape",
        "block-escape",
        "second.img",
    ];
    let tried = cases.len();
    for (what, members, expected) in cases {
        std::fs::write(&tarball_path, tarball(&members)).unwrap();
        env.store.reload().unwrap();
        env.dashboard().await;
        env.act(&lucid, "install").await;
        let state = env.wait_for_failure(&lucid).await;
        let error = state["error-message"].as_str().unwrap();
        assert!(!error.contains('\n'), "{what}: one line: {error:?}");
        assert!(
            error.starts_with("Failure encountered while: Bundling machine image: "),
            "{what}: {error}"
        );
        assert!(
            error.contains(": the tarball ")
                && error.contains(" is refused: ")
                && error.ends_with(&expected),
            "{what}: {error:?} should end with {expected:?}"
        );
        assert_eq!(state["status"], "uninstalled", "{what}: {state}");
        env.act(&lucid, "clear-error").await;
        assert_nowhere(&env, &names);
        assert!(!std::path::Path::new(&absolute).exists());
    }
    eprintln!("{tried} hostile tarballs refused");
    let after_outside = tree(env.dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("data"))
        .collect::<Vec<_>>();
    assert_eq!(
        before_outside, after_outside,
        "nothing new beside the data dir"
    );

    // Links that stay inside and directories are ignored: the image installs.
    std::fs::write(
        &tarball_path,
        tarball(&[
            member(EntryType::Directory, "boot/", "", b"", 0),
            member(Symlink, "boot/vmlinuz", "../lucid-vmlinuz-virtual", b"", 0),
            regular("lucid-vmlinuz-virtual", b"a kernel nobody asked for"),
            member(Link, "again.img", "lucid-server-uec-amd64.img", b"", 0),
            img(),
        ]),
    )
    .unwrap();
    env.store.reload().unwrap();
    env.dashboard().await;
    env.act(&lucid, "install").await;
    let state = env
        .wait_for(&lucid, "the install to end", |s| {
            s["status"] == "installed" || s.get("error-message").is_some()
        })
        .await;
    assert_eq!(state["status"], "installed", "{state}");
    // Each cleared failure started a new install with its own bucket: find the one with the image.
    let manifest = std::fs::read_dir(env.data_dir.join("fake-cloud"))
        .unwrap()
        .flatten()
        .map(|entry| {
            entry
                .path()
                .join("ubuntu-server-amd64-10.04-image.manifest.xml")
        })
        .find(|manifest| manifest.exists())
        .expect("the fake cloud holds the machine image's bundle");
    let opened = openssl::open_bundle(
        &manifest,
        &env.data_dir.join("fake-cloud/keys/user-pk.pem"),
        WrappedFor::User,
        &env.dir.path().join("opened"),
    );
    assert!(opened.image == image, "the regular *.img member, bundled");
}
