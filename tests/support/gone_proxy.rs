//! A plain-HTTP proxy in front of the API server that can force a relist:
//! on [`GoneProxy::expire`] every open watch of one resource gets the
//! `410 Gone` ERROR event the API server sends when a watch's
//! resourceVersion has expired, and the watch ends. A client (kube-runtime's
//! watcher) must then list again: what a relist after a compaction or an
//! API server restart looks like, on demand.
//!
//! Shared by `tests/` and `benches/` (`#[path]`). Loopback only: the bearer
//! token travels in clear between the client and the proxy.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::Response;
use tokio::sync::watch;

/// The ERROR event of an expired resourceVersion, as the API server sends it.
const GONE: &str = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"too old resource version (forced by the test proxy)\",\"reason\":\"Expired\",\"code\":410}}\n";

pub struct GoneProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Shared>,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    /// Resource path segment (`externalresources`) whose watches expire.
    resource: String,
    /// Bumped by `expire`: open watches of `resource` end with 410.
    expired: watch::Sender<u64>,
    /// Watches of `resource` started so far (a relist ends with a new one).
    watches: AtomicU64,
    /// Lists of `resource` served so far.
    lists: AtomicU64,
    /// Watches of `resource` open now.
    open: AtomicU64,
    /// While true, requests for `resource` wait (the client is "away").
    held: watch::Sender<bool>,
}

impl GoneProxy {
    /// A proxy to `upstream` (`https://127.0.0.1:PORT`, trusted through
    /// the CA certificate at `ca`) whose watches of `resource` can expire.
    pub async fn start(upstream: &str, ca: &Path, resource: &str) -> Self {
        let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
        let cert = reqwest::Certificate::from_pem(&pem).unwrap_or_else(|e| panic!("CA certificate: {e}"));
        let http = reqwest::Client::builder()
            .add_root_certificate(cert)
            .build()
            .unwrap_or_else(|e| panic!("proxy client: {e}"));
        let state = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http,
            resource: resource.to_owned(),
            expired: watch::channel(0).0,
            watches: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            open: AtomicU64::new(0),
            held: watch::channel(false).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy listener: {e}"));
        let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        let router = axum::Router::new().fallback(forward).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, state }
    }

    /// A kubeconfig that reaches the API server through this proxy with
    /// `token`, written to `path`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: user\ncurrent-context: proxy\n",
            self.url
        );
        std::fs::write(path, config).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Holds every new request for the resource until [`Self::release`]:
    /// with [`Self::expire`], the client is away while things change.
    pub fn hold(&self) {
        self.state.held.send_replace(true);
    }

    pub fn release(&self) {
        self.state.held.send_replace(false);
    }

    /// Ends every open watch of the resource with `410 Gone`.
    pub fn expire(&self) {
        self.state.expired.send_modify(|n| *n += 1);
    }

    /// Watches of the resource started so far.
    pub fn watches(&self) -> u64 {
        self.state.watches.load(Ordering::SeqCst)
    }

    /// Lists (pages) of the resource served so far.
    pub fn lists(&self) -> u64 {
        self.state.lists.load(Ordering::SeqCst)
    }

    /// Watches of the resource open now.
    pub fn open_watches(&self) -> u64 {
        self.state.open.load(Ordering::SeqCst)
    }
}

/// Counts a watch as open while it lives.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn forward(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let of_resource = parts.uri.path().split('/').any(|s| s == state.resource);
    let is_watch = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    if of_resource {
        let mut held = state.held.subscribe();
        let _ = held.wait_for(|held| !*held).await;
    }
    if of_resource && parts.method == axum::http::Method::GET {
        let counter = if is_watch { &state.watches } else { &state.lists };
        counter.fetch_add(1, Ordering::SeqCst);
    }
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut upstream = state
        .http
        .request(parts.method.clone(), format!("{}{path_and_query}", state.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) && name != axum::http::header::HOST {
            upstream = upstream.header(name, value);
        }
    }
    let mut answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(_) => return status(StatusCode::BAD_GATEWAY),
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) && name != axum::http::header::CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    let mut expired = state.expired.subscribe();
    expired.mark_unchanged();
    let expires = of_resource && is_watch;
    let open = expires.then(|| {
        state.open.fetch_add(1, Ordering::SeqCst);
        Open(state.clone())
    });
    let chunks = async_stream(move |tx| async move {
        let _open = open;
        // Only between two events (at a line end) may the 410 go in.
        let mut at_line_end = true;
        loop {
            tokio::select! {
                biased;
                changed = expired.changed(), if expires && at_line_end => {
                    if changed.is_ok() {
                        let _ = tx.send(Ok(axum::body::Bytes::from_static(GONE.as_bytes()))).await;
                    }
                    return;
                }
                chunk = answer.chunk() => match chunk {
                    Ok(Some(chunk)) => {
                        at_line_end = chunk.last() == Some(&b'\n');
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                        return;
                    }
                },
            }
        }
    });
    response
        .body(Body::from_stream(chunks))
        .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY))
}

type Chunk = Result<axum::body::Bytes, std::io::Error>;

/// A stream fed by a task (the task ends when the stream is dropped).
fn async_stream<F, Fut>(task: F) -> impl futures::Stream<Item = Chunk> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Chunk>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(task(tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "proxy-connection" | "te" | "trailer"
    )
}

fn status(code: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}
