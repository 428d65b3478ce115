//! `dpkg-buildpackage` in a copy of the checkout, with one cargo target directory kept across
//! builds and versions.

use crate::{FAKE_STORE_PACKAGE, PACKAGE, run, tail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `dpkg-buildpackage` in a copy of this checkout (it writes the .debs next to the source
/// directory, and its droppings into debian/), with one cargo target directory kept across builds.
pub(crate) struct PackageBuild {
    root: PathBuf,
    source: PathBuf,
}

impl PackageBuild {
    pub(crate) fn prepare() -> Self {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-package");
        let outputs = root.join("src");
        let source = outputs.join(PACKAGE);
        if outputs.exists() {
            std::fs::remove_dir_all(&outputs).unwrap();
        }
        std::fs::create_dir_all(&source).unwrap();
        // tar keeps modification times: cargo sees unchanged sources as unchanged.
        run(Command::new("sh")
            .args([
                "-c",
                "tar -C \"$1\" --exclude=./target --exclude=./.git --exclude=./demo-data -cf - . \
                 | tar -C \"$2\" -xf -",
                "sh",
                env!("CARGO_MANIFEST_DIR"),
            ])
            .arg(&source));
        Self { root, source }
    }

    pub(crate) fn version(&self) -> String {
        let output = run(Command::new("dpkg-parsechangelog")
            .args(["-S", "Version"])
            .current_dir(&self.source));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    pub(crate) fn changes(&self, version: &str) -> PathBuf {
        self.source
            .parent()
            .unwrap()
            .join(format!("{PACKAGE}_{version}_{}.changes", architecture()))
    }

    /// Builds `version` (a changelog entry is added when it is not the current one) and returns
    /// the two .debs.
    pub(crate) fn build(&self, version: &str) -> Vec<PathBuf> {
        if self.version() != version {
            let field = |name: &str| {
                let output = run(Command::new("dpkg-parsechangelog")
                    .args(["-S", name])
                    .current_dir(&self.source));
                String::from_utf8(output.stdout).unwrap().trim().to_string()
            };
            let changelog = self.source.join("debian/changelog");
            let old = std::fs::read_to_string(&changelog).unwrap();
            let entry = format!(
                "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Rebuilt by \
                 tests/debian_package.rs to test an upgrade.\n\n -- {}  {}\n\n",
                field("Maintainer"),
                field("Date")
            );
            std::fs::write(&changelog, entry + &old).unwrap();
        }
        let log_path = self.root.join(format!("build-{version}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new("nice");
        command
            .args(["-n", "10", "dpkg-buildpackage", "-us", "-uc", "-b"])
            .current_dir(&self.source)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // What `cargo test` tells its tests is not for the nested build (CARGO, the path of the
        // cargo running this test, is: debian/rules uses it).
        for (name, _) in std::env::vars() {
            if name.starts_with("CARGO_") && name != "CARGO_HOME" {
                command.env_remove(&name);
            }
        }
        command.env("CARGO_TARGET_DIR", self.root.join("cargo"));
        let status = command.status().unwrap();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            status.success(),
            "dpkg-buildpackage failed ({status}); the end of {}:\n{}",
            log_path.display(),
            tail(&log, 60)
        );
        let debs: Vec<PathBuf> = [PACKAGE, FAKE_STORE_PACKAGE]
            .iter()
            .map(|package| {
                self.source
                    .parent()
                    .unwrap()
                    .join(format!("{package}_{version}_{}.deb", architecture()))
            })
            .collect();
        for deb in &debs {
            assert!(deb.exists(), "dpkg-buildpackage made {}", deb.display());
        }
        debs
    }
}

fn architecture() -> String {
    let output = run(Command::new("dpkg").arg("--print-architecture"));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub(crate) fn paths(debs: &[PathBuf]) -> Vec<&str> {
    debs.iter().map(|d| d.to_str().unwrap()).collect()
}
