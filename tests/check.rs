//! Whole-process tests of `sluice --check`: a good file exits 0 with `config OK: FILE`; a bad
//! one exits 1 and names every error as `FILE:LINE:COL: FIELD: MESSAGE`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;

use support::*;

#[test]
fn check_accepts_a_good_file() {
    let dir = TempDir::new("check");
    let path = dir.path().join("good.toml");
    fs::write(&path, config_text(0, "workers = 1", MOCK_BODY)).unwrap();
    let (code, stdout, stderr) = run_check(&path, &[]);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains(&format!("config OK: {}", path.display())),
        "stdout: {stdout}"
    );
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle} not in config"))
}

#[test]
fn check_rejects_a_bad_file_naming_file_line_and_field() {
    let dir = TempDir::new("check");
    let path = dir.path().join("bad.toml");
    let text = r#"[server]
listen = ["127.0.0.1:18080"]

[[backend]]
name = "m"
kind = "mock"
url = "http://127.0.0.1:1"

[[backend]]
name = "o"
kind = "openai"
url = "http://127.0.0.1:9"

[[deployment]]
name = "d"
backends = [{ backend = "nope" }]

[[deployment]]
name = "e"
backends = [{ backend = "o", weight = 0 }]
"#;
    fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = run_check(&path, &[]);
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    let file = path.display().to_string();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&file)).collect();

    // A field that does not belong to a mock backend.
    let url_line = format!("{file}:{}:", line_of(text, "url = \"http://127.0.0.1:1\""));
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with(&url_line) && l.contains("backend[0].url")),
        "want {url_line}COL: backend[0].url: …; stderr:\n{stderr}"
    );
    // An unknown backend reference.
    let nope_line = format!("{file}:{}:", line_of(text, "\"nope\""));
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with(&nope_line) && l.contains("deployment[0]")),
        "want {nope_line}COL: deployment[0]…: …; stderr:\n{stderr}"
    );
    // Weight 0.
    let weight_line = format!("{file}:{}:", line_of(text, "weight = 0"));
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with(&weight_line) && l.contains("weight")),
        "want {weight_line}COL: deployment[1]…weight: …; stderr:\n{stderr}"
    );
    // FILE:LINE:COL: — a column after the line.
    for l in &errors {
        let rest = &l[file.len() + 1..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().unwrap_or("");
        let col = parts.next().unwrap_or("");
        assert!(
            line.parse::<usize>().is_ok() && col.parse::<usize>().is_ok(),
            "not FILE:LINE:COL: {l}"
        );
    }
}

#[test]
fn check_rejects_a_missing_api_key_env_var() {
    let dir = TempDir::new("check");
    let path = dir.path().join("env.toml");
    let body = r#"
[[backend]]
name = "aoai"
kind = "azure"
url = "http://127.0.0.1:9"
deployment = "gpt-4o"
api_key_env = "SLUICE_TEST_SURELY_UNSET_VARIABLE"

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "aoai" }]
"#;
    let text = config_text(0, "", body);
    fs::write(&path, &text).unwrap();
    let (code, _, stderr) = run_check(&path, &[]);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    let want = format!(
        "{}:{}:",
        path.display(),
        line_of(&text, "SLUICE_TEST_SURELY_UNSET_VARIABLE")
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&want) && l.contains("backend[0].api_key_env")),
        "want {want}COL: backend[0].api_key_env: …; stderr:\n{stderr}"
    );
    // With the variable set, the same file is good.
    let (code, stdout, stderr) = run_check(&path, &[("SLUICE_TEST_SURELY_UNSET_VARIABLE", "k")]);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
}

#[test]
fn check_rejects_a_toml_syntax_error_with_its_line() {
    let dir = TempDir::new("check");
    let path = dir.path().join("syntax.toml");
    let text = "[server]\nlisten = [\"127.0.0.1:1\"\nworkers = 1\n";
    fs::write(&path, text).unwrap();
    let (code, _, stderr) = run_check(&path, &[]);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{}:", path.display())),
        "error should name the file: {stderr}"
    );
}

#[test]
fn keygen_prints_a_key_and_its_hash() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("keygen")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap()
            .to_owned()
    };
    let (key, hash) = (field("key:"), field("hash:"));
    assert!(key.starts_with("sk-sluice-") && key.len() == 53, "{stdout}");
    assert_eq!(hash, sluice::auth::key_hash(key.as_bytes()));
}

#[test]
fn without_a_subcommand_config_is_required() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

/// `--check` compiles and builds the config (every key parsed) but starts nothing: a
/// `jwks_url` key is not fetched. The JWKS endpoint here is a listener that would see the
/// fetch as a connection; after the check exits it has seen none.
#[test]
fn check_starts_no_jwks_fetch() {
    let dir = TempDir::new("check");
    let path = dir.path().join("jwks.toml");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    let body = format!(
        "{MOCK_BODY}\n[[product]]\nname = \"p\"\n\n[[subscription]]\nname = \"s\"\nproduct = \"p\"\n\
         jwt_claim_values = [\"app\"]\n\n[[jwt]]\nname = \"remote\"\nissuer = \"https://issuer.test\"\n\
         audiences = [\"api://sluice\"]\nsubscription_claim = \"appid\"\n\
         keys = [{{ jwks_url = \"{url}\", algorithms = [\"RS256\"] }}]\n"
    );
    fs::write(&path, config_text(0, "workers = 1", &body)).unwrap();
    let (code, stdout, stderr) = run_check(&path, &[]);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("--check connected to the JWKS endpoint: {other:?}"),
    }
}
