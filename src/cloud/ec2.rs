//! The EC2 Query API calls an install needs (SPEC §7): `DescribeImages` (our own images, to find an
//! earlier registration of the same manifest) and `RegisterImage`. Form-encoded POSTs to the
//! endpoint as given (`/services/compute` on Eucalyptus, `/` elsewhere), signed V2 (HmacSHA256, as
//! euca2ools up to 3.2) or V4.

use super::aws::{self, Endpoint, Failure};
use super::sign::{self, SignatureVersion};
use super::{CloudError, Registration};
use crate::catalog::model::Virtualization;
use time::OffsetDateTime;

/// The API version euca2ools 3.2 spoke: Eucalyptus 3.x/4.x and EC2 understand it.
const API_VERSION: &str = "2014-06-15";

pub struct Ec2 {
    endpoint: Endpoint,
}

/// One of our images as `DescribeImages` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: String,
    pub name: Option<String>,
    pub location: Option<String>,
}

impl Ec2 {
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Makes one Query call and returns the response body.
    async fn call(
        &self,
        action: &'static str,
        mut params: Vec<(String, String)>,
    ) -> Result<String, Failure> {
        params.insert(0, ("Action".into(), action.into()));
        params.insert(1, ("Version".into(), API_VERSION.into()));
        let endpoint = &self.endpoint;
        let url = endpoint.url.clone();
        let now = OffsetDateTime::now_utc();
        let host = aws::host_header(&url);
        let mut request = endpoint.client.post(url.clone()).header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        );
        let body = match endpoint.signature {
            SignatureVersion::V2 => {
                let timestamp = sign::query_timestamp(now);
                sign::query_v2_sign(
                    &endpoint.key,
                    "POST",
                    &host,
                    url.path(),
                    &timestamp,
                    &mut params,
                );
                form(&params)
            }
            SignatureVersion::V4 => {
                let amz_date = sign::amz_date(now);
                let body = form(&params);
                let payload = sign::sha256_hex(body.as_bytes());
                let headers = vec![
                    (
                        "content-type".to_string(),
                        "application/x-www-form-urlencoded; charset=utf-8".to_string(),
                    ),
                    ("host".to_string(), host.clone()),
                    ("x-amz-date".to_string(), amz_date.clone()),
                ];
                let authorization = sign::v4_authorization(
                    &endpoint.key,
                    &endpoint.scope("ec2"),
                    &amz_date,
                    &sign::V4Request {
                        method: "POST",
                        path: url.path(),
                        query: &[],
                        headers: &headers,
                        payload_sha256: &payload,
                    },
                );
                request = request
                    .header("x-amz-date", amz_date)
                    .header("authorization", authorization);
                body
            }
        };
        let response = request
            .timeout(crate::limits::cloud_exchange_timeout(body.len() as u64))
            .body(body)
            .send()
            .await
            .map_err(|e| aws::unreachable(action, &url, &e))?;
        if !response.status().is_success() {
            return Err(aws::refused(action, response).await);
        }
        response
            .text()
            .await
            .map_err(|e| aws::unreachable(action, &url, &e))
    }

    /// Our own images (`Owner=self`).
    pub async fn own_images(&self) -> Result<Vec<ImageRecord>, Failure> {
        let body = self
            .call("DescribeImages", vec![("Owner.1".into(), "self".into())])
            .await?;
        parse_images(&body).map_err(|reason| {
            Failure::Permanent(CloudError::Refused {
                action: "DescribeImages",
                reason,
            })
        })
    }

    pub async fn register(&self, image: &Registration<'_>) -> Result<String, Failure> {
        let mut params = vec![
            ("ImageLocation".to_string(), image.location.to_string()),
            ("Name".to_string(), image.name.to_string()),
            ("Architecture".to_string(), image.architecture.to_string()),
        ];
        if let Some(kernel) = image.kernel_id {
            params.push(("KernelId".into(), kernel.into()));
        }
        if let Some(ramdisk) = image.ramdisk_id {
            params.push(("RamdiskId".into(), ramdisk.into()));
        }
        // Said only for HVM: a kernel or ramdisk registration takes none, and a paravirtual
        // machine image is what its KernelId makes it (Eucalyptus 3 knows no such parameter).
        if image.virtualization == Virtualization::Hvm {
            params.push((
                "VirtualizationType".into(),
                Virtualization::Hvm.ec2_name().into(),
            ));
        }
        if let Some(description) = image.description {
            params.push(("Description".into(), description.into()));
        }
        let body = self.call("RegisterImage", params).await?;
        let doc = roxmltree::Document::parse(&body).map_err(|e| bad_reply("RegisterImage", e))?;
        doc.descendants()
            .find(|n| n.has_tag_name("imageId"))
            .and_then(|n| n.text())
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                Failure::Permanent(CloudError::Refused {
                    action: "RegisterImage",
                    reason: "the reply names no imageId".into(),
                })
            })
    }
}

impl Ec2 {
    /// `DeregisterImage`; an image the cloud does not know (deregistered already, by an earlier
    /// try whose reply was lost) counts as done.
    pub async fn deregister(&self, image_id: &str) -> Result<(), Failure> {
        match self
            .call("DeregisterImage", vec![("ImageId".into(), image_id.into())])
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Permanent(CloudError::Refused { reason, .. }))
                if reason.starts_with("InvalidAMIID") =>
            {
                Ok(())
            }
            Err(failure) => Err(failure),
        }
    }
}

fn bad_reply(action: &'static str, error: impl std::fmt::Display) -> Failure {
    Failure::Permanent(CloudError::Refused {
        action,
        reason: format!("unreadable reply: {error}"),
    })
}

fn form(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(n, v)| {
            format!(
                "{}={}",
                crate::rfc3986::encode(n),
                crate::rfc3986::encode(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The `imagesSet` of a DescribeImages reply, whatever its namespace.
fn parse_images(body: &str) -> Result<Vec<ImageRecord>, String> {
    let doc = roxmltree::Document::parse(body).map_err(|e| format!("unreadable reply: {e}"))?;
    let Some(set) = doc.descendants().find(|n| n.has_tag_name("imagesSet")) else {
        return Err("the reply has no imagesSet".into());
    };
    let child = |item: roxmltree::Node<'_, '_>, name: &str| {
        item.children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    Ok(set
        .children()
        .filter(|n| n.has_tag_name("item"))
        .filter_map(|item| {
            Some(ImageRecord {
                id: child(item, "imageId")?,
                name: child(item, "name"),
                location: child(item, "imageLocation"),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_images_replies_are_read_whatever_the_namespace() {
        let body = r#"<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
            <requestId>r</requestId><imagesSet>
              <item><imageId>eki-1A2B3C4D</imageId><imageLocation>b/k.manifest.xml</imageLocation>
                <name>k</name><blockDeviceMapping><item><deviceName>/dev/sda1</deviceName></item></blockDeviceMapping></item>
              <item><imageId>ami-0123456789abcdef0</imageId><name>m</name></item>
            </imagesSet></DescribeImagesResponse>"#;
        assert_eq!(
            parse_images(body).unwrap(),
            vec![
                ImageRecord {
                    id: "eki-1A2B3C4D".into(),
                    name: Some("k".into()),
                    location: Some("b/k.manifest.xml".into()),
                },
                ImageRecord {
                    id: "ami-0123456789abcdef0".into(),
                    name: Some("m".into()),
                    location: None,
                },
            ]
        );
    }
}
