//! A full disk during a download, for real: the data dir on a small filesystem made in the test
//! (a loop-mounted ext4 image, or a tmpfs with `size=` where loop devices are unavailable), so
//! root only (CI is root); elsewhere the test says why and passes. A filler file leaves less room
//! than the machine image needs: the install fails with "no space left" in its line, the partial
//! file is given back, SQLite stays intact with the row `failed`; once the filler is gone the
//! UI's install action again completes.

use crate::common;

use common::{TestEnv, gzip, image_bytes};
use std::path::{Path, PathBuf};
use std::process::Command;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A small filesystem mounted for the test's lifetime; unmounted when dropped, even on a panic
/// (lazily if the proxy still holds it).
struct SmallFilesystem {
    mountpoint: PathBuf,
    kind: String,
}

impl SmallFilesystem {
    fn mount(mountpoint: &Path, image: &Path, mib: u64) -> SmallFilesystem {
        std::fs::create_dir_all(mountpoint).unwrap();
        let at = mountpoint.to_str().unwrap();
        let loop_ext4 = || -> Result<(), String> {
            std::fs::File::create(image)
                .and_then(|f| f.set_len(mib << 20))
                .map_err(|e| e.to_string())?;
            // -m 0: no blocks reserved for root, so "full" is full for the proxy (root here) too.
            run(
                "mkfs.ext4",
                &["-q", "-F", "-m", "0", image.to_str().unwrap()],
            )?;
            run("mount", &["-o", "loop", image.to_str().unwrap(), at])
        };
        let kind = match loop_ext4() {
            Ok(()) => format!("a {mib} MiB ext4 image on a loop device"),
            Err(loop_error) => {
                let size = format!("size={mib}m");
                if let Err(tmpfs_error) = run("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", at]) {
                    panic!(
                        "cannot make a small filesystem as root: loop ext4: {loop_error}; tmpfs: {tmpfs_error}"
                    );
                }
                format!("a {mib} MiB tmpfs (no loop device: {loop_error})")
            }
        };
        eprintln!("data dir on {kind}");
        SmallFilesystem {
            mountpoint: mountpoint.to_owned(),
            kind,
        }
    }

    /// Bytes free for anyone, as `df` counts them.
    fn available(&self) -> u64 {
        let output = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.mountpoint)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .unwrap_or_else(|| panic!("df: {output:?}"))
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let at = self.mountpoint.to_str().unwrap();
        if let Err(busy) = run("umount", &[at]) {
            eprintln!("{busy}: detaching lazily");
            let _ = run("umount", &["-l", at]);
        }
    }
}

/// The bytes of the files under `dir` (none when it is not there).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => bytes_under(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn open_state(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data_dir.join("state.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

fn integrity(db: &rusqlite::Connection) -> String {
    db.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_download_cleanly_and_a_retry_after_freeing_space_completes() {
    if !is_root() {
        eprintln!(
            "skipped: mounting a small filesystem for the data dir needs root (CI runs as root)"
        );
        return;
    }
    let mut env = TestEnv::with_store().await;
    // A machine image of about 2 MiB compressed: more than the room the filler leaves.
    let big = image_bytes(5, 6 << 20);
    std::fs::write(env.images.join("karmic/image.gz"), gzip(&big)).unwrap();
    env.store.reload().unwrap();
    let image_size = std::fs::metadata(env.images.join("karmic/image.gz"))
        .unwrap()
        .len();

    let small = SmallFilesystem::mount(
        &env.dir.path().join("small"),
        &env.dir.path().join("small.ext4"),
        32,
    );
    env.data_dir = env.dir.path().join("small/data");
    std::fs::create_dir_all(&env.data_dir).unwrap();
    env.start_proxy();
    assert_eq!(env.dashboard().await["images"].as_array().unwrap().len(), 2);

    // Leave 1 MiB: room for the kernel, the ramdisk and SQLite, not for the machine image.
    let filler = env.dir.path().join("small/filler");
    let room = 1 << 20;
    let filler_size = small.available() - room;
    std::fs::write(&filler, vec![0xa5u8; filler_size as usize]).unwrap();
    let free = small.available();
    assert!(free < image_size, "{free} bytes free");
    eprintln!("{free} bytes free for a machine image of {image_size} bytes");

    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    let state = env.wait_for_failure(&karmic).await;
    let error = state["error-message"].as_str().unwrap();
    assert!(
        error.starts_with("Failure encountered while: Downloading machine image: ")
            && error.contains(": no space left on device writing ")
            && error.ends_with("the partial download was removed to free the space"),
        "{error}"
    );
    assert_eq!(state["status"], "uninstalled", "{state}");
    assert!(state["actions"]["install"].is_string(), "{state}");
    assert!(
        !env.cache_files()
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".part")),
        "the partial file was given back: {:?}",
        env.cache_files()
    );
    // What the room went to stays accounted for: the kernel's and ramdisk's cache files, their
    // parts in the fake cloud on the same disk (they went up before the machine image, which
    // overlaps its download, unregistered; each part's file in the bundle gave way to a record
    // once sent, and the retry registers them as they are), and the state database.
    let given_back = small.available();
    let kept = bytes_under(&env.data_dir);
    assert!(
        given_back + kept >= room / 2,
        "{given_back} bytes free, {kept} bytes kept in the data directory"
    );
    eprintln!("failed with {given_back} bytes free again: {error}");
    {
        let db = open_state(&env.data_dir);
        assert_eq!(integrity(&db), "ok");
        let (state, stored_error): (String, String) = db
            .query_row(
                "SELECT state, error FROM installs WHERE image_uri = ?1",
                [&karmic],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(state, "failed");
        assert_eq!(stored_error, error);
    }
    let health = reqwest::get(format!("{}/healthz", env.proxy_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Space freed, the UI's install action again: it completes.
    std::fs::remove_file(&filler).unwrap();
    env.act(&karmic, "install").await;
    let state = env
        .wait_for(&karmic, "the install to end", |s| {
            s["status"] == "installed" || s.get("error-message").is_some()
        })
        .await;
    assert_eq!(state["status"], "installed", "{state} on {}", small.kind);
    let db = open_state(&env.data_dir);
    assert_eq!(integrity(&db), "ok");
    let stored: String = db
        .query_row(
            "SELECT state FROM installs WHERE image_uri = ?1",
            [&karmic],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(stored, "installed");
    drop(db);
    // Stop the proxy before the filesystem goes (the guard would detach it lazily otherwise).
    env.kill_proxy();
    drop(small);
}
