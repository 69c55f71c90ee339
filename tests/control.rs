//! The control plane as whole processes on 127.0.0.1: `sluice-control`, `sluice` nodes
//! managed by it and `sluicectl`, each a real child process. Nodes serve the built-in mock
//! backend, so what a node runs shows in what it answers (`/v1/models`, a chat).
//!
//! Every child is killed and reaped when its handle drops; every wait has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn control_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice-control"))
}

fn ctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluicectl"))
}

/// The `sluice` beside `sluicectl` in the same target folder.
fn sluice_bin() -> PathBuf {
    let sluice = ctl_bin()
        .parent()
        .expect("target dir")
        .join(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        sluice.is_file(),
        "{} is missing: build it with `cargo build -p sluice` (cargo test --workspace does)",
        sluice.display()
    );
    sluice
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "sluice-control-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop, with its stderr in a file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends SIGTERM (by PID) and waits up to `within` for the process to exit.
    fn terminate(&mut self, within: Duration) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        wait_until(within, || self.exited())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
    let file = std::fs::File::create(&log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .env("RUST_LOG", "info");
    Proc {
        child: cmd.spawn().expect("spawn"),
        log,
    }
}

/// Reads a ready file of `IP:PORT` lines once it exists (≤ `within`).
fn read_ready(path: &Path, proc: &mut Proc, within: Duration) -> Option<Vec<SocketAddr>> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return Some(text.lines().map(|l| l.parse().unwrap()).collect());
            }
        }
        if proc.exited() || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `sluice-control`.
struct Control {
    proc: Proc,
    addr: SocketAddr,
    url: String,
}

/// Starts `sluice-control` on `listen` (port 0 for a fresh one) and waits until it listens.
fn start_control(
    config: &Path,
    state: &Path,
    listen: &str,
    env: &[(&str, &str)],
    dir: &Path,
) -> Control {
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ready = dir.join(format!("control-{n}.ready"));
    let _ = std::fs::remove_file(&ready);
    let mut cmd = Command::new(control_bin());
    cmd.arg("--config")
        .arg(config)
        .arg("--state")
        .arg(state)
        .arg("--listen")
        .arg(listen);
    cmd.arg("--ready-file")
        .arg(&ready)
        .args(["--admin", "127.0.0.1:0"]);
    cmd.env_remove("SLUICE_OPERATOR_TOKEN")
        .env_remove("SLUICE_NODE_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = spawn(cmd, dir.join(format!("control-{n}.log")));
    let addr = read_ready(&ready, &mut proc, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("sluice-control did not start:\n{}", proc.log()))[0];
    Control {
        proc,
        url: format!("http://{addr}"),
        addr,
    }
}

impl Proc {
    /// The admin listener's port, from its `admin listening on` log line.
    fn admin_port(&self) -> u16 {
        let needle = "admin listening on ";
        let mut line = None;
        assert!(wait_until(Duration::from_secs(5), || {
            line = self.log().lines().find_map(|l| {
                l.split_once(needle)
                    .map(|(_, a)| a.split_whitespace().next().unwrap_or("").to_string())
            });
            line.is_some()
        }));
        line.unwrap().parse::<SocketAddr>().unwrap().port()
    }
}

impl Node {
    fn admin_port(&self) -> u16 {
        self.proc.admin_port()
    }
}

impl Control {
    fn admin_port(&self) -> u16 {
        self.proc.admin_port()
    }

    /// `/metrics`, parsed.
    fn metrics(&self) -> prometheus_parse::Scrape {
        let (status, body) = http(self.admin_port(), "GET", "/metrics", "");
        assert_eq!(status, 200);
        let lines = body.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("{e}: {body}"))
    }
}

/// The value of the sample `name` with exactly `labels` (`None` when there is none).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// A running managed `sluice` node.
struct Node {
    proc: Proc,
    port: u16,
}

/// Starts a managed node (one worker, an admin listener on a free port) and waits until it
/// serves.
fn start_node(
    url: &str,
    id: &str,
    env: &[(&str, &str)],
    config: Option<&Path>,
    dir: &Path,
) -> Node {
    let mut node = spawn_node(url, id, env, config, dir);
    let ready = dir.join(format!("{id}.ready"));
    let addrs = read_ready(&ready, &mut node.proc, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("node {id} did not start:\n{}", node.proc.log()));
    node.port = addrs[0].port();
    node
}

fn spawn_node(
    url: &str,
    id: &str,
    env: &[(&str, &str)],
    config: Option<&Path>,
    dir: &Path,
) -> Node {
    let ready = dir.join(format!("{id}.ready"));
    let _ = std::fs::remove_file(&ready);
    let mut cmd = Command::new(sluice_bin());
    cmd.current_dir(dir)
        .args([
            "--control-plane",
            url,
            "--node-id",
            id,
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--ready-file")
        .arg(&ready);
    match config {
        Some(config) => {
            cmd.arg("--config").arg(config);
        }
        None => {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
    }
    cmd.env_remove("SLUICE_NODE_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Node {
        proc: spawn(cmd, dir.join(format!("{id}.log"))),
        port: 0,
    }
}

/// Runs `sluicectl` against `url`: (exit code, stdout, stderr).
fn ctl(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(ctl_bin());
    cmd.arg("--server")
        .arg(url)
        .args(args)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_SERVER");
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run sluicectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ctl_json(url: &str, token: Option<&str>, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = ctl(url, token, &all);
    assert_eq!(code, 0, "sluicectl {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(port, method, path, "", body)
}

/// [`http`] with `extra` header lines (each ending in `\r\n`).
fn http_with(port: u16, method: &str, path: &str, extra: &str, body: &str) -> (u16, String) {
    let (status, _, body) = exchange(port, method, path, extra, body);
    (status, body)
}

/// One HTTP/1.1 request with `Connection: close`: (status, head, body).
fn exchange(port: u16, method: &str, path: &str, extra: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or_default();
    (status, head, body)
}

/// The deployments a node lists on `/v1/models`, sorted.
fn models(port: u16) -> Vec<String> {
    let (status, body) = http(port, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn chat(port: u16, model: &str) -> u16 {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    http(port, "POST", "/v1/chat/completions", &body).0
}

/// A config with one mock backend per deployment name.
fn mock_config(deployments: &[&str]) -> String {
    let mut text = String::new();
    for d in deployments {
        text.push_str(&format!(
            "[[backend]]\nname = \"mock-{d}\"\nkind = \"mock\"\nlatency = \"1ms\"\n\n[[deployment]]\nname = \"{d}\"\nbackends = [{{ backend = \"mock-{d}\" }}]\n\n"
        ));
    }
    text
}

fn node_states(url: &str, token: Option<&str>) -> Vec<(String, u64, String)> {
    ctl_json(url, token, &["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_string(),
                n["version"].as_u64().unwrap(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits up to `secs` seconds until `sluicectl nodes` shows exactly `want` (node, running
/// version, state), in node order.
fn states_become(url: &str, secs: u64, want: &[(&str, u64, &str)]) -> bool {
    let want: Vec<(String, u64, String)> = want
        .iter()
        .map(|&(n, v, s)| (n.to_string(), v, s.to_string()))
        .collect();
    wait_until(Duration::from_secs(secs), || node_states(url, None) == want)
}

#[test]
fn versions_reach_every_node_and_bad_ones_change_nothing() {
    let dir = TempDir::new("push");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, mock_config(&["alpha"])).unwrap();
    let control = start_control(&config, &dir.0.join("state"), "127.0.0.1:0", &[], &dir.0);
    let a = start_node(
        &control.url,
        "node-a",
        &[("ONLY_ON_A", "key-a")],
        None,
        &dir.0,
    );
    let b = start_node(&control.url, "node-b", &[], None, &dir.0);
    assert_eq!(models(a.port), ["alpha"]);
    assert_eq!(models(b.port), ["alpha"]);
    assert!(states_become(
        &control.url,
        2,
        &[("node-a", 1, "ACK"), ("node-b", 1, "ACK")]
    ));

    // A new version: both nodes run it within 2 s.
    let v2 = dir.0.join("v2.toml");
    std::fs::write(&v2, mock_config(&["alpha", "beta"])).unwrap();
    let (code, out, err) = ctl(&control.url, None, &["apply", "-f", v2.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "applied: version 2"), "{err}");
    let applied = Instant::now();
    assert!(wait_until(Duration::from_secs(2), || models(a.port).len()
        == 2
        && models(b.port).len() == 2));
    assert!(applied.elapsed() < Duration::from_secs(2));
    assert_eq!((chat(a.port, "beta"), chat(b.port, "beta")), (200, 200));
    assert!(states_become(
        &control.url,
        2,
        &[("node-a", 2, "ACK"), ("node-b", 2, "ACK")]
    ));
    // The same document again makes no version.
    let (code, out, _) = ctl(&control.url, None, &["apply", "-f", v2.to_str().unwrap()]);
    assert_eq!(
        (code, out.trim()),
        (0, "unchanged: version 2 already runs this document")
    );

    // A bad document: exit 1, every error located, nothing pushed.
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        mock_config(&["alpha"])
            + "[[deployment]]\nname = \"gamma\"\nbackends = [{ backend = \"nope\" }]\n",
    )
    .unwrap();
    let (code, _, err) = ctl(&control.url, None, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let located = format!(
        "{}:12:25: deployment[1].backends[0].backend: unknown backend `nope`",
        bad.display()
    );
    assert!(err.contains(&located), "{err}");
    let (code, out, _) = ctl(
        &control.url,
        None,
        &["-o", "json", "apply", "-f", bad.to_str().unwrap()],
    );
    let refused: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (code, &refused["errors"][0]["line"]),
        (1, &Value::from(12)),
        "{refused}"
    );
    assert_eq!(
        ctl_json(&control.url, None, &["get", "config"])["version"],
        2
    );
    assert_eq!(models(a.port).len(), 2);

    // `diff` shows what would change, and the same errors.
    let (code, out, _) = ctl(
        &control.url,
        None,
        &["diff", "-f", config.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    assert!(out.contains("-name = \"beta\""), "{out}");

    // A version node-b cannot compile (its host lacks the key variable): it NACKs and keeps
    // serving version 2; node-a runs version 3.
    let v3 = dir.0.join("v3.toml");
    std::fs::write(
        &v3,
        mock_config(&["alpha", "beta"])
            + "[[backend]]\nname = \"aoai\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:9\"\napi_key_env = \"ONLY_ON_A\"\n\n[[deployment]]\nname = \"gamma\"\nbackends = [{ backend = \"aoai\" }]\n",
    )
    .unwrap();
    let (code, out, err) = ctl(&control.url, None, &["apply", "-f", v3.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "applied: version 3"), "{err}");
    assert!(
        err.contains("ONLY_ON_A"),
        "the control plane's host lacks it too: {err}"
    );
    assert!(states_become(
        &control.url,
        2,
        &[("node-a", 3, "ACK"), ("node-b", 2, "NACK")]
    ));
    let nodes = ctl_json(&control.url, None, &["nodes"]);
    let errors = &nodes[1]["errors"];
    assert_eq!(errors[0]["field"], "backend[2].api_key_env", "{nodes}");
    assert_eq!(errors[0]["line"], 23, "{nodes}");
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("`ONLY_ON_A` is not set"));
    assert!(nodes[1]["last_seen"].is_string());
    assert_eq!(models(a.port), ["alpha", "beta", "gamma"]);
    assert_eq!(models(b.port), ["alpha", "beta"]);
    assert_eq!(chat(b.port, "beta"), 200);
    let (_, table, _) = ctl(&control.url, None, &["nodes"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node-b") && l.contains("NACK") && l.contains("ONLY_ON_A")),
        "{table}"
    );

    // The control plane's own metrics say the same.
    let metrics = control.metrics();
    assert_eq!(
        sample(&metrics, "sluice_control_config_version", &[]),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "sluice_control_nodes", &[("state", "ack")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "sluice_control_nodes", &[("state", "nack")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "sluice_control_nodes_connected", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "sluice_control_applies_total",
            &[("outcome", "refused")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "sluice_control_applies_total",
            &[("outcome", "unchanged")]
        ),
        Some(1.0)
    );
    assert!(metrics
        .samples
        .iter()
        .any(|s| s.metric.starts_with("sluice_control_push_seconds")));
    drop((a, b, control));
}

#[test]
fn a_version_names_the_git_commit_of_its_folder_and_survives_a_restart() {
    let dir = TempDir::new("git");
    let repo = dir.0.join("config");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("10-backends.toml"),
        "[[backend]]\nname = \"m\"\nkind = \"mock\"\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("20-deployments.toml"),
        "[[deployment]]\nname = \"alpha\"\nbackends = [{ backend = \"m\" }]\n",
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    let head = git(&["rev-parse", "HEAD"]);
    let state = dir.0.join("state");
    let mut control = start_control(&repo, &state, "127.0.0.1:0", &[], &dir.0);
    let got = ctl_json(&control.url, None, &["get", "config"]);
    assert_eq!(
        (got["version"].as_u64(), got["git_commit"].as_str()),
        (Some(1), Some(head.as_str())),
        "{got}"
    );
    assert_eq!(got["source"], repo.display().to_string());
    assert!(got["toml"].as_str().unwrap().contains("name = \"alpha\""));

    // An edit not yet committed: the watched folder makes version 2, marked dirty.
    std::fs::write(
        repo.join("30-more.toml"),
        "[[deployment]]\nname = \"beta\"\nbackends = [{ backend = \"m\" }]\n",
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || ctl_json(
        &control.url,
        None,
        &["get", "config"]
    )["version"]
        == 2));
    let got = ctl_json(&control.url, None, &["get", "config"]);
    assert_eq!(got["git_commit"], format!("{head}-dirty"));
    // An error in one file of the folder is located in that file.
    std::fs::write(
        repo.join("40-bad.toml"),
        "\n[[deployment]]\nname = \"gamma\"\nbackends = [{ backend = \"nope\" }]\n",
    )
    .unwrap();
    let (code, _, err) = ctl(&control.url, None, &["apply", "-f", repo.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("40-bad.toml:4:"), "{err}");
    std::fs::remove_file(repo.join("40-bad.toml")).unwrap();
    // One that does not even assemble (a key outside any table, not in the first file) is
    // refused before it is sent, with the same JSON shape.
    let extra = dir.0.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("10-a.toml"),
        "[[backend]]\nname = \"m\"\nkind = \"mock\"\n",
    )
    .unwrap();
    std::fs::write(extra.join("20-b.toml"), "stray = 1\n").unwrap();
    let (code, out, _) = ctl(
        &control.url,
        None,
        &["-o", "json", "apply", "-f", extra.to_str().unwrap()],
    );
    assert_eq!(code, 1);
    let refused: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        refused["errors"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("20-b.toml"),
        "{refused}"
    );

    // kill -9 and a restart on the same state: the same versions.
    let port = control.addr.port();
    control.proc.kill();
    let control = start_control(&repo, &state, &format!("127.0.0.1:{port}"), &[], &dir.0);
    let got = ctl_json(&control.url, None, &["get", "config"]);
    assert_eq!(got["version"], 2, "{got}");
    let first = ctl_json(&control.url, None, &["get", "config", "--version", "1"]);
    assert_eq!(first["git_commit"], head);
    let (code, _, err) = ctl(&control.url, None, &["get", "config", "--version", "9"]);
    assert_eq!(code, 1, "{err}");

    // A version made by `apply -f` survives a restart: the watched folder, unchanged since
    // it was last read, is not applied over it ...
    let other = dir.0.join("other.toml");
    std::fs::write(
        &other,
        "[[backend]]\nname = \"m\"\nkind = \"mock\"\n\n[[deployment]]\nname = \"delta\"\nbackends = [{ backend = \"m\" }]\n",
    )
    .unwrap();
    let (code, _, err) = ctl(
        &control.url,
        None,
        &["apply", "-f", other.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let mut control = control;
    control.proc.kill();
    let control = start_control(&repo, &state, &format!("127.0.0.1:{port}"), &[], &dir.0);
    let got = ctl_json(&control.url, None, &["get", "config"]);
    assert_eq!(got["version"], 3, "{got}");
    assert!(got["toml"].as_str().unwrap().contains("delta"), "{got}");
    // ... until the folder itself changes: the newest change wins.
    std::fs::remove_file(repo.join("30-more.toml")).unwrap();
    assert!(wait_until(Duration::from_secs(5), || ctl_json(
        &control.url,
        None,
        &["get", "config"]
    )["version"]
        == 4));
    let got = ctl_json(&control.url, None, &["get", "config"]);
    assert_eq!(got["git_commit"], head, "{got}");
}

#[test]
fn tokens_guard_operators_and_nodes() {
    let dir = TempDir::new("tokens");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, mock_config(&["alpha"])).unwrap();
    // Beyond loopback without tokens: refused before it listens.
    let mut cmd = Command::new(control_bin());
    cmd.arg("--config")
        .arg(&config)
        .arg("--state")
        .arg(dir.0.join("s0"))
        .args(["--listen", "0.0.0.0:0"]);
    cmd.env_remove("SLUICE_OPERATOR_TOKEN")
        .env_remove("SLUICE_NODE_TOKEN");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("refusing to listen on 0.0.0.0:0 without SLUICE_OPERATOR_TOKEN"));

    let env = [
        ("SLUICE_OPERATOR_TOKEN", "op-token-1"),
        ("SLUICE_NODE_TOKEN", "node-token-1"),
    ];
    let control = start_control(&config, &dir.0.join("state"), "127.0.0.1:0", &env, &dir.0);
    for token in [None, Some("wrong"), Some("node-token-1")] {
        let (code, _, err) = ctl(&control.url, token, &["get", "config"]);
        assert_eq!(code, 4, "{token:?}: {err}");
        assert!(!err.contains("op-token-1"));
    }
    assert_eq!(
        ctl(&control.url, Some("op-token-1"), &["get", "config"]).0,
        0
    );
    // A node with the wrong token is given no config (it never serves), and is not listed.
    let mut stranger = spawn_node(
        &control.url,
        "stranger",
        &[("SLUICE_NODE_TOKEN", "op-token-1")],
        None,
        &dir.0,
    );
    assert!(read_ready(
        &dir.0.join("stranger.ready"),
        &mut stranger.proc,
        Duration::from_secs(2)
    )
    .is_none());
    assert_eq!(node_states(&control.url, Some("op-token-1")), []);
    let friend = start_node(
        &control.url,
        "friend",
        &[("SLUICE_NODE_TOKEN", "node-token-1")],
        None,
        &dir.0,
    );
    assert_eq!(models(friend.port), ["alpha"]);
    assert!(
        !control.proc.log().contains("token-1"),
        "a token reached the log"
    );
    assert!(!stranger.proc.log().contains("op-token-1"));
    // Unreachable: exit 3.
    let (code, _, err) = ctl("http://127.0.0.1:9", None, &["nodes"]);
    assert_eq!(code, 3, "{err}");
    // A bad command line: exit 2.
    assert_eq!(ctl(&control.url, None, &["apply"]).0, 2);
    assert_eq!(
        ctl(
            &control.url,
            None,
            &["apply", "-f", "/nonexistent/sluice.toml"]
        )
        .0,
        2
    );
}

#[test]
fn nodes_serve_on_while_the_control_plane_is_away() {
    let dir = TempDir::new("away");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, mock_config(&["alpha"])).unwrap();
    let state = dir.0.join("state");
    let mut control = start_control(&config, &state, "127.0.0.1:0", &[], &dir.0);
    let port = control.addr.port();
    let url = control.url.clone();
    let a = start_node(&url, "node-a", &[], None, &dir.0);
    control.proc.kill();
    // The control plane is down: node-a serves on; a node with a local file starts on it.
    assert_eq!(chat(a.port, "alpha"), 200);
    let local = dir.0.join("local.toml");
    std::fs::write(
        &local,
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n".to_string() + &mock_config(&["local-only"]),
    )
    .unwrap();
    let b = start_node(&url, "node-b", &[], Some(&local), &dir.0);
    assert_eq!(models(b.port), ["local-only"]);
    assert_eq!(ctl(&url, None, &["nodes"]).0, 3);
    // It comes back (same state, same port): both nodes run its version, node-b on the
    // port its own file gave.
    std::fs::write(&config, mock_config(&["alpha", "beta"])).unwrap();
    let control = start_control(&config, &state, &format!("127.0.0.1:{port}"), &[], &dir.0);
    assert!(
        wait_until(Duration::from_secs(15), || models(b.port)
            == ["alpha", "beta"]),
        "{}",
        b.proc.log()
    );
    assert!(
        wait_until(Duration::from_secs(15), || models(a.port)
            == ["alpha", "beta"]),
        "{}",
        a.proc.log()
    );
    assert!(states_become(
        &control.url,
        2,
        &[("node-a", 2, "ACK"), ("node-b", 2, "ACK")]
    ));
    // The node's `/config` names the control plane's version of what it runs.
    let (status, body) = http(b.admin_port(), "GET", "/config", "");
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["control_plane_version"], 2, "{config}");
}

/// The model the mock that answered reports: a chat by the Azure path, whose body names no
/// model, so each mock answers with its own.
fn answered_by(port: u16) -> String {
    let (status, body) = http(
        port,
        "POST",
        "/openai/deployments/pool/chat/completions?api-version=2024-06-01",
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["model"].as_str().unwrap().to_string()
}

/// Which mocks answered `n` chats on `port`, counted.
fn spread(port: u16, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        *seen.entry(answered_by(port)).or_default() += 1;
    }
    seen
}

#[test]
fn drained_backends_take_no_request_on_any_node_until_undrained() {
    let dir = TempDir::new("drain");
    let config = dir.0.join("sluice.toml");
    std::fs::write(
        &config,
        "[[backend]]\nname = \"x\"\nkind = \"mock\"\nmodel = \"model-x\"\n\n\
         [[backend]]\nname = \"y\"\nkind = \"mock\"\nmodel = \"model-y\"\n\n\
         [[deployment]]\nname = \"pool\"\nbackends = [{ backend = \"x\" }, { backend = \"y\" }]\n",
    )
    .unwrap();
    let state = dir.0.join("state");
    let control = start_control(&config, &state, "127.0.0.1:0", &[], &dir.0);
    let a = start_node(&control.url, "node-a", &[], None, &dir.0);
    let b = start_node(&control.url, "node-b", &[], None, &dir.0);
    for node in [&a, &b] {
        assert_eq!(spread(node.port, 4).len(), 2, "both backends serve");
    }
    // Drain y: a new version; neither node sends it another request.
    let (code, out, err) = ctl(&control.url, None, &["backends", "drain", "y"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("y ") && l.contains("yes")),
        "{out}"
    );
    assert!(states_become(
        &control.url,
        2,
        &[("node-a", 2, "ACK"), ("node-b", 2, "ACK")]
    ));
    for node in [&a, &b] {
        assert_eq!(spread(node.port, 6).keys().collect::<Vec<_>>(), ["model-x"]);
    }
    // Shown by `get config`, and kept across a new document and a restart.
    let got = ctl_json(&control.url, None, &["get", "config"]);
    assert_eq!(got["drained_backends"], serde_json::json!(["y"]), "{got}");
    let (code, _, err) = ctl(&control.url, None, &["backends", "drain", "nope"]);
    assert_eq!(code, 1, "an unknown backend is refused: {err}");
    let (code, _, _) = ctl(&control.url, None, &["backends", "weight", "x", "0"]);
    assert_eq!(code, 1, "a weight of 0 is refused");
    // Weight 3:1 for x over y once y is back (smooth weighted round robin: exact per cycle).
    assert_eq!(
        ctl(
            &control.url,
            None,
            &["backends", "weight", "x", "3", "--deployment", "pool"]
        )
        .0,
        0
    );
    let mut control = control;
    let port = control.addr.port();
    control.proc.kill();
    let control = start_control(&config, &state, &format!("127.0.0.1:{port}"), &[], &dir.0);
    let listed = ctl_json(&control.url, None, &["backends", "list"]);
    assert_eq!(listed[1]["drained"], true, "{listed}");
    assert_eq!(listed[0]["pools"][0]["weight"], 3, "{listed}");
    assert_eq!(listed[0]["pools"][0]["configured_weight"], 1, "{listed}");
    let (code, _, err) = ctl(&control.url, None, &["backends", "undrain", "y"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        states_become(
            &control.url,
            15,
            &[("node-a", 4, "ACK"), ("node-b", 4, "ACK")]
        ),
        "{:?}",
        node_states(&control.url, None)
    );
    for node in [&a, &b] {
        let seen = spread(node.port, 8);
        assert_eq!(seen.get("model-x"), Some(&6), "{seen:?}");
        assert_eq!(seen.get("model-y"), Some(&2), "{seen:?}");
    }
}

/// A chat on `port` carrying `key` as `api-key`: the status.
fn chat_as(port: u16, model: &str, key: &str) -> u16 {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let extra = format!("api-key: {key}\r\n");
    http_with(port, "POST", "/v1/chat/completions", &extra, &body).0
}

#[test]
fn keys_made_by_the_control_plane_work_on_every_node_until_revoked() {
    let dir = TempDir::new("keys");
    let config = dir.0.join("sluice.toml");
    let subscriptions = "[[product]]\nname = \"standard\"\ndeployments = [\"*\"]\n\n[[subscription]]\nname = \"team-a\"\nproduct = \"standard\"\nkeys = []\n";
    std::fs::write(&config, mock_config(&["alpha"]) + subscriptions).unwrap();
    let state = dir.0.join("state");
    let mut control = start_control(&config, &state, "127.0.0.1:0", &[], &dir.0);
    let a = start_node(&control.url, "node-a", &[], None, &dir.0);
    let b = start_node(&control.url, "node-b", &[], None, &dir.0);
    assert!(states_become(
        &control.url,
        5,
        &[("node-a", 1, "ACK"), ("node-b", 1, "ACK")]
    ));
    assert_eq!(chat_as(a.port, "alpha", "sk-sluice-not-a-key"), 401);
    // A subscription the running config does not declare: refused, exit 1.
    let (code, _, err) = ctl(
        &control.url,
        None,
        &["keys", "create", "--subscription", "nobody"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nobody"), "{err}");

    let made = ctl_json(
        &control.url,
        None,
        &[
            "keys",
            "create",
            "--subscription",
            "team-a",
            "--label",
            "ci",
        ],
    );
    let key = made["key"].as_str().unwrap().to_string();
    let key_id = made["key_id"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-sluice-"), "{made}");
    assert_eq!(made["subscription"], "team-a");
    // A reader that goes away (`sluicectl … | head -1`) ends the output, not with a panic.
    let mut gone = Command::new(ctl_bin())
        .args(["--server", &control.url, "get", "config"])
        .env_remove("SLUICE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(gone.stdout.take());
    let gone = gone.wait_with_output().unwrap();
    assert_eq!(
        gone.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(2), || chat_as(a.port, "alpha", &key)
            == 200
            && chat_as(b.port, "alpha", &key) == 200),
        "{}",
        a.proc.log()
    );
    // Listed and shown by `get config` without the key itself.
    let listed = ctl_json(&control.url, None, &["keys", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["key_id"], key_id.as_str());
    assert!(!listed.to_string().contains(&key));
    let got = ctl_json(&control.url, None, &["get", "config"]);
    assert_eq!(
        got["subscription_keys"][0]["key_id"],
        key_id.as_str(),
        "{got}"
    );
    assert_eq!(got["subscription_keys"][0]["revoked"], false);

    let revoked = ctl_json(&control.url, None, &["keys", "revoke", &key_id]);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert!(
        wait_until(Duration::from_secs(2), || chat_as(a.port, "alpha", &key)
            == 401
            && chat_as(b.port, "alpha", &key) == 401),
        "{}",
        a.proc.log()
    );
    assert_eq!(
        ctl(
            &control.url,
            None,
            &["keys", "revoke", "key_0000000000000000"]
        )
        .0,
        1
    );
    assert_eq!(
        ctl_json(&control.url, None, &["keys", "list"])
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Kept across a restart; the key itself was never stored or logged anywhere.
    let port = control.addr.port();
    control.proc.kill();
    let control = start_control(&config, &state, &format!("127.0.0.1:{port}"), &[], &dir.0);
    let all = ctl_json(&control.url, None, &["keys", "list", "--all"]);
    assert_eq!(all[0]["key_id"], key_id.as_str(), "{all}");
    assert!(all[0]["revoked_at"].is_string());
    assert_eq!(chat_as(b.port, "alpha", &key), 401);
    for entry in std::fs::read_dir(&dir.0)
        .unwrap()
        .chain(std::fs::read_dir(&state).unwrap())
    {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "the key is in {}",
                path.display()
            );
        }
    }
    // A node that is gone can be forgotten; a connected one cannot.
    // A node that is gone can be forgotten; a connected one cannot.
    let connected = |id: &str, yes: bool| {
        ctl_json(&control.url, None, &["nodes"])
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node_id"] == id && n["connected"] == yes)
    };
    assert!(wait_until(Duration::from_secs(15), || connected(
        "node-a", true
    )));

    assert_eq!(ctl(&control.url, None, &["nodes", "forget", "node-a"]).0, 1);
    let mut a = a;
    a.proc.kill();
    assert!(wait_until(Duration::from_secs(10), || connected(
        "node-a", false
    )));
    let (code, _, err) = ctl(&control.url, None, &["nodes", "forget", "node-a"]);
    assert_eq!(code, 0, "{err}");
    let left: Vec<String> = node_states(&control.url, None)
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(left, ["node-b"]);
    assert_eq!(ctl(&control.url, None, &["nodes", "forget", "nobody"]).0, 1);
}

/// The usage an answer reported (`usage` of a JSON answer, or of a stream's last chunk that
/// carries it): (prompt, completion, total).
fn reported_usage(body: &str) -> (u64, u64, u64) {
    let read = |u: &Value| {
        (
            u["prompt_tokens"].as_u64().unwrap_or(0),
            u["completion_tokens"].as_u64().unwrap_or(0),
            u["total_tokens"].as_u64().unwrap(),
        )
    };
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return read(&v["usage"]);
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v["usage"].is_object())
        .map(|v| read(&v["usage"]))
        .next_back()
        .unwrap_or_else(|| panic!("no usage in {body}"))
}

/// Sends one of a mix (plain chat, streaming chat, embeddings) to `port` and returns what
/// the backend reported.
fn one_of_the_mix(port: u16, i: usize) -> (u64, u64, u64) {
    let (path, body) = match i % 3 {
        0 => (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"alpha","messages":[{{"role":"user","content":"count to {i}"}}]}}"#
            ),
        ),
        1 => (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"alpha","stream":true,"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"stream {i} please"}}]}}"#
            ),
        ),
        _ => (
            "/v1/embeddings",
            format!(r#"{{"model":"alpha","input":["text number {i}","and one more"]}}"#),
        ),
    };
    let (status, answer) = http(port, "POST", path, &body);
    assert_eq!(status, 200, "{answer}");
    reported_usage(&answer)
}

/// `sluicectl usage --by deployment -o json`'s row for `alpha`: (requests, prompt,
/// completion, total).
fn usage_of_alpha(url: &str) -> (u64, u64, u64, u64) {
    let rows = ctl_json(url, None, &["usage", "--by", "deployment", "--since", "1h"]);
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["deployment"] == "alpha")
        .map_or((0, 0, 0, 0), |r| {
            let n = |k: &str| r[k].as_u64().unwrap();
            (
                n("requests"),
                n("prompt_tokens"),
                n("completion_tokens"),
                n("total_tokens"),
            )
        })
}

#[test]
fn usage_from_every_node_is_counted_exactly_once_across_a_control_plane_kill() {
    let dir = TempDir::new("usage");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, mock_config(&["alpha"])).unwrap();
    let state = dir.0.join("state");
    let mut control = start_control(&config, &state, "127.0.0.1:0", &[], &dir.0);
    let port = control.addr.port();
    let a = start_node(&control.url, "node-a", &[], None, &dir.0);
    let b = start_node(&control.url, "node-b", &[], None, &dir.0);
    let mut expected = (0, 0, 0, 0);
    let send = |n: usize, expected: &mut (u64, u64, u64, u64)| {
        for i in 0..n {
            let node = if i % 2 == 0 { a.port } else { b.port };
            let (p, c, t) = one_of_the_mix(node, i);
            expected.0 += 1;
            expected.1 += p;
            expected.2 += c;
            expected.3 += t;
        }
    };
    send(30, &mut expected);
    assert!(
        wait_until(Duration::from_secs(10), || usage_of_alpha(&control.url)
            == expected),
        "{:?} != {expected:?}",
        usage_of_alpha(&control.url)
    );
    // kill -9 mid-run: nodes serve on and keep what is unanswered; a restart on the same
    // state neither loses nor double-counts a batch.
    send(12, &mut expected);
    control.proc.kill();
    send(18, &mut expected);
    let control = start_control(&config, &state, &format!("127.0.0.1:{port}"), &[], &dir.0);
    send(9, &mut expected);
    assert!(
        wait_until(Duration::from_secs(20), || usage_of_alpha(&control.url)
            == expected),
        "{:?} != {expected:?}\n{}",
        usage_of_alpha(&control.url),
        a.proc.log()
    );
    // Stays exact: nothing arrives twice later.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(usage_of_alpha(&control.url), expected);
    // Per node: both counted, and latency percentiles come from the histograms.
    let rows = ctl_json(&control.url, None, &["usage", "--by", "node,status_class"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in rows {
        assert_eq!(row["status_class"], "2xx");
        assert!(row["p50_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["p99_ms"].as_f64().unwrap() >= row["p50_ms"].as_f64().unwrap());
    }
    let batches = sample(
        &control.metrics(),
        "sluice_control_usage_batches_total",
        &[("outcome", "stored")],
    );
    assert!(batches.unwrap_or(0.0) > 0.0);
    // SIGTERM with both nodes connected (Watch and Report streams open): it exits.
    let mut control = control;
    assert!(
        control.proc.terminate(Duration::from_secs(10)),
        "sluice-control still running 10 s after SIGTERM:\n{}",
        control.proc.log()
    );
}

#[test]
fn cache_hits_reach_the_control_plane_and_sluicectl_usage() {
    let dir = TempDir::new("cache-hits");
    let config = dir.0.join("sluice.toml");
    std::fs::write(
        &config,
        "[[backend]]\nname = \"mock-alpha\"\nkind = \"mock\"\nlatency = \"1ms\"\n\n\
         [[deployment]]\nname = \"alpha\"\nbackends = [{ backend = \"mock-alpha\" }]\n\
         cache = { ttl = \"10m\" }\n",
    )
    .unwrap();
    let state = dir.0.join("state");
    let control = start_control(&config, &state, "127.0.0.1:0", &[], &dir.0);
    let node = start_node(&control.url, "node-a", &[], None, &dir.0);
    // The same deterministic question twice: the backend answers the first, the cache the
    // second.
    let body = r#"{"model":"alpha","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut answers = Vec::new();
    for _ in 0..2 {
        let (status, head, answer) = exchange(node.port, "POST", "/v1/chat/completions", "", body);
        assert_eq!(status, 200, "{answer}");
        let cache = head
            .lines()
            .find_map(|l| l.strip_prefix("x-sluice-cache: "))
            .map(str::to_owned);
        answers.push((cache, reported_usage(&answer)));
    }
    assert_eq!(answers[0].0.as_deref(), Some("miss"), "{answers:?}");
    assert_eq!(answers[1].0.as_deref(), Some("hit"), "{answers:?}");
    // The hit replays the stored answer (its usage too) but charges no tokens: only the
    // miss's count.
    let (_, _, total) = answers[0].1;
    let alpha = |rows: &Value| -> Option<Value> {
        rows.as_array()?
            .iter()
            .find(|r| r["deployment"] == "alpha")
            .cloned()
    };
    let mut row = None;
    let arrived = wait_until(Duration::from_secs(10), || {
        row = alpha(&ctl_json(
            &control.url,
            None,
            &["usage", "--by", "deployment", "--since", "1h"],
        ));
        row.as_ref().is_some_and(|r| r["requests"] == 2)
    });
    assert!(arrived, "{row:?}\n{}", node.proc.log());
    let row = row.unwrap();
    assert_eq!(row["cache_hits"], 1, "{row}");
    assert_eq!(row["total_tokens"], total, "{row}");
    // Per backend: the hit is the row no backend answered.
    let rows = ctl_json(&control.url, None, &["usage", "--by", "backend"]);
    let mut per_backend: Vec<(String, u64, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["backend"].as_str().unwrap().to_owned(),
                r["requests"].as_u64().unwrap(),
                r["cache_hits"].as_u64().unwrap(),
            )
        })
        .collect();
    per_backend.sort();
    assert_eq!(
        per_backend,
        [("".to_owned(), 1, 1), ("mock-alpha".to_owned(), 1, 0)]
    );
    // The table: every earlier column as it was, CACHE_HITS last.
    let (code, table, err) = ctl(&control.url, None, &["usage", "--by", "deployment"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "DEPLOYMENT",
            "REQUESTS",
            "PROMPT",
            "COMPLETION",
            "TOTAL",
            "P50_MS",
            "P99_MS",
            "REJECTED",
            "CACHE_HITS"
        ],
        "{table}"
    );
    let alpha_line = lines.iter().find(|l| l[0] == "alpha").unwrap();
    assert_eq!((alpha_line[1], alpha_line[8]), ("2", "1"), "{table}");
}
