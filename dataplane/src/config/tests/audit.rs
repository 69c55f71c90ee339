//! `[audit]`, `[[audit.sink]]`, a product's `audit` and `[admin] listen`: compiled, and every
//! error at its line and field.

use super::*;
use crate::audit::{ContentMode, Overflow, SinkKind};

#[test]
fn audit_sinks_and_content_policies_compile() {
    let text = format!(
        r#"{MOCK_DEPLOYMENT}
[[product]]
name = "p"
audit = {{ content = "truncate", truncate_chars = 50 }}

[[subscription]]
name = "s"
product = "p"
keys = ["sha256:579084b337941a6a4a172d804df80263a01442341327e1c8aded14669aee6724"]

[audit]
content = "hash"
redact = ['ticket-[0-9]+']
queue = 100
node = "gw-1"

[[audit.sink]]
kind = "file"
path = "{tmp}/audit.jsonl"
rotate_size = "10MiB"
rotate_interval = "1h"
fsync_interval = "250ms"
overflow = "block"

[[audit.sink]]
kind = "sqlite"
path = "audit.db"
queue = 10

[[audit.sink]]
kind = "stdout"

[admin]
listen = "127.0.0.1:9191"
"#,
        tmp = std::env::temp_dir().display()
    );
    let snapshot = compile(&text).unwrap();
    let audit = snapshot.audit.as_ref().unwrap();
    assert_eq!(audit.content, ContentMode::Hash);
    assert_eq!(audit.redact, ["ticket-[0-9]+"]);
    assert!(audit.default_redactions);
    assert_eq!((audit.queue, audit.node.as_str()), (100, "gw-1"));
    let SinkKind::File(file) = &audit.sinks[0].kind else {
        panic!("{:?}", audit.sinks[0]);
    };
    assert_eq!(file.path, std::env::temp_dir().join("audit.jsonl"));
    assert_eq!(file.rotate_size, Some(10 << 20));
    assert_eq!(file.rotate_interval, Some(Duration::from_secs(3600)));
    assert_eq!(file.fsync_interval, Duration::from_millis(250));
    assert_eq!(audit.sinks[0].overflow, Overflow::Block);
    assert_eq!(audit.sinks[0].queue, 100);
    assert_eq!(
        audit.sinks[1].kind,
        SinkKind::Sqlite {
            path: PathBuf::from("audit.db")
        }
    );
    assert_eq!(
        (audit.sinks[1].overflow, audit.sinks[1].queue),
        (Overflow::Drop, 10)
    );
    assert_eq!(audit.sinks[2].kind, SinkKind::Stdout);
    assert_eq!(
        snapshot.access.products[0].audit_content,
        Some(ContentMode::Truncate(50))
    );
    assert_eq!(
        snapshot.admin_listen,
        Some("127.0.0.1:9191".parse().unwrap())
    );
    assert!(snapshot.accounts_tokens());
    assert!(snapshot.version.starts_with("sha256:") && snapshot.version.len() == 71);
}

#[test]
fn without_sinks_nothing_is_recorded_and_the_admin_listener_has_its_default() {
    let snapshot = compile(&format!("{MOCK_DEPLOYMENT}\n[audit]\ncontent = \"omit\"\n")).unwrap();
    assert_eq!(snapshot.audit, None);
    assert_eq!(
        snapshot.admin_listen,
        Some("127.0.0.1:9090".parse().unwrap())
    );
    let off = compile(&format!("{MOCK_DEPLOYMENT}\n[admin]\nlisten = \"\"\n")).unwrap();
    assert_eq!(off.admin_listen, None);
    assert!(!off.accounts_tokens());
}

#[test]
fn audit_errors_are_located() {
    let text = format!(
        r#"{MOCK_DEPLOYMENT}
[audit]
content = "everything"
truncate_chars = 0
redact = ['(unclosed']
queue = 0

[[audit.sink]]
kind = "kafka"

[[audit.sink]]
kind = "file"
rotate_size = "ten megs"
fsync_interval = "0s"
overflow = "wait"

[[audit.sink]]
kind = "stdout"
path = "x"
rotate_interval = "1h"

[[audit.sink]]
kind = "sqlite"
path = "a.db"

[[audit.sink]]
kind = "file"
path = "./a.db"

[[audit.sink]]
kind = "file"
path = "no/such/folder/a.jsonl"
"#
    );
    let errors = errors(&text);
    let expect = [
        "sluice.toml:10:11: audit.content: unknown content policy `everything`: expected \"full\", \"truncate\", \"hash\" or \"omit\"",
        "sluice.toml:11:18: audit.truncate_chars: must be at least 1 (use content = \"omit\" to keep no content)",
        "sluice.toml:12:11: audit.redact[0]: not a valid regular expression: regex parse error: (unclosed ^ error: unclosed group",
        "sluice.toml:13:9: audit.queue: must be 1 to 1048576 records (its slots are allocated at start)",
        "sluice.toml:16:8: audit.sink[0].kind: unknown sink kind `kafka`: expected \"file\", \"stdout\" or \"sqlite\"",
        "sluice.toml:19:8: audit.sink[1].path: a \"file\" sink needs a path",
        "sluice.toml:20:15: audit.sink[1].rotate_size: invalid size `ten megs`: expected a whole number and a unit (B, KiB, MiB, GiB, KB, MB or GB), e.g. \"100MiB\"",
        "sluice.toml:21:18: audit.sink[1].fsync_interval: must be more than 0",
        "sluice.toml:22:12: audit.sink[1].overflow: unknown overflow policy `wait`: expected \"drop\" or \"block\"",
        "sluice.toml:26:8: audit.sink[2].path: a \"stdout\" sink has no path",
        "sluice.toml:27:19: audit.sink[2].rotate_interval: applies only to kind = \"file\", not \"stdout\"",
        "sluice.toml:33:1: audit.sink[4]: `file:./a.db` is already a sink",
        "sluice.toml:39:8: audit.sink[5].path: folder `no/such/folder` does not exist (sink paths are relative to the directory Sluice runs in)",
    ];
    let mut sorted = errors.clone();
    sorted.sort();
    let mut want: Vec<String> = expect.iter().map(|e| (*e).to_owned()).collect();
    want.sort();
    assert_eq!(sorted, want);
}

#[test]
fn a_product_audit_policy_is_checked() {
    let text = format!(
        "{MOCK_DEPLOYMENT}\n[[product]]\nname = \"p\"\naudit = {{ content = \"hash\", truncate_chars = 5 }}\n"
    );
    assert_error(
        &text,
        "sluice.toml:11:46: product[0].audit.truncate_chars: applies only with content = \"truncate\"",
    );
}

#[test]
fn the_admin_listener_cannot_be_a_public_one() {
    assert_error(
        &format!("[server]\nlisten = [\"127.0.0.1:8080\"]\n{MOCK_DEPLOYMENT}\n[admin]\nlisten = \"127.0.0.1:8080\"\n"),
        "sluice.toml:12:10: admin.listen: `127.0.0.1:8080` is a public listener's address: the admin endpoints need their own",
    );
    assert_error(
        &format!("{MOCK_DEPLOYMENT}\n[admin]\nlisten = \"localhost\"\n"),
        "sluice.toml:10:10: admin.listen: `localhost` is not an IP address and port, e.g. \"127.0.0.1:9090\" (\"\" for no admin listener)",
    );
}
