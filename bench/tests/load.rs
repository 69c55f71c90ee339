//! Whole-run tests of `sluice-bench load` against a scripted upstream written here: std
//! threads on 127.0.0.1, one per connection, counting every request it sees, answering each
//! by a script (ok, a status, a reset, a truncated or unparseable answer, silence, or an SSE
//! stream at a set pace) and able to stall every answer due in one window.
//!
//! The tests run one at a time (the machine has two cores and some assert on timing).

// The scripted upstream's helpers are test code too, outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_bench::load::{run, LoadConfig, LoadReport, Mode};

/// How the scripted upstream answers one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// 200 with a small JSON body.
    Ok,
    /// This status with a small JSON body.
    Status(u16),
    /// Close with the request unread: the kernel resets the connection.
    Reset,
    /// A head promising 100 bytes, 5 of them, then close.
    Truncate,
    /// A status line that does not parse.
    Garbage,
    /// Never answer (until the client closes).
    Silent,
    /// A chunked SSE stream: `events` data events then `[DONE]`, the first after `first`,
    /// each later one `pace` after the previous.
    Stream {
        events: u32,
        first: Duration,
        pace: Duration,
    },
}

struct Script {
    /// Replies by request index, cycled.
    replies: Vec<Reply>,
    /// Every answer due in [first request + .0, + .0 + .1) waits until the window's end.
    stall: Option<(Duration, Duration)>,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(replies: Vec<Reply>) -> Self {
        Self::with_script(Script {
            replies,
            stall: None,
        })
    }

    fn with_script(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let first = Arc::new(OnceLock::new());
        let (s, st) = (seen.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, script, first) = (s.clone(), script.clone(), first.clone());
                std::thread::spawn(move || serve(conn, &s, &script, &first));
            }
        });
        Self {
            addr,
            seen,
            stop,
            accept: Some(accept),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Length of the complete request at the start of `buf`, if it is all there.
fn request_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else {
        return None;
    };
    let body = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |h| {
            std::str::from_utf8(h.value).unwrap().parse().unwrap()
        });
    (buf.len() >= head + body).then_some(head + body)
}

fn serve(mut conn: TcpStream, seen: &AtomicU64, script: &Script, first: &OnceLock<Instant>) {
    conn.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Peek until a whole request is there, so a reset can leave it unread.
        let len = loop {
            match conn.peek(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => match request_len(&buf[..n]) {
                    Some(len) => break len,
                    None => std::thread::sleep(Duration::from_millis(1)),
                },
            }
        };
        let index = seen.fetch_add(1, Ordering::SeqCst);
        let t0 = *first.get_or_init(Instant::now);
        let reply = script.replies[index as usize % script.replies.len()];
        if let Reply::Reset = reply {
            return; // Dropped with unread bytes: RST.
        }
        conn.read_exact(&mut buf[..len]).unwrap();
        if let Some((after, during)) = script.stall {
            let (from, to) = (t0 + after, t0 + after + during);
            let now = Instant::now();
            if now >= from && now < to {
                std::thread::sleep(to - now);
            }
        }
        let ok = match reply {
            Reply::Ok => conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                .is_ok(),
            Reply::Status(status) => conn
                .write_all(
                    format!(
                        "HTTP/1.1 {status} Scripted\r\nretry-after-ms: 10\r\nContent-Length: 2\r\n\r\n{{}}"
                    )
                    .as_bytes(),
                )
                .is_ok(),
            Reply::Reset => unreachable!(),
            Reply::Truncate => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
                let _ = conn.shutdown(Shutdown::Both);
                false
            }
            Reply::Garbage => {
                let _ = conn.write_all(b"HTTP/1.1 abc nonsense\r\n\r\n");
                false
            }
            Reply::Silent => {
                // Until the client gives up and closes.
                let _ = conn.read(&mut buf);
                false
            }
            Reply::Stream {
                events,
                first,
                pace,
            } => stream(&mut conn, events, first, pace).is_ok(),
        };
        if !ok {
            return;
        }
    }
}

fn stream(
    conn: &mut TcpStream,
    events: u32,
    first: Duration,
    pace: Duration,
) -> std::io::Result<()> {
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    std::thread::sleep(first);
    for i in 0..=events {
        if i > 0 {
            std::thread::sleep(pace);
        }
        let data = if i == events {
            "data: [DONE]\n\n".to_string()
        } else {
            format!("data: {{\"n\":{i}}}\n\n")
        };
        conn.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())?;
    }
    conn.write_all(b"0\r\n\r\n")
}

/// One test at a time: two shared cores, and timing-sensitive assertions.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(url: String) -> LoadConfig {
    LoadConfig {
        url,
        connections: 4,
        threads: 2,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(5),
        ..LoadConfig::default()
    }
}

/// Bounds on how many measured requests took at least `us`, read off the latency curve
/// (each point gives the exact share of requests at or below its latency).
fn slower_than(report: &LoadReport, us: u64) -> (u64, u64) {
    let n = report.latency_us.count as f64;
    let curve = &report.latency_curve;
    let below = curve.iter().rev().find(|p| p.latency_us < us);
    let above = curve.iter().find(|p| p.latency_us >= us);
    let upper = below.map_or(n, |p| n * (1.0 - p.percentile / 100.0));
    let lower = above.map_or(0.0, |p| n * (1.0 - p.percentile / 100.0));
    (lower.round() as u64, upper.round() as u64)
}

#[test]
fn closed_loop_counts_exactly_by_requests_and_by_duration() {
    let _serial = serial();
    let up = Upstream::start(vec![Reply::Ok]);
    let report = run(&LoadConfig {
        requests: Some(300),
        ..config(up.url("/v1/models"))
    })
    .unwrap();
    assert_eq!(report.mode, Mode::Closed);
    assert_eq!(
        (report.requests, report.ok, report.warmup_requests),
        (300, 300, 0)
    );
    assert_eq!(up.seen(), 300);
    assert_eq!(report.latency_us.count, 300);

    let up = Upstream::start(vec![Reply::Ok]);
    let report = run(&LoadConfig {
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(100),
        ..config(up.url("/v1/models"))
    })
    .unwrap();
    assert!(
        report.requests > 0 && report.warmup_requests > 0,
        "{report:?}"
    );
    assert_eq!(report.requests + report.warmup_requests, up.seen());
    assert_eq!(report.ok, report.requests);
    // A phase lasts at least its length; how much longer is the machine's business.
    assert!(report.duration_s >= 0.3, "{}", report.duration_s);
}

#[test]
fn open_loop_counts_exactly_by_requests_and_by_duration() {
    let _serial = serial();
    let up = Upstream::start(vec![Reply::Ok]);
    let report = run(&LoadConfig {
        rate: Some(1000.0),
        requests: Some(200),
        ..config(up.url("/v1/models"))
    })
    .unwrap();
    assert_eq!(report.mode, Mode::Open);
    assert_eq!(report.rate, Some(1000.0));
    assert_eq!((report.requests, report.ok), (200, 200));
    assert_eq!(up.seen(), 200);

    // 500 req/s: slots every 2 ms, 50 of them in the 100 ms warm-up and 200 in the 400 ms
    // measured part.
    let up = Upstream::start(vec![Reply::Ok]);
    let report = run(&LoadConfig {
        rate: Some(500.0),
        duration: Duration::from_millis(400),
        warmup: Duration::from_millis(100),
        ..config(up.url("/v1/models"))
    })
    .unwrap();
    assert!((199..=201).contains(&report.requests), "{report:?}");
    assert!((49..=51).contains(&report.warmup_requests), "{report:?}");
    assert_eq!(report.requests + report.warmup_requests, up.seen());
    // The rate reported is the requests over the phase's measured length (both rounded in
    // the report).
    let rps = report.requests as f64 / report.duration_s;
    assert!(
        (report.rps - rps).abs() <= 0.01 * rps,
        "{} vs {rps}",
        report.rps
    );
}

#[test]
fn open_loop_charges_a_stall_to_every_request_it_delays_closed_loop_does_not() {
    let _serial = serial();
    let stalled = || {
        Upstream::with_script(Script {
            replies: vec![Reply::Ok],
            stall: Some((Duration::from_millis(300), Duration::from_millis(300))),
        })
    };
    let base = |up: &Upstream| LoadConfig {
        connections: 8,
        threads: 1,
        duration: Duration::from_millis(1000),
        ..config(up.url("/v1/models"))
    };

    let up = stalled();
    let open = run(&LoadConfig {
        rate: Some(300.0),
        ..base(&up)
    })
    .unwrap();
    assert_eq!(open.requests, up.seen());
    assert!(open.latency_us.p99 >= 200_000, "{:?}", open.latency_us);

    let up = stalled();
    let closed = run(&base(&up)).unwrap();
    assert_eq!(closed.requests, up.seen());

    // Open loop: every request due in the first 200 ms of the stall waits ≥ 100 ms (about
    // 60 at 300 req/s). Closed loop: each of the 8 connections waits once.
    let (open_slow, _) = slower_than(&open, 100_000);
    let (_, closed_slow) = slower_than(&closed, 100_000);
    assert!(
        open_slow >= 40,
        "open loop: {open_slow} slow, {:?}",
        open.latency_curve
    );
    assert!(
        closed_slow <= 12,
        "closed loop: {closed_slow} slow, {:?}",
        closed.latency_curve
    );
    assert!(
        open_slow >= closed_slow + 30,
        "open {open_slow}, closed {closed_slow}"
    );
}

#[test]
fn errors_are_counted_by_kind() {
    let _serial = serial();
    let up = Upstream::start(vec![
        Reply::Ok,
        Reply::Status(429),
        Reply::Status(404),
        Reply::Status(503),
        Reply::Reset,
        Reply::Truncate,
        Reply::Garbage,
    ]);
    let report = run(&LoadConfig {
        requests: Some(70),
        connections: 2,
        ..config(up.url("/v1/chat/completions"))
    })
    .unwrap();
    assert_eq!(up.seen(), 70);
    assert_eq!(report.requests, 70);
    assert_eq!(report.ok, 10);
    let e = report.errors;
    assert_eq!((e.status_429, e.status_4xx, e.status_5xx), (10, 10, 10));
    assert_eq!((e.reset, e.protocol), (20, 10), "{e:?}");
    assert_eq!((e.connect, e.timeout), (0, 0));
    assert_eq!(e.total(), 60);
    // Latency covers the complete answers, whatever their status.
    assert_eq!(report.latency_us.count, 40);

    let up = Upstream::start(vec![Reply::Silent]);
    let report = run(&LoadConfig {
        requests: Some(2),
        connections: 1,
        timeout: Duration::from_millis(200),
        ..config(up.url("/v1/models"))
    })
    .unwrap();
    assert_eq!(up.seen(), 2);
    assert_eq!((report.requests, report.errors.timeout), (2, 2));

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let report = run(&LoadConfig {
        requests: Some(5),
        connections: 1,
        ..config(format!("http://127.0.0.1:{port}/v1/models"))
    })
    .unwrap();
    assert_eq!((report.requests, report.errors.connect), (5, 5));
    assert_eq!(report.latency_us.count, 0);
}

#[test]
fn streaming_reports_time_to_first_token_and_gaps() {
    let _serial = serial();
    let up = Upstream::start(vec![Reply::Stream {
        events: 5,
        first: Duration::from_millis(50),
        pace: Duration::from_millis(30),
    }]);
    let report = run(&LoadConfig {
        requests: Some(3),
        connections: 1,
        stream: true,
        body: sluice_bench::CHAT_REQUEST_STREAM.to_vec(),
        ..config(up.url("/v1/chat/completions"))
    })
    .unwrap();
    assert_eq!((up.seen(), report.requests, report.ok), (3, 3, 3));
    let ttft = report.ttft_us.unwrap();
    let gap = report.event_gap_us.unwrap();
    // Six data events each ([DONE] included): one first token and five gaps per answer.
    assert_eq!((ttft.count, gap.count), (3, 15));
    assert!(ttft.p50 >= 45_000 && ttft.max < 1_000_000, "{ttft:?}");
    assert!(gap.p50 >= 20_000 && gap.max < 1_000_000, "{gap:?}");
    // The whole answer ends after the last event.
    assert!(report.latency_us.p50 > ttft.p50 + 4 * 20_000, "{report:?}");
    assert!(report.latency_us.p50 < 1_000_000);

    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<LoadReport>(&json).unwrap(), report);
}

#[test]
fn json_report_round_trips() {
    let _serial = serial();
    let up = Upstream::start(vec![Reply::Ok, Reply::Ok, Reply::Status(429)]);
    let report = run(&LoadConfig {
        rate: Some(400.0),
        requests: Some(90),
        label: "round trip".to_string(),
        ..config(up.url("/v1/models"))
    })
    .unwrap();
    assert_eq!((report.requests, report.errors.status_429), (90, 30));
    assert_eq!(report.label, "round trip");
    assert!(report.ttft_us.is_none());
    assert!(!report.latency_curve.is_empty());
    let json = serde_json::to_string_pretty(&report).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["mode"], "open");
    assert_eq!(value["ttft_us"], serde_json::Value::Null);
    assert_eq!(value["errors"]["status_429"], 30);
    assert_eq!(serde_json::from_str::<LoadReport>(&json).unwrap(), report);
}

#[test]
fn the_binary_prints_progress_and_a_table_and_writes_json() {
    let _serial = serial();
    let up = Upstream::start(vec![Reply::Ok]);
    let dir = std::env::temp_dir().join(format!("sluice-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(["load", "--url", &up.url("/v1/models"), "--rate", "200"])
        .args([
            "--duration",
            "1100ms",
            "--warmup",
            "0s",
            "--connections",
            "2",
        ])
        .args(["--label", "bin", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("[1s] "), "{stderr}");
    assert!(stderr.contains(" req/s, p99 "), "{stderr}");
    assert!(stdout.starts_with("bin  http://"), "{stdout}");
    for column in ["count", "mean", "p50", "p99", "p99.9", "max"] {
        assert!(stdout.contains(column), "{stdout}");
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("latency ")),
        "{stdout}"
    );
    let report: LoadReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report.requests, up.seen());
    assert!(
        stdout.contains(&format!("requests {}", report.requests)),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
