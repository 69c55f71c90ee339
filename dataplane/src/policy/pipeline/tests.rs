//! The standard pipeline's decisions without sockets: a compiled config, a parsed head, a
//! context and a fake clock — time is advanced, never slept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{standard, Standard};
use crate::http::{parse_request, Parse, RequestHead};
use crate::limit::{Clock, FakeClock};
use crate::policy::admission::{SharedLimits, WorkerLimits};
use crate::policy::context::{RequestCtx, RequestId};
use crate::policy::phase::{Env, Flow, Pipeline, Request};
use crate::policy::AccessRuntime;
use crate::route::Operation;
use crate::snapshot::Snapshot;

const KEY: &str = "pipeline-unit-test-key-0123";

fn snapshot(limits: &str) -> Snapshot {
    snapshot_for("gpt-4o-mini", limits)
}

/// One mock deployment named `deployment`, its product limited by `limits`, behind [`KEY`].
fn snapshot_for(deployment: &str, limits: &str) -> Snapshot {
    use sha2::Digest as _;
    let hash: String = sha2::Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = format!(
        r#"
[[backend]]
name = "mock"
kind = "mock"

[[deployment]]
name = "{deployment}"
backends = [{{ backend = "mock" }}]

[[product]]
name = "p"
limits = [{limits}]

[[subscription]]
name = "team"
product = "p"
keys = ["sha256:{hash}"]
"#
    );
    crate::config::load_str(Path::new("test.toml"), &text, &|_| None, None).expect("config")
}

/// Runs `test` with the standard pipeline on `snapshot`: its runtime, a worker's limiter
/// caches over fresh limit state, and a fake clock the test advances.
fn with_pipeline(snapshot: &Snapshot, test: impl FnOnce(&Pipeline<'_, Standard>, &FakeClock)) {
    let runtime = AccessRuntime::build(snapshot, None).expect("runtime");
    let shared = SharedLimits::default();
    let limits = WorkerLimits::new(&shared, 1);
    let clock = FakeClock::new(1_700_000_000);
    let policies = standard();
    let metrics = crate::metrics::WorkerMetrics::new(Default::default(), false);
    let audit_batch = crate::audit::WorkerBatch::default();
    let pipeline = Pipeline {
        policies: &policies,
        env: Env {
            snapshot,
            runtime: &runtime,
            limits: &limits,
            clock: &clock,
            audit: None,
            audit_batch: &audit_batch,
            worker: 0,
            metrics: &metrics,
        },
    };
    test(&pipeline, &clock);
}

/// Runs a chat request for `gpt-4o-mini` through the head and body phases at the clock's
/// time; the context is completed (as the server does) before it returns.
fn decide(
    pipeline: &Pipeline<'_, Standard>,
    snapshot: &Snapshot,
) -> Result<Vec<u8>, crate::error::GatewayError> {
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    run(pipeline, snapshot, "gpt-4o-mini", body).0
}

/// Runs a chat request with `body` for `deployment` through the head and body phases; the
/// answer headers (or the refusal) and the token estimate the context held.
fn run(
    pipeline: &Pipeline<'_, Standard>,
    snapshot: &Snapshot,
    deployment: &str,
    body: &[u8],
) -> (
    Result<Vec<u8>, crate::error::GatewayError>,
    Option<crate::policy::context::TokenEstimate>,
) {
    let buf = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\napi-key: {KEY}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut head = RequestHead::new();
    let limits = snapshot.server.limits;
    assert!(matches!(
        parse_request(buf.as_bytes(), &limits, &mut head),
        Ok(Parse::Complete)
    ));
    let mut ctx = RequestCtx::new(
        snapshot,
        RequestId::hex(&[(1, 4)]),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Instant::now(),
        Vec::new(),
        Vec::new(),
    );
    ctx.operation = Some(Operation::ChatCompletions);
    let mut req = Request {
        head: &head,
        buf: buf.as_bytes(),
        body: &[],
    };
    let mut outcome = match pipeline.on_request(&mut ctx, &req) {
        Flow::Respond(err) => Err(err),
        Flow::Continue => Ok(()),
    };
    if outcome.is_ok() {
        req.body = body;
        ctx.deployment = snapshot.deployments.get(deployment);
        if let Flow::Respond(err) = pipeline.on_request_body(&mut ctx, &req) {
            outcome = Err(err);
        }
    }
    let headers = ctx.response_headers.clone();
    pipeline.on_complete(&mut ctx);
    (outcome.map(|()| headers), ctx.tokens)
}

#[test]
fn a_per_second_rate_refills_after_retry_after_on_the_clock() {
    let snapshot = snapshot(r#"{ unit = "requests", rate = 5, per = "second", burst = 1 }"#);
    with_pipeline(&snapshot, |pipeline, clock| {
        let headers = decide(pipeline, &snapshot).expect("the first request");
        let headers = String::from_utf8(headers).unwrap();
        assert!(
            headers.contains("x-ratelimit-limit-requests: 5\r\n"),
            "{headers}"
        );
        let refused = decide(pipeline, &snapshot).expect_err("over the burst");
        assert_eq!(refused.status(), 429);
        let wait = refused.retry_after.expect("retry after");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        // Not yet: a moment before the retry time.
        clock.advance(wait - Duration::from_millis(1));
        assert_eq!(decide(pipeline, &snapshot).unwrap_err().status(), 429);
        clock.advance(Duration::from_millis(1));
        assert!(
            decide(pipeline, &snapshot).is_ok(),
            "admitted once retry-after has passed, at {} ns",
            clock.now_nanos()
        );
    });
}

#[test]
fn a_wrong_key_is_refused_at_the_head_and_counts_nothing() {
    let snapshot = snapshot(r#"{ unit = "requests", rate = 1, per = "minute" }"#);
    with_pipeline(&snapshot, |pipeline, _| {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\napi-key: wrong\r\n\r\n";
        let mut parsed = RequestHead::new();
        assert!(matches!(
            parse_request(head, &snapshot.server.limits, &mut parsed),
            Ok(Parse::Complete)
        ));
        let mut ctx = RequestCtx::new(
            &snapshot,
            RequestId::hex(&[(2, 4)]),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Instant::now(),
            Vec::new(),
            Vec::new(),
        );
        ctx.operation = Some(Operation::ChatCompletions);
        let req = Request {
            head: &parsed,
            buf: head,
            body: &[],
        };
        match pipeline.on_request(&mut ctx, &req) {
            Flow::Respond(err) => assert_eq!(err.status(), 401),
            Flow::Continue => panic!("a wrong key passed"),
        }
        pipeline.on_complete(&mut ctx);
        assert!(ctx.admission.is_none());
        // The subscription's one request a minute is still there.
        assert!(decide(pipeline, &snapshot).is_ok());
        assert_eq!(decide(pipeline, &snapshot).unwrap_err().status(), 429);
    });
}

#[test]
fn the_estimate_uses_the_deployments_family_not_the_bodys_model() {
    use crate::tokens::estimate::{Estimator, Family, RequestFacts};
    // `gpt-4` is a cl100k model; the body names an o200k one, which is not what runs.
    let snapshot = snapshot_for(
        "gpt-4",
        r#"{ unit = "tokens", rate = 100000, per = "minute" }"#,
    );
    with_pipeline(&snapshot, |pipeline, _| {
        let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Привет, как дела? 東京タワー"}]}"#
            .as_bytes();
        let (answer, tokens) = run(pipeline, &snapshot, "gpt-4", body);
        assert!(answer.is_ok());
        let facts = RequestFacts::parse(Operation::ChatCompletions, body).unwrap();
        let cl100k = Estimator::Bpe(Family::Cl100k).estimate_prompt(&facts);
        let o200k = Estimator::Bpe(Family::O200k).estimate_prompt(&facts);
        assert_ne!(cl100k, o200k, "the prompt must tell the families apart");
        assert_eq!(tokens.map(|t| t.prompt), Some(cl100k));
    });
}
