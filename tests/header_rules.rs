//! Whole-process tests of the header-name and Host rules: request header names spelled with
//! `_` (or another separator) that a backend could fold into a framing, connection,
//! credential or forwarding header never reach it, whatever `[server] headers_with_underscores`
//! says; other underscore names are dropped, refused or forwarded as it says; a backend's
//! disguised framing headers never reach the client; and invalid Host values and request
//! targets are refused with 400 and a closed connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::time::Duration;

use support::*;

const CHAT_TARGET: &str = "/v1/chat/completions";

/// A header name as a backend that folds separators reads it: lowercase, every byte that is
/// not a letter or digit read as `-`.
fn folded(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b.to_ascii_lowercase())
            } else {
                '-'
            }
        })
        .collect()
}

/// How many of `head`'s header names read as `name` once folded.
fn count_folded(head: &Head, name: &str) -> usize {
    head.headers
        .iter()
        .filter(|(n, _)| folded(n) == name)
        .count()
}

/// A chat body for deployment `gpt-4o`.
fn chat_json() -> Vec<u8> {
    serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap()
}

/// `POST /v1/chat/completions` with exactly `headers` (each line ending in CRLF, Host
/// included), then `body`.
fn raw_chat(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST {CHAT_TARGET} HTTP/1.1\r\n{headers}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// A scripted backend that records each request and answers a chat completion.
fn recording_backend() -> Upstream {
    let answer = serde_json::to_vec(&upstream_chat_answer("upstream-model")).unwrap();
    Upstream::start(move |_, s| {
        respond(s, 200, &[("content-type", "application/json")], &answer);
        After::KeepAlive
    })
}

/// Sluice in front of `up` (an `openai` backend that keeps the body as sent), with
/// `server_extra` in `[server]`.
fn gateway(up: &Upstream, server_extra: &str) -> Sluice {
    Launch::new(&openai_backend_body(&up.url(), "gpt-4o"))
        .server(server_extra)
        .start()
}

/// Headers that read as ones Sluice manages once `_` or `.` is read as `-`, none of which
/// may reach a backend under any setting.
const DISGUISED: &str = "Transfer_Encoding: chunked\r\n\
    API_KEY: sk-client-secret-1\r\n\
    Api_Key: sk-client-secret-2\r\n\
    Ocp_Apim_Subscription_Key: sk-client-secret-3\r\n\
    x_request_id: forged-id\r\n\
    X_Forwarded_For: 6.6.6.6\r\n\
    x.forwarded.proto: https\r\n\
    Content.Length: 5\r\n\
    Proxy_Authorization: Basic eA==\r\n\
    Proxy_Connection: close\r\n\
    Keep_Alive: timeout=1\r\n";

/// Asserts the backend's recorded request carries none of [`DISGUISED`] and exactly one
/// framing header, Sluice's Content-Length matching the body it got, which is `body`.
fn assert_nothing_disguised_arrived(rec: &Recorded, body: &[u8]) {
    let head = &rec.head;
    for (name, value) in &head.headers {
        assert!(
            !value.contains("sk-client-secret") && value != "forged-id" && value != "6.6.6.6",
            "a disguised header reached the backend: {name}: {value}; head: {head:?}"
        );
    }
    for name in [
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "expect",
    ] {
        assert_eq!(count_folded(head, name), 0, "{name} in {head:?}");
    }
    for name in [
        "content-length",
        "host",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
    ] {
        assert_eq!(count_folded(head, name), 1, "{name} in {head:?}");
    }
    assert_eq!(count_folded(head, "api-key"), 0, "{head:?}");
    assert_eq!(count_folded(head, "authorization"), 0, "{head:?}");
    assert_eq!(
        count_folded(head, "ocp-apim-subscription-key"),
        0,
        "{head:?}"
    );
    assert_eq!(
        head.header("content-length"),
        Some(body.len().to_string().as_str()),
        "{head:?}"
    );
    assert!(
        head.header("host")
            .is_some_and(|h| h.starts_with("127.0.0.1")),
        "{head:?}"
    );
    assert_ne!(head.header("x-request-id"), Some("forged-id"));
    assert!(
        head.header("x-forwarded-for")
            .is_some_and(|v| v == "127.0.0.1"),
        "{head:?}"
    );
    assert_eq!(head.header("x-forwarded-proto"), Some("http"), "{head:?}");
    assert_eq!(rec.body, body);
}

#[test]
fn underscore_framing_beside_content_length_reaches_the_backend_as_one_framing() {
    let up = recording_backend();
    let s = gateway(&up, "");
    let body = chat_json();
    let raw = raw_chat(
        &format!(
            "Host: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Transfer_Encoding: chunked\r\nContent-Length: {}\r\n",
            body.len()
        ),
        &body,
    );
    let mut c = s.connect();
    c.send(&raw);
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let recs = up.requests();
    assert_eq!(recs.len(), 1);
    let head = &recs[0].head;
    assert!(
        head.headers.iter().all(|(n, _)| !n.contains('_')),
        "an underscore header reached the backend: {head:?}"
    );
    assert_eq!(count_folded(head, "transfer-encoding"), 0, "{head:?}");
    assert_eq!(count_folded(head, "content-length"), 1, "{head:?}");
    assert_eq!(
        head.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(recs[0].body, body);
}

#[test]
fn drop_header_is_the_default_and_drops_every_disguised_and_underscore_name() {
    let up = recording_backend();
    let s = gateway(&up, "");
    let body = chat_json();
    let raw = raw_chat(
        &format!(
            "Host: 127.0.0.1\r\nContent-Type: application/json\r\n{DISGUISED}\
             X_Custom_Thing: 1\r\nX.Dotted-Name: kept\r\nContent-Length: {}\r\n",
            body.len()
        ),
        &body,
    );
    let mut c = s.connect();
    c.send(&raw);
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The connection was not closed by the disguised `Connection_: close`.
    let again = c.post_json(CHAT_TARGET, &chat_body(Some("gpt-4o"), false));
    assert_eq!(again.status, 200, "{}", again.text());

    let recs = up.requests();
    assert_eq!(recs.len(), 2);
    assert_nothing_disguised_arrived(&recs[0], &body);
    let head = &recs[0].head;
    assert!(
        head.headers.iter().all(|(n, _)| !n.contains('_')),
        "{head:?}"
    );
    // A name with another separator that reads as nothing Sluice manages is forwarded.
    assert_eq!(head.header("X.Dotted-Name"), Some("kept"), "{head:?}");
    assert_eq!(head.header("content-type"), Some("application/json"));
}

#[test]
fn allow_forwards_underscore_names_but_never_disguised_ones() {
    let up = recording_backend();
    let s = gateway(&up, "headers_with_underscores = \"allow\"");
    let body = chat_json();
    let raw = raw_chat(
        &format!(
            "Host: 127.0.0.1\r\nContent-Type: application/json\r\n{DISGUISED}\
             X_Custom_Thing: forwarded\r\nContent-Length: {}\r\n",
            body.len()
        ),
        &body,
    );
    let mut c = s.connect();
    c.send(&raw);
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let recs = up.requests();
    assert_eq!(recs.len(), 1);
    assert_nothing_disguised_arrived(&recs[0], &body);
    let head = &recs[0].head;
    assert_eq!(head.header("X_Custom_Thing"), Some("forwarded"), "{head:?}");
    assert!(
        head.headers.iter().any(|(n, _)| n == "X_Custom_Thing"),
        "the name's spelling is kept: {head:?}"
    );
}

#[test]
fn reject_request_answers_400_naming_the_header_and_sends_nothing() {
    let up = recording_backend();
    let s = gateway(&up, "headers_with_underscores = \"reject_request\"");
    let body = chat_json();
    let mut c = s.connect();
    for (header, why) in [
        ("X_Custom_Thing: 1", "contains an underscore"),
        (
            "Transfer_Encoding: chunked",
            "reads as a header the gateway manages",
        ),
        (
            "API_KEY: sk-client-secret-1",
            "reads as a header the gateway manages",
        ),
        (
            "x_request_id: forged-id",
            "reads as a header the gateway manages",
        ),
        ("Content.Length: 5", "reads as a header the gateway manages"),
    ] {
        let name = header.split(':').next().unwrap();
        let raw = raw_chat(
            &format!(
                "Host: 127.0.0.1\r\nContent-Type: application/json\r\n{header}\r\n\
                 Content-Length: {}\r\n",
                body.len()
            ),
            &body,
        );
        c.send(&raw);
        let resp = c.read_response();
        assert_openai_error(&resp, 400, None);
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(&format!("`{name}`")), "{message}");
        assert!(message.contains(why), "{message}");
        assert_eq!(resp.json()["error"]["type"], "invalid_request_error");
    }
    assert_eq!(up.request_count(), 0, "{:?}", up.requests());
    assert_eq!(up.connections(), 0);
    // The connection stays usable, and a request with plain names goes through.
    let resp = c.post_json(CHAT_TARGET, &chat_body(Some("gpt-4o"), false));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.request_count(), 1);
}

/// `reject_request` refuses as soon as the head is read, whatever follows: before routing
/// (an unknown path is 400, not 404), before credentials are checked (400, not 401), for a
/// mock-served deployment as for a forwarded one, and without waiting for the body.
#[test]
fn reject_request_refuses_at_the_head_before_routing_and_credentials() {
    let body = format!(
        "{}\n[[product]]\nname = \"p\"\n\n[[subscription]]\nname = \"s\"\nproduct = \"p\"\nkeys = [\"{}\"]\n",
        r#"
[[backend]]
name = "m"
kind = "mock"

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "m" }]
"#,
        "sha256:0000000000000000000000000000000000000000000000000000000000000000"
    );
    let s = Launch::new(&body)
        .server("headers_with_underscores = \"reject_request\"")
        .start();
    for target in [CHAT_TARGET, "/nope"] {
        let mut c = s.connect();
        // A body announced but never sent: the answer must not wait for it.
        c.send(
            format!(
                "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\napi-key: wrong\r\n\
                 X_Thing: 1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            .as_bytes(),
        );
        c.set_read_timeout(std::time::Duration::from_secs(5));
        let resp = c.read_response();
        assert_openai_error(&resp, 400, None);
        assert!(resp.text().contains("`X_Thing`"), "{}", resp.text());
    }
}

/// A backend whose answers carry disguised framing headers: the first a Content-Length
/// body with `Transfer_Encoding: chunked` and `Content_Length` beside it, the second a
/// chunked body with `Content_Length` and `Content.Length`.
fn disguising_backend(body: &'static [u8]) -> Upstream {
    Upstream::start(move |rec, s| {
        if rec.head.target().contains("completions") && !rec.body.is_empty() {
            let stream_it = rec.json()["user"] == "chunked";
            let mut out = Vec::new();
            if stream_it {
                out.extend_from_slice(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                      Content_Length: 3\r\nContent.Length: 4\r\nTransfer-Encoding: chunked\r\n\
                      X_Backend_Note: kept\r\n\r\n",
                );
                let (a, b) = body.split_at(body.len() / 2);
                for piece in [a, b, b""] {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
            } else {
                out.extend_from_slice(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         Transfer_Encoding: chunked\r\nContent_Length: 3\r\n\
                         Keep_Alive: timeout=1\r\nx_request_id: backend-id\r\n\
                         X_Backend_Note: kept\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(body);
            }
            let _ = s.write_all(&out);
        } else {
            respond(s, 500, &[], b"unexpected");
        }
        After::KeepAlive
    })
}

#[test]
fn disguised_framing_headers_from_the_backend_never_reach_the_client() {
    static ANSWER: &[u8] = br#"{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
    let up = disguising_backend(ANSWER);
    let s = gateway(&up, "");
    let mut c = s.connect();
    for user in ["length", "chunked"] {
        let mut body = chat_body(Some("gpt-4o"), false);
        body["user"] = user.into();
        let resp = c.post_json(CHAT_TARGET, &body);
        assert_eq!(resp.status, 200, "{user}: {}", resp.text());
        let head = &resp.head;
        assert!(
            head.headers
                .iter()
                .all(|(n, _)| !n.contains('_') || n == "X_Backend_Note"),
            "{user}: {head:?}"
        );
        assert!(
            head.headers.iter().all(|(n, _)| !n.contains('.')),
            "{user}: {head:?}"
        );
        // Exactly one framing header, Sluice's own.
        let framings =
            count_folded(head, "content-length") + count_folded(head, "transfer-encoding");
        assert_eq!(framings, 1, "{user}: {head:?}");
        match user {
            "length" => assert_eq!(
                head.header("content-length"),
                Some(ANSWER.len().to_string().as_str()),
                "{head:?}"
            ),
            _ => assert_eq!(
                head.header("transfer-encoding"),
                Some("chunked"),
                "{head:?}"
            ),
        }
        assert_eq!(count_folded(head, "keep-alive"), 0, "{head:?}");
        assert_eq!(count_folded(head, "x-request-id"), 1, "{head:?}");
        assert_ne!(head.header("x-request-id"), Some("backend-id"));
        // Names that read as nothing Sluice manages are relayed as they are.
        assert_eq!(head.header("X_Backend_Note"), Some("kept"), "{head:?}");
        assert_eq!(resp.body, ANSWER, "{user}");
    }
    assert_eq!(up.request_count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Host and request targets

/// Sends `raw` on a fresh connection with a well-formed request behind it in the same write;
/// asserts a 400 in the OpenAI shape whose message contains `needle`, then the close with
/// nothing more (the second request is never answered). Returns the message.
fn assert_400(s: &Sluice, raw: &[u8], needle: &str) -> String {
    let what = String::from_utf8_lossy(raw.split(|b| *b == b'\n').nth(1).unwrap_or(raw));
    let mut bytes = raw.to_vec();
    bytes.extend_from_slice(&request_bytes("GET", "/v1/models", &[], b""));
    let mut c = s.connect();
    c.send(&bytes);
    let resp = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("{what}: no response ({e})"));
    assert_openai_error(&resp, 400, None);
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(needle), "{what}: {message}");
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "{what}: connection left open after a 400"
    );
    message
}

fn chat_with_host(target: &str, host: &str) -> Vec<u8> {
    let body = chat_json();
    let mut out = format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[test]
fn invalid_host_values_are_400_and_close() {
    let s = Launch::new(MOCK_BODY).start();
    for (host, why) in [
        ("a b", "whitespace"),
        ("a, b", "comma-separated list"),
        ("a:99999", "port must be a number from 0 to 65535"),
        ("[::1", "unbalanced"),
        ("gw:", "empty port"),
        ("user@gw", "user info"),
        ("[fe80::1%25eth0]", "IP literal"),
        ("caf\u{e9}.example", "non-ASCII"),
    ] {
        let message = assert_400(&s, &chat_with_host(CHAT_TARGET, host), why);
        assert!(message.starts_with("invalid Host header: "), "{message}");
    }
    // An empty Host: every target Sluice serves takes its authority from it.
    assert_400(&s, &chat_with_host(CHAT_TARGET, ""), "empty value");
}

#[test]
fn valid_hosts_are_served() {
    let s = Launch::new(MOCK_BODY).start();
    let mut c = s.connect();
    for host in [
        "[::1]:8080",
        "gateway.example:443",
        "127.0.0.1",
        "[2001:db8::1]",
        "gw.example.",
    ] {
        c.send(&chat_with_host(CHAT_TARGET, host));
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{host}: {}", resp.text());
    }
}

#[test]
fn absolute_form_targets_are_routed_by_their_path_and_checked_like_host() {
    let s = Launch::new(MOCK_BODY).start();
    let mut c = s.connect();
    for target in [
        "http://gateway.example/v1/chat/completions",
        "HTTPS://[::1]:8443/v1/chat/completions",
    ] {
        c.send(&chat_with_host(target, "gateway.example"));
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
    }
    c.send(b"GET http://gateway.example/v1/models HTTP/1.1\r\nHost: gateway.example\r\n\r\n");
    let models = c.read_response();
    assert_eq!(models.status, 200, "{}", models.text());
    assert_eq!(models.json()["object"], "list");

    for (target, why) in [
        (
            "http://a,b/v1/chat/completions",
            "invalid host in the request target",
        ),
        (
            "http://user@gw/v1/chat/completions",
            "invalid host in the request target",
        ),
        (
            "http://gw:99999/v1/chat/completions",
            "invalid host in the request target",
        ),
        (
            "http:///v1/chat/completions",
            "invalid host in the request target",
        ),
        ("gw.example:443", "unsupported request target"),
        ("ftp://gw/v1/chat/completions", "unsupported request target"),
    ] {
        assert_400(&s, &chat_with_host(target, "gw"), why);
    }
    // The Host header is still validated beside an absolute-form target.
    assert_400(
        &s,
        &chat_with_host("http://gw/v1/chat/completions", "a b"),
        "invalid Host header",
    );
}

// ---------------------------------------------------------------------------------------------
// Request ids and forwarding headers

/// A backend answering a chat completion with its own `x-request-id`.
fn backend_with_its_own_id() -> Upstream {
    let answer = serde_json::to_vec(&upstream_chat_answer("upstream-model")).unwrap();
    Upstream::start(move |_, s| {
        respond(
            s,
            200,
            &[
                ("content-type", "application/json"),
                ("x-request-id", "backend-id-42"),
            ],
            &answer,
        );
        After::KeepAlive
    })
}

/// Whether `id` has the shape of an id Sluice makes: 24 lowercase hex digits.
fn is_generated_id(id: &str) -> bool {
    id.len() == 24
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A client's well-formed `x-request-id` (1–64 of `[A-Za-z0-9._-]`) is the request's id: the
/// client gets it back and the backend receives it, once; the backend's own id comes back as
/// `x-upstream-request-id`. Gateway-made answers (a 404) echo it too.
#[test]
fn a_well_formed_client_request_id_is_echoed_and_forwarded() {
    let up = backend_with_its_own_id();
    let s = gateway(&up, "");
    let longest = "a".repeat(64);
    let mut c = s.connect();
    for id in ["abc-123_X.y", "7", longest.as_str()] {
        let before = up.request_count();
        let resp = c.request(
            "POST",
            CHAT_TARGET,
            &[("Content-Type", "application/json"), ("X-Request-Id", id)],
            &chat_json(),
        );
        assert_eq!(resp.status, 200, "{id}: {}", resp.text());
        assert_eq!(resp.head.header_all("x-request-id"), vec![id], "{id}");
        assert_eq!(
            resp.head.header_all("x-upstream-request-id"),
            vec!["backend-id-42"],
            "{id}: {:?}",
            resp.head.headers
        );
        let recs = up.requests();
        assert_eq!(recs.len(), before + 1);
        let head = &recs[before].head;
        assert_eq!(head.header_all("x-request-id"), vec![id], "{head:?}");
    }
    // A gateway-made error echoes it too.
    let resp = c.request(
        "POST",
        "/nope",
        &[
            ("Content-Type", "application/json"),
            ("x-request-id", "err-1"),
        ],
        &chat_json(),
    );
    assert_openai_error(&resp, 404, None);
    assert_eq!(resp.head.header_all("x-request-id"), vec!["err-1"]);
}

/// A malformed client id (empty, too long, a character outside `[A-Za-z0-9._-]`) is replaced
/// by one Sluice makes, which the backend receives too; the client's never goes anywhere.
#[test]
fn a_malformed_client_request_id_is_replaced() {
    let up = backend_with_its_own_id();
    let s = gateway(&up, "");
    let too_long = "a".repeat(65);
    let mut c = s.connect();
    for id in [
        "",
        too_long.as_str(),
        "has space",
        "slash/in/it",
        "semi;colon",
        "quote\"d",
        "caf\u{e9}",
    ] {
        let before = up.request_count();
        let resp = c.request(
            "POST",
            CHAT_TARGET,
            &[("Content-Type", "application/json"), ("X-Request-Id", id)],
            &chat_json(),
        );
        assert_eq!(resp.status, 200, "{id:?}: {}", resp.text());
        let ids = resp.head.header_all("x-request-id");
        assert_eq!(ids.len(), 1, "{id:?}: {:?}", resp.head.headers);
        assert!(
            is_generated_id(ids[0]),
            "{id:?} answered with id {:?}",
            ids[0]
        );
        let recs = up.requests();
        assert_eq!(recs.len(), before + 1);
        assert_eq!(
            recs[before].head.header_all("x-request-id"),
            ids,
            "{id:?}: the backend got another id than the client"
        );
        assert_eq!(resp.header("x-upstream-request-id"), Some("backend-id-42"));
    }
}

/// `x-forwarded-for` reaching the backend is the client's list (every header line of it, in
/// order, empty lines adding nothing; RFC 9110 §5.3) with the client's address appended; `x-forwarded-proto` is Sluice's `http`, once,
/// whatever the client sent.
#[test]
fn forwarding_headers_are_appended_and_set() {
    let up = recording_backend();
    let s = gateway(&up, "");
    let mut c = s.connect();
    for (sent, want) in [
        (&[][..], "127.0.0.1"),
        (&["203.0.113.7"][..], "203.0.113.7, 127.0.0.1"),
        (
            &["203.0.113.7, 198.51.100.1"][..],
            "203.0.113.7, 198.51.100.1, 127.0.0.1",
        ),
        (
            &["203.0.113.7", "198.51.100.1"][..],
            "203.0.113.7, 198.51.100.1, 127.0.0.1",
        ),
        (&["", "203.0.113.7"][..], "203.0.113.7, 127.0.0.1"),
    ] {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("X-Forwarded-Proto", "https"),
        ];
        headers.extend(sent.iter().map(|v| ("X-Forwarded-For", *v)));
        let before = up.request_count();
        let resp = c.request("POST", CHAT_TARGET, &headers, &chat_json());
        assert_eq!(resp.status, 200, "{sent:?}: {}", resp.text());
        let recs = up.requests();
        assert_eq!(recs.len(), before + 1);
        let head = &recs[before].head;
        assert_eq!(
            head.header_all("x-forwarded-for"),
            vec![want],
            "{sent:?}: {head:?}"
        );
        assert_eq!(
            head.header_all("x-forwarded-proto"),
            vec!["http"],
            "{sent:?}: {head:?}"
        );
    }
}

/// Names Sluice sets on answers are its own: a backend (or a chained gateway) sending two
/// `x-request-id`s, its own `x-upstream-request-id` or an `x-sluice-trace` gets one
/// `x-upstream-request-id` through (its first id) and no trace the client did not ask for.
#[test]
fn response_names_sluice_sets_are_never_sent_twice_or_forged() {
    let up = Upstream::start(|_, s: &mut std::net::TcpStream| {
        respond(
            s,
            200,
            &[
                ("content-type", "application/json"),
                ("x-request-id", "up1"),
                ("x-request-id", "up2"),
                ("x-upstream-request-id", "up3"),
                ("X-Upstream_Request-Id", "up4"),
                ("x-sluice-trace", "forged"),
            ],
            &serde_json::to_vec(&upstream_chat_answer("m")).unwrap(),
        );
        After::KeepAlive
    });
    let s = gateway(&up, "");
    let resp = s.request(
        "POST",
        CHAT_TARGET,
        &[("Content-Type", "application/json")],
        &chat_json(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.head.header_all("x-upstream-request-id"), vec!["up1"]);
    assert_eq!(resp.head.header_all("x-request-id").len(), 1);
    assert!(
        resp.head.header_all("x-sluice-trace").is_empty(),
        "{:?}",
        resp.head.headers
    );
    assert!(!resp
        .head
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("x-upstream_request-id")));
}

/// The headers asking for Sluice's trace are Sluice's: a gateway behind it (APIM) never sees
/// `Ocp-Apim-Trace` or `x-sluice-trace`.
#[test]
fn trace_requests_are_not_forwarded() {
    let up = Upstream::json(upstream_chat_answer("m"));
    let s = gateway(&up, "");
    let resp = s.request(
        "POST",
        CHAT_TARGET,
        &[
            ("Content-Type", "application/json"),
            ("Ocp-Apim-Trace", "true"),
            ("x-sluice-trace", "true"),
        ],
        &chat_json(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let head = &up.requests()[0].head;
    assert!(
        !head.has("ocp-apim-trace") && !head.has("x-sluice-trace"),
        "{head:?}"
    );
}
