//! Hostile UEC-style tarballs (image.tar.gz), signed by the trusted key and installed for real
//! from fake-store: absolute paths, `..`, links pointing out, devices, a member shorter than its
//! header, two images. Each is refused with one line naming the member; nothing appears outside
//! the data dir (every directory from the cache up to `/` is checked for the names the tarball
//! carries); a tarball whose links stay inside still installs.

use crate::common;

use common::{TestEnv, gzip, openssl, openssl::WrappedFor};
// Members written byte by byte: the tar crate refuses to write such names itself.
use image_store_proxy::unpack::raw_tar_member as member;
use std::path::{Path, PathBuf};
use tar::EntryType::{self, Block, Char, Link, Regular, Symlink};

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

/// The names the hostile members below carry: none may appear outside the archive, in any case.
const HOSTILE_NAMES: [&str; 7] = [
    "abs-escape",
    "dotdot-escape",
    "link-escape",
    "hard-escape",
    "char-escape",
    "block-escape",
    "second.img",
];

/// A proxy whose lucid image.tar.gz is about to be replaced; each hostile tarball gets one of its
/// own, so that a failure (a refusal that never comes, say) names the tarball.
struct Lucid {
    env: TestEnv,
    uri: String,
    tarball_path: PathBuf,
    image: Vec<u8>,
    /// An absolute path into a directory of the test's own, beside the data dir.
    absolute: String,
    /// What the test's directory held beside the data dir before the install.
    before_outside: Vec<PathBuf>,
}

impl Lucid {
    async fn start() -> Self {
        let env = TestEnv::start().await;
        let uri = env.image_uri("lucid");
        let tarball_path = env.images.join("lucid/image.tar.gz");
        let image = env.originals.lucid.clone();
        let outside = env.dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let absolute = format!("{}/abs-escape", outside.display());
        let before_outside = outside_the_data_dir(&env);
        Self {
            env,
            uri,
            tarball_path,
            image,
            absolute,
            before_outside,
        }
    }

    /// The machine image, as the one regular `*.img` member.
    fn img(&self) -> Vec<u8> {
        regular("lucid-server-uec-amd64.img", &self.image)
    }

    /// Offers `members` as lucid's tarball and installs it.
    async fn install(&self, members: &[Vec<u8>]) {
        std::fs::write(&self.tarball_path, tarball(members)).unwrap();
        self.env.store.reload().unwrap();
        self.env.dashboard().await;
        self.env.act(&self.uri, "install").await;
    }

    /// The install of `members` fails with one line ending in `expected`, and writes nothing
    /// outside the data dir.
    async fn assert_refused(&self, what: &str, members: &[Vec<u8>], expected: &str) {
        let env = &self.env;
        self.install(members).await;
        let state = env.wait_for_failure(&self.uri).await;
        let error = state["error-message"].as_str().unwrap();
        assert!(!error.contains('\n'), "{what}: one line: {error:?}");
        assert!(
            error.starts_with("Failure encountered while: Bundling machine image: "),
            "{what}: {error}"
        );
        assert!(
            error.contains(": the tarball ")
                && error.contains(" is refused: ")
                && error.ends_with(expected),
            "{what}: {error:?} should end with {expected:?}"
        );
        assert_eq!(state["status"], "uninstalled", "{what}: {state}");
        env.act(&self.uri, "clear-error").await;
        assert_nowhere(env, &HOSTILE_NAMES);
        assert!(!std::path::Path::new(&self.absolute).exists());
        assert_eq!(
            self.before_outside,
            outside_the_data_dir(env),
            "nothing new beside the data dir"
        );
    }
}

/// Everything in the test's directory but the data dir.
fn outside_the_data_dir(env: &TestEnv) -> Vec<PathBuf> {
    tree(env.dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("data"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_path_is_refused() {
    let lucid = Lucid::start().await;
    let absolute = &lucid.absolute;
    lucid
        .assert_refused(
            "an absolute path",
            &[regular(absolute, b"pwned"), lucid.img()],
            &format!("member {absolute:?} has an absolute path"),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dotdot_path_after_the_image_is_refused() {
    let lucid = Lucid::start().await;
    lucid
        .assert_refused(
            "a .. path after the image",
            &[
                lucid.img(),
                regular("../../../../../../dotdot-escape", b"pwned"),
            ],
            "member \"../../../../../../dotdot-escape\" has \"..\" in its path",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_itself_through_dotdot_is_refused() {
    let lucid = Lucid::start().await;
    lucid
        .assert_refused(
            "the image itself through ..",
            &[regular("../lucid-server-uec-amd64.img", &lucid.image)],
            "member \"../lucid-server-uec-amd64.img\" has \"..\" in its path",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbolic_link_out_is_refused() {
    let lucid = Lucid::start().await;
    lucid
        .assert_refused(
            "a symbolic link out",
            &[member(Symlink, "link-escape", "/etc/passwd", b"", 0), lucid.img()],
            "member \"link-escape\" is a symbolic link pointing out of the archive (to \"/etc/passwd\")",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_link_out_is_refused() {
    let lucid = Lucid::start().await;
    lucid
        .assert_refused(
            "a hard link out",
            &[lucid.img(), member(Link, "hard-escape", "../../../etc/shadow", b"", 0)],
            "member \"hard-escape\" is a hard link pointing out of the archive (to \"../../../etc/shadow\")",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_character_device_is_refused() {
    let lucid = Lucid::start().await;
    lucid
        .assert_refused(
            "a character device",
            &[member(Char, "char-escape", "", b"", 0), lucid.img()],
            "member \"char-escape\" is a character device",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_device_is_refused() {
    let lucid = Lucid::start().await;
    lucid
        .assert_refused(
            "a block device",
            &[lucid.img(), member(Block, "block-escape", "", b"", 0)],
            "member \"block-escape\" is a block device",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_shorter_than_its_header_says_is_refused() {
    let lucid = Lucid::start().await;
    lucid
        .assert_refused(
            "an image shorter than its header says",
            &[member(Regular, "lucid-server-uec-amd64.img", "", &lucid.image[..1 << 20], 4 << 20)],
            // What follows the header is 1 MiB of data and the two zero blocks that end an archive.
            &format!(
                "member \"lucid-server-uec-amd64.img\" is cut short, {} of the {} bytes its header declares",
                (1 << 20) + 1024,
                4 << 20
            ),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_images_are_refused_as_ambiguous() {
    let lucid = Lucid::start().await;
    lucid
        .assert_refused(
            "two images",
            &[lucid.img(), regular("other/second.img", b"which one?")],
            "it holds two *.img files, \"lucid-server-uec-amd64.img\" and \"other/second.img\", and which one to install is ambiguous",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_that_stay_inside_and_directories_are_ignored_and_the_image_installs() {
    let lucid = Lucid::start().await;
    let env = &lucid.env;
    lucid
        .install(&[
            member(EntryType::Directory, "boot/", "", b"", 0),
            member(Symlink, "boot/vmlinuz", "../lucid-vmlinuz-virtual", b"", 0),
            regular("lucid-vmlinuz-virtual", b"a kernel nobody asked for"),
            member(Link, "again.img", "lucid-server-uec-amd64.img", b"", 0),
            lucid.img(),
        ])
        .await;
    let state = env
        .wait_for(&lucid.uri, "the install to end", |s| {
            s["status"] == "installed" || s.get("error-message").is_some()
        })
        .await;
    assert_eq!(state["status"], "installed", "{state}");
    // Find the install's bucket by the image's manifest.
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
    assert!(
        opened.image == lucid.image,
        "the regular *.img member, bundled"
    );
}
