//! Where the real cloud's endpoints and keys come from (SPEC §7): a `--cloud-config` file, either
//! eucarc-style (what `euca_conf --get-credentials` zips up: `export EC2_URL=...` lines with
//! `${EUCA_KEY_DIR}` paths) or TOML; or, without one, the credentials zip `euca_conf
//! --get-credentials` writes, fetched once and kept under `<data-dir>/eucalyptus/`, as the
//! original proxy did. Everything is read and checked at start-up: a missing or unreadable
//! credential is one error naming the file and the field.

use super::sign::{AccessKey, SignatureVersion};
use crate::bundle::keys::{self, BundleKeys, KeyError};
use reqwest::Url;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Everything needed to bundle, upload and register into one cloud.
#[derive(Debug, Clone)]
pub struct CloudCredentials {
    pub ec2_url: Url,
    pub s3_url: Url,
    pub key: AccessKey,
    pub bundle_keys: BundleKeys,
    pub signature: SignatureVersion,
    /// V4's region; Eucalyptus accepts any name.
    pub region: String,
    /// One bucket for every install, instead of `image-store-<unix seconds>` per install.
    pub bucket: Option<String>,
    /// Where these came from, for messages.
    pub source: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("Proxy failed to retrieve Eucalyptus credentials: {file}: {cause}")]
    Read { file: PathBuf, cause: String },
    #[error("Proxy failed to retrieve Eucalyptus credentials: {file} has no {field}{hint}")]
    Missing {
        file: PathBuf,
        field: &'static str,
        hint: &'static str,
    },
    #[error("Proxy failed to retrieve Eucalyptus credentials: {file}: {field} {value:?}: {cause}")]
    Invalid {
        file: PathBuf,
        field: &'static str,
        value: String,
        cause: String,
    },
    #[error("Proxy failed to retrieve Eucalyptus credentials: {file}: {field}: {source}")]
    Key {
        file: PathBuf,
        field: &'static str,
        source: KeyError,
    },
    #[error(
        "Proxy failed to retrieve Eucalyptus credentials: running `euca_conf --get-credentials {zip}`: {cause} \
         (run the proxy on the cloud controller as a user euca_conf serves, or give --cloud-config FILE)"
    )]
    EucaConf { zip: PathBuf, cause: String },
    #[error(
        "Proxy failed to retrieve Eucalyptus credentials: {file} is readable by every user (mode {mode:04o}) and holds a secret; chmod o-rwx it"
    )]
    OpenToOthers { file: PathBuf, mode: u32 },
}

/// The TOML form of `--cloud-config`; paths are relative to the file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TomlConfig {
    ec2_url: Option<String>,
    s3_url: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    user_id: Option<String>,
    user_cert: Option<PathBuf>,
    user_key: Option<PathBuf>,
    cloud_cert: Option<PathBuf>,
    signature_version: Option<String>,
    region: Option<String>,
    bucket: Option<String>,
}

/// Field names as eucarc spells them, with TOML's beside them for messages.
struct Fields {
    values: HashMap<&'static str, String>,
    file: PathBuf,
    toml: bool,
}

const EC2_URL: (&str, &str) = ("EC2_URL", "ec2-url");
const S3_URL: (&str, &str) = ("S3_URL", "s3-url");
const ACCESS_KEY: (&str, &str) = ("EC2_ACCESS_KEY", "access-key");
const SECRET_KEY: (&str, &str) = ("EC2_SECRET_KEY", "secret-key");
const USER_ID: (&str, &str) = ("EC2_USER_ID", "user-id");
const USER_CERT: (&str, &str) = ("EC2_CERT", "user-cert");
const USER_KEY: (&str, &str) = ("EC2_PRIVATE_KEY", "user-key");
const CLOUD_CERT: (&str, &str) = ("EUCALYPTUS_CERT", "cloud-cert");
const SIGNATURE: (&str, &str) = ("IMAGE_STORE_SIGNATURE_VERSION", "signature-version");
const REGION: (&str, &str) = ("EC2_REGION", "region");
const BUCKET: (&str, &str) = ("IMAGE_STORE_BUCKET", "bucket");

impl Fields {
    fn name(&self, field: (&'static str, &'static str)) -> &'static str {
        if self.toml { field.1 } else { field.0 }
    }

    fn optional(&self, field: (&'static str, &'static str)) -> Option<&str> {
        self.values
            .get(field.0)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, field: (&'static str, &'static str)) -> Result<&str, CredentialsError> {
        self.optional(field)
            .ok_or_else(|| CredentialsError::Missing {
                file: self.file.clone(),
                field: self.name(field),
                hint: match field.0 {
                    "S3_URL" => " (is Walrus registered?)",
                    "EUCALYPTUS_CERT" => " (the cloud certificate, cloud-cert.pem)",
                    _ => "",
                },
            })
    }

    fn url(&self, field: (&'static str, &'static str)) -> Result<Url, CredentialsError> {
        let text = self.required(field)?;
        let url = Url::parse(text).map_err(|e| self.invalid(field, text, e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.invalid(field, text, "only http and https are supported".into()));
        }
        Ok(url)
    }

    fn invalid(
        &self,
        field: (&'static str, &'static str),
        value: &str,
        cause: String,
    ) -> CredentialsError {
        CredentialsError::Invalid {
            file: self.file.clone(),
            field: self.name(field),
            value: value.to_string(),
            cause,
        }
    }

    fn path(&self, field: (&'static str, &'static str)) -> Result<PathBuf, CredentialsError> {
        let text = self.required(field)?;
        let path = PathBuf::from(text);
        Ok(if path.is_absolute() {
            path
        } else {
            self.file
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(path)
        })
    }

    fn key_file<T>(
        &self,
        field: (&'static str, &'static str),
        load: fn(&Path) -> Result<T, KeyError>,
    ) -> Result<T, CredentialsError> {
        let path = self.path(field)?;
        load(&path).map_err(|source| CredentialsError::Key {
            file: self.file.clone(),
            field: self.name(field),
            source,
        })
    }

    fn into_credentials(self) -> Result<CloudCredentials, CredentialsError> {
        let ec2_url = self.url(EC2_URL)?;
        let s3_url = self.url(S3_URL)?;
        let key = AccessKey {
            id: self.required(ACCESS_KEY)?.to_string(),
            secret: self.required(SECRET_KEY)?.to_string(),
        };
        let user_id = self.required(USER_ID)?.replace('-', "");
        let user_cert = self.key_file(USER_CERT, keys::load_certificate_key)?;
        let user_key = self.key_file(USER_KEY, keys::load_private_key)?;
        if user_key.to_public_key() != user_cert {
            return Err(self.invalid(
                USER_KEY,
                &self.path(USER_KEY)?.display().to_string(),
                format!("does not match the certificate {}", self.name(USER_CERT)),
            ));
        }
        let cloud_cert = self.key_file(CLOUD_CERT, keys::load_certificate_key)?;
        // The file holds the secret key and names the private key: neither is for other users.
        closed_to_others(&self.file)?;
        closed_to_others(&self.path(USER_KEY)?)?;
        let signature = match self.optional(SIGNATURE) {
            Some(text) => SignatureVersion::parse(text)
                .ok_or_else(|| self.invalid(SIGNATURE, text, "expected 2 or 4".into()))?,
            // Eucalyptus (its services live under /services/) speaks V2, as euca2ools did;
            // anything else is taken to be a modern EC2/S3 that wants V4.
            None if ec2_url.path().starts_with("/services/") => SignatureVersion::V2,
            None => SignatureVersion::V4,
        };
        Ok(CloudCredentials {
            ec2_url,
            s3_url,
            key,
            bundle_keys: BundleKeys {
                user_id,
                user_cert,
                user_key,
                cloud_cert,
            },
            signature,
            region: self.optional(REGION).unwrap_or("us-east-1").to_string(),
            bucket: self.optional(BUCKET).map(str::to_string),
            source: self.file,
        })
    }
}

/// Refuses a credential file that users other than the daemon's own (and its group) may read:
/// the cloud administrator's secret and private key would be everyone's.
fn closed_to_others(file: &Path) -> Result<(), CredentialsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file)
        .map_err(|e| CredentialsError::Read {
            file: file.to_owned(),
            cause: e.to_string(),
        })?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(CredentialsError::OpenToOthers {
            file: file.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Reads a `--cloud-config` file: eucarc-style when it has `NAME=value` lines, TOML otherwise.
pub fn load(file: &Path) -> Result<CloudCredentials, CredentialsError> {
    let text = std::fs::read_to_string(file).map_err(|e| CredentialsError::Read {
        file: file.to_owned(),
        cause: e.to_string(),
    })?;
    let fields = if looks_like_eucarc(&text) {
        Fields {
            values: parse_eucarc(&text, file.parent().unwrap_or_else(|| Path::new("."))),
            file: file.to_owned(),
            toml: false,
        }
    } else {
        let parsed: TomlConfig = toml::from_str(&text).map_err(|e| CredentialsError::Read {
            file: file.to_owned(),
            cause: toml_error_line(&text, &e),
        })?;
        Fields {
            values: toml_fields(parsed),
            file: file.to_owned(),
            toml: true,
        }
    };
    fields.into_credentials()
}

/// A TOML error as one line: `toml`'s own text quotes the source over several lines.
fn toml_error_line(text: &str, error: &toml::de::Error) -> String {
    let message = error
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML error at line {line}, column {column}: {message}")
        }
        None => format!("TOML error: {message}"),
    }
}

fn toml_fields(config: TomlConfig) -> HashMap<&'static str, String> {
    let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
    [
        (EC2_URL.0, config.ec2_url),
        (S3_URL.0, config.s3_url),
        (ACCESS_KEY.0, config.access_key),
        (SECRET_KEY.0, config.secret_key),
        (USER_ID.0, config.user_id),
        (USER_CERT.0, path(config.user_cert)),
        (USER_KEY.0, path(config.user_key)),
        (CLOUD_CERT.0, path(config.cloud_cert)),
        (SIGNATURE.0, config.signature_version),
        (REGION.0, config.region),
        (BUCKET.0, config.bucket),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect()
}

fn looks_like_eucarc(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_start();
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        line.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
    })
}

/// The variables of a eucarc, shell quoting removed and `${EUCA_KEY_DIR}` (or `$EUCA_KEY_DIR`)
/// replaced by `dir`. Lines that are not assignments (`echo`, `alias`, comments) are skipped; so
/// is the assignment of EUCA_KEY_DIR itself, a shell expression that means "this file's directory".
pub fn parse_eucarc(text: &str, dir: &Path) -> HashMap<&'static str, String> {
    let known = [
        EC2_URL, S3_URL, ACCESS_KEY, SECRET_KEY, USER_ID, USER_CERT, USER_KEY, CLOUD_CERT,
        SIGNATURE, REGION, BUCKET,
    ];
    // Later eucarcs spell some names the AWS way; the EC2_ names win when both are present.
    let aliases = [
        ("AWS_ACCESS_KEY", ACCESS_KEY.0),
        ("AWS_SECRET_KEY", SECRET_KEY.0),
        ("EC2_ACCOUNT_NUMBER", USER_ID.0),
    ];
    let dir_text = dir.display().to_string();
    let mut values: HashMap<&'static str, String> = HashMap::new();
    let mut aliased: HashMap<&'static str, String> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((name, raw)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(raw.trim())
            .replace("${EUCA_KEY_DIR}", &dir_text)
            .replace("$EUCA_KEY_DIR", &dir_text);
        if let Some(field) = known.iter().find(|(n, _)| *n == name) {
            values.insert(field.0, value);
        } else if let Some((_, target)) = aliases.iter().find(|(alias, _)| *alias == name) {
            aliased.insert(target, value);
        }
    }
    for (name, value) in aliased {
        values.entry(name).or_insert(value);
    }
    values
}

fn unquote(text: &str) -> String {
    let text = text.split(" #").next().unwrap_or(text).trim();
    for quote in ['\'', '"'] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            return text[1..text.len() - 1].to_string();
        }
    }
    text.to_string()
}

/// Without `--cloud-config`: the credentials zip under `<data-dir>/eucalyptus/`, fetched with
/// `euca_conf --get-credentials` the first time (each call mints a new key pair, and euca_conf
/// will not overwrite a file, so the zip is kept), unpacked beside it and read as a eucarc.
pub fn from_euca_conf(data_dir: &Path) -> Result<CloudCredentials, CredentialsError> {
    let dir = data_dir.join("eucalyptus");
    let zip_path = dir.join("credentials.zip");
    let eucarc = dir.join("eucarc");
    if !eucarc.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| CredentialsError::Read {
            file: dir.clone(),
            cause: e.to_string(),
        })?;
        if !zip_path.exists() {
            run_euca_conf(&zip_path)?;
        }
        unpack_zip(&zip_path, &dir)?;
    }
    load(&eucarc)
}

fn run_euca_conf(zip: &Path) -> Result<(), CredentialsError> {
    let error = |cause: String| CredentialsError::EucaConf {
        zip: zip.to_owned(),
        cause,
    };
    let output = std::process::Command::new("euca_conf")
        .arg("--get-credentials")
        .arg(zip)
        .output()
        .map_err(|e| error(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(error(format!("{}: {}", output.status, last.trim())));
    }
    if !zip.exists() {
        return Err(error("it succeeded but wrote no file".into()));
    }
    Ok(())
}

/// Unpacks the flat credentials zip; entries with a directory part are refused, so nothing can
/// land outside `dir`.
fn unpack_zip(zip: &Path, dir: &Path) -> Result<(), CredentialsError> {
    let error = |cause: String| CredentialsError::Read {
        file: zip.to_owned(),
        cause,
    };
    let file = std::fs::File::open(zip).map_err(|e| error(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| error(e.to_string()))?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| error(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().map_err(|e| error(e.to_string()))?.to_string();
        if name.contains('/') || name.contains('\\') || name.starts_with('.') || name.is_empty() {
            return Err(error(format!(
                "refusing the entry {name:?}: not a plain file name"
            )));
        }
        let mut bytes = Vec::new();
        entry
            .by_ref()
            .take(crate::limits::MAX_CREDENTIAL_FILE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| error(format!("{name}: {e}")))?;
        // The cloud administrator's keys: the daemon's alone, whatever the umask.
        keys::write_private(&dir.join(&name), &bytes).map_err(|e| error(format!("{name}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eucarc_quoting_and_key_dir_are_understood() {
        let text = "EUCA_KEY_DIR=$(cd $(dirname ${BASH_SOURCE:-$0}); pwd -P)\n\
                    export EC2_URL=http://10.0.0.1:8773/services/compute\n\
                    export S3_URL=http://10.0.0.1:8773/services/objectstorage\n\
                    export EC2_PRIVATE_KEY=${EUCA_KEY_DIR}/euca2-admin-1234abcd-pk.pem\n\
                    export EC2_ACCESS_KEY='AKIEXAMPLE'\n\
                    export AWS_SECRET_KEY='from-aws'\n\
                    export EC2_SECRET_KEY=\"s3cr3t\"\n\
                    export EC2_ACCOUNT_NUMBER='1234-5678-9012'\n\
                    echo WARN:  Certificate credentials not present.\n\
                    alias ec2-bundle-image=\"ec2-bundle-image --cert ${EC2_CERT}\"\n";
        let values = parse_eucarc(text, Path::new("/creds"));
        assert_eq!(values["EC2_URL"], "http://10.0.0.1:8773/services/compute");
        assert_eq!(
            values["EC2_PRIVATE_KEY"],
            "/creds/euca2-admin-1234abcd-pk.pem"
        );
        assert_eq!(values["EC2_ACCESS_KEY"], "AKIEXAMPLE");
        assert_eq!(
            values["EC2_SECRET_KEY"], "s3cr3t",
            "EC2_ names win over AWS_ ones"
        );
        assert_eq!(values["EC2_USER_ID"], "1234-5678-9012");
        assert!(!values.contains_key("EUCALYPTUS_CERT"));
        assert!(looks_like_eucarc(text));
        assert!(!looks_like_eucarc("ec2-url = \"http://x/\"\n"));
    }

    #[test]
    fn a_missing_field_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("eucarc");
        std::fs::write(
            &file,
            "export EC2_URL=http://h:8773/services/Eucalyptus\nexport EC2_ACCESS_KEY=a\n",
        )
        .unwrap();
        let error = load(&file).unwrap_err().to_string();
        assert!(
            error.contains("eucarc has no S3_URL (is Walrus registered?)"),
            "{error}"
        );
        assert!(
            error.starts_with("Proxy failed to retrieve Eucalyptus credentials"),
            "{error}"
        );

        let toml = dir.path().join("cloud.toml");
        std::fs::write(&toml, "ec2-url = \"http://h/\"\ns3-url = \"http://h/\"\naccess-key = \"a\"\nsecret-key = \"b\"\nuser-id = \"1\"\nuser-cert = \"missing.pem\"\n").unwrap();
        let error = load(&toml).unwrap_err().to_string();
        assert!(error.contains("cloud.toml: user-cert"), "{error}");
        assert!(error.contains("missing.pem"), "{error}");
    }

    #[test]
    fn a_toml_syntax_error_is_one_line_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cloud.toml");
        std::fs::write(&file, "ec2-url = \"http://h/\"\nbucket = images\"\n").unwrap();
        let error = load(&file).unwrap_err().to_string();
        assert!(!error.contains('\n'), "{error:?}");
        assert!(
            error.contains("cloud.toml: TOML error at line 2, column 10: "),
            "{error}"
        );
    }
}
