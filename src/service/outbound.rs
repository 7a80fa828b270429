//! Outbound HTTP to addresses a tenant chose (an identity provider's issuer, and whatever URLs its
//! discovery document names): only to the public internet. An administrator of one tenant must not
//! be able to make crm-iam call the cloud's metadata service (169.254.169.254), the database, the
//! pod's own admin ports or anything else on the platform's private network (SSRF).
//!
//! Two checks, because a URL can name an address directly or through DNS: [`check_url`] before
//! each request (an address literal never reaches a resolver), and [`PublicResolver`] as the
//! client's resolver, which drops every resolved address that is not public, so a name resolving
//! to a private address (or re-resolving to one later: DNS rebinding) is never connected to. The
//! resolver answers the addresses the connection then uses, so there is no check-then-use gap.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use ipnet::IpNet;

/// Ranges that are not the public internet (IANA special-purpose registries, IPv4 and IPv6).
const NOT_PUBLIC: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    // An IPv4 address written as IPv6 (`::ffff:127.0.0.1`, `::127.0.0.1`) is that IPv4 address.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().or_else(|| compatible_v4(v6)).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    !NOT_PUBLIC.iter().any(|range| IpNet::from_str(range).expect("a valid range").contains(&ip))
}

/// `::a.b.c.d` (deprecated IPv4-compatible form; `::` and `::1` excepted).
fn compatible_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    (s[..6].iter().all(|&x| x == 0) && (s[6] != 0 || s[7] > 1)).then(|| {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        std::net::Ipv4Addr::new(a, b, c, d)
    })
}

/// Why an outbound URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0} is not an https URL")]
    NotHttps(String),
    #[error("{0} names an address that is not on the public internet")]
    NotPublic(String),
}

/// Checks a URL before it is requested: https, and, when its host is an address literal, a public
/// one (names are checked by [`PublicResolver`] when they are resolved).
pub fn check_url(url: &url::Url) -> Result<(), Refused> {
    let shown = || format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if url.scheme() != "https" {
        return Err(Refused::NotHttps(shown()));
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        _ => None,
    };
    match literal {
        Some(ip) if !is_public(ip) => Err(Refused::NotPublic(shown())),
        _ => Ok(()),
    }
}

/// A DNS resolver answering only public addresses: a name with none is an error.
pub struct PublicResolver;

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(Refused::NotPublic(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_mapped_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} passed as public");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "172.32.0.1", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} refused");
        }
    }

    #[test]
    fn urls_must_be_https_and_literals_public() {
        let check = |u: &str| check_url(&url::Url::parse(u).unwrap());
        assert!(check("https://login.example.com/").is_ok());
        assert!(check("https://8.8.8.8/jwks").is_ok());
        assert!(matches!(check("http://login.example.com/"), Err(Refused::NotHttps(_))));
        assert!(matches!(check("https://169.254.169.254/latest/meta-data"), Err(Refused::NotPublic(_))));
        assert!(matches!(check("https://[::ffff:7f00:1]/"), Err(Refused::NotPublic(_))));
        assert!(matches!(check("https://0x7f.1/"), Err(Refused::NotPublic(_))));
    }
}
