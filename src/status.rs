//! The one-line `status-detail` texts (SPEC §4.3, after Image Factory's `status_detail`): what the
//! install is doing right now, in words an operator reads; on failure it becomes
//! "Failure encountered while: <status-detail>: <cause>". Every status line is worded here: the
//! installer calls the functions below, and the bundler and the publisher report typed [`Step`]s
//! that [`Step::line`] renders, so none of them writes an operator's sentence itself.

use crate::catalog::model::FileKind;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// "42 of 117 MiB": both numbers in the unit that suits the total; one decimal below ten units
/// ("0.5 of 2.0 MiB"), whole units above (the total rounded up).
pub fn amount(done: u64, total: u64) -> String {
    let Some(&(unit, name)) = [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
        .iter()
        .find(|(unit, _)| total >= *unit)
    else {
        return format!("{done} of {total} bytes");
    };
    if total < 10 * unit && unit > KIB {
        let scaled = |bytes: u64| bytes as f64 / unit as f64;
        return format!("{:.1} of {:.1} {name}", scaled(done), scaled(total));
    }
    format!("{} of {} {name}", done / unit, total.div_ceil(unit))
}

/// A size alone, in the unit that suits it: "512 bytes", "1.5 MiB", "117 MiB".
pub fn size(bytes: u64) -> String {
    let Some(&(unit, name)) = [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
        .iter()
        .find(|(unit, _)| bytes >= *unit)
    else {
        return format!("{bytes} bytes");
    };
    if bytes < 10 * unit {
        format!("{:.1} {name}", bytes as f64 / unit as f64)
    } else {
        format!("{} {name}", bytes / unit)
    }
}

/// A step of publishing one file, as the bundler and the publisher report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `done` of the `total` bytes of the cache file read into the bundle.
    Bundling {
        kind: FileKind,
        done: u64,
        total: u64,
    },
    /// Reading the image once to learn its size (its gzip trailer was wrong), before bundling.
    Measuring {
        kind: FileKind,
        done: u64,
        total: u64,
    },
    /// Making sure the bucket exists before the first part goes up.
    CheckingBucket { kind: FileKind },
    /// The parts going up, several at once: `sent` of the `count` are in the bucket. Parts land
    /// out of order, so the count of parts sent is what says how far the upload is.
    UploadingParts {
        kind: FileKind,
        sent: u64,
        count: u64,
    },
    /// The manifest going up, after every part.
    UploadingManifest { kind: FileKind },
    /// Looking for an earlier registration, then registering.
    Registering { kind: FileKind },
}

impl Step {
    /// The step's status line: "Uploading machine image bundle: 7 of 12 parts sent".
    pub fn line(&self) -> String {
        match *self {
            Step::Bundling { kind, done, total } => {
                format!("Bundling {}: {}", kind.noun(), amount(done, total))
            }
            Step::Measuring { kind, done, total } => {
                format!("Measuring {}: {}", kind.noun(), amount(done, total))
            }
            Step::CheckingBucket { kind } => {
                format!("Uploading {} bundle: checking the bucket", kind.noun())
            }
            Step::UploadingParts { kind, sent, count } => {
                format!(
                    "Uploading {} bundle: {sent} of {count} parts sent",
                    kind.noun()
                )
            }
            Step::UploadingManifest { kind } => {
                format!("Uploading {} bundle: manifest", kind.noun())
            }
            Step::Registering { kind } => format!("Registering {}", kind.noun()),
        }
    }
}

/// A queued install no worker has taken yet.
pub fn queued() -> String {
    "Waiting for a free worker".to_string()
}

pub fn downloading(kind: FileKind, done: u64, total: u64) -> String {
    format!("Downloading {}: {}", kind.noun(), amount(done, total))
}

/// The one line of an overlapped install: the download, and the parts of its bundle already in
/// the cloud (bundled from bytes not yet verified; nothing is registered until they are).
pub fn downloading_and_sending(kind: FileKind, done: u64, total: u64, parts: u64) -> String {
    let parts = match parts {
        1 => "1 part".to_string(),
        n => format!("{n} parts"),
    };
    format!(
        "Downloading {}: {}, {parts} sent",
        kind.noun(),
        amount(done, total)
    )
}

pub fn waiting_for_other_install(kind: FileKind) -> String {
    format!("Waiting for another install of the same {}", kind.noun())
}

pub fn fetching_signature(kind: FileKind) -> String {
    format!("Fetching the {} signature", kind.noun())
}

pub fn verifying(kind: FileKind, signed: bool) -> String {
    if signed {
        format!("Verifying {} signature", kind.noun())
    } else {
        format!("Verifying {} checksum", kind.noun())
    }
}

/// The census of a UEC tarball before anything of it is published.
pub fn checking_tarball(done: u64, total: u64) -> String {
    format!(
        "Checking the tarball holds a kernel, a ramdisk and a machine image: {}",
        amount(done, total)
    )
}

pub fn already_registered(kind: FileKind, id: &str) -> String {
    format!("Reusing the {} already registered as {id}", kind.noun())
}

pub fn installing(title: &str) -> String {
    format!("Installing {title}")
}

pub fn installed(emi: &str) -> String {
    format!("Installed as {emi}")
}

/// Queued by a subscription's refresh, not by Install: the Store tab says which.
pub fn queued_by_subscription(subscription: &str) -> String {
    format!("Waiting for a free worker (subscription {subscription})")
}

/// The end of an install: "Installed as emi-…", and "by a subscription" when one asked for it.
pub fn installed_for(origin: crate::db::installs::Origin, emi: &str) -> String {
    match origin {
        crate::db::installs::Origin::Operator => installed(emi),
        crate::db::installs::Origin::Subscription => {
            format!("Installed as {emi} by a subscription")
        }
    }
}

/// A subscription's install retired for newer versions: deregistered, its bundles deleted.
pub fn retired_by_subscription(keep: usize) -> String {
    let versions = if keep == 1 { "version" } else { "versions" };
    format!("Deregistered by its subscription: the newest {keep} {versions} are kept")
}

/// An install or a queued request the operator cancelled.
pub const CANCELLED: &str = "Cancelled by the operator";

/// An installed image some of whose registrations the cloud no longer lists: "No longer in the
/// cloud: machine image emi-12345678 deregistered".
pub fn deregistered(missing: &[(FileKind, &str)]) -> String {
    let missing: Vec<String> = missing
        .iter()
        .map(|(kind, id)| format!("{} {id}", kind.noun()))
        .collect();
    format!(
        "No longer in the cloud: {} deregistered",
        missing.join(", ")
    )
}

pub fn failure(detail: &str, cause: &str) -> String {
    format!("Failure encountered while: {detail}: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_naturally() {
        assert_eq!(
            downloading(FileKind::Kernel, 42 * MIB, 117 * MIB),
            "Downloading kernel: 42 of 117 MiB"
        );
        assert_eq!(
            downloading_and_sending(FileKind::Image, 420 * MIB, 900 * MIB, 12),
            "Downloading machine image: 420 of 900 MiB, 12 parts sent"
        );
        assert_eq!(
            downloading_and_sending(FileKind::Image, 11 * MIB, 900 * MIB, 1),
            "Downloading machine image: 11 of 900 MiB, 1 part sent"
        );
        assert_eq!(amount(MIB / 2, 2 * MIB + 1), "0.5 of 2.0 MiB");
        assert_eq!(amount(3 * KIB, 64 * KIB), "3 of 64 KiB");
        assert_eq!(amount(0, 100), "0 of 100 bytes");
        assert_eq!(amount(GIB + GIB / 5, 4 * GIB), "1.2 of 4.0 GiB");
        assert_eq!(amount(12 * GIB, 20 * GIB), "12 of 20 GiB");
        assert_eq!(
            deregistered(&[(FileKind::Image, "emi-1"), (FileKind::Kernel, "eki-2")]),
            "No longer in the cloud: machine image emi-1, kernel eki-2 deregistered"
        );
        assert_eq!(
            Step::UploadingParts {
                kind: FileKind::Image,
                sent: 7,
                count: 12
            }
            .line(),
            "Uploading machine image bundle: 7 of 12 parts sent"
        );
        assert_eq!(
            Step::Bundling {
                kind: FileKind::Kernel,
                done: 3 * MIB,
                total: 5 * MIB
            }
            .line(),
            "Bundling kernel: 3.0 of 5.0 MiB"
        );
        assert_eq!(
            failure(
                "Verifying kernel signature",
                "made by a key not in the keyring (0x1234ABCD)"
            ),
            "Failure encountered while: Verifying kernel signature: made by a key not in the keyring (0x1234ABCD)"
        );
    }
}
