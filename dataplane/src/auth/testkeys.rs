//! Test fixtures: fixed test-only key pairs (made once with `openssl genpkey`, so no test
//! waits for RSA key generation), a signer that takes the header JSON as written, and a
//! tiny JWKS server on 127.0.0.1 that counts its fetches.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};

/// RSA 2048 private key, PKCS#1 DER (test only).
pub const RSA_PRIVATE_DER: &[u8] = include_bytes!("testdata/rsa_private_pkcs1.der");
/// Its public key, SPKI PEM.
pub const RSA_PUBLIC_PEM: &[u8] = include_bytes!("testdata/rsa_public.pem");
/// P-256 private key, PKCS#8 DER (test only).
pub const EC_PRIVATE_DER: &[u8] = include_bytes!("testdata/ec_private_pkcs8.der");
/// Its public key, SPKI PEM.
pub const EC_PUBLIC_PEM: &[u8] = include_bytes!("testdata/ec_public.pem");
/// An HMAC secret of 32 bytes.
pub const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

pub fn rsa_signer() -> EncodingKey {
    EncodingKey::from_rsa_der(RSA_PRIVATE_DER)
}

pub fn ec_signer() -> EncodingKey {
    EncodingKey::from_ec_der(EC_PRIVATE_DER)
}

pub fn hs_signer() -> EncodingKey {
    EncodingKey::from_secret(HS_SECRET)
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with exactly this header and these claims, signed with `alg`.
pub fn sign(header: &str, claims: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// The test RSA key as a JWK.
pub fn rsa_jwk(kid: &str) -> serde_json::Value {
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::traits::PublicKeyParts as _;
    let key = rsa::RsaPublicKey::from_public_key_pem(std::str::from_utf8(RSA_PUBLIC_PEM).unwrap())
        .unwrap();
    serde_json::json!({
        "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be()),
    })
}

/// The test P-256 key as a JWK.
pub fn ec_jwk(kid: &str) -> serde_json::Value {
    use p256::pkcs8::DecodePublicKey as _;
    let key =
        p256::PublicKey::from_public_key_pem(std::str::from_utf8(EC_PUBLIC_PEM).unwrap()).unwrap();
    let point = p256::EncodedPoint::from(key);
    serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid,
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
    })
}

pub fn jwks(keys: &[serde_json::Value]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

/// Polls `cond` until it holds or 10 s pass (for side-thread effects only).
pub fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// A one-document HTTP server on 127.0.0.1 counting its requests.
pub struct JwksServer {
    pub url: String,
    pub hits: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl JwksServer {
    pub fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(body));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, b, s) = (hits.clone(), body.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = b.lock().unwrap().clone();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        Self {
            url: format!("http://{addr}/.well-known/jwks.json"),
            hits,
            body,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_body(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    /// Stops serving and closes the port (later connections are refused).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}
