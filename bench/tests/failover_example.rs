//! `examples/failover.toml` as whole processes: three `sluice-bench mock` backends (on ports
//! of the kernel's choosing instead of 18001–18003) and the real `sluice` (built beside this
//! bench by `cargo test --workspace`) on a copy of the example with those ports substituted.
//! Each case starts its own mocks and gateway, sends a few dozen requests and reads every
//! mock's counters (`GET /_mock/stats`): who served, who throttled, who was never asked.
//! Every socket read is bounded by a timeout; every process is stopped by its PID on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_bench::mock_server::MockStats;

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const START_TIMEOUT: Duration = Duration::from_secs(10);
const CHAT_PATH: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
const DEMO_KEY: &str = "sluice-demo-key";
/// The example's backends' ports, in its order (aoai-1, aoai-2, aoai-3).
const EXAMPLE_PORTS: [u16; 3] = [18001, 18002, 18003];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn example_text() -> String {
    std::fs::read_to_string(workspace_root().join("examples/failover.toml")).unwrap()
}

/// The `sluice` binary beside `sluice-bench` in the same target folder.
fn sluice_bin() -> PathBuf {
    let sluice = PathBuf::from(env!("CARGO_BIN_EXE_sluice-bench"))
        .with_file_name(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        sluice.is_file(),
        "{} is missing: build it with `cargo build -p sluice` (cargo test --workspace does)",
        sluice.display()
    );
    sluice
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("sluice-bench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process this test started: killed (by its PID) and reaped on drop.
struct Proc(Child);

impl Proc {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `sluice-bench mock` process on a free port.
struct Mock {
    proc: Proc,
    addr: SocketAddr,
}

impl Mock {
    /// Starts `sluice-bench mock --listen 127.0.0.1:0 ARGS…` and reads the address it bound
    /// from its listening line (within 10 s).
    fn start(args: &[&str]) -> Mock {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
            .args(["mock", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let proc = Proc(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stderr).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_TIMEOUT).expect("mock listening line");
        let addr = line
            .strip_prefix("sluice-bench mock listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .unwrap();
        Mock { proc, addr }
    }

    fn stats(&self) -> MockStats {
        let (status, body) = exchange(self.addr, "GET", "/_mock/stats", &[], b"");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// The gateway on the example, rewritten: listening and admin on port 0, backends on `ports`.
struct Gateway {
    _proc: Proc,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Gateway {
    fn start(ports: [u16; 3]) -> Gateway {
        let mut text = example_text();
        let mut edits = vec![
            (
                "listen = [\"127.0.0.1:8080\"]".to_owned(),
                "listen = [\"127.0.0.1:0\"]".to_owned(),
            ),
            (
                "listen = \"127.0.0.1:9090\"".to_owned(),
                "listen = \"127.0.0.1:0\"".to_owned(),
            ),
        ];
        for (from, to) in EXAMPLE_PORTS.iter().zip(ports) {
            edits.push((
                format!("url = \"http://127.0.0.1:{from}\""),
                format!("url = \"http://127.0.0.1:{to}\""),
            ));
        }
        for (from, to) in edits {
            assert!(text.contains(&from), "the example no longer has `{from}`");
            text = text.replace(&from, &to);
        }
        let dir = TempDir::new("failover");
        let config = dir.0.join("failover.toml");
        let ready = dir.0.join("ready");
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.0.join("stderr.log")).unwrap();
        let child = Command::new(sluice_bin())
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            // One worker: one round-robin cursor, so the priority-1 split is even here.
            .args(["--workers", "1"])
            .env("AOAI_KEY_1", "x")
            .env("AOAI_KEY_2", "x")
            .env("AOAI_KEY_3", "x")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut proc = Proc(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            if let Some(line) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_owned))
            {
                break line.parse().unwrap();
            }
            if let Some(status) = proc.0.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.0.join("stderr.log")).unwrap_or_default();
                panic!("sluice exited ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not start within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Gateway {
            _proc: proc,
            addr,
            _dir: dir,
        }
    }

    /// One chat request with the demo key: its status and body.
    fn chat(&self) -> (u16, String) {
        exchange(
            self.addr,
            "POST",
            CHAT_PATH,
            &[("api-key", DEMO_KEY), ("content-type", "application/json")],
            br#"{"messages":[{"role":"user","content":"Hello"}],"max_tokens":8}"#,
        )
    }

    /// `n` chat requests, one after another; every answer must be 200.
    fn chats_all_ok(&self, n: usize) {
        for i in 0..n {
            let (status, body) = self.chat();
            assert_eq!(status, 200, "request {i}: {body}");
        }
    }
}

/// One request on a new connection (`connection: close`): the answer's status and body.
fn exchange(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

fn ports(mocks: &[&Mock; 3]) -> [u16; 3] {
    mocks.map(|m| m.addr.port())
}

fn served(stats: &MockStats) -> u64 {
    stats.by_status.get(&200).copied().unwrap_or(0)
}

const REQUESTS: usize = 20;

#[test]
fn the_example_passes_check() {
    let out = Command::new(sluice_bin())
        .arg("--config")
        .arg(workspace_root().join("examples/failover.toml"))
        .arg("--check")
        .env("AOAI_KEY_1", "x")
        .env("AOAI_KEY_2", "x")
        .env("AOAI_KEY_3", "x")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("config OK: "), "{stdout}");
}

#[test]
fn healthy_priority_one_pair_shares_and_the_spare_is_not_asked() {
    let (a, b, c) = (Mock::start(&[]), Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(ports(&[&a, &b, &c]));
    gw.chats_all_ok(REQUESTS);
    let (sa, sb, sc) = (a.stats(), b.stats(), c.stats());
    assert_eq!(served(&sa) + served(&sb), REQUESTS as u64, "{sa:?} {sb:?}");
    // Equal weights, one worker: an even split (at least a quarter each, whatever the
    // round robin's phase).
    for s in [&sa, &sb] {
        assert!(served(s) >= (REQUESTS / 4) as u64, "{sa:?} {sb:?}");
        assert_eq!(s.by_status.len(), 1, "{s:?}");
    }
    assert_eq!(sc, MockStats::default(), "the spare was asked");
}

#[test]
fn a_throttling_priority_one_backend_sends_everything_to_its_peer() {
    let throttling = Mock::start(&["--rate-429", "1", "--retry-after-ms", "1000"]);
    let (b, c) = (Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(ports(&[&throttling, &b, &c]));
    gw.chats_all_ok(REQUESTS);
    let (sa, sb, sc) = (throttling.stats(), b.stats(), c.stats());
    assert_eq!(served(&sb), REQUESTS as u64, "{sb:?}");
    assert_eq!(served(&sa), 0, "{sa:?}");
    // Asked at least once (it answered 429 and cooled down), never more than the requests.
    let throttled = sa.by_status.get(&429).copied().unwrap_or(0);
    assert!(
        (1..=REQUESTS as u64).contains(&throttled),
        "{sa:?}: the throttling backend was never asked, or asked past its cool-down"
    );
    assert_eq!(sc, MockStats::default(), "the spare was asked");
}

#[test]
fn the_spare_serves_when_both_priority_one_backends_throttle_or_are_down() {
    let throttling = Mock::start(&["--rate-429", "1", "--retry-after-ms", "2000"]);
    let mut down = Mock::start(&[]);
    let spare = Mock::start(&[]);
    let gw = Gateway::start(ports(&[&throttling, &down, &spare]));
    // aoai-2's port now refuses connections.
    down.proc.stop();
    gw.chats_all_ok(REQUESTS);
    let (sa, sc) = (throttling.stats(), spare.stats());
    assert_eq!(served(&sc), REQUESTS as u64, "{sc:?}");
    assert_eq!(served(&sa), 0, "{sa:?}");
    assert!(sa.by_status.get(&429).copied().unwrap_or(0) >= 1, "{sa:?}");
}
