//! Request head parsing: `sluice::http::parse_request` on the head the OpenAI Python SDK
//! sends, against httparse alone on the same bytes. httparse is the floor (Sluice calls it
//! to tokenise); the gap is what Sluice's framing rules cost: the bare CR/LF and obs-fold
//! scan, the size limits, the header spans and the Content-Length / Host / Connection
//! semantics.

#![allow(
    missing_docs,
    reason = "criterion_group! defines a public fn that cannot carry a doc comment"
)]

use std::hint::black_box;
use std::mem::MaybeUninit;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::http::{parse_request, BodyFraming, Parse, RequestHead};
use sluice::snapshot::HttpLimits;
use sluice_bench::{openai_chat_request, CHAT_REQUEST, OPENAI_CHAT_HEAD};

/// As many header slots as Sluice offers httparse under the default limits.
const SLOTS: usize = 100;

fn head_parsing(c: &mut Criterion) {
    let buf = openai_chat_request();
    let limits = HttpLimits::default();
    let mut head = RequestHead::new();

    // The setup must parse as a real request would, or the figures mean nothing.
    let parsed = parse_request(&buf, &limits, &mut head);
    assert_eq!(parsed, Ok(Parse::Complete));
    assert_eq!(head.head_len, OPENAI_CHAT_HEAD.len());
    assert_eq!(head.body, BodyFraming::Length(CHAT_REQUEST.len() as u64));
    assert_eq!(head.headers.len(), 17);

    let mut group = c.benchmark_group("head/openai_python_17_headers");
    group.throughput(Throughput::Bytes(OPENAI_CHAT_HEAD.len() as u64));
    group.bench_function("sluice_parse_request", |b| {
        b.iter(|| parse_request(black_box(&buf), &limits, &mut head))
    });
    group.bench_function("httparse_floor", |b| {
        b.iter(|| {
            let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); SLOTS];
            let mut req = httparse::Request::new(&mut []);
            let status = req.parse_with_uninit_headers(black_box(&buf), &mut slots);
            // Use the result as Sluice does, so nothing is optimised away.
            (status.is_ok(), req.headers.len())
        })
    });
    group.finish();
}

criterion_group!(benches, head_parsing);
criterion_main!(benches);
