//! Redirects of target answers. reqwest follows up to ten by default, to
//! any host, carrying headers such as an API key along; Tether follows none
//! unless a TargetSystem sets `followRedirects`, and then only to the
//! origin of the request and, for requests below the base URL, below the
//! base path — so credentials never travel to another origin. A redirect
//! not followed comes back as a 3xx, which `Target::send` turns into an
//! error. The decision is pure.

use reqwest::Url;
use reqwest::redirect::Policy;

use super::url::{same_origin, within};

/// Most hops followed when redirects are allowed.
pub const MAX_HOPS: usize = 5;

/// The reqwest policy of a target whose base URL is `base`.
pub fn policy(follow: bool, base: Url) -> Policy {
    if !follow {
        return Policy::none();
    }
    Policy::custom(move |attempt| {
        let allowed = attempt.previous().len() <= MAX_HOPS
            && attempt
                .previous()
                .first()
                .is_some_and(|first| allowed(&base, first, attempt.url()));
        if allowed { attempt.follow() } else { attempt.stop() }
    })
}

/// May a request first sent to `first` follow a redirect to `next`?
pub fn allowed(base: &Url, first: &Url, next: &Url) -> bool {
    let below_base = within(base, first);
    same_origin(first, next)
        && next.username().is_empty()
        && next.password().is_none()
        && (!below_base || within(base, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> Url {
        Url::parse(u).expect("url")
    }

    #[test]
    fn threat_egress_opt_in_redirects_stay_on_the_origin_and_below_the_base_path() {
        let base = url("https://api.example.com/tenant-a");
        let first = url("https://api.example.com/tenant-a/contacts");
        assert!(allowed(
            &base,
            &first,
            &url("https://api.example.com/tenant-a/contacts/2")
        ));
        for next in [
            "https://evil.example.com/tenant-a/contacts",
            "https://api.example.com:8443/tenant-a/contacts",
            "http://api.example.com/tenant-a/contacts",
            "https://api.example.com/tenant-a-admin",
            "https://api.example.com/admin",
            "https://u:p@api.example.com/tenant-a/x",
        ] {
            assert!(!allowed(&base, &first, &url(next)), "{next}");
        }
        // An adapter service's request stays on the adapter service.
        let service = url("http://adapter.svc:8080/v1/observe");
        assert!(allowed(&base, &service, &url("http://adapter.svc:8080/v2/observe")));
        assert!(!allowed(&base, &service, &url("https://api.example.com/tenant-a/x")));
    }
}
