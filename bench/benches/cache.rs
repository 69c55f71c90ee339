//! The response cache's hit path: the canonical key of a chat request (its JSON parsed,
//! members sorted, re-serialized), the lookup in the deployment's store, and the replay (the
//! answer's head and stored body written into the connection's buffer, as
//! `server/cached.rs` does), against a `Mutex<HashMap>` store (the naive baseline) with the
//! same keys.
//!
//! `hit path`: one thread. `contended, 2 threads`: two threads looking up at once, each
//! doing the same number of hits; the time reported is for one hit *on each thread* (wall
//! time of the pair), so equal figures in the two groups mean throughput doubled with the
//! second thread. `same entry`: both threads read one entry (one shard: the worst case);
//! `16 entries`: each hit picks one of 16 (spread over the shards, as real traffic is).

#![allow(
    missing_docs,
    reason = "criterion_group! defines a public fn that cannot carry a doc comment"
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::answers::{answer_head, json_response};
use sluice::cache::control::Freshness;
use sluice::cache::key::request_key;
use sluice::cache::{CacheSettings, ResponseCache};
use sluice::limit::{Clock, SystemClock};
use sluice::policy::context::RequestId;
use sluice::route::Operation;

/// A chat request as an SDK sends it (~420 bytes), asking question `i`.
fn request(i: usize) -> Vec<u8> {
    format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"system","content":"You are a concise assistant who answers in one sentence."}},{{"role":"user","content":"Explain a token bucket rate limiter, and how it differs from a leaky bucket, in one sentence. Question {i}."}}],"temperature":0,"max_tokens":100,"user":"user-1234","stream":false,"top_p":1,"presence_penalty":0,"frequency_penalty":0}}"#
    )
    .into_bytes()
}

/// A chat answer as a backend sends it (~700 bytes).
fn answer() -> Box<[u8]> {
    let content = "A token bucket refills tokens at a fixed rate up to a burst capacity and lets a request through when it can take one, so bursts pass while the average rate holds; a leaky bucket instead drains queued requests at a constant rate, smoothing bursts rather than allowing them.";
    serde_json::to_vec_pretty(&serde_json::json!({
        "id": "chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz", "object": "chat.completion",
        "created": 1_732_612_345, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                     "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 52, "completion_tokens": 55, "total_tokens": 107},
        "system_fingerprint": "fp_0123456789"
    }))
    .unwrap_or_default()
    .into()
}

fn settings() -> CacheSettings {
    CacheSettings::default()
}

/// The key of `body` from subscription `team-a`.
fn key_of(body: &[u8]) -> Vec<u8> {
    request_key(
        Operation::ChatCompletions,
        Some("team-a"),
        body,
        &settings(),
    )
    .unwrap_or_default()
}

/// Sluice's store and the baseline, each holding the answers to questions 0..16.
fn stores() -> (ResponseCache, MutexStore) {
    let cache = ResponseCache::new(settings());
    let naive = MutexStore::default();
    let now = SystemClock.now_nanos();
    for i in 0..16 {
        let key = key_of(&request(i));
        cache.insert(
            key.clone().into(),
            answer().into(),
            b"application/json".to_vec().into(),
            Freshness::default(),
            now,
        );
        naive.insert(key.into(), answer());
    }
    (cache, naive)
}

/// Answers by key.
type AnswerMap = HashMap<Box<[u8]>, Arc<[u8]>>;

/// The naive store: one lock around a map, the answer shared by `Arc`.
#[derive(Default)]
struct MutexStore(Mutex<AnswerMap>);

impl MutexStore {
    fn insert(&self, key: Box<[u8]>, body: Box<[u8]>) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(key, body.into());
        }
    }

    fn get(&self, key: &[u8]) -> Option<Arc<[u8]>> {
        self.0.lock().ok()?.get(key).cloned()
    }
}

/// One hit through Sluice's store: key, lookup, replay into `out`.
fn sluice_hit(cache: &ResponseCache, body: &[u8], out: &mut Vec<u8>) -> usize {
    let key = key_of(body);
    let now = SystemClock.now_nanos();
    let Some(hit) = cache.get(&key, now) else {
        return 0;
    };
    out.clear();
    let id = RequestId::hex(&[(0x5eed_cafe, 8), (1, 4), (now, 12)]);
    let headers = b"x-sluice-cache: hit\r\n";
    answer_head(
        out,
        200,
        &hit.content_type,
        hit.body.len(),
        &id,
        false,
        headers,
    );
    out.extend_from_slice(&hit.body);
    out.len()
}

fn uncontended(c: &mut Criterion) {
    let (cache, naive) = stores();
    let body = request(3);
    let mut group = c.benchmark_group("cache/hit path");
    group.bench_function("canonical key", |b| {
        b.iter(|| black_box(key_of(black_box(&body)).len()))
    });
    group.bench_function("key + lookup (sluice)", |b| {
        b.iter(|| {
            let key = key_of(black_box(&body));
            black_box(cache.get(&key, SystemClock.now_nanos()).is_some())
        })
    });
    group.bench_function("key + lookup + replay (sluice)", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| black_box(sluice_hit(&cache, black_box(&body), &mut out)))
    });
    let key = key_of(&body);
    group.bench_function("lookup only (sluice)", |b| {
        b.iter(|| {
            black_box(
                cache
                    .get(black_box(&key), SystemClock.now_nanos())
                    .is_some(),
            )
        })
    });
    group.bench_function("lookup only (Mutex<HashMap> baseline)", |b| {
        b.iter(|| black_box(naive.get(black_box(&key)).is_some()))
    });
    group.bench_function("key + lookup (Mutex<HashMap> baseline)", |b| {
        b.iter(|| {
            let key = key_of(black_box(&body));
            black_box(naive.get(&key).is_some())
        })
    });
    group.finish();
}

/// Runs `per_thread(thread, iters)` on two threads started together; the wall time of the
/// pair.
fn two_threads<S: Sync>(
    shared: &S,
    iters: u64,
    per_thread: impl Fn(&S, usize, u64) + Sync,
) -> Duration {
    let barrier = Barrier::new(2);
    let start = Mutex::new(None::<Instant>);
    thread::scope(|s| {
        for t in 0..2 {
            let (barrier, start, per_thread) = (&barrier, &start, &per_thread);
            s.spawn(move || {
                barrier.wait();
                if let Ok(mut began) = start.lock() {
                    began.get_or_insert_with(Instant::now);
                }
                per_thread(shared, t, iters);
            });
        }
    });
    let begun = start
        .lock()
        .ok()
        .and_then(|t| *t)
        .unwrap_or_else(Instant::now);
    begun.elapsed()
}

fn contended(c: &mut Criterion) {
    let (cache, naive) = stores();
    let bodies: Vec<Vec<u8>> = (0..16).map(request).collect();
    let keys: Vec<Vec<u8>> = bodies.iter().map(|b| key_of(b)).collect();
    let mut group = c.benchmark_group("cache/contended, 2 threads");
    for (name, spread) in [("same entry", 1), ("16 entries", 16)] {
        let bodies = &bodies[..spread];
        let keys = &keys[..spread];
        // The store alone: keys computed beforehand, so only the lookups meet.
        group.bench_function(format!("lookup only, sluice, {name}"), |b| {
            b.iter_custom(|iters| {
                two_threads(&cache, iters, |cache, t, n| {
                    for i in 0..n as usize {
                        let key = &keys[(i * 7 + t) % keys.len()];
                        black_box(cache.get(key, SystemClock.now_nanos()).is_some());
                    }
                })
            })
        });
        group.bench_function(
            format!("lookup only, Mutex<HashMap> baseline, {name}"),
            |b| {
                b.iter_custom(|iters| {
                    two_threads(&naive, iters, |naive, t, n| {
                        for i in 0..n as usize {
                            let key = &keys[(i * 7 + t) % keys.len()];
                            black_box(naive.get(key).is_some());
                        }
                    })
                })
            },
        );
        group.bench_function(format!("sluice, {name}"), |b| {
            b.iter_custom(|iters| {
                two_threads(&cache, iters, |cache, t, n| {
                    let mut out = Vec::with_capacity(4096);
                    for i in 0..n as usize {
                        let body = &bodies[(i * 7 + t) % bodies.len()];
                        black_box(sluice_hit(cache, body, &mut out));
                    }
                })
            })
        });
        group.bench_function(format!("Mutex<HashMap> baseline, {name}"), |b| {
            b.iter_custom(|iters| {
                two_threads(&naive, iters, |naive, t, n| {
                    let mut out = Vec::with_capacity(4096);
                    for i in 0..n as usize {
                        let body = &bodies[(i * 7 + t) % bodies.len()];
                        let key = key_of(body);
                        if let Some(hit) = naive.get(&key) {
                            out.clear();
                            let id = RequestId::hex(&[(0x5eed_cafe, 8), (1, 4), (i as u64, 12)]);
                            json_response(
                                &mut out,
                                200,
                                &hit,
                                &id,
                                false,
                                b"x-sluice-cache: hit\r\n",
                            );
                        }
                        black_box(out.len());
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
