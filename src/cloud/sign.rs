//! AWS request signatures, as Eucalyptus and EC2 check them (SPEC §7): S3's REST signature V2
//! (HMAC-SHA1, what Walrus and euca2ools speak), the Query API's signature V2 (HmacSHA256, euca2ools
//! up to 3.2), and signature V4 for both. Pure functions over strings, tested against the published
//! examples; `s3.rs` and `ec2.rs` apply them to requests.

use crate::rfc3986::{encode, encode_except};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// An access key and its secret.
#[derive(Clone)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// Which signature a cloud's requests carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    V2,
    V4,
}

impl SignatureVersion {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "2" | "v2" => Some(Self::V2),
            "4" | "v4" => Some(Self::V4),
            _ => None,
        }
    }
}

/// The SHA-256 of an empty payload, which V4 signs for bodiless requests.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Query V2's `Timestamp`: `2011-10-03T15:19:30Z`.
pub fn query_timestamp(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        at.month() as u8,
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// V4's `x-amz-date`: the same instant without separators, `20150830T123600Z`.
pub fn amz_date(at: time::OffsetDateTime) -> String {
    query_timestamp(at).replace(['-', ':'], "")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

// ---- S3 REST, signature V2 ----

/// S3's V2 string to sign: method, Content-MD5, Content-Type and Date lines, then the `x-amz-*`
/// headers (lower-cased, sorted, repeated values joined by commas), then the resource
/// (`/bucket/key`, plus sub-resources such as `?acl`).
pub fn s3_v2_string_to_sign(
    method: &str,
    content_md5: &str,
    content_type: &str,
    date: &str,
    amz_headers: &[(&str, &str)],
    resource: &str,
) -> String {
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in amz_headers {
        let name = name.trim().to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    headers.sort();
    let mut text = format!("{method}\n{content_md5}\n{content_type}\n{date}\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}:{value}\n"));
    }
    text.push_str(resource);
    text
}

/// `Authorization: AWS <id>:<base64 HMAC-SHA1>`.
pub fn s3_v2_authorization(key: &AccessKey, string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(key.secret.as_bytes()).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    format!(
        "AWS {}:{}",
        key.id,
        BASE64.encode(mac.finalize().into_bytes())
    )
}

// ---- EC2 Query API, signature V2 ----

/// Adds `AWSAccessKeyId`, `SignatureMethod`, `SignatureVersion`, `Timestamp` and, last,
/// `Signature` to a Query request's parameters. `host` is lower case with `:port` when the URL has
/// one; `path` is the URL's path (`/` or `/services/Eucalyptus`).
pub fn query_v2_sign(
    key: &AccessKey,
    method: &str,
    host: &str,
    path: &str,
    timestamp: &str,
    params: &mut Vec<(String, String)>,
) {
    params.push(("AWSAccessKeyId".into(), key.id.clone()));
    params.push(("SignatureMethod".into(), "HmacSHA256".into()));
    params.push(("SignatureVersion".into(), "2".into()));
    params.push(("Timestamp".into(), timestamp.into()));
    let string_to_sign = format!(
        "{method}\n{}\n{}\n{}",
        host.to_ascii_lowercase(),
        if path.is_empty() { "/" } else { path },
        canonical_query(params)
    );
    let signature = BASE64.encode(hmac_sha256(
        key.secret.as_bytes(),
        string_to_sign.as_bytes(),
    ));
    params.push(("Signature".into(), signature));
}

/// Parameters sorted by encoded name and value, `name=value` joined with `&`: the form both the
/// Query V2 string to sign and V4's canonical query string take.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .map(|(name, value)| (encode(name), encode(value)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

// ---- Signature V4 ----

/// What a V4 signature is scoped to.
#[derive(Debug, Clone)]
pub struct V4Scope {
    pub region: String,
    /// `s3` or `ec2`.
    pub service: String,
}

/// One request as V4 sees it. `headers` are the headers to sign, `host` and `x-amz-date` among
/// them; `path` is already URI-encoded once, as sent.
pub struct V4Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub payload_sha256: &'a str,
}

/// The `Authorization` header for `request` at `amz_date` (`20150830T123600Z`).
pub fn v4_authorization(
    key: &AccessKey,
    scope: &V4Scope,
    amz_date: &str,
    request: &V4Request<'_>,
) -> String {
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.trim().to_ascii_lowercase(),
                value.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        if request.path.is_empty() {
            "/"
        } else {
            request.path
        },
        canonical_query(request.query),
        canonical_headers,
        signed_headers,
        request.payload_sha256
    );
    let date = &amz_date[..8.min(amz_date.len())];
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{credential_scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut signing_key = hmac_sha256(format!("AWS4{}", key.secret).as_bytes(), date.as_bytes());
    for part in [
        scope.region.as_str(),
        scope.service.as_str(),
        "aws4_request",
    ] {
        signing_key = hmac_sha256(&signing_key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&signing_key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        key.id
    )
}

/// An S3 object path as V4 and the wire want it: each segment encoded, `/` kept.
pub fn encode_path(path: &str) -> String {
    encode_except(path, b"/")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The examples of Amazon's S3 developer guide ("Signing and authenticating REST requests").
    fn johnsmith() -> AccessKey {
        AccessKey {
            id: "0PN5J17HBGZHT7JJ3X82".into(),
            secret: "uV3F3YluFJax1cknvbcGwgjvx4QpvB+leU8dUj2o".into(),
        }
    }

    #[test]
    fn s3_v2_matches_the_documented_examples() {
        let key = johnsmith();
        let cases: [(String, &str); 4] = [
            (
                s3_v2_string_to_sign(
                    "GET",
                    "",
                    "",
                    "Tue, 27 Mar 2007 19:36:42 +0000",
                    &[],
                    "/johnsmith/photos/puppy.jpg",
                ),
                "xXjDGYUmKxnwqr5KXNPGldn5LbA=",
            ),
            (
                s3_v2_string_to_sign(
                    "PUT",
                    "",
                    "image/jpeg",
                    "Tue, 27 Mar 2007 21:15:45 +0000",
                    &[],
                    "/johnsmith/photos/puppy.jpg",
                ),
                "hcicpDDvL9SsO6AkvxqmIWkmOuQ=",
            ),
            (
                s3_v2_string_to_sign(
                    "GET",
                    "",
                    "",
                    "Tue, 27 Mar 2007 19:42:41 +0000",
                    &[],
                    "/johnsmith/",
                ),
                "jsRt/rhG+Vtp88HrYL706QhE4w4=",
            ),
            // x-amz-* headers: lower-cased, sorted, repeated ones joined with a comma.
            (
                s3_v2_string_to_sign(
                    "PUT",
                    "4gJE4saaMU4BqNR0kLY+lw==",
                    "application/x-download",
                    "Tue, 27 Mar 2007 21:06:08 +0000",
                    &[
                        ("x-amz-acl", "public-read"),
                        ("X-Amz-Meta-ReviewedBy", "joe@johnsmith.net"),
                        ("X-Amz-Meta-ReviewedBy", "jane@johnsmith.net"),
                        ("X-Amz-Meta-FileChecksum", "0x02661779"),
                        ("X-Amz-Meta-ChecksumAlgorithm", "crc32"),
                    ],
                    "/static.johnsmith.net/db-backup.dat.gz",
                ),
                "C0FlOtU8Ylb9KDTpZqYkZPX91iI=",
            ),
        ];
        for (string_to_sign, signature) in cases {
            assert_eq!(
                s3_v2_authorization(&key, &string_to_sign),
                format!("AWS 0PN5J17HBGZHT7JJ3X82:{signature}"),
                "{string_to_sign}"
            );
        }
    }

    #[test]
    fn timestamps_are_utc_in_both_forms() {
        let at = time::OffsetDateTime::from_unix_timestamp(1_440_938_160).unwrap();
        assert_eq!(query_timestamp(at), "2015-08-30T12:36:00Z");
        assert_eq!(amz_date(at), "20150830T123600Z");
    }

    #[test]
    fn query_v2_matches_the_documented_example() {
        // The example of AWS's "Signature Version 2 signing process" page.
        let key = AccessKey {
            id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        };
        let mut params = vec![
            ("Action".to_string(), "DescribeJobFlows".to_string()),
            ("Version".to_string(), "2009-03-31".to_string()),
        ];
        query_v2_sign(
            &key,
            "GET",
            "elasticmapreduce.amazonaws.com",
            "/",
            "2011-10-03T15:19:30",
            &mut params,
        );
        assert_eq!(
            params.last().unwrap(),
            &(
                "Signature".to_string(),
                "i91nKc4PWAt0JJIdXwz9HxZCJDdiy6cf/Mj6vPxyYIs=".to_string()
            )
        );
    }

    // AWS's Signature V4 test suite: key AKIDEXAMPLE, 2015-08-30T12:36:00Z, us-east-1, "service".
    fn suite(
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> String {
        let key = AccessKey {
            id: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        };
        let scope = V4Scope {
            region: "us-east-1".into(),
            service: "service".into(),
        };
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let mut headers = vec![
            ("Host".to_string(), "example.amazonaws.com".to_string()),
            ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
        ];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        let payload = sha256_hex(body);
        let authorization = v4_authorization(
            &key,
            &scope,
            "20150830T123600Z",
            &V4Request {
                method,
                path,
                query: &query,
                headers: &headers,
                payload_sha256: &payload,
            },
        );
        authorization
            .rsplit("Signature=")
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn v4_matches_the_aws_test_suite() {
        assert_eq!(
            suite("GET", "/", &[], &[], b""),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "get-vanilla"
        );
        assert_eq!(
            suite(
                "GET",
                "/",
                &[("Param2", "value2"), ("Param1", "value1")],
                &[],
                b""
            ),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            "get-vanilla-query-order-key-case"
        );
        assert_eq!(
            suite("GET", &encode_path("/\u{1234}"), &[], &[], b""),
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
            "get-utf8"
        );
        assert_eq!(
            suite("POST", "/", &[], &[], b""),
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            "post-vanilla"
        );
        assert_eq!(
            suite(
                "POST",
                "/",
                &[],
                &[("Content-Type", "application/x-www-form-urlencoded")],
                b"Param1=value1"
            ),
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            "post-x-www-form-urlencoded"
        );
    }

    #[test]
    fn v4_matches_the_s3_get_object_example() {
        // Amazon S3 API reference, "Signature calculations ... (AWS Signature Version 4)": GET Object.
        let key = AccessKey {
            id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        };
        let headers: Vec<(String, String)> = [
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let authorization = v4_authorization(
            &key,
            &V4Scope {
                region: "us-east-1".into(),
                service: "s3".into(),
            },
            "20130524T000000Z",
            &V4Request {
                method: "GET",
                path: "/test.txt",
                query: &[],
                headers: &headers,
                payload_sha256: EMPTY_SHA256,
            },
        );
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }
}
