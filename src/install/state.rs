//! The install state machine (SPEC §1, §4.3) and its mapping onto the Store UI's four statuses.
//! Pure: the allowed transitions are a table, tested below.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstallState {
    Queued,
    Downloading,
    Verifying,
    Installing,
    Installed,
    Failed,
    Cancelled,
    /// Was installed, but the cloud no longer lists one of its images (an operator deregistered it).
    Deregistered,
}

/// What the Store UI can draw: `status` is compared case-insensitively with these four words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiStatus {
    Uninstalled,
    Downloading,
    Installing,
    Installed,
}

impl UiStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UiStatus::Uninstalled => "uninstalled",
            UiStatus::Downloading => "downloading",
            UiStatus::Installing => "installing",
            UiStatus::Installed => "installed",
        }
    }
}

impl InstallState {
    pub const ALL: [InstallState; 8] = [
        InstallState::Queued,
        InstallState::Downloading,
        InstallState::Verifying,
        InstallState::Installing,
        InstallState::Installed,
        InstallState::Failed,
        InstallState::Cancelled,
        InstallState::Deregistered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstallState::Queued => "queued",
            InstallState::Downloading => "downloading",
            InstallState::Verifying => "verifying",
            InstallState::Installing => "installing",
            InstallState::Installed => "installed",
            InstallState::Failed => "failed",
            InstallState::Cancelled => "cancelled",
            InstallState::Deregistered => "deregistered",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Work is pending or under way: a worker owns it, `cancel` applies, a restart resumes it.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            InstallState::Queued
                | InstallState::Downloading
                | InstallState::Verifying
                | InstallState::Installing
        )
    }

    pub fn ui_status(self) -> UiStatus {
        match self {
            InstallState::Queued | InstallState::Downloading | InstallState::Verifying => {
                UiStatus::Downloading
            }
            InstallState::Installing => UiStatus::Installing,
            InstallState::Installed => UiStatus::Installed,
            InstallState::Failed | InstallState::Cancelled | InstallState::Deregistered => {
                UiStatus::Uninstalled
            }
        }
    }

    /// The transitions the installer may make. Anything else is a bug, refused by `db`.
    pub fn can_become(self, next: InstallState) -> bool {
        use InstallState::*;
        match (self, next) {
            // A new attempt: install pressed again after a failure, a cancel or a deregistration.
            (Failed | Cancelled | Deregistered, Queued) => true,
            // The cloud no longer has what was installed.
            (Installed, Deregistered) => true,
            // A restart puts interrupted work back in the queue.
            (Downloading | Verifying | Installing, Queued) => true,
            (Queued, Downloading) => true,
            (Downloading, Verifying) => true,
            // The next file of the same image.
            (Verifying, Downloading) => true,
            // Every file was already in the cache, or the last one just verified.
            (Queued | Verifying, Installing) => true,
            (Installing, Installed) => true,
            (from, Failed | Cancelled) => from.is_active(),
            _ => false,
        }
    }
}

impl fmt::Display for InstallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::InstallState::*;
    use super::*;

    #[test]
    fn transition_table() {
        let allowed = [
            (Failed, Queued),
            (Deregistered, Queued),
            (Installed, Deregistered),
            (Cancelled, Queued),
            (Downloading, Queued),
            (Verifying, Queued),
            (Installing, Queued),
            (Queued, Downloading),
            (Downloading, Verifying),
            (Verifying, Downloading),
            (Queued, Installing),
            (Verifying, Installing),
            (Installing, Installed),
            (Queued, Failed),
            (Downloading, Failed),
            (Verifying, Failed),
            (Installing, Failed),
            (Queued, Cancelled),
            (Downloading, Cancelled),
            (Verifying, Cancelled),
            (Installing, Cancelled),
        ];
        for from in InstallState::ALL {
            for to in InstallState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn ui_mapping_matches_spec() {
        let expected = [
            (Queued, "downloading"),
            (Downloading, "downloading"),
            (Verifying, "downloading"),
            (Installing, "installing"),
            (Installed, "installed"),
            (Failed, "uninstalled"),
            (Cancelled, "uninstalled"),
        ];
        for (state, status) in expected {
            assert_eq!(state.ui_status().as_str(), status);
            assert_eq!(InstallState::parse(state.as_str()), Some(state));
        }
    }
}
