//! Whole-process tests of backend selection: smooth weighted round robin inside a priority
//! group, and priority groups (the next group only when the first has no usable member).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;

fn two_backend_body(a_url: &str, b_url: &str, a_member: &str, b_member: &str) -> String {
    format!(
        r#"
[[backend]]
name = "a"
kind = "openai"
url = "{a_url}"

[[backend]]
name = "b"
kind = "openai"
url = "{b_url}"

[[deployment]]
name = "chat"
backends = [{{ backend = "a"{a_member} }}, {{ backend = "b"{b_member} }}]
"#
    )
}

fn send_chats(s: &Sluice, n: usize) {
    let mut c = s.connect();
    for i in 0..n {
        let resp = c.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
}

/// nginx's smooth weighted round robin (ngx_http_upstream_get_peer), as a reference: each
/// pick adds every member's weight to its current weight, takes the first highest, and
/// takes the total back from it.
fn smooth_wrr(weights: &[(char, i64)], picks: usize) -> String {
    let total: i64 = weights.iter().map(|w| w.1).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = String::new();
    for _ in 0..picks {
        let mut best = 0;
        for (i, (_, w)) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(weights[best].0);
    }
    out
}

/// One worker, one connection: the order of the backends that answer is exactly smooth
/// weighted round robin's (a, a, b, a for 3:1 — never three of `a` and then `b`), and the
/// split of 400 is exactly 300:100.
#[test]
fn weighted_round_robin_splits_3_to_1() {
    let a = Upstream::json(upstream_chat_answer("a"));
    let b = Upstream::json(upstream_chat_answer("b"));
    let body = two_backend_body(&a.url(), &b.url(), ", weight = 3", ", weight = 1");
    let s = Launch::new(&body).workers(1).start();
    let mut c = s.connect();
    let order: String = (0..400)
        .map(|i| {
            let resp = c.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
            assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
            let model = resp.json()["model"].as_str().unwrap().to_string();
            model.chars().next().unwrap()
        })
        .collect();
    assert_eq!(order, smooth_wrr(&[('a', 3), ('b', 1)], 400));
    assert_eq!((a.request_count(), b.request_count()), (300, 100));
}

#[test]
fn weighted_round_robin_holds_across_workers_and_connections() {
    let a = Upstream::json(upstream_chat_answer("a"));
    let b = Upstream::json(upstream_chat_answer("b"));
    let body = two_backend_body(&a.url(), &b.url(), ", weight = 3", ", weight = 1");
    let s = Launch::new(&body).workers(2).start();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let port = s.port;
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for _ in 0..100 {
                    let resp = c.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
                    assert_eq!(resp.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (na, nb) = (a.request_count(), b.request_count());
    assert_eq!(na + nb, 400);
    // Each worker keeps its own cursor; the split still holds within a few requests.
    assert!(
        na.abs_diff(300) <= 8 && nb.abs_diff(100) <= 8,
        "split {na}:{nb}, want 300:100"
    );
}

#[test]
fn higher_priority_group_takes_all_traffic_while_up() {
    let a = Upstream::json(upstream_chat_answer("a"));
    let b = Upstream::json(upstream_chat_answer("b"));
    let body = two_backend_body(
        &a.url(),
        &b.url(),
        ", priority = 0",
        ", priority = 1, weight = 5",
    );
    let s = Launch::new(&body).start();
    send_chats(&s, 40);
    assert_eq!(a.request_count(), 40);
    assert_eq!(
        b.request_count(),
        0,
        "priority 1 got traffic while priority 0 was up"
    );
}

#[test]
fn traffic_spills_to_next_priority_when_the_first_is_down() {
    let down = format!("http://127.0.0.1:{}", closed_port());
    let b = Upstream::json(upstream_chat_answer("b"));
    let body = two_backend_body(&down, &b.url(), ", priority = 0", ", priority = 1");
    let s = Launch::new(&body).start();
    let t0 = Instant::now();
    send_chats(&s, 20);
    assert_eq!(b.request_count(), 20);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_refused_member_is_skipped_within_its_group() {
    let down = format!("http://127.0.0.1:{}", closed_port());
    let b = Upstream::json(upstream_chat_answer("b"));
    let body = two_backend_body(&down, &b.url(), "", "");
    let s = Launch::new(&body).start();
    let t0 = Instant::now();
    send_chats(&s, 20);
    assert_eq!(b.request_count(), 20);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}
