//! What tests feed Sluice: config files (the server section, the built-in mock's
//! deployments, an `openai` backend, products and subscriptions with hashed keys), request
//! bodies, and temporary directories to hold the files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The key clients present (the gateway does not check keys yet; it must not forward it).
pub const CLIENT_KEY: &str = "sluice-demo-key";

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A whole config file: `[server]` listening on `port` plus `server_extra` lines (which may
/// open `[server.limits]` / `[server.timeouts]`), then `body` (backends and deployments).
pub fn config_text(port: u16, server_extra: &str, body: &str) -> String {
    config_listening(&[port], server_extra, body)
}

/// [`config_text`] listening on 127.0.0.1 at each of `ports`.
pub(super) fn config_listening(ports: &[u16], server_extra: &str, body: &str) -> String {
    let listen: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    with_admin(format!(
        "[server]\nlisten = [{}]\n{server_extra}\n\n{body}\n",
        listen.join(", ")
    ))
}

/// Backends and deployments served by the built-in mock: `gpt-4o` (chat and completions,
/// 16 completion tokens, model `gpt-4o-mock` when the request names none) and
/// `text-embedding-3-small` (8 dimensions), both on backend `mock-a`.
pub const MOCK_BODY: &str = r#"
[[backend]]
name = "mock-a"
kind = "mock"
model = "gpt-4o-mock"
completion_tokens = 16
embedding_dimensions = 8

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "mock-a" }]

[[deployment]]
name = "text-embedding-3-small"
backends = [{ backend = "mock-a" }]
"#;

/// Completion tokens the mock in [`MOCK_BODY`] answers with.
pub const MOCK_COMPLETION_TOKENS: u64 = 16;

/// A body with one `openai`-kind backend `up` at `url` serving deployment `deployment`.
pub fn openai_backend_body(url: &str, deployment: &str) -> String {
    format!(
        r#"
[[backend]]
name = "up"
kind = "openai"
url = "{url}"

[[deployment]]
name = "{deployment}"
backends = [{{ backend = "up" }}]
"#
    )
}

/// The built-in mock (16 completion tokens, no latency, as fast as possible) serving
/// `gpt-4o` (chat), `text-embedding-3-small` and `other`, each with the heuristic estimator.
pub const MOCK_DEPLOYMENTS: &str = r#"
[[backend]]
name = "mock-a"
kind = "mock"
model = "gpt-4o-mock"
completion_tokens = 16
embedding_dimensions = 8

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "mock-a" }]
tokens = { estimator = "heuristic" }

[[deployment]]
name = "text-embedding-3-small"
backends = [{ backend = "mock-a" }]
tokens = { estimator = "heuristic" }

[[deployment]]
name = "other"
backends = [{ backend = "mock-a" }]
tokens = { estimator = "heuristic" }
"#;

/// `sha256:<64 lowercase hex>` of `key`, as `[[subscription]] keys` takes it.
pub fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::from("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A `[[subscription]]` named `name` of `product` with `keys` (plain keys; hashed here).
pub fn subscription(name: &str, product: &str, keys: &[&str]) -> String {
    let hashes: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", key_hash(k)))
        .collect();
    format!(
        "\n[[subscription]]\nname = \"{name}\"\nproduct = \"{product}\"\nkeys = [{}]\n",
        hashes.join(", ")
    )
}

/// A `[[product]]` named `name` with `extra` lines (e.g. `limits = [...]`, `trace = true`).
pub fn product(name: &str, extra: &str) -> String {
    format!("\n[[product]]\nname = \"{name}\"\n{extra}\n")
}

/// A chat request body naming `model` (none for Azure deployment paths).
pub fn chat_body(model: Option<&str>, stream: bool) -> Value {
    let mut v = serde_json::json!({
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Explain a token bucket in one sentence."}
        ],
        "max_tokens": 100,
        "temperature": 0.2
    });
    if let Some(m) = model {
        v["model"] = Value::from(m);
    }
    if stream {
        v["stream"] = Value::from(true);
    }
    v
}

/// An embeddings request to `text-embedding-3-small`.
pub fn embeddings_body() -> Value {
    json!({
        "model": "text-embedding-3-small",
        "input": ["The food was delicious", "and the waiter was very friendly"]
    })
}

/// `text` with `[admin] listen = "127.0.0.1:0"` added unless it has an `[admin]` table: the
/// default admin port (9090) would be shared by the tests' many processes.
pub fn with_admin(text: String) -> String {
    if text.contains("[admin]") {
        return text;
    }
    format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
}

/// Deployment `chat` over `openai` backends `b0`, `b1`, … at `urls`, `b{i}` with priority
/// `priorities[i]`, and `extra` lines in the deployment (`retry = { … }`).
pub fn priority_pool(urls: &[String], priorities: &[u32], extra: &str) -> String {
    let mut body = String::new();
    let mut members = Vec::new();
    for (i, (url, priority)) in urls.iter().zip(priorities).enumerate() {
        body.push_str(&format!(
            "\n[[backend]]\nname = \"b{i}\"\nkind = \"openai\"\nurl = \"{url}\"\n"
        ));
        members.push(format!("{{ backend = \"b{i}\", priority = {priority} }}"));
    }
    body.push_str(&format!(
        "\n[[deployment]]\nname = \"chat\"\nbackends = [{}]\n{extra}\n",
        members.join(", ")
    ));
    body
}
