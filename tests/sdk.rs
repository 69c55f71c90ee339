//! Whole-process test with the official `openai` Python package: `OpenAI` and `AzureOpenAI`
//! clients pointed at Sluice do chat, streaming chat (with and without usage) and embeddings
//! against mock deployments (tests/sdk/openai_sdk.py), and meets a rate limit and retries
//! after its 429 (tests/sdk/openai_sdk_retry.py), and calls `responses.create()` and
//! `models.list()` through every client shape, Azure resource-level and deployment paths
//! included (tests/sdk/openai_sdk_routes.py); and the first script again over HTTPS, the
//! clients trusting a test CA; and through a failover and an exhausted pool
//! (tests/sdk/openai_sdk_failover.py).
//!
//! The interpreter is `$SLUICE_TEST_PYTHON`, else `.venv/bin/python` at the workspace root
//! (`.ci/run` makes it). Without one that can import `openai` each test prints `SKIPPED …`
//! to stderr (past the harness's capture, so it shows in the run's output) and passes — or
//! fails when `SLUICE_REQUIRE_SDK=1`, which `.ci/run` sets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use support::*;

fn interpreter() -> Option<PathBuf> {
    let candidate = match std::env::var_os("SLUICE_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".venv/bin/python"),
    };
    let ok = Command::new(&candidate)
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(candidate)
}

/// The interpreter, or `None` after printing why the test is skipped (a failure with
/// `SLUICE_REQUIRE_SDK=1`).
fn interpreter_or_skip(test: &str) -> Option<PathBuf> {
    let python = interpreter();
    if python.is_none() {
        let msg = "no Python with the `openai` package (set SLUICE_TEST_PYTHON or run .ci/run \
                   to make .venv)";
        if std::env::var_os("SLUICE_REQUIRE_SDK").is_some_and(|v| v == "1") {
            panic!("{msg}; SLUICE_REQUIRE_SDK=1, so this is a failure");
        }
        // Straight to the stderr handle: the test harness captures print!/eprint!, and a
        // skip must be seen.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {msg}");
    }
    python
}

/// Runs `tests/sdk/{script}` against `s` with `env`, bounded to 60 s; returns its stdout
/// after asserting it exited 0.
fn run_script(python: &PathBuf, script: &str, s: &Sluice, env: &[(&str, &str)]) -> String {
    let script = workspace_root().join("tests/sdk").join(script);
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .env("SLUICE_PORT", s.port.to_string())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("AZURE_OPENAI_API_KEY")
        .env_remove("AZURE_OPENAI_ENDPOINT")
        .env_remove("OPENAI_API_VERSION")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start python");

    // Bound the script's run time: kill it if it takes longer than 60 s.
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out = thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = child.wait().expect("wait python");
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "{} failed ({status})\nstdout:\n{out}\nstderr:\n{err}",
        script.display()
    );
    out
}

#[test]
fn openai_python_sdk_against_sluice() {
    let Some(python) = interpreter_or_skip("openai_python_sdk_against_sluice") else {
        return;
    };
    let s = Launch::new(MOCK_BODY).workers(2).start();
    let out = run_script(&python, "openai_sdk.py", &s, &[]);
    assert!(
        out.contains("openai sdk checks passed (http)"),
        "stdout:\n{out}"
    );
}

/// The same checks over HTTPS both ways: the `OpenAI` and `AzureOpenAI` clients, trusting a
/// test CA (and not the system roots) through their HTTP client, call Sluice's TLS listener;
/// that Sluice forwards to an `https://` backend — a second Sluice serving the mock on its
/// own TLS listener — verified against the same CA (`ca_file`, `server_name`).
#[test]
fn openai_python_sdk_over_https() {
    let Some(python) = interpreter_or_skip("openai_python_sdk_over_https") else {
        return;
    };
    let ca = support::tls_client::TestCa::new("Sluice SDK test CA");
    let tls = |extra: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\n\
             [server.tls]\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n{extra}"
        )
    };
    let files = |dir: &std::path::Path| {
        ca.server(&["localhost"]).write(dir, "gw");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    };
    let backend = Launch::file(&tls(MOCK_BODY))
        .listeners(2)
        .start_after(files);
    let front_body = format!(
        r#"
[[backend]]
name = "tls-mock"
kind = "openai"
url = "https://127.0.0.1:{}"
server_name = "localhost"
ca_file = "ca.pem"

[[deployment]]
name = "gpt-4o"
backends = [{{ backend = "tls-mock" }}]

[[deployment]]
name = "text-embedding-3-small"
backends = [{{ backend = "tls-mock" }}]
"#,
        backend.ports[1]
    );
    let s = Launch::file(&tls(&front_body))
        .listeners(2)
        .start_after(files);
    let base = format!("https://localhost:{}", s.ports[1]);
    let ca_path = s.config_path.parent().unwrap().join("ca.pem");
    let env = [
        ("SLUICE_BASE", base.as_str()),
        ("SLUICE_CA", ca_path.to_str().unwrap()),
    ];
    let out = run_script(&python, "openai_sdk.py", &s, &env);
    assert!(
        out.contains("openai sdk checks passed (https)"),
        "stdout:\n{out}"
    );
    // Every answer came over the second TLS hop: the backend Sluice's mock answered them.
    assert!(
        !s.log().contains("tls:") && !backend.log().contains("TLS handshake failed"),
        "{}\n{}",
        s.log(),
        backend.log()
    );
}

/// A subscription limited to 1 request a second (burst 1): the SDK's second call gets a 429
/// with Retry-After and its own retry succeeds after it (tests/sdk/openai_sdk_retry.py).
#[test]
fn openai_python_sdk_retries_after_a_429() {
    let Some(python) = interpreter_or_skip("openai_python_sdk_retries_after_a_429") else {
        return;
    };
    let key = "test-key-sdk-retry-subscription";
    let body = format!(
        "{MOCK_BODY}\n[[product]]\nname = \"tiny\"\n\
         limits = [{{ unit = \"requests\", rate = 1, per = \"second\", burst = 1 }}]\n\n\
         [[subscription]]\nname = \"sdk\"\nproduct = \"tiny\"\nkeys = [\"{}\"]\n",
        key_hash(key)
    );
    let s = Launch::new(&body).start();
    let out = run_script(&python, "openai_sdk_retry.py", &s, &[("SLUICE_KEY", key)]);
    assert!(
        out.contains("openai sdk retry checks passed"),
        "stdout:\n{out}"
    );
}

/// `AzureOpenAI` (endpoint, endpoint + deployment, deployment `base_url`) and `OpenAI` on
/// `/openai/v1/` call `responses.create()` and `models.list()` on the paths they build
/// (tests/sdk/openai_sdk_routes.py).
#[test]
fn openai_python_sdk_reaches_every_route_form() {
    let Some(python) = interpreter_or_skip("openai_python_sdk_reaches_every_route_form") else {
        return;
    };
    let s = Launch::new(MOCK_BODY).start();
    let out = run_script(&python, "openai_sdk_routes.py", &s, &[]);
    assert!(
        out.contains("openai sdk route checks passed"),
        "stdout:\n{out}"
    );
}

/// Failover and the exhausted pool as the SDK sees them (tests/sdk/openai_sdk_failover.py):
/// one clean answer (plain and streamed) through a backend answering 503; Sluice's 429 for
/// a pool that is cooling down, which the SDK waits out and retries; and a 429 after
/// Sluice's own retries, which says `x-should-retry: false` and is not retried.
#[test]
fn openai_python_sdk_through_failover_and_an_exhausted_pool() {
    let Some(python) =
        interpreter_or_skip("openai_python_sdk_through_failover_and_an_exhausted_pool")
    else {
        return;
    };
    let answer = |name: &str| serde_json::to_vec(&upstream_chat_answer(name)).unwrap();
    let failing = Upstream::start(|_, s| {
        respond(s, 503, &[], b"{\"error\":{\"message\":\"down\"}}");
        After::KeepAlive
    });
    let healthy_answer = answer("healthy");
    let healthy = Upstream::start(move |r, s| {
        if r.json()["stream"] == true {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            let _ = write_chunk(s, sse_chunk("hi").as_bytes());
            let _ = write_chunk(s, b"data: [DONE]\n\n");
            let _ = write_chunk(s, b"");
        } else {
            respond(
                s,
                200,
                &[("content-type", "application/json")],
                &healthy_answer,
            );
        }
        After::KeepAlive
    });
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&calls);
    let lone_answer = answer("lone");
    let lone = Upstream::start(move |_, s| {
        if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            respond(
                s,
                429,
                &[("retry-after-ms", "1500")],
                b"{\"error\":{\"message\":\"busy\"}}",
            );
        } else {
            respond(
                s,
                200,
                &[("content-type", "application/json")],
                &lone_answer,
            );
        }
        After::KeepAlive
    });
    let busy = || {
        Upstream::start(|_, s| {
            respond(
                s,
                429,
                &[("retry-after-ms", "30000")],
                b"{\"error\":{\"message\":\"busy\"}}",
            );
            After::KeepAlive
        })
    };
    let (busy_a, busy_b) = (busy(), busy());
    let mut body = String::new();
    for (name, up) in [
        ("failing", &failing),
        ("healthy", &healthy),
        ("lone", &lone),
        ("busy-a", &busy_a),
        ("busy-b", &busy_b),
    ] {
        body.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\nkind = \"openai\"\nurl = \"{}\"\n\n",
            up.url()
        ));
    }
    body.push_str(
        "[[deployment]]\nname = \"failover\"\nbackends = [{ backend = \"failing\" }, { backend = \"healthy\", priority = 1 }]\n\n\
         [[deployment]]\nname = \"lone\"\nbackends = [{ backend = \"lone\" }]\n\n\
         [[deployment]]\nname = \"throttled\"\nbackends = [{ backend = \"busy-a\" }, { backend = \"busy-b\" }]\n",
    );
    let s = Launch::new(&body).start();
    // The lone backend answers 429 once: its pool is cooling down when the script starts.
    let primed = s
        .connect()
        .post_json("/v1/chat/completions", &chat_body(Some("lone"), false));
    assert_eq!(primed.status, 429);
    let out = run_script(&python, "openai_sdk_failover.py", &s, &[]);
    assert!(
        out.contains("openai sdk failover checks passed"),
        "stdout:\n{out}"
    );
    assert_eq!(
        lone.request_count(),
        2,
        "the exhausted pool's 429 asked no backend"
    );
    assert_eq!(
        busy_a.request_count() + busy_b.request_count(),
        2,
        "the SDK did not retry Sluice's retried 429"
    );
}
