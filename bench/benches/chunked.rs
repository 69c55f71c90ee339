//! Chunked body decoding with `sluice::http::ChunkedDecoder`: a 4 KiB request body in 1 KiB
//! chunks, and a streamed chat answer (the SSE fixture, one chunk per event, as a backend
//! flushing each event frames it).
//!
//! Baselines, on the same input: `memcpy_floor` copies the payload bytes alone (no decoder
//! can beat it), and `naive_whole_buffer` is a ten-line decoder that needs the whole body in
//! memory and checks little. The decoder's gap to the naive one is the price of being
//! incremental (input may be split anywhere) and strict (bounds, bare LF, trailers).
//! `sse/sluice_per_event` feeds the stream one chunk per call, as reads arrive in the
//! gateway, so it also shows the per-call overhead.

#![allow(
    missing_docs,
    reason = "criterion_group! defines a public fn that cannot carry a doc comment"
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::http::ChunkedDecoder;
use sluice_bench::{chunked, chunked_parts, sse_events, CHAT_STREAM_SSE};

/// Decodes a whole chunked body held in memory, trusting it is well formed; `None` on the
/// framing errors it does notice.
fn naive_decode(mut input: &[u8], out: &mut Vec<u8>) -> Option<()> {
    loop {
        let line_end = input.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(input.get(..line_end)?).ok()?;
        let size = usize::from_str_radix(size_line.split(';').next()?, 16).ok()?;
        input = input.get(line_end + 2..)?;
        if size == 0 {
            return Some(());
        }
        out.extend_from_slice(input.get(..size)?);
        input = input.get(size + 2..)?;
    }
}

/// Benches the decoder and both baselines on `wire`, which frames `payload`.
fn decode_whole(c: &mut Criterion, group_name: &str, payload: &[u8], wire: &[u8]) {
    let mut out = Vec::with_capacity(payload.len());

    // Every contender must give back exactly the payload.
    let mut decoder = ChunkedDecoder::new(u64::MAX);
    let step = decoder.decode(wire, &mut out);
    assert_eq!(step.map(|s| (s.consumed, s.done)), Ok((wire.len(), true)));
    assert_eq!(out, payload);
    out.clear();
    assert_eq!(naive_decode(wire, &mut out), Some(()));
    assert_eq!(out, payload);

    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("sluice_decoder", |b| {
        b.iter(|| {
            out.clear();
            let mut decoder = ChunkedDecoder::new(u64::MAX);
            decoder.decode(black_box(wire), &mut out)
        })
    });
    group.bench_function("naive_whole_buffer", |b| {
        b.iter(|| {
            out.clear();
            naive_decode(black_box(wire), &mut out)
        })
    });
    group.bench_function("memcpy_floor", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(payload));
        })
    });
    group.finish();
}

fn chunked_decoding(c: &mut Criterion) {
    let body: Vec<u8> = (0..4096u32)
        .map(|i| b"abcdefghijklmnop"[i as usize % 16])
        .collect();
    decode_whole(
        c,
        "chunked/4KiB_in_1KiB_chunks",
        &body,
        &chunked(&body, 1024),
    );

    let events = sse_events(CHAT_STREAM_SSE);
    let wire = chunked_parts(events.iter().copied());
    decode_whole(c, "chunked/sse_chat_stream", CHAT_STREAM_SSE, &wire);

    // The same stream, one read per chunk (the last read carries the last chunk too).
    let mut reads: Vec<Vec<u8>> = events.iter().map(|e| chunked_parts([*e])).collect();
    for read in &mut reads {
        read.truncate(read.len() - sluice::http::LAST_CHUNK.len());
    }
    if let Some(last) = reads.last_mut() {
        last.extend_from_slice(sluice::http::LAST_CHUNK);
    }
    assert_eq!(reads.concat(), wire);
    let mut out = Vec::with_capacity(CHAT_STREAM_SSE.len());
    let mut decoder = ChunkedDecoder::new(u64::MAX);
    for read in &reads {
        let step = decoder.decode(read, &mut out);
        assert_eq!(step.map(|s| s.consumed), Ok(read.len()));
    }
    assert!(decoder.is_done());
    assert_eq!(out, CHAT_STREAM_SSE);
    let mut group = c.benchmark_group("chunked/sse_chat_stream");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("sluice_decoder_per_event", |b| {
        b.iter(|| {
            out.clear();
            let mut decoder = ChunkedDecoder::new(u64::MAX);
            for read in &reads {
                if decoder.decode(black_box(read), &mut out).is_err() {
                    break;
                }
            }
            decoder.is_done()
        })
    });
    group.finish();
}

criterion_group!(benches, chunked_decoding);
criterion_main!(benches);
