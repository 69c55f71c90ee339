//! Whole-process tests of the process lifecycle: config reload under load (file change and
//! SIGHUP), a bad file refused while the old config keeps serving, and a graceful SIGTERM
//! that lets a streaming request finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

fn mock_deployments(names: &[&str]) -> String {
    let mut out =
        String::from("[[backend]]\nname = \"mock-a\"\nkind = \"mock\"\ncompletion_tokens = 4\n\n");
    for n in names {
        out.push_str(&format!(
            "[[deployment]]\nname = \"{n}\"\nbackends = [{{ backend = \"mock-a\" }}]\n\n"
        ));
    }
    out
}

/// Pads `text` with a trailing comment to exactly `len` bytes.
fn padded(text: &str, len: usize) -> String {
    assert!(text.len() + 2 <= len, "pad target too small");
    let mut out = text.to_string();
    out.push('#');
    while out.len() < len - 1 {
        out.push(' ');
    }
    out.push('\n');
    out
}

/// Whether a fresh connection gets a 200 for a chat to `model`.
fn serves(s: &Sluice, model: &str) -> bool {
    let resp = s.post_json("/v1/chat/completions", &chat_body(Some(model), false));
    resp.status == 200
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    handle: thread::JoinHandle<()>,
}

/// One thread sending chats to `model` back to back (a new connection every 20 requests),
/// for at most `max` or until stopped.
fn start_load(port: u16, model: &'static str, max: Duration) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let handle = {
        let (stop, ok, failures) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
        thread::spawn(move || {
            let deadline = Instant::now() + max;
            let body = serde_json::to_vec(&chat_body(Some(model), false)).unwrap();
            let req = request_bytes(
                "POST",
                "/v1/chat/completions",
                &[("Content-Type", "application/json")],
                &body,
            );
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let mut c = Client::connect(port);
                for _ in 0..20 {
                    n += 1;
                    let res = c.try_send(&req).and_then(|()| c.try_read_response());
                    match res {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures.lock().unwrap().push(format!(
                            "request {n}: status {} {}",
                            r.status,
                            r.text()
                        )),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("request {n}: {e}"));
                            break;
                        }
                    }
                }
            }
        })
    };
    Load {
        stop,
        ok,
        failures,
        handle,
    }
}

impl Load {
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

const PAD_TO: usize = 2048;

/// How many times `needle` appears in the log so far.
fn log_count(s: &Sluice, needle: &str) -> usize {
    s.log().matches(needle).count()
}

/// Writes `text` as the config file and waits (≤ 10 s) for the reload it causes: one more
/// `config reloaded` line than before.
fn reload_to(s: &Sluice, text: &str) {
    let before = log_count(s, "config reloaded");
    s.write_raw_config(text);
    assert!(
        wait_until(Duration::from_secs(10), || log_count(s, "config reloaded")
            > before),
        "the file change was not reloaded; log:\n{}",
        s.log()
    );
}

/// A deployment `pool` over the scripted upstreams named in `members`, and a mock `alpha`
/// (the load's) and `slow` (completion tokens and pace given) deployment.
fn pool_config(members: &[(&str, &Upstream)], slow_tokens: u32) -> String {
    let mut out = format!(
        "[[backend]]\nname = \"mock-a\"\nkind = \"mock\"\ncompletion_tokens = 4\n\n\
         [[backend]]\nname = \"mock-slow\"\nkind = \"mock\"\ncompletion_tokens = {slow_tokens}\n\
         tokens_per_second = 10\n\n\
         [[deployment]]\nname = \"alpha\"\nbackends = [{{ backend = \"mock-a\" }}]\n\n\
         [[deployment]]\nname = \"slow\"\nbackends = [{{ backend = \"mock-slow\" }}]\n\n"
    );
    let mut refs = Vec::new();
    for (name, up) in members {
        out.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\nkind = \"openai\"\nurl = \"{}\"\n\n",
            up.url()
        ));
        refs.push(format!("{{ backend = \"{name}\" }}"));
    }
    out.push_str(&format!(
        "[[deployment]]\nname = \"pool\"\nbackends = [{}]\n",
        refs.join(", ")
    ));
    out
}

/// Eight clients sending back to back while the config is swapped four times — a pool's
/// members replaced twice, the `slow` deployment changed — get every answer (no failure, no
/// reset); after each swap the pool's requests reach only its new members; a stream begun
/// before the first swap runs through all of them and ends on the config it started with
/// (30 completion tokens, not the 5 of the later configs).
#[test]
fn reload_under_load_fails_no_request_and_a_stream_finishes_on_its_config() {
    let ups: Vec<Upstream> = ["a", "b", "c"]
        .iter()
        .map(|m| Upstream::json(upstream_chat_answer(m)))
        .collect();
    let (a, b, c) = (&ups[0], &ups[1], &ups[2]);
    let s = Launch::new(&pool_config(&[("a", a), ("b", b)], 30))
        .workers(2)
        .start();
    let loads: Vec<Load> = (0..8)
        .map(|_| start_load(s.port, "alpha", Duration::from_secs(60)))
        .collect();

    // A stream of 30 tokens at 10 a second: about 3 s, across every swap below.
    let mut streamer = s.connect();
    let mut asked = chat_body(Some("slow"), true);
    asked["stream_options"] = serde_json::json!({"include_usage": true});
    let bytes = serde_json::to_vec(&asked).unwrap();
    let (head, mut sse) = streamer.stream(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &bytes,
    );
    assert_eq!(head.status(), 200);
    assert!(sse.next_event().is_some());

    let pool_answers = |s: &Sluice| {
        for _ in 0..10 {
            let resp = s.post_json("/v1/chat/completions", &chat_body(Some("pool"), false));
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    };
    pool_answers(&s);
    assert!(a.request_count() > 0 && b.request_count() > 0);

    reload_to(&s, &s.config_for(&pool_config(&[("b", b), ("c", c)], 5)));
    let (a0, b0, c0) = (a.request_count(), b.request_count(), c.request_count());
    pool_answers(&s);
    assert_eq!(a.request_count(), a0, "a removed member got requests");
    assert!(b.request_count() > b0 && c.request_count() > c0);

    reload_to(&s, &s.config_for(&pool_config(&[("c", c)], 5)));
    let (b1, c1) = (b.request_count(), c.request_count());
    pool_answers(&s);
    assert_eq!(b.request_count(), b1, "a removed member got requests");
    assert_eq!(c.request_count(), c1 + 10);

    // Back and forth once more while the stream still runs.
    reload_to(&s, &s.config_for(&pool_config(&[("a", a), ("c", c)], 5)));
    reload_to(&s, &s.config_for(&pool_config(&[("c", c)], 5)));

    let rest = sse.collect_rest();
    assert_eq!(rest.last().and_then(|e| event_data(e)), Some("[DONE]"));
    let usage = rest
        .iter()
        .filter_map(|e| event_data(e))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| !v["usage"].is_null())
        .expect("the usage chunk");
    assert_eq!(
        usage["usage"]["completion_tokens"], 30,
        "the stream finished on the config it started with"
    );
    let new = s.post_json("/v1/chat/completions", &{
        let mut b = chat_body(Some("slow"), false);
        b["max_tokens"] = serde_json::json!(100);
        b
    });
    assert_eq!(
        new.json()["usage"]["completion_tokens"],
        5,
        "new requests see the new config"
    );

    let mut ok = 0;
    let mut failures = Vec::new();
    for load in loads {
        let (n, f) = load.finish();
        ok += n;
        failures.extend(f);
    }
    assert!(ok > 0, "the load got nothing through");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during reloads: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// A file that does not compile is refused with a log line naming its error — this file's
/// (a field named only in it), not an earlier refusal — and the last good config serves on.
#[test]
fn a_refused_reload_names_its_own_error_and_the_old_config_serves() {
    let s = Launch::new(&mock_deployments(&["alpha"])).start();
    for bad_key in ["no_such_key_first", "no_such_key_second"] {
        s.rewrite_config(&format!(
            "[[backend]]\nname = \"mock-a\"\nkind = \"mock\"\n{bad_key} = 1\n\n\
             [[deployment]]\nname = \"gone\"\nbackends = [{{ backend = \"mock-a\" }}]\n"
        ));
        assert!(
            wait_until(Duration::from_secs(10), || s
                .log()
                .lines()
                .skip_while(|l| !l.contains("config reload refused"))
                .any(|l| l.contains(bad_key))),
            "no refusal naming {bad_key}; log:\n{}",
            s.log()
        );
        assert!(serves(&s, "alpha"), "the last good config serves on");
        assert!(!serves(&s, "gone"));
    }
    assert_eq!(log_count(&s, "config reload refused"), 2, "{}", s.log());
    assert_eq!(log_count(&s, "config reloaded"), 0, "{}", s.log());
}

/// SIGHUP reloads: the new file has the old one's size, inode and modification time, so the
/// file poll cannot tell it changed; only the signal brings `gamma` in, and the reload's log
/// line says SIGHUP did it.
#[test]
fn sighup_reloads_a_change_the_file_poll_cannot_see() {
    let s = Launch::new(&mock_deployments(&["alpha"]))
        .workers(2)
        .start();
    reload_to(
        &s,
        &padded(&s.config_for(&mock_deployments(&["alpha", "beta"])), PAD_TO),
    );
    let mtime = fs::metadata(&s.config_path).unwrap().modified().unwrap();
    let gamma = padded(
        &s.config_for(&mock_deployments(&["alpha", "beta", "gamma"])),
        PAD_TO,
    );
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&s.config_path)
            .unwrap();
        use std::io::Write;
        (&f).write_all(gamma.as_bytes()).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let by_signal = "config reloaded reason=\"SIGHUP\"";
    assert_eq!(log_count(&s, by_signal), 0);
    s.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || log_count(&s, by_signal) == 1),
        "SIGHUP did not reload; log:\n{}",
        s.log()
    );
    assert!(serves(&s, "gamma") && serves(&s, "alpha") && serves(&s, "beta"));
}

/// A reload that changes `listen` or `workers` keeps the running ones (with a warning):
/// the old port serves, by both workers still.
#[test]
fn reload_keeps_the_listen_addresses_and_worker_count() {
    let s = Launch::new(&mock_deployments(&["alpha"]))
        .workers(2)
        .start();
    let before = log_count(&s, "config reloaded");
    s.write_raw_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\nworkers = 1\n\n{}",
        mock_deployments(&["alpha", "beta"])
    ));
    assert!(wait_until(Duration::from_secs(10), || log_count(
        &s,
        "config reloaded"
    ) > before));
    assert!(s
        .log()
        .contains("listen addresses and worker count change only on restart"));
    assert!(serves(&s, "beta"), "the rest of the file is in force");
    let mut workers = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let resp = s.get("/v1/models");
        assert_eq!(resp.status, 200);
        let id = resp.head.header("x-request-id").unwrap().to_string();
        workers.insert(id[8..12].to_string());
    }
    assert_eq!(workers.len(), 2, "both workers still serve: {workers:?}");
}

/// A key rotation is picked up by a reload: the new key is let in, the old one refused.
#[test]
fn a_reload_rotates_subscription_keys() {
    const OLD: &str = "test-key-reload-old";
    const NEW: &str = "test-key-reload-new";
    let config = |key: &str| {
        format!(
            "{}{}{}",
            mock_deployments(&["alpha"]),
            product("p", ""),
            subscription("team", "p", &[key])
        )
    };
    let s = Launch::new(&config(OLD)).start();
    let chat = |key: &str| chat_as(&s, key, &chat_body(Some("alpha"), false)).status;
    assert_eq!(chat(OLD), 200);
    assert_eq!(chat(NEW), 401);
    reload_to(&s, &s.config_for(&config(NEW)));
    assert_eq!(chat(NEW), 200);
    assert_eq!(chat(OLD), 401);
}

#[test]
fn sigterm_lets_a_streaming_request_finish_then_exits_0() {
    let body = "[[backend]]\nname = \"slow\"\nkind = \"mock\"\ncompletion_tokens = 20\n\
                tokens_per_second = 10\n\n\
                [[deployment]]\nname = \"slow\"\nbackends = [{ backend = \"slow\" }]\n";
    let mut s = Launch::new(body)
        .server("shutdown_grace = \"10s\"")
        .workers(2)
        .start();
    let port = s.port;
    let mut c = s.connect();
    let req = serde_json::to_vec(&chat_body(Some("slow"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &req,
    );
    assert_eq!(head.status(), 200);
    let first = sse.next_event().expect("first event");
    assert!(first.starts_with("data:"), "{first}");

    s.signal("TERM");

    // Once the signal has landed the listeners close: new connections are refused while
    // the stream in flight goes on.
    assert!(
        wait_until(Duration::from_secs(5), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "still accepting connections after SIGTERM; log:\n{}",
        s.log()
    );

    // The stream goes on to its end ([DONE] and the last chunk: a whole answer).
    let rest = sse.collect_rest();
    assert_eq!(
        rest.last().and_then(|e| event_data(e)),
        Some("[DONE]"),
        "the stream in flight was cut: {rest:?}"
    );
    assert!(
        rest.len() >= 10,
        "too few events after SIGTERM: {}",
        rest.len()
    );
    drop(c);

    let status = s
        .wait_exit(Duration::from_secs(12))
        .unwrap_or_else(|| panic!("still running 12 s after SIGTERM; log:\n{}", s.log()));
    assert!(status.success(), "exit status {status}; log:\n{}", s.log());
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_and_exits_promptly() {
    let mut s = Launch::new(&mock_deployments(&["alpha"]))
        .server("shutdown_grace = \"20s\"")
        .start();
    let mut idle = s.connect();
    assert_eq!(idle.request("GET", "/v1/models", &[], b"").status, 200);
    s.signal("TERM");
    // Closed by Sluice well inside the 20 s grace (a process that waited for it would only
    // close it by exiting, after 20 s).
    assert!(
        idle.closed_within(Duration::from_secs(5)),
        "the idle connection was kept open after SIGTERM"
    );
    let status = s
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("an idle keep-alive connection held the process past 5 s"));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigterm_does_not_wait_past_shutdown_grace() {
    // 40 tokens at 8/s: a 5 s stream, longer than the 1 s grace.
    let body = "[[backend]]\nname = \"slow\"\nkind = \"mock\"\ncompletion_tokens = 40\n\
                tokens_per_second = 8\n\n\
                [[deployment]]\nname = \"slow\"\nbackends = [{ backend = \"slow\" }]\n";
    let mut s = Launch::new(body).server("shutdown_grace = \"1s\"").start();
    let mut c = s.connect();
    let req = serde_json::to_vec(&chat_body(Some("slow"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &req,
    );
    assert_eq!(head.status(), 200);
    sse.next_event().expect("first event");
    let t0 = Instant::now();
    s.signal("TERM");
    let exited = s.wait_exit(Duration::from_secs(4));
    assert!(
        exited.is_some(),
        "still running 4 s after SIGTERM with shutdown_grace = 1s"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "exited after {:?}, before the grace period",
        t0.elapsed()
    );
}

/// SIGINT shuts down like SIGTERM: the listeners close and the process exits 0.
#[test]
fn sigint_shuts_down_gracefully() {
    let mut s = Launch::new(&mock_deployments(&["alpha"])).start();
    assert!(serves(&s, "alpha"));
    s.signal("INT");
    let status = s
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGINT; log:\n{}", s.log()));
    assert!(status.success(), "exit status {status}");
    assert!(s.log().contains("shutting down"), "{}", s.log());
    assert!(
        !s.ready_path.exists(),
        "the ready file is removed at shutdown"
    );
}

/// A limit keeps its bucket through a reload that inserts another limit before it in the
/// same list: its state is keyed by its name (here the default, `requests:subscription:
/// 1/minute`), not its position. Before names, the moved limit started afresh and the third
/// request passed.
#[test]
fn a_bucket_survives_a_reload_that_inserts_a_limit_before_it() {
    const KEY: &str = "test-key-reload-limits";
    let rpm = r#"{ unit = "requests", rate = 1, per = "minute" }"#;
    let tpm = r#"{ unit = "tokens", rate = 1000000, per = "minute" }"#;
    let config = |limits: &str| {
        format!(
            "{}{}{}",
            mock_deployments(&["alpha"]),
            product("p", &format!("limits = [{limits}]")),
            subscription("team", "p", &[KEY])
        )
    };
    let s = Launch::new(&config(rpm)).start();
    let chat = || chat_as(&s, KEY, &chat_body(Some("alpha"), false));
    assert_eq!(chat().status, 200);
    let refused = chat();
    assert_eq!(refused.status, 429, "{}", refused.text());

    reload_to(&s, &s.config_for(&config(&format!("{tpm}, {rpm}"))));
    let after = chat();
    assert_eq!(
        after.status,
        429,
        "the requests limit lost its bucket in the reload: {}",
        after.text()
    );
    // The refusal names the limit at its new place in the list.
    assert!(after.text().contains("product:p#1"), "{}", after.text());
}

/// A pool the reload left alone keeps its place in the smooth weighted round robin: with two
/// equal members and one worker, the request after a reload goes to the member whose turn it
/// is, not back to the first (where a fresh rotation would start). A changed pool starts over.
#[test]
fn an_unchanged_pool_keeps_its_rotation_across_a_reload() {
    let a = Upstream::json(upstream_chat_answer("a"));
    let b = Upstream::json(upstream_chat_answer("b"));
    let body = pool_config(&[("a", &a), ("b", &b)], 4);
    let s = Launch::new(&body).workers(1).start();
    let chat = || s.post_json("/v1/chat/completions", &chat_body(Some("pool"), false));
    assert_eq!(chat().status, 200);
    assert_eq!((a.request_count(), b.request_count()), (1, 0));

    // An unrelated change: another deployment.
    reload_to(
        &s,
        &s.config_for(&format!(
            "{body}\n[[deployment]]\nname = \"extra\"\nbackends = [{{ backend = \"mock-a\" }}]\n"
        )),
    );
    assert_eq!(chat().status, 200);
    assert_eq!(
        (a.request_count(), b.request_count()),
        (1, 1),
        "the rotation restarted after the reload"
    );
    assert_eq!(chat().status, 200);
    assert_eq!((a.request_count(), b.request_count()), (2, 1));
}

/// A reload that only reorders the `[[backend]]` blocks (which renumbers the backends) keeps
/// each deployment on its own backend: `one` still reaches `a` and `two` still reaches `b`,
/// on a worker that kept its balancers (the pools' shapes did not change).
#[test]
fn reordering_backend_blocks_keeps_each_deployment_on_its_backend() {
    let a = Upstream::json(upstream_chat_answer("a"));
    let b = Upstream::json(upstream_chat_answer("b"));
    let config = |first: (&str, &Upstream), second: (&str, &Upstream)| {
        let mut out = String::new();
        for (name, up) in [first, second] {
            out.push_str(&format!(
                "[[backend]]\nname = \"{name}\"\nkind = \"openai\"\nurl = \"{}\"\n\n",
                up.url()
            ));
        }
        out.push_str(
            "[[deployment]]\nname = \"one\"\nbackends = [{ backend = \"a\" }]\n\n\
             [[deployment]]\nname = \"two\"\nbackends = [{ backend = \"b\" }]\n",
        );
        out
    };
    let s = Launch::new(&config(("a", &a), ("b", &b)))
        .workers(1)
        .start();
    let chat = |model: &str| s.post_json("/v1/chat/completions", &chat_body(Some(model), false));
    assert_eq!(chat("one").status, 200);
    assert_eq!(chat("two").status, 200);
    assert_eq!((a.request_count(), b.request_count()), (1, 1));

    reload_to(&s, &s.config_for(&config(("b", &b), ("a", &a))));
    for _ in 0..2 {
        assert_eq!(chat("one").status, 200);
    }
    assert_eq!(
        (a.request_count(), b.request_count()),
        (3, 1),
        "after the reorder, `one` must still reach backend a"
    );
    assert_eq!(chat("two").status, 200);
    assert_eq!((a.request_count(), b.request_count()), (3, 2));
}
