//! Where upstream fetches may go (issue 17 point 8). A signed catalog names its files by URL; a
//! compromised or careless one could name any host, and a proxy on a cloud controller reaches
//! places the Internet cannot: the cloud's metadata service (credentials) and link-local
//! addresses. So files are fetched only from a host the operator named, a configured upstream's
//! or an `--allow-host`; and link-local and metadata addresses are refused unless named by
//! `--allow-host`, by their name and by what a name resolves to ([`GuardedResolver`], reqwest's resolver
//! hook: the check is on the addresses reqwest then connects to, so a DNS answer cannot change
//! between the check and the connection). An address in a URL skips resolution and is judged by
//! [`HostPolicy::check`].
//!
//! One list for every upstream: an image-store/1 file on another configured upstream's host is
//! let through (the operator trusts both hosts; the file must still match the signed catalog).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Names of cloud metadata services: refused unless listed, whatever they resolve to.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Metadata addresses outside link-local: EC2's IPv6 endpoint, Alibaba Cloud's.
const METADATA_ADDRESSES: &[IpAddr] = &[
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

/// Why a host is not fetched from; each says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostRefusal {
    #[error(
        "{host} is not the host of a configured upstream; add --allow-host {host} to fetch files from it"
    )]
    NotListed { host: String },
    #[error(
        "{host} is a link-local or cloud metadata address; add --allow-host {host} if it really serves images"
    )]
    Metadata { host: String },
    #[error(
        "{host} resolves to {address}, a link-local or cloud metadata address; add --allow-host {host} if it really serves images"
    )]
    ResolvesToMetadata { host: String, address: IpAddr },
}

/// The hosts fetches may go to: the configured upstreams' and `--allow-host`'s, lowercased. Only
/// `--allow-host` lifts the metadata rule: an upstream's name that resolves to a metadata address
/// is more likely a poisoned resolver than a mirror.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// `None`: any host (a fetcher without a policy: tools and tests).
    hosts: Option<Arc<BTreeSet<String>>>,
    /// `--allow-host`: also metadata and link-local ones.
    allowed: Arc<BTreeSet<String>>,
}

impl HostPolicy {
    /// Only `upstreams`' hosts and `allowed`.
    pub fn only(upstreams: &[reqwest::Url], allowed: &[String]) -> Self {
        let allowed: BTreeSet<String> = allowed.iter().map(|host| bare(host)).collect();
        let hosts = upstreams
            .iter()
            .filter_map(|url| url.host_str())
            .map(bare)
            .chain(allowed.iter().cloned())
            .collect();
        Self {
            hosts: Some(Arc::new(hosts)),
            allowed: Arc::new(allowed),
        }
    }

    fn is_listed(&self, host: &str) -> bool {
        self.hosts.as_ref().is_none_or(|hosts| hosts.contains(host))
    }

    fn is_allowed(&self, host: &str) -> bool {
        self.allowed.contains(&bare(host))
    }

    /// Whether `url` may be fetched: its host listed, and not a metadata name or address unless
    /// listed by name.
    pub fn check(&self, url: &reqwest::Url) -> Result<(), HostRefusal> {
        let Some(host) = url.host_str() else {
            return Ok(()); // not http(s): reqwest refuses it on its own
        };
        let host = bare(host);
        if self.is_allowed(&host) {
            return Ok(());
        }
        let metadata = METADATA_NAMES.contains(&host.as_str())
            || host.parse::<IpAddr>().is_ok_and(is_metadata_address);
        if metadata {
            return Err(HostRefusal::Metadata { host });
        }
        if !self.is_listed(&host) {
            return Err(HostRefusal::NotListed { host });
        }
        Ok(())
    }

    /// The resolver for the fetcher's client: names resolve as usual, and a name not in
    /// `--allow-host` that resolves only to metadata addresses is refused (a name with other
    /// addresses too keeps only those).
    pub fn resolver(&self) -> GuardedResolver {
        GuardedResolver {
            policy: self.clone(),
        }
    }
}

/// A host as compared: lowercased, without an IPv6 literal's brackets or a trailing dot.
fn bare(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Link-local (169.254.0.0/16, which holds 169.254.169.254; fe80::/10) or a known metadata
/// address, IPv4-mapped forms included.
pub fn is_metadata_address(address: IpAddr) -> bool {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    METADATA_ADDRESSES.contains(&address)
        || match address {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        }
}

/// reqwest's resolver hook with [`HostPolicy`]'s address rule.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: HostPolicy,
}

impl GuardedResolver {
    /// What `host` may be connected to of `addresses` (its resolution).
    pub fn judge(
        &self,
        host: &str,
        addresses: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, HostRefusal> {
        if self.policy.is_allowed(host) {
            return Ok(addresses);
        }
        let (refused, kept): (Vec<SocketAddr>, Vec<SocketAddr>) = addresses
            .into_iter()
            .partition(|address| is_metadata_address(address.ip()));
        match (kept.is_empty(), refused.first()) {
            (true, Some(address)) => Err(HostRefusal::ResolvesToMetadata {
                host: bare(host),
                address: address.ip(),
            }),
            _ => Ok(kept),
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = guard.judge(&host, addresses)?;
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> reqwest::Url {
        text.parse().unwrap()
    }

    #[test]
    fn link_local_and_metadata_addresses_are_known_in_every_spelling() {
        for metadata in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_metadata_address(metadata.parse().unwrap()), "{metadata}");
        }
        for ordinary in ["127.0.0.1", "10.0.0.5", "fd00:ec2::253", "fec0::1", "::1"] {
            assert!(
                !is_metadata_address(ordinary.parse().unwrap()),
                "{ordinary}"
            );
        }
    }

    #[test]
    fn only_listed_hosts_and_never_metadata_unless_listed() {
        let policy = HostPolicy::only(
            &[url("http://Store.Example:8080/api")],
            &["mirror.example".into(), "169.254.10.10".into()],
        );
        assert_eq!(policy.check(&url("http://store.example/files/a")), Ok(()));
        assert_eq!(policy.check(&url("https://MIRROR.example./a")), Ok(()));
        assert_eq!(
            policy.check(&url("http://elsewhere.example/a")),
            Err(HostRefusal::NotListed {
                host: "elsewhere.example".into()
            })
        );
        assert_eq!(
            policy.check(&url("http://169.254.169.254/latest/meta-data/")),
            Err(HostRefusal::Metadata {
                host: "169.254.169.254".into()
            })
        );
        assert_eq!(
            policy.check(&url("http://[fe80::1]/a")),
            Err(HostRefusal::Metadata {
                host: "fe80::1".into()
            })
        );
        assert_eq!(
            policy.check(&url("http://metadata.google.internal/a")),
            Err(HostRefusal::Metadata {
                host: "metadata.google.internal".into()
            })
        );
        assert_eq!(policy.check(&url("http://169.254.10.10/a")), Ok(()));
        // No policy: any host but metadata.
        let open = HostPolicy::default();
        assert_eq!(open.check(&url("http://elsewhere.example/a")), Ok(()));
        assert!(open.check(&url("http://169.254.169.254/")).is_err());
    }

    /// A name that resolves to a metadata address is refused by what it resolves to; a listed
    /// name is not; a name with ordinary addresses too keeps only those.
    #[test]
    fn a_name_resolving_to_a_metadata_address_is_refused_unless_listed() {
        let policy = HostPolicy::only(&[url("http://store.example/api")], &[]);
        let resolver = policy.resolver();
        let metadata: SocketAddr = "169.254.169.254:0".parse().unwrap();
        let ordinary: SocketAddr = "192.0.2.7:0".parse().unwrap();
        assert_eq!(
            resolver.judge("store.example", vec![metadata]),
            Err(HostRefusal::ResolvesToMetadata {
                host: "store.example".into(),
                address: metadata.ip()
            })
        );
        assert_eq!(
            resolver.judge("store.example", vec![metadata, ordinary]),
            Ok(vec![ordinary])
        );
        let listed = HostPolicy::only(&[], &["store.example".into()]).resolver();
        assert_eq!(
            listed.judge("store.example", vec![metadata]),
            Ok(vec![metadata])
        );
    }
}
