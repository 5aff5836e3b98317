//! The operator's egress deny list, checked on the address Tether is about
//! to connect to: for a host name, on what DNS answers at connect time (a
//! reqwest resolver that drops denied addresses, so a name that resolves
//! differently on the second lookup — DNS rebinding — still cannot reach a
//! denied address); for an IP literal, which reqwest never hands to a
//! resolver, before the request is sent. The API server's own socket
//! addresses are refused whatever the list says. Touches DNS only.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What `tether run` denies when `--egress-deny` is not given (the API
/// server's addresses are added at startup): loopback, link-local (cloud
/// metadata endpoints live there), and the unspecified addresses, which
/// Linux routes to the host itself. IPv4-mapped IPv6 forms are covered
/// because addresses are compared in their canonical form.
pub const DEFAULT_DENY: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "::/128",
    // Cloud metadata endpoints outside link-local: AWS's IPv6 one and
    // Alibaba Cloud's.
    "fd00:ec2::254/128",
    "100.100.100.200/32",
];

/// The IPv4 address a NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) IPv6
/// address carries.
fn embedded_v4(ip: IpAddr) -> Option<IpAddr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        IpAddr::from([a, b, c, d])
    };
    match s {
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// The flag and chart value that change the list, named in every refusal.
pub const SETTING: &str = "tether run --egress-deny (chart value egress.deny)";

/// A connection Tether refused to open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress to {} is denied: {rule}; the operator decides with {SETTING}", self.address())]
pub struct Denied {
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub rule: String,
}

impl Denied {
    fn address(&self) -> String {
        match self.port {
            Some(port) => SocketAddr::new(self.ip, port).to_string(),
            None => self.ip.to_string(),
        }
    }
}

/// Which addresses Tether may not call.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    deny: Vec<IpNet>,
    /// Always refused: the Kubernetes API server's own `ip:port`s.
    api_server: Vec<SocketAddr>,
}

impl EgressPolicy {
    pub fn new(deny: Vec<IpNet>, api_server: Vec<SocketAddr>) -> Self {
        Self { deny, api_server }
    }

    /// [`DEFAULT_DENY`] and nothing else.
    pub fn default_list() -> Self {
        Self::new(default_deny(), vec![])
    }

    pub fn deny_list(&self) -> &[IpNet] {
        &self.deny
    }

    /// Refuses `ip` (on `port`, when known) if it is denied. Without a port,
    /// an address of the API server is refused on every port.
    pub fn check(&self, ip: IpAddr, port: Option<u16>) -> Result<(), Denied> {
        let ip = ip.to_canonical();
        // An IPv4 address inside an IPv6 one (NAT64, 6to4) reaches the same
        // host: check it as well.
        if let Some(inner) = embedded_v4(ip) {
            self.check(inner, port).map_err(|d| Denied { ip, ..d })?;
        }
        let denied = |rule: String| Denied { ip, port, rule };
        if self
            .api_server
            .iter()
            .any(|api| api.ip().to_canonical() == ip && port.is_none_or(|p| p == api.port()))
        {
            return Err(denied("it is the Kubernetes API server".into()));
        }
        match self.deny.iter().find(|net| net.contains(&ip)) {
            Some(net) => Err(denied(format!(
                "{ip} is in {net}, on the controller's egress deny list"
            ))),
            None => Ok(()),
        }
    }

    /// Checks a URL whose host is an IP literal (reqwest connects to those
    /// without asking the resolver). Host names pass here and are checked
    /// by [`GuardedResolver`] when the connection is opened.
    pub fn check_url(&self, url: &Url) -> Result<(), Denied> {
        let literal = url.host_str().and_then(|host| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        });
        match literal {
            Some(ip) => self.check(ip, url.port_or_known_default()),
            None => Ok(()),
        }
    }
}

/// The value of `--egress-deny`: CIDRs, comma separated.
#[derive(Debug, Clone, PartialEq)]
pub struct DenyList(pub Vec<IpNet>);

impl std::str::FromStr for DenyList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_list(text).map(DenyList)
    }
}

/// The policy of `tether run`: `deny` when given (it replaces the
/// default), else [`DEFAULT_DENY`] plus every address of the API server;
/// the API server's exact `ip:port`s are refused in both cases.
pub async fn policy_for(deny: Option<&DenyList>, cluster_url: Option<&str>) -> EgressPolicy {
    let api_server = api_server_addresses(cluster_url).await;
    let deny = match deny {
        Some(DenyList(list)) => list.clone(),
        None => {
            let mut list = default_deny();
            list.extend(api_server.iter().map(|a| IpNet::from(a.ip().to_canonical())));
            list
        }
    };
    EgressPolicy::new(deny, api_server)
}

/// [`DEFAULT_DENY`], parsed.
pub fn default_deny() -> Vec<IpNet> {
    DEFAULT_DENY.iter().filter_map(|net| net.parse().ok()).collect()
}

/// `10.0.0.0/8,fd00::/8,192.0.2.1`: CIDRs or single addresses, comma
/// separated; an empty text denies nothing (but the API server).
pub fn parse_list(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<IpNet>()
                .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{part:?} is not a CIDR (10.0.0.0/8) or an IP address"))
        })
        .collect()
}

/// The addresses of the API server: its URL's host (resolved now) and
/// `KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT` when set.
pub async fn api_server_addresses(cluster_url: Option<&str>) -> Vec<SocketAddr> {
    let mut hosts: Vec<(String, u16)> = Vec::new();
    if let Some(url) = cluster_url.and_then(|u| Url::parse(u).ok())
        && let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default())
    {
        hosts.push((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port));
    }
    if let Ok(host) = std::env::var("KUBERNETES_SERVICE_HOST") {
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        hosts.push((host, port));
    }
    let mut addresses = Vec::new();
    for (host, port) in hosts {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(found) => addresses.extend(found),
            Err(err) => tracing::warn!(%host, %err, "cannot resolve the API server's address for the egress deny list"),
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

tokio::task_local! {
    /// The port of the connection being opened: resolvers only see a name.
    static CONNECT_PORT: u16;
}

/// Runs `call` (a request to `url`) with `url`'s port known to the
/// resolver, so that the API server's exact `ip:port` can be told from
/// another port of the same host.
pub async fn scoped<F: Future>(url: &Url, call: F) -> F::Output {
    match url.port_or_known_default() {
        Some(port) => CONNECT_PORT.scope(port, call).await,
        None => call.await,
    }
}

/// A resolver that drops denied addresses and fails when none is left.
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let port = CONNECT_PORT.try_with(|p| *p).ok();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let (allowed, denied) = filter(&policy, found, port);
            match (allowed.is_empty(), denied) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as Addrs),
                (true, Some(denied)) => Err(Box::new(denied) as Box<dyn std::error::Error + Send + Sync>),
                (true, None) => Err(format!("{host} has no address").into()),
            }
        })
    }
}

/// The allowed addresses, and the first refusal.
fn filter(
    policy: &EgressPolicy,
    found: impl IntoIterator<Item = SocketAddr>,
    port: Option<u16>,
) -> (Vec<SocketAddr>, Option<Denied>) {
    let mut allowed = Vec::new();
    let mut first_denied = None;
    for address in found {
        match policy.check(address.ip(), port) {
            Ok(()) => allowed.push(address),
            Err(denied) => {
                first_denied.get_or_insert(denied);
            }
        }
    }
    (allowed, first_denied)
}

/// The refusal inside a reqwest error, if that is what it is.
pub fn find_denied(err: &(dyn std::error::Error + 'static)) -> Option<Denied> {
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(denied) = cause.downcast_ref::<Denied>() {
            return Some(denied.clone());
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn the_default_list_denies_loopback_link_local_and_unspecified_in_every_form() {
        let policy = EgressPolicy::default_list();
        for denied in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            assert!(policy.check(ip(denied), Some(80)).is_err(), "{denied}");
        }
        for allowed in [
            "10.1.2.3",
            "93.184.216.34",
            "2001:db8::1",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
        ] {
            assert_eq!(policy.check(ip(allowed), Some(443)), Ok(()), "{allowed}");
        }
    }

    #[test]
    fn the_api_server_socket_is_denied_even_with_an_empty_list() {
        let api: SocketAddr = "127.0.0.1:6443".parse().expect("socket");
        let policy = EgressPolicy::new(vec![], vec![api]);
        let denied = policy.check(ip("127.0.0.1"), Some(6443)).expect_err("denied");
        assert!(denied.to_string().contains("127.0.0.1:6443"), "{denied}");
        assert!(denied.to_string().contains("--egress-deny"), "{denied}");
        assert!(policy.check(ip("::ffff:127.0.0.1"), Some(6443)).is_err());
        assert_eq!(policy.check(ip("127.0.0.1"), Some(8080)), Ok(()));
        // A port we do not know: refused on every port.
        assert!(policy.check(ip("127.0.0.1"), None).is_err());
    }

    #[test]
    fn ip_literal_urls_are_checked_with_their_port() {
        let policy = EgressPolicy::new(default_deny(), vec!["10.0.0.1:443".parse().expect("socket")]);
        let url = |u: &str| Url::parse(u).expect("url");
        assert!(
            policy
                .check_url(&url("http://169.254.169.254/latest/meta-data"))
                .is_err()
        );
        assert!(policy.check_url(&url("http://[::ffff:7f00:1]:8080/")).is_err());
        assert!(policy.check_url(&url("https://10.0.0.1/api")).is_err());
        assert_eq!(policy.check_url(&url("https://10.0.0.1:8443/api")), Ok(()));
        assert_eq!(policy.check_url(&url("https://api.example.com/")), Ok(()));
    }

    #[test]
    fn resolved_addresses_are_filtered_and_all_denied_is_an_error() {
        let policy = EgressPolicy::default_list();
        let found: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().expect("a"), "93.184.216.34:0".parse().expect("b")];
        let (allowed, denied) = filter(&policy, found, Some(80));
        assert_eq!(allowed, vec!["93.184.216.34:0".parse::<SocketAddr>().expect("b")]);
        assert!(denied.is_some());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_at_resolution() {
        let resolver = GuardedResolver::new(Arc::new(EgressPolicy::default_list()));
        let name: Name = "localhost".parse().expect("name");
        let err = match resolver.resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        assert!(find_denied(err.as_ref()).is_some(), "{err}");
    }

    #[test]
    fn lists_parse_cidrs_and_addresses() {
        assert_eq!(parse_list("10.0.0.0/8, 192.0.2.1,fd00::/8").expect("parses").len(), 3);
        assert_eq!(parse_list("").expect("parses"), vec![]);
        assert!(parse_list("10.0.0.0/33").is_err());
        assert!(parse_list("example.com").is_err());
    }
}
