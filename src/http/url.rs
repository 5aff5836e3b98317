//! Joining a request path onto a TargetSystem's base URL so that the result
//! can never leave it: same scheme, host and port, and a path below the base
//! path (matched on a `/` boundary: a base `/tenant-a` does not admit
//! `/tenant-a-admin`). Templates already percent-encode interpolated values;
//! this is the second wall, checked on the final URL. Control characters,
//! raw or percent-encoded, are refused: the URL parser silently drops tabs
//! and newlines, which would let `/.\t./x` climb out as `/../x`. Pure.

use reqwest::Url;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("baseUrl {0:?} is not an absolute http(s) URL")]
    BadBase(String),
    #[error("path {0:?} must start with '/' and stay below the baseUrl")]
    Escapes(String),
    #[error("path {0:?} holds a control character (raw or percent-encoded); paths may not")]
    ControlCharacter(String),
}

impl UrlError {
    /// Stable label for metrics and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            UrlError::BadBase(_) | UrlError::Escapes(_) => "PathEscapesBaseUrl",
            UrlError::ControlCharacter(_) => "PathHasControlCharacters",
        }
    }
}

/// Whether one path segment is, or decodes to parts that are, `.` or `..`
/// (`..`, `%2e%2e`, `..;x`, `..%2Fadmin`, `%5C..`).
fn climbs(segment: &str) -> bool {
    let decoded = percent_decode(segment).to_ascii_lowercase();
    decoded
        .split(['/', '\\'])
        .map(|part| part.split(';').next().unwrap_or_default())
        .any(|part| part == "." || part == "..")
}

/// `%XX` escapes decoded once (invalid ones kept as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A control character (below 0x20, or 0x7f), raw or as `%XX`.
fn has_control_character(path: &str) -> bool {
    let control = |b: u8| b < 0x20 || b == 0x7f;
    let bytes = path.as_bytes();
    bytes.iter().copied().any(control)
        || bytes.windows(3).any(|w| {
            w.first() == Some(&b'%')
                && std::str::from_utf8(w.get(1..).unwrap_or_default())
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .is_some_and(control)
        })
}

/// `path` is `base` or below it, on a `/` boundary.
fn path_within(base_path: &str, path: &str) -> bool {
    let base_path = base_path.trim_end_matches('/');
    base_path.is_empty() || path == base_path || path.strip_prefix(base_path).is_some_and(|rest| rest.starts_with('/'))
}

/// `url` has `base`'s origin (scheme, host, port).
pub fn same_origin(base: &Url, url: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default()
}

/// `url` is on `base`'s origin, below its path, and carries no user info.
pub fn within(base: &Url, url: &Url) -> bool {
    same_origin(base, url)
        && path_within(base.path(), url.path())
        && url.username().is_empty()
        && url.password().is_none()
}

/// Parses and checks a base URL.
pub fn parse_base(base: &str) -> Result<Url, UrlError> {
    let url = Url::parse(base).map_err(|_| UrlError::BadBase(base.to_owned()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.cannot_be_a_base() {
        return Err(UrlError::BadBase(base.to_owned()));
    }
    Ok(url)
}

/// `base` + `path` (+ `query`), or an error when the result would reach
/// anything but `base`'s origin and path.
pub fn join(base: &Url, path: &str, query: &[(String, String)]) -> Result<Url, UrlError> {
    let escapes = || UrlError::Escapes(path.to_owned());
    if has_control_character(path) {
        return Err(UrlError::ControlCharacter(path.to_owned()));
    }
    if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
        return Err(escapes());
    }
    // Dot segments would be resolved by the parser, and by servers that
    // decode `%2F`/`%5C` or drop `;params` before they normalise (nginx,
    // Tomcat, IIS): refuse any segment that is, or decodes to parts that
    // are, `.` or `..`. A value such as `a%2Fb` (no dot part) stays.
    let path_only = path.split(['?', '#']).next().unwrap_or_default();
    let dot_segment = path_only.split('/').any(climbs);
    if dot_segment || path.contains('#') {
        return Err(escapes());
    }
    let base_path = base.path().trim_end_matches('/');
    let mut url = base.clone();
    let (path_only, inline_query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    url.set_path(&format!("{base_path}{path_only}"));
    url.set_query(inline_query);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    if !within(base, &url) {
        return Err(escapes());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        parse_base("https://api.example.com/v2").expect("valid base")
    }

    #[test]
    fn paths_are_appended_below_the_base_path() {
        let url = join(&base(), "/contacts/42", &[("q".into(), "a b".into())]).expect("joins");
        assert_eq!(url.as_str(), "https://api.example.com/v2/contacts/42?q=a+b");
    }

    #[test]
    fn paths_that_would_reach_another_host_or_climb_are_refused() {
        for path in [
            "//evil.example.com/x",
            "https://evil.example.com/x",
            "contacts",
            "/../admin",
            "/contacts/%2e%2e/admin",
            "/contacts/..%2Fadmin",
            "/contacts/..%2fadmin",
            "/contacts/..;/admin",
            "/contacts/%2e%2e;x/admin",
            "/contacts/%5C..%5Cadmin",
            "/contacts/./x",
            "/a\\b",
            "/x#frag",
        ] {
            assert_eq!(join(&base(), path, &[]), Err(UrlError::Escapes(path.into())), "{path}");
        }
    }

    #[test]
    fn encoded_values_stay_inside_one_segment() {
        let url = join(&base(), "/contacts/evil.example.com%2Fx%40y", &[]).expect("joins");
        assert_eq!(url.host_str(), Some("api.example.com"));
        assert_eq!(url.path(), "/v2/contacts/evil.example.com%2Fx%40y");
    }

    #[test]
    fn threat_egress_control_characters_in_a_path_are_refused() {
        for path in [
            "/contacts/\t",
            "/.\t./admin",
            "/contacts\r\nX-Injected: 1",
            "/contacts/%09",
            "/contacts/%0d%0aX: 1",
            "/contacts/%00",
            "/contacts/%7F",
            "/contacts/\u{7f}",
            "/contacts/\u{0}",
        ] {
            assert_eq!(
                join(&base(), path, &[]),
                Err(UrlError::ControlCharacter(path.into())),
                "{path:?}"
            );
        }
        assert!(join(&base(), "/contacts/%20a%2F", &[]).is_ok());
    }

    #[test]
    fn threat_egress_a_base_path_is_matched_on_a_slash_boundary() {
        let tenant = parse_base("https://api.example.com/tenant-a").expect("valid base");
        // A tab would be dropped by the URL parser, turning `.\t.` into `..`.
        for path in ["/.\t./tenant-a-admin", "/.%09./tenant-a-admin"] {
            assert!(join(&tenant, path, &[]).is_err(), "{path:?}");
        }
        let inside = |p: &str| within(&tenant, &Url::parse(p).expect("url"));
        assert!(inside("https://api.example.com/tenant-a"));
        assert!(inside("https://api.example.com/tenant-a/x"));
        assert!(!inside("https://api.example.com/tenant-a-admin"));
        assert!(!inside("https://api.example.com/tenant-ab/x"));
        assert!(!inside("https://api.example.com:8443/tenant-a/x"));
        assert!(!inside("http://api.example.com/tenant-a/x"));
        assert!(!inside("https://user@api.example.com/tenant-a/x"));
    }

    #[test]
    fn bases_must_be_absolute_http() {
        assert!(parse_base("ftp://x.example.com").is_err());
        assert!(parse_base("/relative").is_err());
        assert!(parse_base("http://127.0.0.1:8090").is_ok());
    }
}
