//! Joining a request path onto a TargetSystem's base URL so that the result
//! can never leave it: same scheme, host and port, and a path below the base
//! path. Templates already percent-encode interpolated values; this is the
//! second wall, checked on the final URL. Pure.

use reqwest::Url;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("baseUrl {0:?} is not an absolute http(s) URL")]
    BadBase(String),
    #[error("path {0:?} must start with '/' and stay below the baseUrl")]
    Escapes(String),
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
    if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
        return Err(escapes());
    }
    // Dot segments would be resolved by the parser: refuse them, encoded or not.
    let dot_segment = path.split(['/', '?', '#']).any(|segment| {
        let lowered = segment.to_ascii_lowercase().replace("%2e", ".");
        lowered == "." || lowered == ".."
    });
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
    let same_origin = url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default();
    if !same_origin || !url.path().starts_with(base_path) || !url.username().is_empty() {
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
    fn bases_must_be_absolute_http() {
        assert!(parse_base("ftp://x.example.com").is_err());
        assert!(parse_base("/relative").is_err());
        assert!(parse_base("http://127.0.0.1:8090").is_ok());
    }
}
