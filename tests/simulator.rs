//! The target simulator behaves like a SaaS API and fails like one on
//! demand. Each fault has a test that fails when the fault is not injected.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tether_sim::{self as sim, Credentials, Faults, RateLimitFault, SimHandle};

async fn open_sim() -> SimHandle {
    sim::start("127.0.0.1:0".parse().expect("address"), Credentials::default())
        .await
        .expect("simulator starts")
}

fn http() -> reqwest::Client {
    tether::install_crypto_provider();
    reqwest::Client::new()
}

async fn create(client: &reqwest::Client, sim: &SimHandle, body: Value) -> reqwest::Response {
    client
        .post(format!("{}/v1/contacts", sim.base_url()))
        .json(&body)
        .send()
        .await
        .expect("create answered")
}

#[tokio::test]
async fn create_assigns_an_id_and_read_update_delete_round_trip() {
    let sim = open_sim().await;
    let client = http();
    let created: Value = create(&client, &sim, json!({"email": "ada@example.com"}))
        .await
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("server-generated id").to_owned();
    let url = format!("{}/v1/contacts/{id}", sim.base_url());

    let read: Value = client.get(&url).send().await.expect("read").json().await.expect("json");
    assert_eq!(read["email"], "ada@example.com");
    let patched: Value = client
        .patch(&url)
        .json(&json!({"plan": "pro"}))
        .send()
        .await
        .expect("patch")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (
            patched["email"].as_str(),
            patched["plan"].as_str(),
            patched["version"].as_u64()
        ),
        (Some("ada@example.com"), Some("pro"), Some(2))
    );
    let replaced: Value = client
        .put(&url)
        .json(&json!({"email": "x@example.com"}))
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("json");
    assert_eq!(replaced.get("plan"), None, "PUT replaces the client-owned fields");
    assert_eq!(
        client.delete(&url).send().await.expect("delete").status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        client.get(&url).send().await.expect("read").status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.delete(&url).send().await.expect("delete").status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn idempotency_key_makes_a_repeated_create_return_the_first_object() {
    let sim = open_sim().await;
    let client = http();
    let send = || {
        client
            .post(format!("{}/v1/contacts", sim.base_url()))
            .header("Idempotency-Key", "key-1")
            .json(&json!({"email": "ada@example.com"}))
            .send()
    };
    let first = send().await.expect("first");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("json");
    let second = send().await.expect("second");
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        second.headers().get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let second: Value = second.json().await.expect("json");
    assert_eq!(first["id"], second["id"]);
    assert_eq!(sim.objects("contacts").len(), 1);
    assert_eq!(sim.stats().count("create", "contacts"), 2);
}

#[tokio::test]
async fn list_paginates_and_filters_by_field() {
    let sim = open_sim().await;
    let client = http();
    for i in 0..5 {
        create(
            &client,
            &sim,
            json!({"team": if i < 3 { "red" } else { "blue" }, "n": i}),
        )
        .await;
    }
    let page: Value = client
        .get(format!("{}/v1/contacts?team=red&limit=2", sim.base_url()))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let cursor = page["nextCursor"].as_str().expect("a next page").to_owned();
    let rest: Value = client
        .get(format!(
            "{}/v1/contacts?team=red&limit=2&cursor={cursor}",
            sim.base_url()
        ))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["nextCursor"], Value::Null);
}

#[tokio::test]
async fn latency_fault_delays_every_data_request() {
    let sim = open_sim().await;
    let client = http();
    sim.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let started = Instant::now();
    create(&client, &sim, json!({"email": "slow@example.com"})).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn fail_next_answers_5xx_then_recovers() {
    let sim = open_sim().await;
    let client = http();
    sim.set_faults(Faults {
        fail_next: 2,
        ..Faults::default()
    });
    let statuses = [
        create(&client, &sim, json!({})).await.status(),
        create(&client, &sim, json!({})).await.status(),
        create(&client, &sim, json!({})).await.status(),
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::CREATED
        ]
    );
    assert_eq!(sim.stats().injected_errors, 2);
    assert_eq!(sim.objects("contacts").len(), 1, "a failed request changes nothing");
}

#[tokio::test]
async fn error_rate_with_custom_status() {
    let sim = open_sim().await;
    let client = http();
    sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(502),
        ..Faults::default()
    });
    assert_eq!(create(&client, &sim, json!({})).await.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let sim = open_sim().await;
    let client = http();
    sim.set_faults(Faults {
        rate_limit: Some(RateLimitFault {
            requests_per_second: 0.5,
            burst: 2,
            retry_after_seconds: None,
        }),
        ..Faults::default()
    });
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let response = create(&client, &sim, json!({})).await;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
    }
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::CREATED, StatusCode::TOO_MANY_REQUESTS]
    );
    assert_eq!(retry_after, Some(2), "an empty bucket at 0.5 req/s refills in 2 s");
    let stats = sim.stats();
    assert_eq!(stats.throttled, 1);
    assert_eq!(stats.peak_admitted_per_second, 2);
}

#[tokio::test]
async fn dropped_create_commits_the_object_but_the_caller_gets_no_answer() {
    let sim = open_sim().await;
    let client = http();
    sim.set_faults(Faults {
        drop_create_responses: 1,
        ..Faults::default()
    });
    let lost = client
        .post(format!("{}/v1/contacts", sim.base_url()))
        .json(&json!({"email": "lost@example.com"}))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let err = lost.expect_err("the connection is dropped before any answer");
    assert!(
        !err.is_timeout(),
        "the connection must be closed, not left hanging: {err}"
    );
    let objects = sim.objects("contacts");
    assert_eq!(objects.len(), 1, "the create was committed");
    assert_eq!(objects[0]["email"], "lost@example.com");
    assert_eq!(sim.stats().dropped_responses, 1);
    assert_eq!(
        create(&client, &sim, json!({})).await.status(),
        StatusCode::CREATED,
        "only the next create is dropped"
    );
}

#[tokio::test]
async fn drift_changes_an_object_behind_the_clients_back() {
    let sim = open_sim().await;
    let client = http();
    let created: Value = create(&client, &sim, json!({"plan": "pro"}))
        .await
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("id");
    let before = sim.stats().requests.values().sum::<u64>();
    sim.drift("contacts", id, &json!({"plan": "free"}))
        .expect("object exists");
    assert_eq!(
        sim.stats().requests.values().sum::<u64>(),
        before,
        "drift is not a data API call"
    );
    let read: Value = client
        .get(format!("{}/v1/contacts/{id}", sim.base_url()))
        .send()
        .await
        .expect("read")
        .json()
        .await
        .expect("json");
    assert_eq!(read["plan"], "free");
}

#[tokio::test]
async fn bearer_token_and_api_key_are_checked() {
    let sim = sim::start(
        "127.0.0.1:0".parse().expect("address"),
        Credentials {
            bearer_tokens: vec!["t0k3n".into()],
            api_keys: vec!["k3y".into()],
            ..Credentials::default()
        },
    )
    .await
    .expect("simulator starts");
    let client = http();
    let url = format!("{}/v1/contacts", sim.base_url());
    let none = client.get(&url).send().await.expect("answer").status();
    let wrong = client
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .expect("answer")
        .status();
    let bearer = client
        .get(&url)
        .bearer_auth("t0k3n")
        .send()
        .await
        .expect("answer")
        .status();
    let key = client
        .get(&url)
        .header("X-API-Key", "k3y")
        .send()
        .await
        .expect("answer")
        .status();
    assert_eq!(
        [none, wrong, bearer, key],
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::OK,
            StatusCode::OK
        ]
    );
    assert_eq!(sim.stats().unauthorized, 2);
}

#[tokio::test]
async fn peak_in_flight_counts_concurrent_requests() {
    let sim = open_sim().await;
    let client = http();
    sim.set_faults(Faults {
        latency_ms: 200,
        ..Faults::default()
    });
    let requests = (0..5).map(|_| create(&client, &sim, json!({})));
    futures::future::join_all(requests).await;
    assert_eq!(sim.stats().peak_in_flight, 5);
}

#[tokio::test]
async fn control_api_sets_faults_and_reports_counters_over_http() {
    let sim = open_sim().await;
    let client = http();
    let control = format!("{}/_sim", sim.base_url());
    let put = client
        .put(format!("{control}/faults"))
        .json(&json!({"failNext": 1, "errorStatus": 500}))
        .send()
        .await
        .expect("put faults");
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        create(&client, &sim, json!({})).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    create(&client, &sim, json!({})).await;
    let stats: Value = client
        .get(format!("{control}/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["requests"]["create contacts"], 2);
    assert_eq!(stats["injectedErrors"], 1);
    let objects: Value = client
        .get(format!("{control}/objects/contacts"))
        .send()
        .await
        .expect("objects")
        .json()
        .await
        .expect("json");
    assert_eq!(objects.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn tether_sim_serves_as_a_process() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["sim", "--listen", &format!("127.0.0.1:{port}"), "--token", "demo"])
        .kill_on_drop(true)
        .spawn()
        .expect("tether sim starts");
    let client = http();
    let url = format!("http://127.0.0.1:{port}/v1/contacts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match client.get(&url).bearer_auth("demo").send().await {
            Ok(response) => break response.status(),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(err) => panic!("tether sim never answered: {err}"),
        }
    };
    assert_eq!(status, StatusCode::OK);
    child.kill().await.expect("stopping tether sim");
}

#[tokio::test]
async fn requests_before_an_announced_retry_after_are_counted_as_violations() {
    let sim = open_sim().await;
    let client = http();
    sim.set_faults(Faults {
        rate_limit: Some(RateLimitFault {
            requests_per_second: 100.0,
            burst: 1,
            retry_after_seconds: Some(30),
        }),
        ..Faults::default()
    });
    create(&client, &sim, json!({})).await;
    let throttled = create(&client, &sim, json!({})).await;
    assert_eq!(
        throttled.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"30"[..])
    );
    create(&client, &sim, json!({})).await;
    assert_eq!(
        sim.stats().retry_after_violations,
        1,
        "the third request ignored Retry-After: 30"
    );
}

#[tokio::test]
async fn delayed_create_answer_commits_before_it_answers() {
    let sim = open_sim().await;
    let client = http();
    sim.set_faults(Faults {
        create_answer_delay_ms: 60_000,
        ..Faults::default()
    });
    let pending = client
        .post(format!("{}/v1/contacts", sim.base_url()))
        .json(&json!({"email": "slow@example.com"}))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(pending.expect_err("no answer within 500 ms").is_timeout());
    assert_eq!(sim.objects("contacts").len(), 1, "committed before answering");
}

#[tokio::test]
async fn unauthorized_answers_echo_the_presented_credentials_like_careless_apis_do() {
    let sim = sim::start(
        "127.0.0.1:0".parse().expect("address"),
        Credentials {
            bearer_tokens: vec!["good".into()],
            ..Credentials::default()
        },
    )
    .await
    .expect("simulator starts");
    let body: Value = http()
        .get(format!("{}/v1/contacts", sim.base_url()))
        .bearer_auth("wrong-token-123")
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("wrong-token-123")
    );
}
