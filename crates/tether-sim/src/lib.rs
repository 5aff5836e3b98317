//! The target simulator: a real HTTP server that behaves like a SaaS API —
//! server-generated ids, idempotency keys, pagination, field filters, bearer
//! and API-key auth — and fails like one: latency, 5xx, 429 with
//! `Retry-After`, and a create that commits and then drops the connection.
//! Tests run it in-process ([`start`]); demos run it as `tether sim`.

pub mod faults;
pub mod routes;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt;

pub use faults::{Faults, Hostile, RateLimitFault, Stats};
pub use routes::{ConnectionKill, Credentials, OAuthClient, SimState, Traced};

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl std::ops::Deref for SimHandle {
    type Target = SimState;
    fn deref(&self) -> &SimState {
        &self.state
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Binds `addr` (use port 0 for a free one) and serves in the background.
pub async fn start(addr: SocketAddr, credentials: Credentials) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState::new(credentials));
    let (tx, rx) = oneshot::channel();
    tokio::spawn(serve(listener, state.clone(), async {
        let _ = rx.await;
    }));
    Ok(SimHandle {
        addr,
        state,
        shutdown: Some(tx),
    })
}

/// Like [`start`], but serves from a thread with its own runtime, so the
/// simulator keeps answering whatever the caller's runtime does (a test
/// that blocks on `kubectl wait`, for instance).
pub fn start_on_own_thread(addr: SocketAddr, credentials: Credentials) -> std::io::Result<SimHandle> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState::new(credentials));
    let (tx, rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let served = state.clone();
    std::thread::Builder::new().name(format!("sim-{addr}")).spawn(move || {
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    serve(listener, served, async {
                        let _ = rx.await;
                    })
                    .await
                }
                Err(err) => tracing::error!(%err, "simulator listener"),
            }
        });
    })?;
    Ok(SimHandle {
        addr,
        state,
        shutdown: Some(tx),
    })
}

/// Serves until `shutdown` completes. Each connection gets a
/// [`ConnectionKill`] so that a handler can drop it without answering,
/// which `axum::serve` cannot do.
pub async fn serve(listener: TcpListener, state: Arc<SimState>, shutdown: impl Future<Output = ()>) {
    let router = routes::router(state);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "simulator accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let router = router.clone();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let tagged = kill.clone();
            let service = router.map_request(move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectionKill(tagged.clone()));
                request
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::select! {
                _ = connection => {}
                () = kill.notified() => {} // dropping the connection closes the socket unanswered
            }
        });
    }
}
