//! Token accounting (`sluice::tokens`): the prompt estimate per KiB of prompt (BPE o200k and
//! cl100k, the byte heuristic) and reading a request's facts; the usage of a JSON answer;
//! the SSE usage scan per event; pinning the body's `model` to the authorized deployment.
//!
//! Baselines: for the estimate, `tiktoken-rs` counting the same text in one call (Sluice
//! cuts it at clean split points to keep BPE linear, so the gap is that walk); for usage,
//! `serde_json::Value` built from the whole body, then `["usage"]`; for the SSE scan, a naive
//! scanner that needs the whole stream, splits it on blank lines and builds a `Value` of
//! every event, and a plain copy of the stream (the floor: a relay copies the bytes anyway);
//! for the model pin, replacing `model` in a `serde_json::Value` of the body and writing it
//! back (what Sluice did before it edited bytes in place).

#![allow(
    missing_docs,
    reason = "criterion_group! defines a public fn that cannot carry a doc comment"
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::Value;
use sluice::json_edit::set_string_member;
use sluice::route::Operation;
use sluice::tokens::usage::JsonUsageScanner;
use sluice::tokens::{
    reservation, usage_from_json, Estimator, Family, RequestFacts, SseScanner, Usage,
};
use sluice_bench::{
    chat_request_with, prose_kib, sse_events, CHAT_COMPLETION, CHAT_REQUEST, CHAT_STREAM_SSE,
};

const O200K: Estimator = Estimator::Bpe(Family::O200k);
const CL100K: Estimator = Estimator::Bpe(Family::Cl100k);

fn estimate(c: &mut Criterion) {
    assert!(O200K.warm() && CL100K.warm(), "BPE tables failed to load");
    let o200k = tiktoken_rs::o200k_base_singleton();
    let cl100k = tiktoken_rs::cl100k_base_singleton();
    let fast_o200k = bpe_openai::o200k_base();
    let fast_cl100k = bpe_openai::cl100k_base();
    for kib in [1usize, 4, 16] {
        let text = prose_kib().repeat(kib);
        let body = chat_request_with(&text);
        let facts = RequestFacts::parse(Operation::ChatCompletions, &body)
            .unwrap_or_else(|e| panic!("{e}"));
        // Sluice's count is tiktoken's on the same text (plus the chat framing), and so is
        // bpe-openai's.
        let framing = O200K.estimate_prompt(&facts) as usize
            - o200k.count_ordinary(&text)
            - o200k.count_ordinary("You are a concise assistant.");
        assert_eq!(framing, 2 * 4 + 3);
        assert_eq!(
            CL100K.count_text(&text),
            cl100k.count_ordinary(&text) as u64
        );
        assert_eq!(fast_o200k.count(text.as_str()), o200k.count_ordinary(&text));
        assert_eq!(
            fast_cl100k.count(text.as_str()),
            cl100k.count_ordinary(&text)
        );

        let mut group = c.benchmark_group(format!("tokens/estimate_{kib}KiB"));
        group.throughput(Throughput::Bytes(text.len() as u64));
        for (name, est) in [
            ("bpe_o200k", O200K),
            ("bpe_cl100k", CL100K),
            ("heuristic", Estimator::Heuristic),
        ] {
            group.bench_function(name, |b| b.iter(|| black_box(est).estimate_prompt(&facts)));
        }
        group.bench_function("tiktoken_o200k_one_call", |b| {
            b.iter(|| o200k.count_ordinary(black_box(&text)))
        });
        group.bench_function("tiktoken_cl100k_one_call", |b| {
            b.iter(|| cl100k.count_ordinary(black_box(&text)))
        });
        group.bench_function("bpe_openai_o200k_one_call", |b| {
            b.iter(|| fast_o200k.count(black_box(text.as_str())))
        });
        group.bench_function("bpe_openai_cl100k_one_call", |b| {
            b.iter(|| fast_cl100k.count(black_box(text.as_str())))
        });
        // Reading the body's facts (what admission does before any estimate).
        group.bench_with_input(BenchmarkId::new("parse_facts", kib), &body, |b, body| {
            b.iter(|| {
                let facts = RequestFacts::parse(Operation::ChatCompletions, black_box(body));
                facts.map(|f| reservation(&f, 0, 4096)).ok()
            })
        });
        group.finish();
    }
    // The small body `sluice-bench compare` sends (`chat_request.json`, two short messages).
    let facts = RequestFacts::parse(Operation::ChatCompletions, CHAT_REQUEST)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("tokens/estimate_small");
    group.throughput(Throughput::Bytes(CHAT_REQUEST.len() as u64));
    group.bench_function("bpe_o200k", |b| {
        b.iter(|| black_box(O200K).estimate_prompt(&facts))
    });
    group.bench_function("tiktoken_o200k_per_piece", |b| {
        b.iter(|| {
            facts
                .prompt
                .pieces
                .iter()
                .map(|p| o200k.count_ordinary(black_box(p)))
                .sum::<usize>()
        })
    });
    group.bench_function("bpe_openai_o200k_per_piece", |b| {
        b.iter(|| {
            facts
                .prompt
                .pieces
                .iter()
                .map(|p| fast_o200k.count(black_box(p.as_ref())))
                .sum::<usize>()
        })
    });
    group.finish();
}

/// `usage` via a whole `serde_json::Value` of the body.
fn naive_usage(body: &[u8]) -> Option<Usage> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let u = v.get("usage")?;
    let field = |k: &str| u.get(k).and_then(Value::as_u64);
    Some(Usage {
        prompt_tokens: field("prompt_tokens")?,
        completion_tokens: field("completion_tokens").unwrap_or(0),
        total_tokens: field("total_tokens")?,
    })
}

fn usage_json(c: &mut Criterion) {
    let want = Some(Usage {
        prompt_tokens: 27,
        completion_tokens: 21,
        total_tokens: 48,
    });
    assert_eq!(usage_from_json(CHAT_COMPLETION), want);
    assert_eq!(naive_usage(CHAT_COMPLETION), want);
    let mut group = c.benchmark_group("tokens/usage_json");
    group.throughput(Throughput::Bytes(CHAT_COMPLETION.len() as u64));
    group.bench_function("usage_from_json", |b| {
        b.iter(|| usage_from_json(black_box(CHAT_COMPLETION)))
    });
    group.bench_function("serde_value", |b| {
        b.iter(|| naive_usage(black_box(CHAT_COMPLETION)))
    });
    group.finish();

    // An embeddings answer: one 1536-float vector, then `model` and `usage` after it (the
    // order OpenAI and Azure send), read in the relay's 16 KiB pieces.
    let vector: Vec<String> = (0..1536)
        .map(|i| format!("{:.9}", (f64::from(i) * 0.37).sin() / 10.0))
        .collect();
    let embeddings = format!(
        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[{}]}}],"model":"text-embedding-3-small","usage":{{"prompt_tokens":8,"total_tokens":8}}}}"#,
        vector.join(",")
    );
    let want = Some(Usage {
        prompt_tokens: 8,
        completion_tokens: 0,
        total_tokens: 8,
    });
    assert_eq!(usage_from_json(embeddings.as_bytes()), want);
    let mut group = c.benchmark_group("tokens/usage_json_embeddings");
    group.throughput(Throughput::Bytes(embeddings.len() as u64));
    group.bench_function("scanner_16k_pieces", |b| {
        b.iter(|| {
            let mut scanner = JsonUsageScanner::new();
            for piece in black_box(embeddings.as_bytes()).chunks(16 * 1024) {
                scanner.feed(piece);
            }
            scanner.finish()
        })
    });
    group.bench_function("serde_value", |b| {
        b.iter(|| naive_usage(black_box(embeddings.as_bytes())))
    });
    group.finish();
}

/// Splits a whole stream on blank lines and builds a `Value` of every `data:` line: the
/// usage of the last event that has one. Needs the whole body; LF only.
fn naive_scan(stream: &[u8]) -> Option<Usage> {
    let mut usage = None;
    for event in sse_events(stream) {
        let data = event.strip_prefix(b"data: ")?.trim_ascii_end();
        if data == b"[DONE]" {
            break;
        }
        if let Some(u) = naive_usage(data) {
            usage = Some(u);
        }
    }
    usage
}

fn sse_scan(c: &mut Criterion) {
    let events = sse_events(CHAT_STREAM_SSE);
    let want = Some(Usage {
        prompt_tokens: 14,
        completion_tokens: 7,
        total_tokens: 21,
    });
    assert_eq!(naive_scan(CHAT_STREAM_SSE), want);
    let mut out = Vec::with_capacity(CHAT_STREAM_SSE.len());
    let mut scanner = SseScanner::new(true);
    for event in &events {
        scanner
            .feed(event, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let outcome = scanner.finish(&mut out);
    assert_eq!((outcome.usage, outcome.truncated), (want, false));
    assert_eq!(out.len(), CHAT_STREAM_SSE.len() - events[6].len());

    let mut group = c.benchmark_group("tokens/sse_scan");
    // Per event: criterion's elements/s is events/s.
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("feed_per_event", |b| {
        b.iter(|| {
            out.clear();
            let mut scanner = SseScanner::new(true);
            for event in &events {
                let _ = scanner.feed(black_box(event), &mut out);
            }
            scanner.finish(&mut out)
        })
    });
    group.bench_function("feed_whole", |b| {
        b.iter(|| {
            out.clear();
            let mut scanner = SseScanner::new(true);
            let _ = scanner.feed(black_box(CHAT_STREAM_SSE), &mut out);
            scanner.finish(&mut out)
        })
    });
    group.bench_function("observe_per_event", |b| {
        b.iter(|| {
            let mut scanner = SseScanner::new(false);
            for event in &events {
                let _ = scanner.observe(black_box(event));
            }
            scanner.finish(&mut out)
        })
    });
    group.bench_function("naive_value_per_event", |b| {
        b.iter(|| naive_scan(black_box(CHAT_STREAM_SSE)))
    });
    group.bench_function("memcpy_floor", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(CHAT_STREAM_SSE));
        })
    });
    group.finish();
}

/// `model` replaced through a whole `serde_json::Value` of the body.
fn naive_pin(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    v.as_object_mut()?
        .insert("model".to_owned(), Value::String(model.to_owned()));
    serde_json::to_vec(&v).ok()
}

fn pin_model(c: &mut Criterion) {
    for kib in [1usize, 16] {
        let body = chat_request_with(&prose_kib().repeat(kib));
        assert_eq!(set_string_member(&body, "model", "gpt-4o", true), Ok(None));
        let mut group = c.benchmark_group(format!("tokens/pin_model_{kib}KiB"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("same_model", |b| {
            b.iter(|| set_string_member(black_box(&body), "model", "gpt-4o", true))
        });
        group.bench_function("other_model", |b| {
            b.iter(|| set_string_member(black_box(&body), "model", "gpt-4o-mini", true))
        });
        group.bench_function("serde_value", |b| {
            b.iter(|| naive_pin(black_box(&body), "gpt-4o-mini"))
        });
        group.finish();
    }
}

criterion_group!(benches, estimate, usage_json, sse_scan, pin_model);
criterion_main!(benches);
