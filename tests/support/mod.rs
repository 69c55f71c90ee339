//! Shared helpers for the whole-process tests: start the real `sluice` binary on a free
//! loopback port, talk raw HTTP/1.1 to it, and stand up scripted upstream servers in threads.
//!
//! Each test file declares `mod support;` and takes everything with `use support::*;`. The
//! helpers live in one module per role:
//! - [`process`]: a `sluice` child process ([`Launch`] → [`Sluice`], its ready file, its
//!   log, signals, `--check`);
//! - [`wire`]: HTTP/1.1 as bytes on a socket: heads, body framing, request bytes;
//! - [`client`]: a client connection to Sluice and the requests tests send through it
//!   (plain, with a key, settled, streamed as server-sent events);
//! - [`checks`]: assertions on Sluice's answers (OpenAI error shape, rate-limit headers);
//! - [`upstream`]: scripted backends on 127.0.0.1 and what they answer;
//! - [`tls`]: a test CA and a scripted HTTPS backend that counts its handshakes;
//! - [`tls_client`]: server and client certificates from that CA written as files, and a
//!   rustls client for Sluice's TLS listeners (not in the glob: `use support::tls_client::…`);
//! - [`fixtures`]: configs (mock deployments, products, subscriptions, key hashes),
//!   request bodies, and temporary directories for config files.
//!
//! Everything here is bounded: every socket has a read timeout, every wait has a deadline,
//! and every child process is killed and reaped when its handle drops. Only 127.0.0.1 is used.
#![allow(dead_code)]

pub mod checks;
pub mod client;
pub mod fixtures;
pub mod process;
pub mod tls;
pub mod tls_client;
pub mod upstream;
pub mod wire;

// `use support::*` takes every helper; each test binary uses only some roles.
#[allow(unused_imports)]
pub use {checks::*, client::*, fixtures::*, process::*, upstream::*, wire::*};

use std::thread;
use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
