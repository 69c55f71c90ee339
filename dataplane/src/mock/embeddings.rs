//! Embeddings (`POST …/embeddings`): one deterministic unit-length vector per input, the
//! same input always giving the same vector.
//!
//! Vectors are never stored: component `i` is a hash of the input's hash and `i`, computed
//! once for the norm and again while serializing, so a 3072-dimension batch costs no
//! allocation beyond the output.

use std::fmt;

use serde::{Serialize, Serializer};

use super::request::{self, Item, MockError, TextTally};
use super::{write_json, MockSettings, Planned, Seq};

/// The longest vector a request may ask for; OpenAI's largest model gives 3072.
const MAX_DIMENSIONS: u64 = 65_536;

/// Answers `POST …/embeddings`.
pub(super) fn reply(settings: &MockSettings, body: &[u8]) -> Result<Planned, MockError> {
    let body = request::parse(body)?;
    let input = request::required(&body, "input")?;
    let mut seeds = Vec::new();
    let mut prompt_tokens = TextTally::default();
    request::items("input", input, |item| {
        let mut one = TextTally::default();
        let seed = match item {
            Item::Text(s) => {
                one.text(s);
                prompt_tokens.text(s);
                fnv1a(FNV_OFFSET, s.as_bytes())
            }
            Item::Tokens(ids) => {
                one.token_ids(ids.len());
                prompt_tokens.token_ids(ids.len());
                ids.iter().fold(FNV_OFFSET ^ 1, |h, id| {
                    fnv1a(h, &id.as_u64().unwrap_or(0).to_le_bytes())
                })
            }
        };
        seeds.push(seed);
    })?;
    let dims = match request::opt_uint(&body, "dimensions", 1)? {
        Some(d) if d > MAX_DIMENSIONS => {
            return Err(MockError::above_max("dimensions", MAX_DIMENSIONS, d))
        }
        Some(d) => usize::try_from(d).unwrap_or(1),
        None => settings.embedding_dimensions.max(1),
    };
    let base64 = match body.get("encoding_format") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::String(f)) if f == "float" => false,
        Some(serde_json::Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(MockError::invalid_value(
                "encoding_format",
                format!(
                "Invalid value for 'encoding_format': expected 'float' or 'base64', got {other}."
            ),
            ))
        }
    };
    let model = request::model(&body)?.unwrap_or(&settings.model);
    let tokens = prompt_tokens.tokens();

    #[derive(Serialize)]
    struct List<'a, D> {
        object: &'static str,
        data: D,
        model: &'a str,
        usage: Usage,
    }
    #[derive(Serialize)]
    struct Usage {
        prompt_tokens: u32,
        total_tokens: u32,
    }
    #[derive(Serialize)]
    struct Embedding {
        object: &'static str,
        index: u32,
        embedding: UnitVector,
    }
    let count = u32::try_from(seeds.len()).unwrap_or(u32::MAX);
    let list = List {
        object: "list",
        data: Seq(count, |index| Embedding {
            object: "embedding",
            index,
            embedding: UnitVector {
                seed: seeds.get(index as usize).copied().unwrap_or(0),
                dims,
                base64,
            },
        }),
        model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    // About eleven bytes a float component, six in base64.
    let per = if base64 { dims * 6 } else { dims * 11 };
    let mut out = Vec::with_capacity(200 + seeds.len() * (60 + per));
    write_json(&mut out, &list);
    Ok(Planned::Json {
        status: 200,
        body: out,
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer: a well-mixed 64-bit value from any input.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic vector of unit length, serialized as floats or as base64 of its
/// little-endian f32 components (OpenAI's `encoding_format: "base64"`, which the Python
/// SDK asks for by default).
struct UnitVector {
    seed: u64,
    dims: usize,
    base64: bool,
}

impl UnitVector {
    /// Component `i` before normalization, uniform in [-1, 1).
    fn raw(&self, i: usize) -> f64 {
        let x = mix(self.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// The normalized components.
    fn components(&self) -> impl Iterator<Item = f32> + '_ {
        let norm = (0..self.dims)
            .map(|i| self.raw(i).powi(2))
            .sum::<f64>()
            .sqrt();
        // Every component zero has probability 2^-53 per dimension; keep such a vector as is
        // rather than divide by zero.
        let scale = if norm > 0.0 { 1.0 / norm } else { 1.0 };
        (0..self.dims).map(move |i| (self.raw(i) * scale) as f32)
    }
}

impl Serialize for UnitVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.base64 {
            s.collect_str(&Base64(self))
        } else {
            s.collect_seq(self.components())
        }
    }
}

/// Standard base64 (with padding) of a vector's little-endian f32 bytes.
struct Base64<'a>(&'a UnitVector);

impl fmt::Display for Base64<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bytes = self.0.components().flat_map(f32::to_le_bytes);
        // Encoded in batches through a stack buffer to keep `write_str` calls few.
        let mut buf = [0u8; 256];
        let mut len = 0;
        loop {
            let group = [bytes.next(), bytes.next(), bytes.next()];
            let Some(b0) = group[0] else { break };
            let b1 = group[1].unwrap_or(0);
            let b2 = group[2].unwrap_or(0);
            let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
            let sextet = |shift: u32| ALPHABET[((n >> shift) & 63) as usize];
            buf[len] = sextet(18);
            buf[len + 1] = sextet(12);
            buf[len + 2] = if group[1].is_some() { sextet(6) } else { b'=' };
            buf[len + 3] = if group[2].is_some() { sextet(0) } else { b'=' };
            len += 4;
            if len == buf.len() {
                f.write_str(ascii(&buf))?;
                len = 0;
            }
        }
        f.write_str(ascii(&buf[..len]))
    }
}

/// The buffer holds only base64 alphabet bytes, which are ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}
