//! Credentials of a TargetSystem, resolved from Secrets, and how they are
//! put on a request. The values only live here: error messages, status,
//! events, logs and metrics never see them (see `Redactor`).

use std::time::{Duration, Instant};

use reqwest::RequestBuilder;
use reqwest::header::{HeaderName, HeaderValue};
use tokio::sync::Mutex;

use super::CallError;
use super::egress::{self, EgressPolicy};

/// Longest token endpoint answer read.
const TOKEN_ANSWER_LIMIT: u64 = 64 * 1024;

/// How to authenticate to one target.
pub enum Credentials {
    None,
    Bearer(String),
    Basic { username: String, password: String },
    ApiKey { header: HeaderName, key: String },
    OAuth2(OAuth2),
}

impl Credentials {
    /// The header a credential of this kind travels in.
    pub fn header_name(&self) -> Option<HeaderName> {
        match self {
            Credentials::None => None,
            Credentials::ApiKey { header, .. } => Some(header.clone()),
            _ => Some(reqwest::header::AUTHORIZATION),
        }
    }
}

pub struct OAuth2 {
    pub token_url: reqwest::Url,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    token: Mutex<Option<(String, Instant)>>,
}

impl OAuth2 {
    pub fn new(token_url: reqwest::Url, client_id: String, client_secret: String, scopes: Vec<String>) -> Self {
        Self {
            token_url,
            client_id,
            client_secret,
            scopes,
            token: Mutex::new(None),
        }
    }

    /// A cached token, refreshed at 80% of its lifetime.
    async fn token(&self, http: &reqwest::Client, policy: &EgressPolicy) -> Result<String, CallError> {
        let mut cached = self.token.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && Instant::now() < *expires
        {
            return Ok(token.clone());
        }
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if !self.scopes.is_empty() {
            form.push(("scope", self.scopes.join(" ")));
        }
        policy.check_url(&self.token_url)?;
        let request = http
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&form)
            .send();
        let mut response = egress::scoped(&self.token_url, request).await.map_err(|e| {
            egress::find_denied(&e).map_or_else(
                || CallError::Unavailable {
                    message: format!("token endpoint: {}", e.without_url()),
                    sent: true,
                },
                CallError::from,
            )
        })?;
        let status = response.status().as_u16();
        if matches!(status, 400 | 401 | 403) {
            let message = "the token endpoint refused the client credentials".to_owned();
            return Err(CallError::Unauthorized { status, message });
        }
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: String,
            expires_in: Option<u64>,
        }
        if (300..400).contains(&status) {
            return Err(CallError::InvalidResponse(format!(
                "token endpoint answered HTTP {status}: a redirect, which Tether does not follow for token requests"
            )));
        }
        let bytes = super::read_capped(&mut response, TOKEN_ANSWER_LIMIT)
            .await
            .map_err(|_| {
                CallError::InvalidResponse(format!(
                    "token endpoint answered HTTP {status} with a body that could not be read within {TOKEN_ANSWER_LIMIT} bytes"
                ))
            })?;
        let token: Token = serde_json::from_slice(&bytes).map_err(|_| {
            CallError::InvalidResponse(format!("token endpoint answered HTTP {status} without an access_token"))
        })?;
        // Refresh at 80% of the lifetime: a token is never used in its last moments.
        // Capped at a day: `expires_in` is the token endpoint's to choose,
        // and an instant far enough ahead overflows the clock.
        let lifetime = token.expires_in.unwrap_or(300).min(86_400);
        let expires = Instant::now() + Duration::from_secs(lifetime).mul_f64(0.8);
        *cached = Some((token.access_token.clone(), expires));
        Ok(token.access_token)
    }

    /// Forgets the token, so the next call fetches a new one (after a 401).
    pub async fn invalidate(&self) {
        *self.token.lock().await = None;
    }
}

impl Credentials {
    /// Adds the credentials to a request.
    pub async fn apply(
        &self,
        http: &reqwest::Client,
        policy: &EgressPolicy,
        request: RequestBuilder,
    ) -> Result<RequestBuilder, CallError> {
        Ok(match self {
            Credentials::None => request,
            Credentials::Bearer(token) => request.bearer_auth(token),
            Credentials::Basic { username, password } => request.basic_auth(username, Some(password)),
            Credentials::ApiKey { header, key } => {
                let mut value = HeaderValue::from_str(key)
                    .map_err(|_| CallError::BadCredentials("the API key is not a valid header value".into()))?;
                value.set_sensitive(true);
                request.header(header.clone(), value)
            }
            Credentials::OAuth2(oauth) => request.bearer_auth(oauth.token(http, policy).await?),
        })
    }

    /// Every secret value, for redaction.
    pub fn secret_values(&self) -> Vec<String> {
        match self {
            Credentials::None => vec![],
            Credentials::Bearer(token) => vec![token.clone()],
            Credentials::Basic { username: _, password } => vec![password.clone()],
            Credentials::ApiKey { header: _, key } => vec![key.clone()],
            Credentials::OAuth2(oauth) => vec![oauth.client_secret.clone()],
        }
    }
}

/// Removes secret values from text that may reach status, events or logs
/// (a target may echo a header back in an error body).
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: Vec<String>) -> Self {
        // Very short values would redact ordinary words; they are also no
        // real secret.
        Self {
            secrets: secrets.into_iter().filter(|s| s.len() >= 4).collect(),
        }
    }

    pub fn redact(&self, text: &str) -> String {
        Self::redact_with(&self.secrets, text)
    }

    fn redact_with(secrets: &[String], text: &str) -> String {
        secrets.iter().fold(text.to_owned(), |acc, secret| {
            if secret.len() >= 4 {
                acc.replace(secret.as_str(), "[REDACTED]")
            } else {
                acc
            }
        })
    }

    /// Redacts every string (and object key) of a target's answer, in place:
    /// the secret values of the TargetSystem and `sent`, the credential
    /// values that went out on the request (a bearer token obtained by
    /// OAuth2, the base64 of a basic pair). A target that echoes what it
    /// received must not carry a credential into outputs and status.
    pub fn redact_json(&self, value: &mut serde_json::Value, sent: &[String]) {
        let all: Vec<String> = self.secrets.iter().chain(sent).cloned().collect();
        if all.is_empty() {
            return;
        }
        redact_value(&all, value);
    }
}

fn redact_value(secrets: &[String], value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(text) if secrets.iter().any(|s| s.len() >= 4 && text.contains(s.as_str())) => {
            *text = Redactor::redact_with(secrets, text);
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(secrets, v)),
        Value::Object(map) => {
            let leaked: Vec<String> = map
                .keys()
                .filter(|k| secrets.iter().any(|s| s.len() >= 4 && k.contains(s.as_str())))
                .cloned()
                .collect();
            for key in leaked {
                if let Some(v) = map.remove(&key) {
                    map.insert(Redactor::redact_with(secrets, &key), v);
                }
            }
            map.values_mut().for_each(|v| redact_value(secrets, v));
        }
        _ => {}
    }
}

/// The credential values a request carries: each `Authorization` header
/// whole and without its scheme, and the value of the API-key header.
pub fn credential_values(headers: &reqwest::header::HeaderMap, api_key_header: Option<&str>) -> Vec<String> {
    let mut values = Vec::new();
    let names = [Some("authorization"), Some("proxy-authorization"), api_key_header];
    for name in names.into_iter().flatten() {
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else { continue };
            values.push(text.to_owned());
            if let Some((_, credential)) = text.split_once(' ') {
                values.push(credential.trim().to_owned());
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threat_an_echoing_target_gets_no_credential_into_a_json_answer() {
        let redactor = Redactor::new(vec!["s3cr3t-token".into()]);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", "Bearer oauth-access-123".parse().expect("header"));
        headers.insert("x-api-key", "key-456789".parse().expect("header"));
        let sent = credential_values(&headers, Some("x-api-key"));
        let mut answer = serde_json::json!({
            "headers": {"authorization": "Bearer oauth-access-123", "x-api-key": "key-456789"},
            "echo": ["s3cr3t-token", {"s3cr3t-token": 1}],
            "plain": "nothing secret"
        });
        redactor.redact_json(&mut answer, &sent);
        let text = answer.to_string();
        for secret in ["oauth-access-123", "key-456789", "s3cr3t-token"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("nothing secret"));
    }

    #[test]
    fn redactor_hides_every_secret_value() {
        let redactor = Redactor::new(vec!["s3cr3t-token".into(), "ab".into()]);
        assert_eq!(
            redactor.redact("bad token s3cr3t-token in ab"),
            "bad token [REDACTED] in ab"
        );
    }
}
