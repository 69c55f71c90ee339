//! The process under test: [`Launch`] writes a config and starts `sluice` with
//! `--ready-file`; [`Sluice`] waits for that file (which names the ports it bound), reads its
//! log, rewrites its config, signals it, and kills and reaps it on drop. [`run_check`] runs
//! `sluice --check`.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{Client, Response};
use super::fixtures::{config_listening, with_admin, TempDir};
use super::wait_until;

/// Path of the binary under test.
pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// The workspace root (where `.venv` and `tests/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// How to start a `sluice` process.
pub struct Launch {
    /// `--workers`; `None`: the flag is left out (the config or the core count decides).
    workers: Option<usize>,
    /// How many `127.0.0.1:0` listen addresses.
    listeners: usize,
    /// A whole config file to run as it is (see [`Launch::file`]).
    file: Option<String>,
    driver: Option<String>,
    server_extra: String,
    body: String,
    env: Vec<(String, String)>,
    /// The child's stdout is a pipe the test reads (or leaves unread), not a file.
    pipe_stdout: bool,
    /// `RLIMIT_FSIZE` in 512-byte blocks (`ulimit -f`, set by `sh` before it execs Sluice).
    file_size_blocks: Option<u64>,
}

impl Launch {
    /// A launch with `body` (backends and deployments), one worker, no extra server settings.
    pub fn new(body: &str) -> Launch {
        Launch {
            workers: Some(1),
            listeners: 1,
            file: None,
            driver: None,
            server_extra: String::new(),
            body: body.to_string(),
            env: Vec::new(),
            pipe_stdout: false,
            file_size_blocks: None,
        }
    }

    /// Runs Sluice under a file size limit of `blocks` × 512 bytes (`ulimit -f`): a write
    /// past it fails with EFBIG, as a full disk fails one.
    pub fn file_size_limit(mut self, blocks: u64) -> Launch {
        self.file_size_blocks = Some(blocks);
        self
    }

    /// `--workers N`.
    pub fn workers(mut self, n: usize) -> Launch {
        self.workers = Some(n);
        self
    }

    /// No `--workers` flag: `server.workers`, else one per core, decides.
    pub fn workers_from_config(mut self) -> Launch {
        self.workers = None;
        self
    }

    /// Runs this whole config file (its `[server] listen` must be one `127.0.0.1:0`).
    pub fn file(text: &str) -> Launch {
        Launch {
            file: Some(text.to_string()),
            ..Launch::new("")
        }
    }

    /// Listen on `n` addresses (`127.0.0.1:0` each).
    pub fn listeners(mut self, n: usize) -> Launch {
        self.listeners = n;
        self
    }

    /// `--driver NAME` (`io-uring`, `epoll`); by default the gateway picks.
    pub fn driver(mut self, name: &str) -> Launch {
        self.driver = Some(name.to_string());
        self
    }

    /// Extra lines inside `[server]` (and following sub-tables).
    pub fn server(mut self, extra: &str) -> Launch {
        self.server_extra = extra.to_string();
        self
    }

    /// The child's stdout goes to a pipe ([`Sluice::stdout`]) that nobody reads until the
    /// test does: a stalled reader.
    pub fn pipe_stdout(mut self) -> Launch {
        self.pipe_stdout = true;
        self
    }

    /// An environment variable for the child.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Writes the config (listening on 127.0.0.1 port 0), starts the process and waits
    /// (≤ 10 s) until it has written its ready file, which gives the port it bound.
    pub fn start(self) -> Sluice {
        self.start_after(|_| {})
    }

    /// [`start`](Self::start), once `files` has written what the config names (certificates,
    /// keys) into the config file's folder.
    pub fn start_after(self, files: impl FnOnce(&Path)) -> Sluice {
        let mut sluice = self.spawn(files);
        if let Err(e) = sluice.wait_ready(Duration::from_secs(10)) {
            panic!("{e}");
        }
        sluice
    }

    fn spawn(&self, files: impl FnOnce(&Path)) -> Sluice {
        let dir = TempDir::new("sluice");
        files(dir.path());
        let config_path = dir.path().join("sluice.toml");
        let log_path = dir.path().join("stderr.log");
        let ready_path = dir.path().join("ready");
        // Port 0: the kernel picks a free port when Sluice binds, so no other process can be
        // handed the same one; Sluice says which in its ready file.
        let ports = vec![0; self.listeners];
        let text = match &self.file {
            Some(text) => with_admin(text.clone()),
            None => config_listening(&ports, &self.server_extra, &self.body),
        };
        fs::write(&config_path, text).expect("write config");
        let log = fs::File::create(&log_path).expect("create log file");
        let out = dir.path().join("stdout.log");
        let out = fs::File::create(out).expect("create stdout file");
        let mut cmd = match self.file_size_blocks {
            None => Command::new(sluice_bin()),
            Some(blocks) => {
                // `exec`: the same PID, so signals and waits reach Sluice itself.
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -f {blocks} && exec \"$0\" \"$@\""))
                    .arg(sluice_bin());
                sh
            }
        };
        // Relative output paths (the audit log's files) land in the test's own folder.
        cmd.current_dir(dir.path())
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(if self.pipe_stdout {
                Stdio::piped()
            } else {
                Stdio::from(out)
            })
            .stderr(Stdio::from(log));
        if let Some(n) = self.workers {
            cmd.arg("--workers").arg(n.to_string());
        }
        if let Some(driver) = &self.driver {
            cmd.arg("--driver").arg(driver);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sluice");
        let stdout = child.stdout.take();
        Sluice {
            stdout,
            port: 0,
            ports: Vec::new(),
            listeners: self.listeners,
            child: Some(child),
            config_path,
            log_path,
            ready_path,
            server_extra: self.server_extra.clone(),
            _dir: dir,
        }
    }
}

/// A running `sluice` child process; killed and reaped on drop.
pub struct Sluice {
    /// The child's stdout, when launched with [`Launch::pipe_stdout`].
    pub stdout: Option<std::process::ChildStdout>,
    /// The port it listens on (127.0.0.1), as its ready file said: the first listener's.
    pub port: u16,
    /// Every listener's port, in the ready file's order.
    pub ports: Vec<u16>,
    /// How many listen addresses its config has.
    listeners: usize,
    child: Option<Child>,
    /// Its config file.
    pub config_path: PathBuf,
    /// Its captured stderr.
    pub log_path: PathBuf,
    /// Where it writes its listen addresses once ready (`--ready-file`).
    pub ready_path: PathBuf,
    server_extra: String,
    _dir: TempDir,
}

impl Sluice {
    /// Waits until the process has written its ready file (every worker listens), and
    /// takes its port from it.
    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(format!(
                    "sluice exited before it was ready ({status}); stderr:\n{}",
                    self.log()
                ));
            }
            if let Ok(text) = fs::read_to_string(&self.ready_path) {
                let addrs: Vec<SocketAddr> = text
                    .lines()
                    .map(|line| line.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("unreadable ready file {text:?}: {e}"))?;
                if addrs.len() != self.listeners || !text.ends_with('\n') {
                    return Err(format!(
                        "the ready file has {} lines for {} listeners: {text:?}",
                        addrs.len(),
                        self.listeners
                    ));
                }
                self.ports = addrs.iter().map(SocketAddr::port).collect();
                self.port = self.ports[0];
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "sluice was not ready within {within:?}; stderr:\n{}",
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The admin listener's port, from its `admin listening on` log line (waits ≤ 10 s).
    pub fn admin_port(&self) -> u16 {
        let needle = "admin listening on ";
        assert!(
            self.wait_log(needle, Duration::from_secs(10)),
            "no admin listener: {}",
            self.log()
        );
        let log = self.log();
        let at = log.find(needle).map(|i| i + needle.len()).unwrap_or(0);
        let addr: SocketAddr = log[at..]
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unreadable admin address in {log}"));
        addr.port()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded) until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        wait_until(within, || self.log().contains(needle))
    }

    /// Rewrites the config file with a new body (same listen address — port 0, as started —
    /// and server settings).
    pub fn rewrite_config(&self, body: &str) {
        self.write_raw_config(&self.config_for(body));
    }

    /// The config text this process would get for `body`.
    pub fn config_for(&self, body: &str) -> String {
        config_listening(&vec![0; self.listeners], &self.server_extra, body)
    }

    /// Writes `text` as the config file, as is.
    pub fn write_raw_config(&self, text: &str) {
        fs::write(&self.config_path, text).expect("rewrite config");
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("child running")
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, …) with the system `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_exit_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new client connection to it.
    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    /// One request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.connect().request(method, target, headers, body)
    }

    /// `POST target` with a JSON body on a fresh connection.
    pub fn post_json(&self, target: &str, body: &Value) -> Response {
        self.connect().post_json(target, body)
    }

    /// `GET target` on a fresh connection.
    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- sluice stderr ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// Runs `sluice --check --config FILE` and returns (exit code, stdout, stderr).
pub fn run_check(config_path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("--config").arg(config_path).arg("--check");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run sluice --check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
