//! Item and index `path`s, which the simplestreams spec makes relative to the mirror root (SPEC
//! §5.2). A signed document still must not send a download outside the mirror it came from, so a
//! path is validated once, here, into an [`ItemPath`], and only an `ItemPath` is ever joined onto
//! a mirror root. Stricter than python-simplestreams' `assert_safe_path` (which refuses only
//! absolute paths and `..` segments) because our join is a URL join, where a scheme, a query, a
//! backslash or a percent-escaped dot would also change what gets fetched.

use reqwest::Url;
use std::fmt;

/// Why a `path` from a stream is refused, or why it cannot be joined onto a mirror root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemPathError {
    #[error("stream path {path:?} is empty")]
    Empty { path: String },
    #[error("stream path {path:?} is absolute; paths are relative to the mirror root")]
    Absolute { path: String },
    #[error("stream path {path:?} has a \"..\" or \".\" segment")]
    DotSegment { path: String },
    #[error("stream path {path:?} has an empty segment")]
    EmptySegment { path: String },
    #[error("stream path {path:?} names a URL scheme")]
    Scheme { path: String },
    #[error("stream path {path:?} has a query or fragment")]
    QueryOrFragment { path: String },
    #[error("stream path {path:?} has a backslash")]
    Backslash { path: String },
    #[error("stream path {path:?} has a percent-escape")]
    PercentEscape { path: String },
    #[error("stream path {path:?} has a space, control or non-ASCII character")]
    Character { path: String },
    #[error("stream path is {len} bytes, above the cap of {cap}")]
    TooLong { len: usize, cap: usize },
    #[error("mirror root {root} cannot be a base for relative paths")]
    RootNotBase { root: String },
    #[error("stream path {path:?} does not stay under mirror root {root}")]
    LeavesRoot { path: String, root: String },
}

/// A `path` from a simplestreams document that is safe to join onto its mirror root: relative,
/// printable ASCII, non-empty `/`-separated segments, none of them `.` or `..`, no scheme, no
/// query, fragment, backslash or percent-escape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemPath(String);

impl ItemPath {
    /// Validates `path` as it appears in an index entry or a products item.
    pub fn parse(path: &str) -> Result<Self, ItemPathError> {
        let owned = || path.to_owned();
        let cap = crate::limits::MAX_STREAM_STRING_BYTES;
        if path.len() > cap {
            return Err(ItemPathError::TooLong {
                len: path.len(),
                cap,
            });
        }
        if path.is_empty() {
            return Err(ItemPathError::Empty { path: owned() });
        }
        if path.starts_with('/') {
            return Err(ItemPathError::Absolute { path: owned() });
        }
        if path.contains('\\') {
            return Err(ItemPathError::Backslash { path: owned() });
        }
        if path.contains(['?', '#']) {
            return Err(ItemPathError::QueryOrFragment { path: owned() });
        }
        if path.contains('%') {
            return Err(ItemPathError::PercentEscape { path: owned() });
        }
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ItemPathError::Character { path: owned() });
        }
        let mut segments = path.split('/');
        // A colon in the first segment would make the URL join read it as a scheme
        // (`file:x`, `c:`); later segments may hold colons (`com.ubuntu.cloud:released:download`).
        if segments.next().is_some_and(|first| first.contains(':')) {
            return Err(ItemPathError::Scheme { path: owned() });
        }
        for segment in path.split('/') {
            match segment {
                "" => return Err(ItemPathError::EmptySegment { path: owned() }),
                "." | ".." => return Err(ItemPathError::DotSegment { path: owned() }),
                _ => {}
            }
        }
        Ok(Self(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL of this path under `root`, the mirror root (a trailing `/` is implied, as
    /// sstream-mirror's URL reader adds one). Refuses a root that cannot be a base, and checks
    /// the result still lies under the root.
    pub fn join_onto(&self, root: &Url) -> Result<Url, ItemPathError> {
        if root.cannot_be_a_base() {
            return Err(ItemPathError::RootNotBase {
                root: root.to_string(),
            });
        }
        let mut base = root.clone();
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let with_slash = format!("{}/", base.path());
            base.set_path(&with_slash);
        }
        let leaves = || ItemPathError::LeavesRoot {
            path: self.0.clone(),
            root: base.to_string(),
        };
        let joined = base.join(&self.0).map_err(|_| leaves())?;
        if !joined.as_str().starts_with(base.as_str()) || joined.query().is_some() {
            return Err(leaves());
        }
        Ok(joined)
    }
}

impl fmt::Display for ItemPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_paths_are_accepted() {
        for path in [
            "streams/v1/com.ubuntu.cloud:released:download.sjson",
            "server/releases/yakkety/release-20161012.3/ubuntu-16.10-server-cloudimg-s390x.img",
            "server/releases/jammy/release-20220923/ubuntu-22.04-server-cloudimg-amd64.tar.gz",
        ] {
            ItemPath::parse(path).unwrap();
        }
    }

    #[test]
    fn unsafe_paths_are_refused_each_with_its_reason() {
        use ItemPathError as E;
        type IsExpected = fn(&E) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("", |e| matches!(e, E::Empty { .. })),
            ("/etc/passwd", |e| matches!(e, E::Absolute { .. })),
            ("//evil.example/x", |e| matches!(e, E::Absolute { .. })),
            ("../x", |e| matches!(e, E::DotSegment { .. })),
            ("a/../../x", |e| matches!(e, E::DotSegment { .. })),
            ("a/./x", |e| matches!(e, E::DotSegment { .. })),
            ("a/..", |e| matches!(e, E::DotSegment { .. })),
            ("a//x", |e| matches!(e, E::EmptySegment { .. })),
            ("a/x/", |e| matches!(e, E::EmptySegment { .. })),
            ("http://evil.example/x", |e| matches!(e, E::Scheme { .. })),
            ("file:x", |e| matches!(e, E::Scheme { .. })),
            ("a/x?y=1", |e| matches!(e, E::QueryOrFragment { .. })),
            ("a/x#frag", |e| matches!(e, E::QueryOrFragment { .. })),
            ("a\\..\\x", |e| matches!(e, E::Backslash { .. })),
            ("a/%2e%2e/x", |e| matches!(e, E::PercentEscape { .. })),
            ("a/x y", |e| matches!(e, E::Character { .. })),
            ("a/x\n", |e| matches!(e, E::Character { .. })),
            ("a/é", |e| matches!(e, E::Character { .. })),
        ];
        for (path, expected) in cases {
            let error = ItemPath::parse(path).expect_err(path);
            assert!(expected(&error), "{path:?}: {error:?}");
            let line = error.to_string();
            assert!(!line.contains('\n'), "{line:?}");
        }
    }

    #[test]
    fn joins_under_the_mirror_root_with_or_without_its_trailing_slash() {
        let path = ItemPath::parse("streams/v1/index.sjson").unwrap();
        for root in [
            "https://cloud-images.ubuntu.com/releases/",
            "https://cloud-images.ubuntu.com/releases",
        ] {
            let root = Url::parse(root).unwrap();
            assert_eq!(
                path.join_onto(&root).unwrap().as_str(),
                "https://cloud-images.ubuntu.com/releases/streams/v1/index.sjson"
            );
        }
        let colon = ItemPath::parse("streams/v1/com.ubuntu.cloud:released:download.sjson").unwrap();
        let root = Url::parse("http://127.0.0.1:8080/mirror/?x=1").unwrap();
        assert_eq!(
            colon.join_onto(&root).unwrap().as_str(),
            "http://127.0.0.1:8080/mirror/streams/v1/com.ubuntu.cloud:released:download.sjson"
        );
        let data = Url::parse("data:text/plain,x").unwrap();
        assert!(matches!(
            path.join_onto(&data),
            Err(ItemPathError::RootNotBase { .. })
        ));
    }
}
