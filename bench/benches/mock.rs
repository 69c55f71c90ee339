//! The mock backend's rendering: `sluice::mock::reply` for a non-streaming chat completion,
//! and a whole 16-token streamed chat completion (`reply`, then every
//! `MockStream::next_event`). The baseline replays the same answer pre-rendered (one copy of
//! the body, or of each event): the floor for a mock that sends canned bytes, so the gap is
//! what reading the request and generating the answer cost per request.

#![allow(
    missing_docs,
    reason = "criterion_group! defines a public fn that cannot carry a doc comment"
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::mock::{reply, MockReply, MockSettings};
use sluice::route::Operation;
use sluice_bench::{sse_events, CHAT_REQUEST, CHAT_REQUEST_STREAM};

const CREATED: u64 = 1_732_612_400;

/// The whole streamed answer to `body`, one `Vec` per event; empty if it did not stream.
fn render_stream(settings: &MockSettings, body: &[u8], out: &mut Vec<u8>) -> usize {
    let MockReply::Stream(mut stream) =
        reply(settings, Operation::ChatCompletions, body, CREATED, 1)
    else {
        return 0;
    };
    let mut events = 0;
    while stream.next_event(out) {
        events += 1;
    }
    events
}

fn mock_replies(c: &mut Criterion) {
    let settings = MockSettings::default();
    assert_eq!(settings.completion_tokens, 16);

    let MockReply::Json { status: 200, body } = reply(
        &settings,
        Operation::ChatCompletions,
        CHAT_REQUEST,
        CREATED,
        1,
    ) else {
        panic!("the chat request fixture must get a 200 JSON answer");
    };
    let mut out = Vec::with_capacity(4096);
    let mut group = c.benchmark_group("mock/chat_completion");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("sluice_reply", |b| {
        b.iter(|| {
            reply(
                &settings,
                Operation::ChatCompletions,
                black_box(CHAT_REQUEST),
                CREATED,
                black_box(7),
            )
        })
    });
    group.bench_function("canned_copy", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&body));
        })
    });
    group.finish();

    // Role chunk, 16 token chunks, finish chunk, usage chunk, [DONE].
    out.clear();
    assert_eq!(render_stream(&settings, CHAT_REQUEST_STREAM, &mut out), 20);
    let rendered = out.clone();
    let canned: Vec<Vec<u8>> = sse_events(&rendered).iter().map(|e| e.to_vec()).collect();
    assert_eq!(canned.len(), 20);
    let mut group = c.benchmark_group("mock/chat_stream_16_tokens");
    group.throughput(Throughput::Bytes(rendered.len() as u64));
    group.bench_function("sluice_reply_and_events", |b| {
        b.iter(|| {
            out.clear();
            render_stream(&settings, black_box(CHAT_REQUEST_STREAM), &mut out)
        })
    });
    group.bench_function("canned_copy_per_event", |b| {
        b.iter(|| {
            out.clear();
            for event in &canned {
                out.extend_from_slice(black_box(event));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, mock_replies);
criterion_main!(benches);
