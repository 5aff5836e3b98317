//! `Target::send` against tiny local servers that answer what a hostile or
//! broken target would: the threat tests of egress and target answers that
//! need no control plane, and a property test over arbitrary answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::auth::Credentials;
use super::egress::EgressPolicy;
use super::*;

/// What a [`RawServer`] writes after reading a request's head.
#[derive(Clone, Debug)]
enum Script {
    /// These bytes, then close.
    Raw(Vec<u8>),
    /// A head, then `chunk` every `every`, forever.
    Endless {
        head: Vec<u8>,
        chunk: Vec<u8>,
        every: Duration,
    },
}

/// A server that answers every request with a script and keeps the heads
/// of the requests it saw.
struct RawServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    async fn start(script: impl Fn(&str) -> Script + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (script, recorded) = (script.clone(), recorded.clone());
                tokio::spawn(async move {
                    let _ = answer(stream, &*script, &recorded).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        lock(&self.seen).clone()
    }
}

async fn answer(
    mut stream: TcpStream,
    script: &(dyn Fn(&str) -> Script + Send + Sync),
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65_536 {
        if stream.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.extend_from_slice(&byte);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    lock(seen).push(head.clone());
    match script(&head) {
        Script::Raw(bytes) => {
            stream.write_all(&bytes).await?;
            stream.shutdown().await
        }
        Script::Endless { head, chunk, every } => {
            stream.write_all(&head).await?;
            loop {
                stream.write_all(&chunk).await?;
                if !every.is_zero() {
                    tokio::time::sleep(every).await;
                }
            }
        }
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn limits() -> Limits {
    Limits {
        requests_per_second: None,
        burst: 1,
        max_concurrency: 4,
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        failure_threshold: 1_000_000,
        open_for: Duration::from_secs(1),
        max_response_bytes: 64 * 1024,
        follow_redirects: false,
    }
}

/// Loopback allowed: the servers of these tests live there.
fn open_egress() -> EgressPolicy {
    EgressPolicy::new(vec![], vec![])
}

fn target(base: &str, limits: &Limits, credentials: Credentials, egress: EgressPolicy) -> Target {
    crate::install_crypto_provider();
    let base = url::parse_base(base).expect("base");
    let egress = Arc::new(egress);
    let http = client_builder(limits, &base, &egress).build().expect("client");
    Target::new(
        "test/target".into(),
        base,
        EgressClient { http, egress },
        credentials,
        limits,
        "fence".into(),
        Metrics::shared(),
    )
}

fn get(path: &str) -> HttpCall {
    HttpCall {
        operation: "read".into(),
        method: HttpMethod::Get,
        path: path.into(),
        query: vec![],
        headers: vec![],
        body: None,
        base: None,
    }
}

/// `send`, failing the test if it takes longer than `limit`.
async fn send_within(target: &Target, call: HttpCall, limit: Duration) -> Result<HttpAnswer, CallError> {
    let started = Instant::now();
    match tokio::time::timeout(limit, target.send(call)).await {
        Ok(result) => result,
        Err(_) => panic!(
            "send did not end within {limit:?} (started {:?} ago)",
            started.elapsed()
        ),
    }
}

#[tokio::test]
async fn threat_answer_a_body_over_the_cap_fails_with_a_reason_naming_the_cap() {
    // Announced: refused before any body byte is read.
    let announced =
        RawServer::start(|_| Script::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 209715200\r\n\r\n[".to_vec())).await;
    // Not announced (chunked, 200 MB): reading stops at the cap.
    let streamed = RawServer::start(|_| Script::Endless {
        head: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
        chunk: {
            let mut c = format!("{:x}\r\n", 16 * 1024).into_bytes();
            c.extend(std::iter::repeat_n(b'a', 16 * 1024));
            c.extend_from_slice(b"\r\n");
            c
        },
        every: Duration::ZERO,
    })
    .await;
    for server in [&announced, &streamed] {
        let target = target(&server.url(), &limits(), Credentials::None, open_egress());
        let err = send_within(&target, get("/big"), Duration::from_secs(10))
            .await
            .expect_err("too large");
        assert_eq!(err, CallError::ResponseTooLarge { limit: 64 * 1024 });
        assert_eq!(err.reason(), "ResponseTooLarge");
        assert!(err.to_string().contains("spec.maxResponseBytes"), "{err}");
    }
}

#[tokio::test]
async fn threat_answer_a_never_ending_trickle_stops_at_the_request_timeout() {
    let server = RawServer::start(|_| Script::Endless {
        head: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
        chunk: b"1\r\n \r\n".to_vec(),
        every: Duration::from_millis(20),
    })
    .await;
    let limits = Limits {
        request_timeout: Duration::from_secs(1),
        ..limits()
    };
    let target = target(&server.url(), &limits, Credentials::None, open_egress());
    let started = Instant::now();
    let err = send_within(&target, get("/slow"), Duration::from_secs(10))
        .await
        .expect_err("times out");
    assert!(matches!(err, CallError::Unavailable { sent: true, .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn threat_egress_a_redirect_to_another_origin_is_never_followed() {
    let elsewhere = RawServer::start(|_| Script::Raw(response(200, &[], b"{\"stolen\":true}"))).await;
    let location = format!("{}/collect", elsewhere.url());
    let redirecting =
        RawServer::start(move |_| Script::Raw(response(302, &[("location", location.as_str())], b""))).await;
    for follow in [false, true] {
        let limits = Limits {
            follow_redirects: follow,
            ..limits()
        };
        let credentials = Credentials::ApiKey {
            header: reqwest::header::HeaderName::from_static("x-custom-key"),
            key: "k3y-that-must-stay-home".into(),
        };
        let target = target(&redirecting.url(), &limits, credentials, open_egress());
        let err = send_within(&target, get("/v1/contacts"), Duration::from_secs(10))
            .await
            .expect_err("not followed");
        assert_eq!(err.reason(), "RedirectNotFollowed", "{err}");
        assert!(err.to_string().contains("/collect"), "{err}");
    }
    assert_eq!(
        elsewhere.requests(),
        Vec::<String>::new(),
        "the other origin was reached"
    );
}

#[tokio::test]
async fn threat_egress_opt_in_redirects_are_followed_on_the_origin_below_the_base_path_only() {
    let server = RawServer::start(|head| {
        if head.starts_with("GET /base/old ") {
            Script::Raw(response(301, &[("location", "/base/new")], b""))
        } else if head.starts_with("GET /base/escape ") {
            Script::Raw(response(302, &[("location", "/admin")], b""))
        } else {
            Script::Raw(response(200, &[], b"{\"ok\":true}"))
        }
    })
    .await;
    let base = format!("{}/base", server.url());
    let closed = target(&base, &limits(), Credentials::None, open_egress());
    assert_eq!(
        send_within(&closed, get("/old"), Duration::from_secs(10))
            .await
            .map_err(|e| e.reason()),
        Err("RedirectNotFollowed")
    );
    let open = target(
        &base,
        &Limits {
            follow_redirects: true,
            ..limits()
        },
        Credentials::None,
        open_egress(),
    );
    let answer = send_within(&open, get("/old"), Duration::from_secs(10))
        .await
        .expect("followed");
    assert_eq!(answer.body, serde_json::json!({"ok": true}));
    let err = send_within(&open, get("/escape"), Duration::from_secs(10))
        .await
        .expect_err("outside the base path");
    assert_eq!(err.reason(), "RedirectNotFollowed");
    assert!(!server.requests().iter().any(|h| h.starts_with("GET /admin ")));
}

#[tokio::test]
async fn threat_answer_a_huge_or_odd_retry_after_neither_panics_nor_parks_the_target_for_ever() {
    for value in ["18446744073709551615", "99999999999", "soon", "-1", "1e9", ""] {
        let header = value.to_owned();
        let server =
            RawServer::start(move |_| Script::Raw(response(429, &[("retry-after", header.as_str())], b"{}"))).await;
        let target = target(&server.url(), &limits(), Credentials::None, open_egress());
        let err = send_within(&target, get("/x"), Duration::from_secs(10))
            .await
            .expect_err("throttled");
        let CallError::Throttled { retry_after } = err else {
            panic!("{value}: {err:?}")
        };
        assert!(
            retry_after.is_none_or(|d| d <= MAX_RETRY_AFTER),
            "{value}: {retry_after:?}"
        );
    }
}

#[tokio::test]
async fn threat_answer_non_ascii_and_invalid_utf8_bodies_are_cut_on_char_boundaries() {
    let long = "é€😀".repeat(500);
    let mut invalid = long.clone().into_bytes();
    invalid.insert(511, 0xff);
    for body in [long.into_bytes(), invalid, vec![0xff; 5000]] {
        let server = RawServer::start(move |_| Script::Raw(response(200, &[], &body))).await;
        let target = target(&server.url(), &limits(), Credentials::None, open_egress());
        let answer = send_within(&target, get("/x"), Duration::from_secs(10))
            .await
            .expect("answer");
        let text = answer.body.as_str().expect("kept as text");
        assert!(text.len() <= TEXT_BODY_KEPT, "{}", text.len());
    }
}

#[tokio::test]
async fn threat_egress_denied_addresses_are_refused_before_any_connection() {
    let server = RawServer::start(|_| Script::Raw(response(200, &[], b"{}"))).await;
    let port = server.addr.port();
    for base in [
        server.url(),
        format!("http://localhost:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
        "http://169.254.169.254".to_owned(),
    ] {
        let target = target(&base, &limits(), Credentials::None, EgressPolicy::default_list());
        let err = send_within(&target, get("/latest/meta-data"), Duration::from_secs(5))
            .await
            .expect_err("denied");
        assert_eq!(err.reason(), "EgressDenied", "{base}: {err}");
        assert!(err.to_string().contains("--egress-deny"), "{err}");
    }
    // The API server's own socket, with loopback allowed.
    let api = EgressPolicy::new(vec![], vec![server.addr]);
    for base in [server.url(), format!("http://localhost:{port}")] {
        let target = target(&base, &limits(), Credentials::None, api.clone());
        let err = send_within(&target, get("/api"), Duration::from_secs(5))
            .await
            .expect_err("denied");
        assert_eq!(err.reason(), "EgressDenied", "{base}: {err}");
    }
    assert_eq!(server.requests(), Vec::<String>::new());
}

/// An arbitrary answer: status line, headers (some hostile), body bytes.
fn arbitrary_answer() -> impl Strategy<Value = Vec<u8>> {
    let status = prop_oneof![100u16..=599, Just(0u16), 600u16..=1200];
    let header = (
        prop_oneof![
            Just("retry-after".to_owned()),
            Just("location".to_owned()),
            Just("content-type".to_owned()),
            Just("content-length".to_owned()),
            Just("transfer-encoding".to_owned()),
            "[a-z-]{1,12}",
        ],
        proptest::collection::vec(any::<u8>(), 0..40),
    );
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        ".{0,300}".prop_map(String::into_bytes),
        (0usize..200_000).prop_map(|n| vec![b'7'; n]),
    ];
    (status, proptest::collection::vec(header, 0..6), body, any::<bool>()).prop_map(
        |(status, headers, body, announce_length)| {
            let mut out = format!("HTTP/1.1 {status} X\r\n").into_bytes();
            if announce_length {
                out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
            }
            for (name, value) in headers {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend(value.into_iter().filter(|b| *b != b'\r' && *b != b'\n'));
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
            out
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever a target answers, `send` returns (an answer or an error)
    /// without a panic, within the request timeout.
    #[test]
    fn threat_answer_arbitrary_answers_never_panic_and_end_in_bounded_time(raw in arbitrary_answer()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let server = RawServer::start(move |_| Script::Raw(raw.clone())).await;
            let target = target(&server.url(), &limits(), Credentials::None, open_egress());
            let started = Instant::now();
            let result = send_within(&target, get("/x"), Duration::from_secs(10)).await;
            assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
            if let Ok(answer) = result {
                assert!(answer.body.to_string().len() <= 64 * 1024 * 2);
            }
        });
    }
}
