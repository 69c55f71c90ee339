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

#[test]
fn reload_under_load_adds_a_deployment_refuses_a_bad_file_and_obeys_sighup() {
    let s = Launch::new(&mock_deployments(&["alpha"]))
        .workers(2)
        .start();
    s.write_raw_config(&padded(
        &s.config_for(&mock_deployments(&["alpha"])),
        PAD_TO,
    ));
    let load = start_load(s.port, "alpha", Duration::from_secs(40));
    assert!(!serves(&s, "beta"));

    // 1. A file change adds a deployment.
    s.write_raw_config(&padded(
        &s.config_for(&mock_deployments(&["alpha", "beta"])),
        PAD_TO,
    ));
    assert!(
        wait_until(Duration::from_secs(10), || serves(&s, "beta")),
        "new deployment not served within 10 s of the file change; log:\n{}",
        s.log()
    );

    // 2. A bad file is refused; the old routes keep working.
    s.write_raw_config(&s.config_for(
        "[[backend]]\nname = \"mock-a\"\nkind = \"mock\"\nno_such_key = 1\n\n\
         [[deployment]]\nname = \"alpha\"\nbackends = [{ backend = \"mock-a\" }]\n",
    ));
    assert!(
        s.wait_log("config reload refused", Duration::from_secs(10)),
        "no 'config reload refused' line; log:\n{}",
        s.log()
    );
    assert!(serves(&s, "alpha"));
    assert!(
        serves(&s, "beta"),
        "bad file must leave the last good config serving"
    );

    // 3. SIGHUP reloads. Write a file of the same size and mtime as the last good one, so a
    //    poll of size and mtime does not see it (a poll of the content would, and that is fine).
    let good = padded(&s.config_for(&mock_deployments(&["alpha", "beta"])), PAD_TO);
    s.write_raw_config(&good);
    // Let the poll see this file (same deployments as now, so nothing changes).
    thread::sleep(Duration::from_millis(2500));
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
    thread::sleep(Duration::from_millis(2500));
    if serves(&s, "gamma") {
        eprintln!("note: the file poll saw a same-size, same-mtime change; SIGHUP not isolated");
    }
    s.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || serves(&s, "gamma")),
        "SIGHUP did not reload; log:\n{}",
        s.log()
    );
    assert!(serves(&s, "alpha") && serves(&s, "beta"));

    let (ok, failures) = load.finish();
    assert!(ok > 0, "the load thread got nothing through");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during reloads: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
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

    let t0 = Instant::now();
    s.signal("TERM");

    // New requests are no longer served once the signal has landed.
    thread::sleep(Duration::from_millis(300));
    let late = std::net::TcpStream::connect(("127.0.0.1", port))
        .ok()
        .map(|stream| {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut late = Client {
                wire: Wire::new(stream),
            };
            late.try_send(&request_bytes("GET", "/v1/models", &[], b""))
                .and_then(|()| late.try_read_response())
        });
    if let Some(Ok(r)) = &late {
        assert_ne!(r.status, 200, "a request after SIGTERM was served");
    }

    let rest = sse.collect_rest();
    let stream_done = t0.elapsed();
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
    assert!(
        t0.elapsed() + Duration::from_millis(50) >= stream_done,
        "exited before the stream finished"
    );
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_and_exits_promptly() {
    let mut s = Launch::new(&mock_deployments(&["alpha"]))
        .server("shutdown_grace = \"20s\"")
        .start();
    let mut idle = s.connect();
    assert_eq!(idle.request("GET", "/v1/models", &[], b"").status, 200);
    let t0 = Instant::now();
    s.signal("TERM");
    let status = s
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("an idle keep-alive connection held the process past 5 s"));
    assert!(status.success(), "exit status {status}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(idle.closed_within(Duration::from_secs(1)));
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
