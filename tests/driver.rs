//! Whole-process test that the io_uring driver really carries requests where the kernel
//! allows io_uring, so a silent fall-back to epoll cannot carry the whole suite unnoticed.
//! Whether the kernel allows it is asked independently of Sluice: a ring of 8 entries is set
//! up here first (a container's seccomp profile or `kernel.io_uring_disabled` may refuse it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

/// Why the kernel refuses io_uring to this process, if it does.
fn io_uring_refused() -> Option<std::io::Error> {
    io_uring::IoUring::new(8).err()
}

fn startup_line(s: &Sluice) -> String {
    assert!(s.wait_log("sluice started", Duration::from_secs(5)));
    s.log()
        .lines()
        .find(|l| l.contains("sluice started"))
        .expect("startup line")
        .to_string()
}

/// Where the kernel allows io_uring, the default driver is io_uring (no fall-back) and a
/// forced `--driver io-uring` serves requests, plain and streamed. Where it does not, the
/// test says so plainly, and checks that the forced driver refuses to start and the default
/// falls back to epoll with a warning.
#[test]
fn io_uring_carries_requests_where_the_kernel_allows_it() {
    if let Some(e) = io_uring_refused() {
        eprintln!("SKIPPED io_uring half: the kernel refuses io_uring here ({e}); checking the fall-back instead");
        let s = Launch::new(MOCK_BODY).start();
        assert!(startup_line(&s).contains("driver=epoll"));
        assert!(s.log().contains("falling back to the epoll driver"));
        let out = std::process::Command::new(sluice_bin())
            .args(["--driver", "io-uring", "--config"])
            .arg(&s.config_path)
            .output()
            .expect("run sluice");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("io_uring refused"));
        return;
    }
    let auto = Launch::new(MOCK_BODY).start();
    let line = startup_line(&auto);
    assert!(
        line.contains("driver=io_uring"),
        "the default fell back: {line}"
    );
    assert!(!auto.log().contains("falling back"), "{}", auto.log());

    let forced = Launch::new(MOCK_BODY).driver("io-uring").workers(2).start();
    assert!(startup_line(&forced).contains("driver=io_uring"));
    let resp = forced.post_json("/v1/chat/completions", &chat_body(Some("gpt-4o"), false));
    assert_eq!(resp.status, 200);
    let mut c = forced.connect();
    let body = serde_json::to_vec(&chat_body(Some("gpt-4o"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(head.status(), 200);
    let mut events = 0;
    while let Some(event) = sse.next_event() {
        events += 1;
        if event.contains("[DONE]") {
            break;
        }
    }
    assert!(events > 2, "a whole stream over io_uring ({events} events)");
}
