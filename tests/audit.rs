//! The audit log, whole-process: one record per request whatever its outcome — a plain and a
//! streamed chat (tokens exact, the stream's content reassembled), embeddings, a refused
//! key, a limit's 429, an unreachable backend, a client that leaves mid-stream — each content
//! policy and the redaction patterns, the answer's model whatever the policy, the JSON lines file and the SQLite database holding
//! the same records, and the README's SQL answering its questions against a real database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const KEY: &str = "sk-audit-test-key-0001";
const OTHER_KEY: &str = "sk-audit-test-key-0002";

/// The mock serving `gpt-4o` (chat, 16 completion tokens) and `text-embedding-3-small`,
/// plus `slow` (streams 40 tokens at 20 per second) and `down` (a backend nobody listens on),
/// with subscription `team-a` (product `main`, at most 3 requests a minute) and `team-b`
/// (product `hashed`, content hashed).
fn body(dir: &Path, audit_extra: &str, main_extra: &str) -> String {
    let down = closed_port();
    format!(
        r#"{MOCK_BODY}
[[backend]]
name = "mock-slow"
kind = "mock"
model = "gpt-4o-mock"
completion_tokens = 40
tokens_per_second = 20

[[backend]]
name = "down"
kind = "openai"
url = "http://127.0.0.1:{down}"

[[deployment]]
name = "slow"
backends = [{{ backend = "mock-slow" }}]

[[deployment]]
name = "broken"
backends = [{{ backend = "down" }}]

[audit]
{audit_extra}

[[audit.sink]]
kind = "file"
path = "{file}"

[[audit.sink]]
kind = "sqlite"
path = "{db}"
{main}{hashed}{a}{b}"#,
        file = dir.join("audit.jsonl").display(),
        db = dir.join("audit.db").display(),
        main = product("main", main_extra),
        hashed = product("hashed", "audit = { content = \"hash\" }"),
        a = subscription("team-a", "main", &[KEY]),
        b = subscription("team-b", "hashed", &[OTHER_KEY]),
    )
}

/// The records in the file once there are at least `n` (waits up to 10 s).
fn records(dir: &Path, n: usize) -> Vec<Value> {
    let path = dir.join("audit.jsonl");
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // A batch being written may be seen in part: only whole lines count.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        lines = whole
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        lines.len() >= n
    });
    assert!(
        lines.len() >= n,
        "{} records, wanted {n}; ids: {:?}",
        lines.len(),
        lines.iter().map(|r| &r["request_id"]).collect::<Vec<_>>()
    );
    lines
}

/// The record of the request with `id`.
fn record_of(dir: &Path, n: usize, id: &str) -> Value {
    records(dir, n)
        .into_iter()
        .find(|r| r["request_id"] == id)
        .unwrap_or_else(|| panic!("no record of {id}"))
}

fn post(s: &Sluice, key: &str, id: &str, body: &Value) -> Response {
    post_with(
        s,
        "/v1/chat/completions",
        &[("api-key", key), ("x-request-id", id)],
        body,
    )
}

/// A streamed chat to `model` as `team-a` with request id `id`, answered 200: its events.
fn stream_chat<'c>(c: &'c mut Client, id: &str, model: &str) -> Sse<'c> {
    let body = serde_json::to_vec(&chat_body(Some(model), true)).unwrap();
    let (head, sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[
            ("api-key", KEY),
            ("x-request-id", id),
            ("content-type", "application/json"),
        ],
        &body,
    );
    assert_eq!(head.status(), 200);
    sse
}

fn start(dir: &TempDir, audit_extra: &str, main_extra: &str) -> Sluice {
    Launch::new(&body(dir.path(), audit_extra, main_extra)).start()
}

#[test]
fn a_plain_chat_is_recorded_with_its_exact_usage_and_content() {
    let dir = TempDir::new("audit-plain");
    let s = start(&dir, "", "");
    let resp = post(&s, KEY, "plain-1", &chat_body(Some("gpt-4o"), false));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    let r = record_of(dir.path(), 1, "plain-1");
    assert_eq!(r["subscription"], "team-a");
    assert_eq!(r["product"], "main");
    assert_eq!(r["operation"], "chat");
    assert_eq!(r["deployment"], "gpt-4o");
    assert_eq!(r["model"], answer["model"]);
    assert_eq!(r["backend"], "mock-a");
    assert_eq!(r["status"], 200);
    assert_eq!(r["error"], Value::Null);
    assert_eq!(r["ended"], "complete");
    assert_eq!(r["truncated"], false);
    assert_eq!(r["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(r["attempts"][0]["backend"], "mock-a");
    assert_eq!(r["attempts"][0]["outcome"], "answered");
    assert_eq!(r["prompt_tokens"], answer["usage"]["prompt_tokens"]);
    assert_eq!(r["completion_tokens"], answer["usage"]["completion_tokens"]);
    assert_eq!(r["total_tokens"], answer["usage"]["total_tokens"]);
    assert_eq!(r["tokens_estimated"], false);
    assert_eq!(r["client_ip"], "127.0.0.1");
    assert_eq!(r["content"], "full");
    assert_eq!(
        r["request"]["messages"],
        chat_body(None, false)["messages"],
        "{r}"
    );
    assert_eq!(
        r["response"]["choices"][0]["message"]["content"],
        answer["choices"][0]["message"]["content"]
    );
    assert!(r["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(r["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_streamed_chat_is_recorded_reassembled_with_its_exact_usage() {
    let dir = TempDir::new("audit-stream");
    let s = start(&dir, "", "");
    let mut c = s.connect();
    let mut sse = stream_chat(&mut c, "stream-1", "gpt-4o");
    let mut content = String::new();
    for event in sse.collect_rest() {
        let Some(data) = event_data(&event) else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
    }
    assert!(!content.is_empty());
    let r = record_of(dir.path(), 1, "stream-1");
    assert_eq!(r["status"], 200);
    assert_eq!(r["response"]["choices"][0]["message"]["content"], content);
    assert_eq!(r["completion_tokens"], MOCK_COMPLETION_TOKENS);
    assert_eq!(r["tokens_estimated"], false);
    assert!(r["ttft_ms"].as_f64().is_some(), "{r}");
    assert_eq!(r["ended"], "complete");
}

#[test]
fn an_embeddings_call_is_recorded_without_its_vectors() {
    let dir = TempDir::new("audit-embed");
    let s = start(&dir, "", "");
    let resp = post_with(
        &s,
        "/v1/embeddings",
        &[("api-key", KEY), ("x-request-id", "embed-1")],
        &embeddings_body(),
    );
    assert_eq!(resp.status, 200);
    let usage = resp.json()["usage"].clone();
    let r = record_of(dir.path(), 1, "embed-1");
    assert_eq!(r["operation"], "embeddings");
    assert_eq!(r["deployment"], "text-embedding-3-small");
    assert_eq!(r["prompt_tokens"], usage["prompt_tokens"]);
    assert_eq!(r["total_tokens"], usage["total_tokens"]);
    assert_eq!(r["request"]["input"], embeddings_body()["input"]);
    assert_eq!(r["response"], Value::Null, "vectors are not content: {r}");
    assert_eq!(
        r["model"], "text-embedding-3-small",
        "as the answer named it: {r}"
    );
}

#[test]
fn the_model_is_recorded_without_content_and_for_embeddings() {
    let dir = TempDir::new("audit-model");
    let s = start(&dir, "", "audit = { content = \"omit\" }");
    // A plain chat whose product keeps no content.
    let resp = post(&s, KEY, "omit-plain", &chat_body(Some("gpt-4o"), false));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let plain_model = resp.json()["model"].as_str().unwrap().to_owned();
    // A streamed one: the model its chunks named.
    let mut c = s.connect();
    let mut sse = stream_chat(&mut c, "omit-stream", "gpt-4o");
    let mut stream_model = None;
    for event in sse.collect_rest() {
        match event_data(&event) {
            Some(data) if data != "[DONE]" => {
                let chunk: Value = serde_json::from_str(data).unwrap();
                stream_model = stream_model.or(chunk["model"].as_str().map(str::to_owned));
            }
            _ => {}
        }
    }
    // Embeddings: no content is ever captured, and the model follows the vectors.
    let resp = post_with(
        &s,
        "/v1/embeddings",
        &[("api-key", KEY), ("x-request-id", "omit-embed")],
        &embeddings_body(),
    );
    assert_eq!(resp.status, 200);
    let embed_model = resp.json()["model"].as_str().unwrap().to_owned();
    assert_eq!(embed_model, "text-embedding-3-small");

    let plain = record_of(dir.path(), 3, "omit-plain");
    assert_eq!(plain["content"], "omit");
    assert_eq!(plain["response"], Value::Null);
    assert_eq!(plain["model"], plain_model.as_str(), "{plain}");
    let stream = record_of(dir.path(), 3, "omit-stream");
    assert_eq!(stream["content"], "omit");
    assert_eq!(
        stream["model"].as_str(),
        Some(stream_model.unwrap().as_str()),
        "{stream}"
    );
    let embed = record_of(dir.path(), 3, "omit-embed");
    assert_eq!(embed["operation"], "embeddings");
    assert_eq!(embed["model"], embed_model.as_str(), "{embed}");
}

#[test]
fn refusals_and_failures_are_recorded_with_their_error() {
    let dir = TempDir::new("audit-errors");
    let s = start(
        &dir,
        "",
        "limits = [{ unit = \"requests\", rate = 2, per = \"minute\", scope = \"subscription\" }]",
    );
    // A key nobody has.
    let resp = post(
        &s,
        "sk-nobody",
        "refused-1",
        &chat_body(Some("gpt-4o"), false),
    );
    assert_eq!(resp.status, 401);
    // An unreachable backend: 502 after its attempt failed to connect.
    let resp = post(&s, KEY, "down-1", &chat_body(Some("broken"), false));
    assert_eq!(resp.status, 502, "{}", resp.text());
    // Over the limit of two a minute.
    assert_eq!(
        post(&s, KEY, "ok-1", &chat_body(Some("gpt-4o"), false)).status,
        200
    );
    let resp = post(&s, KEY, "limited-1", &chat_body(Some("gpt-4o"), false));
    assert_eq!(resp.status, 429);

    let refused = record_of(dir.path(), 4, "refused-1");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["error"], "invalid_api_key");
    assert_eq!(refused["subscription"], Value::Null);
    assert_eq!(refused["total_tokens"], Value::Null);
    assert!(
        !refused.to_string().contains("sk-nobody"),
        "a key in a record: {refused}"
    );

    let down = record_of(dir.path(), 4, "down-1");
    assert_eq!(down["status"], 502);
    assert_eq!(down["error"], "upstream_unavailable");
    assert_eq!(down["deployment"], "broken");
    assert_eq!(down["attempts"][0]["backend"], "down");
    assert_eq!(down["attempts"][0]["outcome"], "connect_failed");
    assert_eq!(down["backend"], Value::Null);
    assert_eq!(down["total_tokens"], 0, "nothing reached a backend: {down}");

    let limited = record_of(dir.path(), 4, "limited-1");
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["error"], "requests_rate_limited");
    assert_eq!(limited["subscription"], "team-a");
    assert_eq!(limited["attempts"], json!([]));
    assert!(!records(dir.path(), 4)
        .iter()
        .any(|r| r.to_string().contains(KEY)));
}

#[test]
fn a_client_that_leaves_mid_stream_leaves_a_truncated_record() {
    let dir = TempDir::new("audit-gone");
    let s = start(&dir, "", "");
    {
        let mut c = s.connect();
        let mut sse = stream_chat(&mut c, "gone-1", "slow");
        assert!(sse.next_event().is_some());
        // The client hangs up after the first event of a two-second stream.
    }
    let r = record_of(dir.path(), 1, "gone-1");
    // Noticed while writing to it or while waiting on the backend: either way the client
    // is what went, and the answer did not go out whole.
    assert_eq!(r["ended"], "client_gone", "{r}");
    assert_eq!(r["truncated"], true);
    assert_eq!(r["tokens_estimated"], true, "usage unknown: {r}");
    assert!(
        r["total_tokens"].as_u64().unwrap() > 0,
        "never settled at zero: {r}"
    );
}

#[test]
fn each_content_policy_and_the_redaction_patterns_apply() {
    let dir = TempDir::new("audit-policy");
    let s = start(
        &dir,
        "redact = ['ticket-[0-9]+']",
        "audit = { content = \"truncate\", truncate_chars = 12 }",
    );
    let secret = json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "mail bob@example.com about ticket-4711 using sk-proj-abcdefghijklmnopqrstuvwx"}
    ]});
    // Truncated (product `main`): redacted first, then cut to 12 characters.
    assert_eq!(post(&s, KEY, "trunc-1", &secret).status, 200);
    // Hashed (product `hashed`).
    assert_eq!(post(&s, OTHER_KEY, "hash-1", &secret).status, 200);

    let trunc = record_of(dir.path(), 2, "trunc-1");
    assert_eq!(trunc["content"], "truncate");
    let text = trunc["request"]["messages"][0]["content"].as_str().unwrap();
    // Redacted first, then cut to 12 characters: never inside a marker.
    assert_eq!(text, "mail …[truncated]");
    assert_eq!(trunc["request"]["messages"][0]["role"], "user");

    let hashed = record_of(dir.path(), 2, "hash-1");
    assert_eq!(hashed["content"], "hash");
    let text = hashed["request"]["messages"][0]["content"]
        .as_str()
        .unwrap();
    assert!(
        text.starts_with("sha256:") && text.len() == 7 + 64,
        "{text}"
    );
    for r in [&trunc, &hashed] {
        let all = r.to_string();
        for leaked in ["bob@example.com", "ticket-4711", "sk-proj-abc"] {
            assert!(!all.contains(leaked), "{leaked} in {all}");
        }
    }
}

#[test]
fn full_content_is_redacted_and_omit_keeps_none() {
    let dir = TempDir::new("audit-redact");
    let s = start(&dir, "", "audit = { content = \"omit\" }");
    let secret = json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "call me: alice@example.org, token Bearer AbCdEf0123456789xyz.UVW"}
    ]});
    // `team-b`'s product hashes; the default policy (full) applies to neither — so use the
    // omit product and check the full default with a request of no product below.
    assert_eq!(post(&s, KEY, "omit-1", &secret).status, 200);
    let omitted = record_of(dir.path(), 1, "omit-1");
    assert_eq!(omitted["content"], "omit");
    assert_eq!(omitted["request"], Value::Null);
    assert_eq!(omitted["response"], Value::Null);
    assert_eq!(
        omitted["total_tokens"],
        omitted["prompt_tokens"].as_u64().unwrap() + omitted["completion_tokens"].as_u64().unwrap()
    );

    // Auth off: no product, the `[audit] content` default (full), redacted.
    let open = TempDir::new("audit-open");
    let text = format!(
        "{MOCK_BODY}\n[audit]\n[[audit.sink]]\nkind = \"file\"\npath = \"{}\"\n",
        open.path().join("audit.jsonl").display()
    );
    let s = Launch::new(&text).start();
    let resp = post_with(
        &s,
        "/v1/chat/completions",
        &[("x-request-id", "full-1")],
        &secret,
    );
    assert_eq!(resp.status, 200);
    let full = record_of(open.path(), 1, "full-1");
    assert_eq!(full["content"], "full");
    assert_eq!(
        full["request"]["messages"][0]["content"],
        "call me: [REDACTED], token [REDACTED]"
    );
}

/// The README's SQL blocks (those under "### Querying the audit database"), each run
/// against a database the gateway wrote.
fn readme_sql() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("### Querying the audit database")
        .nth(1)
        .expect("the README has a \"Querying the audit database\" section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sql\n")
        .skip(1)
        .map(|block| {
            let sql = block.split("```").next().unwrap().to_owned();
            let title = sql
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("-- "))
                .expect("each SQL block starts with a `-- title` line")
                .to_owned();
            (title, sql)
        })
        .collect()
}

/// The `requests` rows of `db`; `None` while it cannot be read (not there, no table yet).
fn request_rows(db: &Path) -> Option<i64> {
    let db = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()?;
    db.query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
        .ok()
}

fn rows(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let db = rusqlite::Connection::open(db).unwrap();
    let mut stmt = db.prepare(sql).unwrap_or_else(|e| panic!("{e}: {sql}"));
    let n = stmt.column_count();
    stmt.query_map([], |row| {
        (0..n)
            .map(|i| {
                row.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                    rusqlite::types::Value::Null => "NULL".to_owned(),
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Real(f) => f.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    rusqlite::types::Value::Blob(_) => "BLOB".to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap()
}

#[test]
fn the_database_holds_what_the_file_holds_and_the_readme_sql_answers() {
    let dir = TempDir::new("audit-sql");
    let mut s = start(&dir, "", "");
    let plain = chat_body(Some("gpt-4o"), false);
    let mut tokens_a = 0;
    for i in 0..3 {
        let resp = post(&s, KEY, &format!("a-{i}"), &plain);
        assert_eq!(resp.status, 200);
        tokens_a += resp.json()["usage"]["total_tokens"].as_u64().unwrap();
    }
    let resp = post(&s, OTHER_KEY, "b-0", &plain);
    assert_eq!(resp.status, 200);
    let tokens_b = resp.json()["usage"]["total_tokens"].as_u64().unwrap();
    let resp = post_with(
        &s,
        "/v1/embeddings",
        &[("api-key", KEY), ("x-request-id", "a-embed")],
        &embeddings_body(),
    );
    assert_eq!(resp.status, 200);
    let tokens_embed = resp.json()["usage"]["total_tokens"].as_u64().unwrap();
    let file = records(dir.path(), 5);
    // A clean stop: every record written and the WAL folded into the database file.
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(15)).is_some());
    let db = dir.path().join("audit.db");
    let ids = rows(&db, "SELECT request_id FROM requests ORDER BY request_id");
    let mut file_ids: Vec<String> = file
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    file_ids.sort();
    assert_eq!(ids.into_iter().flatten().collect::<Vec<_>>(), file_ids);

    let blocks = readme_sql();
    let titles: Vec<&str> = blocks.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Tokens per model",
            "Tokens per subscription",
            "Tokens per subscription and day",
            "Cache hit ratio per deployment",
            "Calls with their first message and first choice",
        ],
        "the README's SQL blocks changed: update this test with them"
    );
    let model = file[0]["model"].as_str().unwrap().to_owned();
    for (title, sql) in &blocks {
        let got = rows(&db, sql);
        match title.as_str() {
            "Tokens per model" => {
                let chat = got.iter().find(|r| r[0] == model).unwrap();
                assert_eq!(chat[3], (tokens_a + tokens_b).to_string(), "{got:?}");
                // The embeddings call has its own row: its model as the mock answered.
                let embed = got
                    .iter()
                    .find(|r| r[0] == "text-embedding-3-small")
                    .unwrap_or_else(|| panic!("no embeddings row: {got:?}"));
                assert_eq!(embed[3], tokens_embed.to_string(), "{got:?}");
                assert_eq!(embed[4], "1", "{got:?}");
                assert_eq!(got.len(), 2, "{got:?}");
            }
            "Tokens per subscription" => {
                let a = got.iter().find(|r| r[0] == "team-a").unwrap();
                assert_eq!(a[1], "4", "{got:?}");
                assert_eq!(a[4], (tokens_a + tokens_embed).to_string(), "{got:?}");
                let b = got.iter().find(|r| r[0] == "team-b").unwrap();
                assert_eq!(b[4], tokens_b.to_string(), "{got:?}");
            }
            "Tokens per subscription and day" => {
                let today = file[0]["time"].as_str().unwrap()[..10].to_owned();
                assert!(got.iter().all(|r| r[1] == today), "{got:?}");
                assert_eq!(got.len(), 2, "{got:?}");
            }
            "Cache hit ratio per deployment" => {
                // No deployment here has a cache: every `cache` is NULL, so no row. With
                // hits: `the_cache_column_records_each_request_and_the_readme_reads_the_hit_ratio`.
                assert!(got.is_empty(), "{got:?}");
            }
            "Calls with their first message and first choice" => {
                let call = got.iter().find(|r| r.contains(&"a-0".to_owned())).unwrap();
                assert!(
                    call.contains(&plain["messages"][0]["content"].as_str().unwrap().to_owned()),
                    "{call:?}"
                );
                let answer = file.iter().find(|r| r["request_id"] == "a-0").unwrap()["response"]
                    ["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert!(call.contains(&answer), "{call:?}");
            }
            other => panic!("untested README SQL block {other}"),
        }
    }
}

#[test]
fn the_cache_column_records_each_request_and_the_readme_reads_the_hit_ratio() {
    let dir = TempDir::new("audit-cache");
    let config = format!(
        r#"{MOCK_BODY}
[[deployment]]
name = "cached"
backends = [{{ backend = "mock-a" }}]
cache = {{ ttl = "10m" }}

[audit]

[[audit.sink]]
kind = "file"
path = "{file}"

[[audit.sink]]
kind = "sqlite"
path = "{db}"
"#,
        file = dir.path().join("audit.jsonl").display(),
        db = dir.path().join("audit.db").display(),
    );
    let mut s = Launch::new(&config).start();
    let mut deterministic = chat_body(Some("cached"), false);
    deterministic["temperature"] = json!(0);
    let asked = [
        ("c-1-miss", deterministic.clone(), Some("miss")),
        ("c-2-hit", deterministic, Some("hit")),
        // Temperature 0.2, no seed: not cached.
        (
            "c-3-bypass",
            chat_body(Some("cached"), false),
            Some("bypass"),
        ),
        ("c-4-none", chat_body(Some("gpt-4o"), false), None),
    ];
    for (id, body, cache) in &asked {
        let resp = post_with(&s, "/v1/chat/completions", &[("x-request-id", id)], body);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-sluice-cache"), *cache, "{id}");
    }
    let file = records(dir.path(), asked.len());
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(15)).is_some());
    let db = dir.path().join("audit.db");
    // The database holds what the file holds: `cache` as text, NULL for `null`.
    let got = rows(
        &db,
        "SELECT request_id, cache FROM requests ORDER BY request_id",
    );
    let want: Vec<Vec<String>> = asked
        .iter()
        .map(|(id, _, cache)| vec![id.to_string(), cache.unwrap_or("NULL").to_owned()])
        .collect();
    assert_eq!(got, want);
    for (id, _, cache) in &asked {
        let r = file.iter().find(|r| r["request_id"] == *id).unwrap();
        assert_eq!(r["cache"].as_str(), *cache, "{r}");
    }
    let (_, sql) = readme_sql()
        .into_iter()
        .find(|(title, _)| title == "Cache hit ratio per deployment")
        .unwrap();
    // deployment, hits, misses, bypasses, hit_ratio: one hit of two lookups it could serve.
    assert_eq!(rows(&db, &sql), [["cached", "1", "1", "1", "0.5"]]);
}

#[test]
fn sluice_usage_prints_the_table_and_json() {
    let dir = TempDir::new("audit-usage");
    let mut s = start(&dir, "", "");
    let mut total = 0;
    for i in 0..2 {
        let resp = post(
            &s,
            KEY,
            &format!("u-{i}"),
            &chat_body(Some("gpt-4o"), false),
        );
        total += resp.json()["usage"]["total_tokens"].as_u64().unwrap();
    }
    records(dir.path(), 2);
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(15)).is_some());
    let db: PathBuf = dir.path().join("audit.db");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(sluice_bin())
            .arg("usage")
            .arg("--db")
            .arg(&db)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, out, err) = run(&["--by", "subscription,deployment", "--since", "24h"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "subscription",
            "deployment",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..3], ["team-a", "gpt-4o", "2"]);
    assert_eq!(row[5], total.to_string());

    let (code, out, _) = run(&["--by", "subscription", "-o", "json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!([{"subscription": "team-a", "requests": 2,
                "prompt_tokens": v[0]["prompt_tokens"], "completion_tokens": 2 * MOCK_COMPLETION_TOKENS,
                "total_tokens": total}])
    );
    let (code, _, err) = run(&["--by", "colour"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown dimension `colour`"), "{err}");
}

/// A config whose audit log writes to stdout (queue of 8, `overflow`) and to a file, with
/// records of a few KiB (the prompt is long) so a stalled pipe fills fast.
fn stalled_stdout_body(dir: &Path, overflow: &str, audit_queue: usize) -> String {
    stalled_stdout_body_with(dir, overflow, &format!("queue = {audit_queue}"))
}

/// [`stalled_stdout_body`] with `audit_extra` lines in `[audit]`.
fn stalled_stdout_body_with(dir: &Path, overflow: &str, audit_extra: &str) -> String {
    format!(
        r#"{MOCK_BODY}
[audit]
{audit_extra}

[[audit.sink]]
kind = "stdout"
overflow = "{overflow}"
queue = 8

[[audit.sink]]
kind = "file"
path = "{}"
queue = 4096
"#,
        dir.join("audit.jsonl").display()
    )
}

/// A chat whose record is a few KiB.
fn wordy_chat() -> Value {
    json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "tell me about gateways ".repeat(100)}
    ]})
}

/// The value of `name{sink="SINK"}` in a scrape of the admin listener at `port`.
fn sink_metric(port: u16, name: &str, sink: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let prefix = format!("{name}{{sink=\"{sink}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {text}"))
}

/// Reads `stdout` to its end on a thread; gives the number of lines, each checked to parse.
fn count_lines(stdout: std::process::ChildStdout) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map(|l| {
                let l = l.unwrap();
                serde_json::from_str::<Value>(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
            })
            .count()
    })
}

#[test]
fn a_stalled_sink_under_drop_counts_exactly_what_it_dropped() {
    const N: usize = 300;
    let dir = TempDir::new("audit-drop");
    let mut s = Launch::new(&stalled_stdout_body(dir.path(), "drop", 4096))
        .pipe_stdout()
        .start();
    let admin = s.admin_port();
    // Nobody reads stdout: its pipe fills, then its queue, then its records are dropped.
    // The file sink is not held up.
    for i in 0..N {
        let resp = post(&s, "", &format!("drop-{i}"), &wordy_chat());
        assert_eq!(resp.status, 200);
    }
    assert_eq!(records(dir.path(), N).len(), N);
    let dropped = sink_metric(admin, "sluice_audit_dropped_total", "stdout");
    assert!(dropped > 0, "the stalled sink dropped nothing");
    let file = format!("file:{}", dir.path().join("audit.jsonl").display());
    assert_eq!(sink_metric(admin, "sluice_audit_dropped_total", &file), 0);
    // The reader comes back; a clean stop writes what the sink still held.
    let lines = count_lines(s.stdout.take().unwrap());
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(15)).is_some());
    assert_eq!(
        lines.join().unwrap() as u64 + dropped,
        N as u64,
        "every record was either written or counted as dropped"
    );
    // Never silent, even in a run shorter than the warning's 10 s period.
    assert!(s.log().contains("audit records dropped"), "{}", s.log());
}

#[test]
fn a_stalled_sink_under_block_holds_requests_back_and_loses_nothing() {
    // Well past what the pipe (64 KiB), the sink's and the writer's queues and a worker's
    // batch (64 records, handed over whole) hold between them, however records are batched.
    const N: usize = 1000;
    let dir = TempDir::new("audit-block");
    let mut s = Launch::new(&stalled_stdout_body(dir.path(), "block", 8))
        .pipe_stdout()
        .start();
    let admin = s.admin_port();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = {
        let done = done.clone();
        let port = s.port;
        std::thread::spawn(move || {
            let mut c = Client::connect(port);
            c.set_read_timeout(Duration::from_secs(60));
            let body = serde_json::to_vec(&wordy_chat()).unwrap();
            for _ in 0..N {
                let resp = c.request(
                    "POST",
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    &body,
                );
                assert_eq!(resp.status, 200);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    // Stalled: the pipe, the sink's queue and the writer's queue fill, then the worker waits.
    let stalled_at = {
        let mut last = 0;
        wait_until(Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(500));
            let now = done.load(std::sync::atomic::Ordering::SeqCst);
            let still = now == last;
            last = now;
            still && now > 0
        });
        last
    };
    assert!(stalled_at < N, "nothing held the requests back");
    // The reader comes back: every request completes, every record is written.
    let lines = count_lines(s.stdout.take().unwrap());
    client.join().unwrap();
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), N);
    assert_eq!(records(dir.path(), N).len(), N);
    assert_eq!(
        sink_metric(admin, "sluice_audit_dropped_total", "stdout"),
        0
    );
    let file = format!("file:{}", dir.path().join("audit.jsonl").display());
    assert_eq!(sink_metric(admin, "sluice_audit_dropped_total", &file), 0);
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(15)).is_some());
    assert_eq!(lines.join().unwrap(), N);
}

#[test]
fn kill_9_under_load_leaves_whole_lines_and_every_acknowledged_record() {
    let dir = TempDir::new("audit-kill");
    let audit = format!(
        r#"{MOCK_BODY}
[audit]

[[audit.sink]]
kind = "file"
path = "{file}"
fsync_interval = "100ms"

[[audit.sink]]
kind = "sqlite"
path = "{db}"
"#,
        file = dir.path().join("audit.jsonl").display(),
        db = dir.path().join("audit.db").display(),
    );
    let s = Launch::new(&audit).workers(2).start();
    // Acknowledged and given time to be written and synced.
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let id = format!("ack-{i}");
        let resp = post(&s, "", &id, &chat_body(Some("gpt-4o"), false));
        assert_eq!(resp.status, 200);
        acknowledged.push(id);
    }
    records(dir.path(), 50);
    let db = dir.path().join("audit.db");
    assert!(wait_until(Duration::from_secs(10), || {
        rows(&db, "SELECT count(*) FROM requests")[0][0] == "50"
    }));
    std::thread::sleep(Duration::from_millis(300));
    // Load from two clients, then kill -9 in the middle of it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let port = s.port;
            std::thread::spawn(move || {
                let body = serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap();
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let mut c = Client::connect(port);
                    c.set_read_timeout(Duration::from_secs(5));
                    let bytes = format!(
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if c.try_send(&[bytes.as_bytes(), &body].concat()).is_err() || c.try_read_response().is_err() {
                        break;
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    s.signal("KILL");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent: usize = load.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(sent > 0, "no load reached the gateway before the kill");

    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let (whole, tail) = text
        .rsplit_once('\n')
        .map_or(("", text.as_str()), |(w, t)| (w, t));
    let ids: Vec<String> = whole
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    for id in &acknowledged {
        assert!(
            ids.contains(id),
            "{id} acknowledged and synced, not in the file"
        );
    }
    let db_ids: Vec<String> = rows(&db, "SELECT request_id FROM requests")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(rows(&db, "PRAGMA integrity_check"), [["ok"]]);
    for id in &acknowledged {
        assert!(
            db_ids.contains(id),
            "{id} acknowledged, not in the database"
        );
    }
    // Both sinks wrote the same records, but for the batches in flight at the kill.
    let diff = (ids.len() as i64 - db_ids.len() as i64).unsigned_abs() as usize;
    assert!(
        diff <= sent,
        "{} lines, {} rows, {sent} requests under load",
        ids.len(),
        db_ids.len()
    );

    // A restart on the same files: a torn last line, if the kill left one, is moved aside.
    let again = Launch::new(&audit).start();
    let resp = post(
        &again,
        "",
        "after-restart",
        &chat_body(Some("gpt-4o"), false),
    );
    assert_eq!(resp.status, 200);
    let after = records(dir.path(), ids.len() + 1);
    assert!(after.iter().any(|r| r["request_id"] == "after-restart"));
    if !tail.is_empty() {
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("audit.jsonl.torn-")
            })
            .expect("the torn tail moved aside");
        assert_eq!(std::fs::read_to_string(aside.path()).unwrap(), tail);
    }
}

#[test]
fn a_sink_that_cannot_write_counts_its_records_as_dropped_and_the_others_go_on() {
    let dir = TempDir::new("audit-full");
    let text = format!(
        r#"{MOCK_BODY}
[audit]

[[audit.sink]]
kind = "file"
path = "/dev/full"

[[audit.sink]]
kind = "file"
path = "{}"
"#,
        dir.path().join("audit.jsonl").display()
    );
    let s = Launch::new(&text).start();
    let admin = s.admin_port();
    for i in 0..5 {
        let resp = post(
            &s,
            "",
            &format!("full-{i}"),
            &chat_body(Some("gpt-4o"), false),
        );
        assert_eq!(resp.status, 200);
    }
    assert_eq!(records(dir.path(), 5).len(), 5);
    assert!(wait_until(Duration::from_secs(10), || {
        sink_metric(admin, "sluice_audit_dropped_total", "file:/dev/full") == 5
    }));
    assert!(sink_metric(admin, "sluice_audit_write_errors_total", "file:/dev/full") >= 1);
    assert_eq!(
        sink_metric(admin, "sluice_audit_written_total", "file:/dev/full"),
        0
    );
    assert!(s.wait_log("audit sink failed to write", Duration::from_secs(5)));
}

#[test]
fn queued_records_are_bounded_in_bytes_not_only_in_count() {
    const N: usize = 40;
    let dir = TempDir::new("audit-bytes");
    // Room for a few hundred records by count, for about three of these by bytes.
    let mut s = Launch::new(&stalled_stdout_body_with(
        dir.path(),
        "drop",
        "queue = 4096\nmax_queue_bytes = \"200KiB\"",
    ))
    .server("[server.limits]\nmax_body = 4000000")
    .pipe_stdout()
    .start();
    let admin = s.admin_port();
    let big = json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "x".repeat(60_000)}
    ]});
    for i in 0..N {
        let resp = post(&s, "", &format!("big-{i}"), &big);
        assert_eq!(resp.status, 200);
    }
    let file = format!("file:{}", dir.path().join("audit.jsonl").display());
    // The byte bound drops a record for every sink: what the file lacks, it counted.
    assert!(wait_until(Duration::from_secs(10), || {
        let written = sink_metric(admin, "sluice_audit_written_total", &file);
        written + sink_metric(admin, "sluice_audit_dropped_total", &file) == N as u64
    }));
    let dropped = sink_metric(admin, "sluice_audit_dropped_total", "stdout");
    assert!(dropped > 0, "nothing dropped: the byte bound did not hold");
    let lines = count_lines(s.stdout.take().unwrap());
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(15)).is_some());
    assert_eq!(lines.join().unwrap() as u64 + dropped, N as u64);
}

#[test]
fn a_sink_file_removed_while_open_is_started_again() {
    let dir = TempDir::new("audit-removed");
    let s = start(&dir, "", "");
    for i in 0..2 {
        assert_eq!(
            post(
                &s,
                KEY,
                &format!("before-{i}"),
                &chat_body(Some("gpt-4o"), false)
            )
            .status,
            200
        );
    }
    records(dir.path(), 2);
    let db = dir.path().join("audit.db");
    assert!(wait_until(Duration::from_secs(10), || {
        rows(&db, "SELECT count(*) FROM requests")[0][0] == "2"
    }));
    for name in ["audit.jsonl", "audit.db", "audit.db-wal", "audit.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    for i in 0..3 {
        assert_eq!(
            post(
                &s,
                KEY,
                &format!("after-{i}"),
                &chat_body(Some("gpt-4o"), false)
            )
            .status,
            200
        );
    }
    let after = records(dir.path(), 3);
    assert_eq!(after.len(), 3, "the new file holds the later records");
    // The sink re-creates the database; until its schema is in, the table is missing.
    assert!(wait_until(Duration::from_secs(10), || request_rows(&db) == Some(3)));
    assert!(s.wait_log("was removed or replaced while open", Duration::from_secs(5)));
}

/// The request ids of every record in the JSON lines files `names` under `dir`.
fn ids_in(dir: &Path, names: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for name in names {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        for line in text.lines() {
            let record: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            ids.push(
                record["request_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    ids.sort();
    ids
}

/// A streamed chat to `slow` as `team-b` (no limits) with a prompt of `prompt_bytes`, read
/// to its end on a thread of its own; the thread gives the answer's status.
fn slow_stream(port: u16, id: String, prompt_bytes: usize) -> std::thread::JoinHandle<u16> {
    std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let body = json!({
            "model": "slow",
            "stream": true,
            "messages": [{"role": "user", "content": "w ".repeat(prompt_bytes / 2)}],
        });
        let body = serde_json::to_vec(&body).unwrap();
        let (head, mut sse) = c.stream(
            "POST",
            "/v1/chat/completions",
            &[
                ("api-key", OTHER_KEY),
                ("x-request-id", &id),
                ("content-type", "application/json"),
            ],
            &body,
        );
        sse.collect_rest();
        head.status()
    })
}

#[test]
fn a_reload_that_replaces_the_audit_log_loses_no_record_at_shutdown() {
    let dir = TempDir::new("audit-retire");
    let first = body(dir.path(), "", "");
    let mut s = Launch::new(&first).start();
    // Streams on the first config (each ~2 s, with a large prompt to render), then a reload
    // to other sinks while they run, requests on the new one, and SIGTERM at once: the
    // replaced log must still write every record of the requests that held it.
    let streams: Vec<_> = (0..4)
        .map(|i| slow_stream(s.port, format!("old-{i}"), 400_000))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let second = first
        .replace("audit.jsonl", "audit-2.jsonl")
        .replace("audit.db", "audit-2.db");
    s.rewrite_config(&second);
    s.signal("HUP");
    assert!(
        s.wait_log("config reloaded", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    for i in 0..5 {
        assert_eq!(
            post(&s, OTHER_KEY, &format!("new-{i}"), &wordy_chat()).status,
            200
        );
    }
    s.signal("TERM");
    for stream in streams {
        assert_eq!(stream.join().unwrap(), 200);
    }
    assert!(
        s.wait_exit(Duration::from_secs(40)).is_some(),
        "{}",
        s.log()
    );
    let mut want: Vec<String> = (0..4)
        .map(|i| format!("old-{i}"))
        .chain((0..5).map(|i| format!("new-{i}")))
        .collect();
    want.sort();
    assert_eq!(
        ids_in(dir.path(), &["audit.jsonl", "audit-2.jsonl"]),
        want,
        "{}",
        s.log()
    );
    let count = |db: &str| {
        rows(&dir.path().join(db), "SELECT count(*) FROM requests")[0][0]
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(count("audit.db") + count("audit-2.db"), want.len());
}

#[test]
fn recorders_on_one_file_share_its_sink_and_an_open_sink_keeps_its_settings() {
    let dir = TempDir::new("audit-share");
    let first = body(dir.path(), "node = \"one\"", "");
    let s = Launch::new(&first).start();
    let streams: Vec<_> = (0..3)
        .map(|i| slow_stream(s.port, format!("one-{i}"), 200_000))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The same files, another node name: a new recorder, the same open sinks.
    s.rewrite_config(&first.replace("node = \"one\"", "node = \"two\""));
    s.signal("HUP");
    assert!(
        s.wait_log("config reloaded", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    for i in 0..5 {
        assert_eq!(
            post(&s, OTHER_KEY, &format!("two-{i}"), &wordy_chat()).status,
            200
        );
    }
    for stream in streams {
        assert_eq!(stream.join().unwrap(), 200);
    }
    let all = records(dir.path(), 8);
    assert_eq!(all.len(), 8, "each record once");
    for r in &all {
        let id = r["request_id"].as_str().unwrap();
        let node = if id.starts_with("one-") { "one" } else { "two" };
        assert_eq!(r["node"], node, "{r}");
    }
    let moved_aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("torn"))
        .count();
    assert_eq!(
        moved_aside,
        0,
        "nothing was mistaken for a torn line: {}",
        s.log()
    );
    // A change to the open file's own settings is refused; the running config serves on.
    let rotating = first.replace(
        &format!("path = \"{}\"", dir.path().join("audit.jsonl").display()),
        &format!(
            "path = \"{}\"\nrotate_size = \"1MiB\"",
            dir.path().join("audit.jsonl").display()
        ),
    );
    assert_ne!(rotating, first);
    s.rewrite_config(&rotating);
    s.signal("HUP");
    assert!(
        s.wait_log("is open with other settings", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    assert!(s.log().contains("config reload refused"));
    assert_eq!(
        post(&s, OTHER_KEY, "after-refusal", &wordy_chat()).status,
        200
    );
    assert_eq!(record_of(dir.path(), 9, "after-refusal")["node"], "two");
}

#[test]
fn a_body_a_backend_could_read_otherwise_is_refused_when_audited() {
    let dir = TempDir::new("audit-other-case");
    let s = start(&dir, "", "");
    // `team-b` has no token limit; the audit log alone makes Sluice read the body, and a
    // key a case-insensitive backend would take for `messages` must not pass unrecorded.
    for (id, body) in [
        (
            "upper",
            json!({"model": "gpt-4o", "MESSAGES": [{"role": "user", "content": "hidden"}]}),
        ),
        (
            "twice",
            json!({"model": "gpt-4o", "Messages": [], "messages": [{"role": "user", "content": "x"}]}),
        ),
    ] {
        let resp = post(&s, OTHER_KEY, id, &body);
        assert_openai_error(&resp, 400, None);
        assert!(resp.text().contains("another case"), "{}", resp.text());
    }
    let upper = record_of(dir.path(), 2, "upper");
    assert_eq!(upper["status"], 400, "{upper}");
}

#[test]
fn a_subscription_key_sent_as_the_request_id_never_becomes_it() {
    let dir = TempDir::new("audit-key-as-id");
    let s = start(&dir, "", "");
    let resp = post(&s, KEY, KEY, &chat_body(Some("gpt-4o"), false));
    assert_eq!(resp.status, 200);
    let id = resp.header("x-request-id").unwrap().to_string();
    assert_ne!(id, KEY);
    let record = &records(dir.path(), 1)[0];
    assert_eq!(record["request_id"], id.as_str());
    assert!(!record.to_string().contains(KEY), "{record}");
    assert!(!s.log().contains(KEY));
    // Another well-formed id is still the client's own.
    let resp = post(&s, KEY, "trace-me-7", &chat_body(Some("gpt-4o"), false));
    assert_eq!(resp.header("x-request-id"), Some("trace-me-7"));
}

#[test]
fn a_failed_write_after_the_file_was_cut_in_place_leaves_only_whole_lines() {
    let dir = TempDir::new("audit-cut-in-place");
    let file = dir.path().join("audit.jsonl");
    let config = format!(
        "{MOCK_BODY}\n[audit]\n\n[[audit.sink]]\nkind = \"file\"\npath = \"{}\"\n",
        file.display()
    );
    // 3,072,000 bytes at most per file (`ulimit -f 6000`): a write past it fails (EFBIG),
    // as on a full disk, and does not kill the process.
    let s = Launch::new(&config).file_size_limit(6000).start();
    // Records of about 1.04 MB each (two 520,000-character messages).
    let big = |id: &str| {
        let text = "a".repeat(520_000);
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "user", "content": text}, {"role": "user", "content": text}]});
        let resp = post_with(&s, "/v1/chat/completions", &[("x-request-id", id)], &body);
        assert_eq!(resp.status, 200);
    };
    big("big-1");
    big("big-2");
    let written = || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(wait_until(Duration::from_secs(10), || written() == 2));
    // Cut in place, as logrotate's `copytruncate` does (same inode).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    // Three more: the third crosses the limit from the file's real length and fails.
    for id in ["big-3", "big-4", "big-5"] {
        big(id);
        std::thread::sleep(Duration::from_millis(300));
    }
    let small = post_with(
        &s,
        "/v1/chat/completions",
        &[("x-request-id", "small-1")],
        &chat_body(Some("gpt-4o"), false),
    );
    assert_eq!(small.status, 200);
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("small-1")
    }));
    let text = std::fs::read_to_string(&file).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a torn line ({e}): {:?}", &l[..l.len().min(80)]));
            v["request_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.first().map(String::as_str), Some("big-3"), "{ids:?}");
    assert_eq!(ids.last().map(String::as_str), Some("small-1"), "{ids:?}");
    assert!(!ids.contains(&"big-5".to_string()), "{ids:?}");
    // The record that did not fit was dropped, and counted.
    let sink = format!("file:{}", file.display());
    assert_eq!(
        sink_metric(s.admin_port(), "sluice_audit_dropped_total", &sink),
        1
    );
}
