//! The SSRF guard: a biller's endpoint may only be a public address.
//!
//! A URL is checked when it is registered and again at every connection: its scheme (`https`;
//! `http` only where the configuration allows it), no user-info, and every address its host
//! resolves to, so a name that resolved to a public address at registration and to a private
//! one later is refused. The HTTP client connects only to the addresses checked here (the
//! resolver below is the client's), never resolving the name a second time. IPv4 written in
//! decimal, octal, hex or short forms is normalised by the URL parser before it is checked;
//! IPv6 that embeds IPv4 (mapped, translated, NAT64, 6to4) is checked by its IPv4. Subnets on
//! the configured allowlist pass (a test receiver on loopback, an on-premise one).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use reqwest::Url;

/// A range of addresses: `10.0.0.0/8`, `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (addr, bits) = s.split_once('/').unwrap_or((s, ""));
        let base: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an address or subnet"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let bits = if bits.is_empty() {
            max
        } else {
            bits.trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("'{s}': bad prefix length"))?
        };
        Ok(Subnet { base, bits })
    }
}

impl Subnet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(a)) => prefix_eq(
                u128::from(u32::from(b)) << 96,
                u128::from(u32::from(a)) << 96,
                self.bits,
            ),
            (IpAddr::V6(b), IpAddr::V6(a)) => prefix_eq(u128::from(b), u128::from(a), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8) -> bool {
    bits == 0 || (a ^ b) >> (128 - u32::from(bits)) == 0
}

/// IPv4 ranges no endpoint may be in, with why.
const V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "an unspecified address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address (cloud metadata lives here)"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("255.255.255.255/32", "the broadcast address"),
];

/// IPv6 ranges no endpoint may be in (those that embed IPv4 are checked by it instead).
const V6: &[(&str, &str)] = &[
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible address"),
    ("100::/64", "a discard address"),
    ("2001::/32", "a Teredo address"),
    ("2001:db8::/32", "a documentation address"),
    ("2001:10::/28", "an ORCHID address"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
];

/// Both tables, parsed once.
fn forbidden_ranges() -> &'static [(Subnet, &'static str)] {
    static RANGES: std::sync::OnceLock<Vec<(Subnet, &'static str)>> = std::sync::OnceLock::new();
    RANGES.get_or_init(|| {
        V4.iter()
            .chain(V6)
            .filter_map(|(net, why)| net.parse().ok().map(|n| (n, *why)))
            .collect()
    })
}

/// The IPv4 address an IPv6 address carries, if it is one of the forms that do.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::ffff:0:a.b.c.d (translated).
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low),
        // 64:ff9b::a.b.c.d and 64:ff9b:1::/48 (NAT64).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => Some(low),
        // 2002:aabb:ccdd::/48 (6to4).
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("'{0}' is not a URL")]
    NotUrl(String),
    #[error("only https URLs are accepted")]
    Scheme,
    #[error("a URL with a user name or password is not accepted")]
    UserInfo,
    #[error("the URL has no host")]
    NoHost,
    #[error("{host} cannot be resolved: {why}")]
    Unresolved { host: String, why: String },
    #[error("{host} is {why} ({ip}), not a public address")]
    Private {
        host: String,
        ip: IpAddr,
        why: &'static str,
    },
}

/// Looks names up: the system's resolver, or a scripted one in tests.
pub trait Lookup: Send + Sync {
    fn lookup<'a>(&'a self, host: &'a str) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

/// The system's resolver.
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup<'a>(&'a self, host: &'a str) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect()) })
    }
}

/// The rules, and the resolver they are applied through.
#[derive(Clone)]
pub struct Guard {
    allow_http: bool,
    allow: Vec<Subnet>,
    lookup: Arc<dyn Lookup>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("allow_http", &self.allow_http)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl Guard {
    pub fn new(allow_http: bool, allow: Vec<Subnet>, lookup: Arc<dyn Lookup>) -> Guard {
        Guard {
            allow_http,
            allow,
            lookup,
        }
    }

    /// Why `ip` may not be connected to, if it may not.
    pub fn forbidden(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow.iter().any(|s| s.contains(ip)) {
            return None;
        }
        let ip = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.allow.iter().any(|s| s.contains(ip)) {
            return None;
        }
        forbidden_ranges()
            .iter()
            .find(|(net, _)| net.contains(ip))
            .map(|(_, why)| *why)
    }

    /// The URL parsed and checked for its form; the host is not resolved.
    pub fn parse(&self, url: &str) -> Result<Url, Refused> {
        let parsed = Url::parse(url.trim()).map_err(|_| Refused::NotUrl(crate::domain::quote_prefix(url)))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(Refused::Scheme),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refused::UserInfo);
        }
        if parsed.host().is_none() {
            return Err(Refused::NoHost);
        }
        Ok(parsed)
    }

    /// Every address `url`'s host stands for, each checked; an IP literal is checked as it is.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<IpAddr>, Refused> {
        let host = match url.host() {
            Some(url::Host::Ipv4(ip)) => return self.check(&ip.to_string(), vec![IpAddr::V4(ip)]),
            Some(url::Host::Ipv6(ip)) => return self.check(&ip.to_string(), vec![IpAddr::V6(ip)]),
            Some(url::Host::Domain(d)) => d.trim_end_matches('.'),
            None => return Err(Refused::NoHost),
        };
        self.addresses(host).await
    }

    /// The checked addresses of a host name.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, Refused> {
        let unresolved = |why: String| Refused::Unresolved {
            host: host.to_owned(),
            why,
        };
        let ips = self.lookup.lookup(host).await.map_err(|e| unresolved(e.to_string()))?;
        if ips.is_empty() {
            return Err(unresolved("no addresses".into()));
        }
        self.check(host, ips)
    }

    fn check(&self, host: &str, ips: Vec<IpAddr>) -> Result<Vec<IpAddr>, Refused> {
        for ip in &ips {
            if let Some(why) = self.forbidden(*ip) {
                return Err(Refused::Private {
                    host: host.to_owned(),
                    ip: *ip,
                    why,
                });
            }
        }
        Ok(ips)
    }

    /// Checks a URL as registration does: its form, then every address it resolves to.
    pub async fn check_url(&self, url: &str) -> Result<Url, Refused> {
        let parsed = self.parse(url)?;
        self.resolve(&parsed).await?;
        Ok(parsed)
    }
}

/// The HTTP client's resolver: the guard's checked addresses, or an error naming the refusal.
impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let ips = guard
                .addresses(name.as_str())
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let addrs: reqwest::dns::Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers each name from a table; a name can change its answer between lookups.
    struct Scripted(Mutex<std::collections::HashMap<String, Vec<IpAddr>>>);

    impl Lookup for Scripted {
        fn lookup<'a>(
            &'a self,
            host: &'a str,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
            let answer = self.0.lock().unwrap().get(host).cloned();
            Box::pin(async move { answer.ok_or_else(|| std::io::Error::other("NXDOMAIN")) })
        }
    }

    fn guard() -> (Guard, Arc<Scripted>) {
        let names = [
            ("public.example", "93.184.216.34"),
            ("localhost", "127.0.0.1"),
            ("internal.example", "10.1.2.3"),
            ("metadata.example", "169.254.169.254"),
            ("v6private.example", "fd00::1"),
            ("dual.example", "93.184.216.34"),
        ];
        let mut map: std::collections::HashMap<String, Vec<IpAddr>> = names
            .iter()
            .map(|(n, ip)| ((*n).to_owned(), vec![ip.parse().unwrap()]))
            .collect();
        // One public and one private answer: refused, whatever the order.
        map.get_mut("dual.example")
            .unwrap()
            .push("192.168.1.1".parse().unwrap());
        let lookup = Arc::new(Scripted(Mutex::new(map)));
        (Guard::new(false, vec![], lookup.clone()), lookup)
    }

    #[tokio::test]
    async fn hostile_urls_are_refused_at_registration() {
        let (g, _) = guard();
        let hostile = [
            "http://public.example/hook",
            "ftp://public.example/hook",
            "file:///etc/passwd",
            "gopher://public.example/",
            "javascript:alert(1)",
            "not a url",
            "https://user:pass@public.example/",
            "https://public.example@127.0.0.1/",
            "https://127.0.0.1/",
            "https://127.1/",
            "https://0x7f.0.0.1/",
            "https://0x7f000001/",
            "https://2130706433/",
            "https://017700000001/",
            "https://0177.0.0.01/",
            "https://0/",
            "https://0.0.0.0/",
            "https://10.0.0.1/",
            "https://172.16.5.4/",
            "https://172.31.255.255/",
            "https://192.168.0.1/",
            "https://100.64.0.1/",
            "https://100.100.100.200/",
            "https://169.254.169.254/latest/meta-data/",
            "https://169.254.0.1/",
            "https://192.0.2.10/",
            "https://198.51.100.7/",
            "https://203.0.113.9/",
            "https://198.18.0.1/",
            "https://224.0.0.1/",
            "https://239.255.255.250/",
            "https://240.0.0.1/",
            "https://255.255.255.255/",
            "https://[::1]/",
            "https://[::]/",
            "https://[0:0:0:0:0:0:0:1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:7f00:1]/",
            "https://[::ffff:0:a00:1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[64:ff9b::10.0.0.1]/",
            "https://[2002:c0a8:0101::1]/",
            "https://[fc00::1]/",
            "https://[fd00:ec2::254]/",
            "https://[fe80::1]/",
            "https://[ff02::1]/",
            "https://[2001:db8::1]/",
            "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
            "https://[::127.0.0.1]/",
            "https://localhost/",
            "https://localhost./",
            "https://LOCALHOST/",
            "https://internal.example/",
            "https://internal.example./",
            "https://metadata.example/",
            "https://v6private.example/",
            "https://dual.example/",
            "https://does-not-exist.example/",
            "https:///nohost",
        ];
        assert!(hostile.len() >= 40);
        for url in hostile {
            let refused = g.check_url(url).await;
            assert!(refused.is_err(), "{url} was accepted");
        }
        for url in [
            "https://public.example/hooks/outage",
            "https://93.184.216.34:8443/x",
            "https://[2606:2800:220:1:248:1893:25c8:1946]/",
        ] {
            assert!(g.check_url(url).await.is_ok(), "{url} was refused");
        }
    }

    #[tokio::test]
    async fn the_allowlist_and_plain_http_are_opt_in() {
        let (_, lookup) = guard();
        let g = Guard::new(true, vec!["127.0.0.0/8".parse().unwrap()], lookup);
        assert!(g.check_url("http://127.0.0.1:8080/hook").await.is_ok());
        assert!(g.check_url("http://localhost:8080/hook").await.is_ok());
        assert!(g.check_url("http://10.0.0.1/").await.is_err());
        let msg = g.check_url("https://metadata.example/").await.unwrap_err().to_string();
        assert!(msg.contains("169.254.169.254") && msg.contains("link-local"), "{msg}");
    }

    #[tokio::test]
    async fn a_name_that_turns_private_after_registration_is_refused_at_connect_time() {
        let (g, lookup) = guard();
        assert!(g.check_url("https://public.example/hook").await.is_ok());
        lookup
            .0
            .lock()
            .unwrap()
            .insert("public.example".into(), vec!["127.0.0.1".parse().unwrap()]);
        let name: reqwest::dns::Name = "public.example".parse().unwrap();
        let refused = reqwest::dns::Resolve::resolve(&g, name).await;
        let msg = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("loopback"), "{msg}");
    }
}
