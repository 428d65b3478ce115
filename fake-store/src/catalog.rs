//! Builds the catalog (the proxy's SPEC §5 format) from an image directory: one image set at the
//! top level, or one per subdirectory, each with an optional `meta.json`.

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {cause}")]
    Meta { path: PathBuf, cause: String },
    #[error(
        "image set {set:?} in {path} has no image file (image, image.gz, image.tar or image.tar.gz)"
    )]
    NoImage { set: String, path: PathBuf },
    #[error("{0} holds no image set")]
    Empty(PathBuf),
    #[error("signing key: {0}")]
    Key(String),
    #[error("image set {set:?} cannot be published as simplestreams: {cause}")]
    Stream { set: String, cause: String },
    #[error("simplestreams {path}: {cause}")]
    StreamDocument { path: String, cause: String },
    #[error("bad time {0:?}: expected RFC 3339")]
    Time(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Meta {
    pub title: Option<String>,
    pub version: Option<String>,
    pub product: Option<String>,
    pub summary: Option<String>,
    pub description_html: Option<String>,
    pub tags: Option<Vec<String>>,
    pub arch: Option<String>,
    pub provider: Option<serde_json::Value>,
    pub section: Option<String>,
    /// Simplestreams: the release's short name (`lucid`) [default: the set's name].
    pub release: Option<String>,
    /// Simplestreams: `Lucid Lynx` [default: none].
    pub release_codename: Option<String>,
    /// Simplestreams: `10.04 LTS` [default: the version].
    pub release_title: Option<String>,
    /// Simplestreams: the serials (version names) this set is published as, each a build of
    /// its own [default: the day of the store's `updated`, `YYYYMMDD`].
    pub serials: Option<Vec<String>>,
    /// Simplestreams: other architectures (`arm64`) whose newest serial is published as a
    /// `disk1.img` too, as ports are built less often.
    pub ports: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct SetFile {
    pub kind: &'static str,
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug)]
pub struct ImageSet {
    pub name: String,
    pub meta: Meta,
    pub files: Vec<SetFile>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// The catalog kind of a file name, and whether it can be one at all.
fn kind_of(name: &str) -> Option<&'static str> {
    match name {
        "kernel" | "kernel.gz" => Some("kernel"),
        "ramdisk" | "ramdisk.gz" => Some("ramdisk"),
        "image" | "image.gz" | "image.tar" | "image.tar.gz" => Some("image"),
        _ => None,
    }
}

fn holds_a_set(dir: &Path) -> Result<bool, Error> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if entry.path().is_file() && kind_of(&entry.file_name().to_string_lossy()).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Finds the image sets of `dir`, in name order, hashing every file.
pub fn scan(dir: &Path) -> Result<Vec<ImageSet>, Error> {
    if holds_a_set(dir)? {
        let name = dir
            .file_name()
            .map_or("images".into(), |n| n.to_string_lossy().into_owned());
        return Ok(vec![read_set(dir, name)?]);
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    let mut sets = Vec::new();
    for sub in subdirs {
        if holds_a_set(&sub)? {
            let name = sub
                .file_name()
                .expect("a directory entry has a name")
                .to_string_lossy()
                .into_owned();
            sets.push(read_set(&sub, name)?);
        }
    }
    if sets.is_empty() {
        return Err(Error::Empty(dir.to_owned()));
    }
    Ok(sets)
}

fn read_set(dir: &Path, name: String) -> Result<ImageSet, Error> {
    let meta_path = dir.join("meta.json");
    let meta = match std::fs::read(&meta_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Meta {
            path: meta_path.clone(),
            cause: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
        Err(e) => return Err(io_error(&meta_path)(e)),
    };
    let mut files = Vec::new();
    for kind in ["kernel", "ramdisk", "image"] {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(io_error(dir))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| kind_of(n) == Some(kind))
            .collect();
        names.sort();
        if let Some(file_name) = names.into_iter().next() {
            let path = dir.join(&file_name);
            let (size, sha256) = hash_file(&path)?;
            files.push(SetFile {
                kind,
                name: file_name,
                path,
                size,
                sha256,
            });
        }
    }
    if !files.iter().any(|f| f.kind == "image") {
        return Err(Error::NoImage {
            set: name,
            path: dir.to_owned(),
        });
    }
    Ok(ImageSet { name, meta, files })
}

pub fn hash_file(path: &Path) -> Result<(u64, String), Error> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// The catalog document for `sets` served under `base` (the API URL, no trailing slash); file
/// URLs relative to it, or absolute under `files_base`.
pub fn document(sets: &[ImageSet], base: &str, files_base: Option<&str>, updated: &str) -> Vec<u8> {
    let files_prefix = files_base.map_or(String::new(), |b| format!("{b}/"));
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut images = Vec::new();
    for set in sets {
        let uri = format!("{base}/images/{}", set.name);
        let section = set
            .meta
            .section
            .clone()
            .unwrap_or_else(|| "Featured images".into());
        match sections.iter_mut().find(|(title, _)| *title == section) {
            Some((_, uris)) => uris.push(uri.clone()),
            None => sections.push((section, vec![uri.clone()])),
        }
        let files: Vec<_> = set
            .files
            .iter()
            .map(|f| {
                json!({
                    "kind": f.kind,
                    "url": format!("{files_prefix}files/{}/{}", set.name, f.name),
                    "size": f.size,
                    "sha256": f.sha256,
                    "signature-url": format!("{files_prefix}files/{}/{}.asc", set.name, f.name),
                    "compression": if f.name.ends_with(".gz") { "gzip" } else { "none" },
                    "format": if f.name.contains(".tar") { "tar" } else { "raw" },
                })
            })
            .collect();
        let meta = &set.meta;
        images.push(json!({
            "uri": uri,
            "product": meta.product.clone().unwrap_or_else(|| set.name.clone()),
            "title": meta.title.clone().unwrap_or_else(|| set.name.clone()),
            "version": meta.version.clone().unwrap_or_else(|| "1.0".into()),
            "summary": meta.summary.clone().unwrap_or_default(),
            "description-html": meta.description_html.clone().unwrap_or_default(),
            "icon-uri": format!("{base}/icons/{}.svg", set.name),
            "provider": meta.provider.clone().unwrap_or_else(|| json!({"title": "Fake Store", "uri": base})),
            "tags": meta.tags.clone().unwrap_or_default(),
            "arch": meta.arch.clone().unwrap_or_else(|| "x86_64".into()),
            "files": files,
        }));
    }
    let sections: Vec<_> = sections
        .into_iter()
        .map(|(title, uris)| json!({"title": title, "summary": "", "image-uris": uris}))
        .collect();
    let catalog = json!({"format": "image-store/1", "updated": updated, "sections": sections, "images": images});
    serde_json::to_vec_pretty(&catalog).expect("a catalog serialises")
}
