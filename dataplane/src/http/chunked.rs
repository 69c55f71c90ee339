//! Chunked transfer coding (RFC 9112 §7.1): an incremental decoder for request and
//! response bodies, and the two helpers the gateway uses to chunk what it forwards.
//!
//! [`ChunkedDecoder`] is a byte-level state machine, so input may arrive split anywhere —
//! even one byte at a time — and it never reads past the end of the body: what it does not
//! consume belongs to the next message on the connection. Chunk extensions and trailer
//! fields are read and discarded (the gateway forwards neither), within fixed bounds.

/// The last chunk and an empty trailer section: ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Longest chunk extension accepted on one size line, in bytes, counting its `;`.
const MAX_EXTENSION: usize = 4096;

/// Largest trailer section accepted (all lines, with their CRLFs), in bytes.
const MAX_TRAILERS: usize = 8 * 1024;

/// Most hex digits in a chunk size (enough for any `u64`).
const MAX_SIZE_DIGITS: u8 = 16;

/// Appends `data` as one chunk (`{hex len}\r\n{data}\r\n`) to `out`. Empty `data` appends
/// nothing, since a zero-size chunk would end the body; use [`LAST_CHUNK`] for that.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = data.len();
    let mut at = digits.len();
    while n > 0 && at > 0 {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
    }
    out.reserve(digits.len() - at + data.len() + 4);
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Why a chunked body was refused. The connection must be closed: its framing is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk-size line is not 1–16 hex digits with an optional extension, or the
    /// extension holds control characters or is too long → 400.
    #[error("bad chunk size line")]
    BadChunkSize,
    /// A line in the chunked framing does not end in exactly CRLF → 400.
    #[error("bad line ending in chunked body")]
    BadLineEnding,
    /// The chunks add up to more than the body limit → 413.
    #[error("chunked body too large")]
    TooLarge,
    /// The trailer section (trailer field lines with their CRLFs) is over 8 KiB → 431.
    #[error("chunked trailer section too large")]
    TrailerTooLarge,
    /// A trailer line is not a field line (`name: value`, the name a token, no leading
    /// whitespace: obs-fold is refused as in a head), RFC 9112 §7.1.2 and §5 → 400.
    #[error("bad trailer field line")]
    BadTrailer,
}

impl ChunkError {
    /// The status code to answer a client with: 400, 400, 413 or 431.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadChunkSize | Self::BadLineEnding | Self::BadTrailer => 400,
            Self::TooLarge => 413,
            Self::TrailerTooLarge => 431,
        }
    }

    /// A short explanation for the client, suitable for an error body.
    pub fn message(&self) -> &'static str {
        match self {
            Self::BadChunkSize => "malformed chunk size line in the chunked body",
            Self::BadLineEnding => "a line in the chunked body does not end in CRLF",
            Self::TooLarge => "the request body is larger than the gateway accepts",
            Self::TrailerTooLarge => "the chunked body's trailer section is too large",
            Self::BadTrailer => "a trailer line of the chunked body is not a header field line",
        }
    }
}

/// The outcome of one [`ChunkedDecoder::decode`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// How many bytes of the input were consumed (all of it unless `done`).
    pub consumed: usize,
    /// The body ended: last chunk, trailers and final CRLF were all read.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size,
    /// Reading a chunk extension, up to the CR.
    Extension,
    /// Expecting the LF that ends a size line.
    SizeLf,
    /// Copying chunk data; `remaining` bytes to go.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line, or the final empty line.
    TrailerStart,
    /// Inside a trailer field line's name, up to its `:`.
    TrailerName,
    /// Inside a trailer field line's value, up to its CR.
    TrailerLine,
    /// Expecting the LF that ends a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    FinalLf,
    /// The body is over.
    Done,
    /// An error was returned; it is returned again on every call.
    Failed(ChunkError),
}

/// Incremental decoder of one chunked body. Feed it input as it arrives; it appends the
/// chunk data to the caller's buffer and stops exactly at the body's end.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// The size being read (in `Size`), or the data still to copy (in `Data`).
    size: u64,
    digits: u8,
    extension_len: usize,
    trailer_len: usize,
    total: u64,
    max_body: u64,
}

impl ChunkedDecoder {
    /// A decoder for one body whose chunks may add up to at most `max_body` bytes.
    pub fn new(max_body: u64) -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            extension_len: 0,
            trailer_len: 0,
            total: 0,
            max_body,
        }
    }

    /// Chunk data bytes decoded so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending chunk data to `out`; returns how much of `input` it
    /// consumed and whether the body ended (last chunk, trailers and final CRLF all read).
    /// Call again with more input after a partial; bytes after the body's end are left
    /// unconsumed. Once an error is returned, every later call returns it too.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Decoded, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.step(input, i, out) {
                Ok(next) => i = next,
                Err(e) => {
                    self.state = State::Failed(e);
                    return Err(e);
                }
            }
            if self.state == State::Done {
                break;
            }
        }
        match self.state {
            State::Failed(e) => Err(e),
            state => Ok(Decoded {
                consumed: i,
                done: state == State::Done,
            }),
        }
    }

    /// Advances from `input[i]`; returns the index of the next unread byte.
    fn step(&mut self, input: &[u8], i: usize, out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let Some(&b) = input.get(i) else {
            return Ok(input.len());
        };
        match self.state {
            State::Size => match b {
                b'\r' if self.digits > 0 => self.state = State::SizeLf,
                b';' if self.digits > 0 => {
                    self.extension_len = 1;
                    self.state = State::Extension;
                }
                b'\n' => return Err(ChunkError::BadLineEnding),
                _ => {
                    let digit = hex_value(b).ok_or(ChunkError::BadChunkSize)?;
                    if self.digits == MAX_SIZE_DIGITS {
                        return Err(ChunkError::BadChunkSize);
                    }
                    self.digits += 1;
                    self.size = (self.size << 4) | u64::from(digit);
                }
            },
            State::Extension => {
                // Scan the rest of the extension in one go.
                let rest = input.get(i..).unwrap_or_default();
                let end = rest
                    .iter()
                    .position(|&c| c == b'\r' || is_ctl(c))
                    .unwrap_or(rest.len());
                self.extension_len += end;
                if self.extension_len > MAX_EXTENSION {
                    return Err(ChunkError::BadChunkSize);
                }
                match rest.get(end) {
                    None => return Ok(input.len()),
                    Some(b'\r') => self.state = State::SizeLf,
                    Some(b'\n') => return Err(ChunkError::BadLineEnding),
                    Some(_) => return Err(ChunkError::BadChunkSize),
                }
                return Ok(i + end + 1);
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                if self.size == 0 {
                    self.state = State::TrailerStart;
                } else {
                    match self.total.checked_add(self.size) {
                        Some(t) if t <= self.max_body => {}
                        _ => return Err(ChunkError::TooLarge),
                    }
                    self.state = State::Data;
                }
            }
            State::Data => {
                let rest = input.get(i..).unwrap_or_default();
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                out.extend_from_slice(rest.get(..n).unwrap_or_default());
                let n64 = n as u64;
                self.size -= n64;
                self.total += n64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(i + n);
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::BadLineEnding);
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                self.state = State::Size;
                self.size = 0;
                self.digits = 0;
                self.extension_len = 0;
            }
            State::TrailerStart => match b {
                b'\r' => self.state = State::FinalLf,
                b'\n' => return Err(ChunkError::BadLineEnding),
                _ if is_tchar(b) => {
                    self.add_trailer_bytes(1)?;
                    self.state = State::TrailerName;
                }
                // Whitespace (obs-fold), `:` or a control byte: not a field line.
                _ => return Err(ChunkError::BadTrailer),
            },
            State::TrailerName => {
                self.add_trailer_bytes(1)?;
                match b {
                    b':' => self.state = State::TrailerLine,
                    _ if is_tchar(b) => {}
                    _ => return Err(ChunkError::BadTrailer),
                }
            }
            State::TrailerLine => {
                let rest = input.get(i..).unwrap_or_default();
                let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                self.add_trailer_bytes(end)?;
                match rest.get(end) {
                    None => return Ok(input.len()),
                    Some(b'\r') => {
                        self.add_trailer_bytes(1)?;
                        self.state = State::TrailerLf;
                    }
                    Some(_) => return Err(ChunkError::BadLineEnding),
                }
                return Ok(i + end + 1);
            }
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                self.add_trailer_bytes(1)?;
                self.state = State::TrailerStart;
            }
            State::FinalLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                self.state = State::Done;
            }
            State::Done => return Ok(i),
            State::Failed(e) => return Err(e),
        }
        Ok(i + 1)
    }

    fn add_trailer_bytes(&mut self, n: usize) -> Result<(), ChunkError> {
        self.trailer_len = self.trailer_len.saturating_add(n);
        if self.trailer_len > MAX_TRAILERS {
            return Err(ChunkError::TrailerTooLarge);
        }
        Ok(())
    }
}

/// A `tchar` of a field name (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Control characters other than HT, which may not appear in a chunk extension.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` whole; returns the body and the bytes consumed.
    fn decode_all(input: &[u8], max: u64) -> Result<(Vec<u8>, Decoded), ChunkError> {
        let mut d = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        let r = d.decode(input, &mut out)?;
        Ok((out, r))
    }

    /// Decodes `input` fed in the given pieces; returns the body and total consumed.
    fn decode_split(
        input: &[u8],
        cuts: &[usize],
        max: u64,
    ) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut consumed = 0;
        let mut done = false;
        let mut prev = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            pending.extend_from_slice(&input[prev..cut]);
            prev = cut;
            let r = d.decode(&pending, &mut out)?;
            consumed += r.consumed;
            pending.drain(..r.consumed);
            if r.done {
                done = true;
                break;
            }
        }
        Ok((out, consumed, done))
    }

    const BODY: &[u8] =
        b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n";

    #[test]
    fn decodes_a_body_with_extensions_and_trailers() {
        let mut input = BODY.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (out, r) = decode_all(&input, 1 << 20).unwrap();
        assert_eq!(out, b"hello 0123456789");
        assert_eq!(
            r,
            Decoded {
                consumed: BODY.len(),
                done: true
            }
        );
    }

    #[test]
    fn minimal_and_uppercase_bodies() {
        let (out, r) = decode_all(LAST_CHUNK, 0).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            r,
            Decoded {
                consumed: 5,
                done: true
            }
        );
        let (out, _) = decode_all(b"00000000000000Ff\r\n", u64::MAX).unwrap();
        assert!(out.is_empty());
        let (out, r) = decode_all(b"B\r\nhello world\r\n0\r\n\r\n", 11).unwrap();
        assert_eq!(out, b"hello world");
        assert!(r.done);
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut d = ChunkedDecoder::new(1 << 20);
        let mut out = Vec::new();
        for (i, b) in BODY.iter().enumerate() {
            let r = d.decode(std::slice::from_ref(b), &mut out).unwrap();
            assert_eq!(r.consumed, 1);
            assert_eq!(r.done, i + 1 == BODY.len(), "at {i}");
        }
        assert_eq!(out, b"hello 0123456789");
        assert!(d.is_done());
        assert_eq!(d.total(), 16);
        // After the end, nothing more is consumed.
        assert_eq!(
            d.decode(b"xyz", &mut out),
            Ok(Decoded {
                consumed: 0,
                done: true
            })
        );
    }

    #[test]
    fn every_two_way_split() {
        for cut in 0..=BODY.len() {
            let (out, consumed, done) = decode_split(BODY, &[cut], 1 << 20).unwrap();
            assert_eq!(out, b"hello 0123456789", "cut at {cut}");
            assert_eq!(consumed, BODY.len());
            assert!(done);
        }
    }

    #[test]
    fn random_splits() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..2000 {
            let mut cuts: Vec<usize> = (0..(next() % 8))
                .map(|_| (next() % (BODY.len() as u64 + 1)) as usize)
                .collect();
            cuts.sort_unstable();
            let (out, consumed, done) = decode_split(BODY, &cuts, 1 << 20).unwrap();
            assert_eq!(out, b"hello 0123456789", "cuts {cuts:?}");
            assert_eq!(consumed, BODY.len());
            assert!(done);
        }
    }

    #[test]
    fn errors_are_the_same_at_every_split() {
        let cases: &[(&[u8], ChunkError)] = &[
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::BadLineEnding),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::BadLineEnding),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkError::BadLineEnding),
            (b"5\r\nhello\rX0\r\n\r\n", ChunkError::BadLineEnding),
            (b"0\r\n\n", ChunkError::BadLineEnding),
            (b"0\r\nA: b\n\r\n", ChunkError::BadLineEnding),
            (b"0\r\nA: b\r\r\n", ChunkError::BadLineEnding),
            (b"0\r\n\rx", ChunkError::BadLineEnding),
            // Trailer lines are field lines: a name (a token), `:`, a value.
            (b"0\r\nbad trailer\r\n\r\n", ChunkError::BadTrailer),
            (
                b"0\r\nx-a: b\r\nno colon here\r\n\r\n",
                ChunkError::BadTrailer,
            ),
            (b"0\r\nx-a: b\r\n folded\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\n: value\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\nx a: b\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\nx-a\r\n\r\n", ChunkError::BadTrailer),
            (b"5;ext\nhello\r\n", ChunkError::BadLineEnding),
            (b"\r\nhello\r\n", ChunkError::BadChunkSize),
            (b";x\r\n", ChunkError::BadChunkSize),
            (b"g\r\n", ChunkError::BadChunkSize),
            (b"-5\r\n", ChunkError::BadChunkSize),
            (b"+5\r\n", ChunkError::BadChunkSize),
            (b"0x5\r\n", ChunkError::BadChunkSize),
            (b"5 \r\nhello\r\n", ChunkError::BadChunkSize),
            (b" 5\r\nhello\r\n", ChunkError::BadChunkSize),
            (b"00000000000000000\r\n", ChunkError::BadChunkSize),
            (b"5;a\x01b\r\nhello\r\n", ChunkError::BadChunkSize),
            (b"5;a\x7f\r\nhello\r\n", ChunkError::BadChunkSize),
            (b"5;a\0\r\nhello\r\n", ChunkError::BadChunkSize),
            (b"5\r\r\n", ChunkError::BadLineEnding),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode_all(input, 1 << 20).map(|_| ()),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            for cut in 0..=input.len() {
                assert_eq!(
                    decode_split(input, &[cut], 1 << 20).map(|_| ()),
                    Err(*want),
                    "{:?} cut {cut}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn sixteen_hex_digits_are_the_most() {
        // ffffffffffffffff fits in u64, and is then over any real limit.
        assert_eq!(
            decode_all(b"ffffffffffffffff\r\n", u64::MAX - 1).map(|_| ()),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(
            decode_all(b"1ffffffffffffffff\r\n", u64::MAX).map(|_| ()),
            Err(ChunkError::BadChunkSize)
        );
        let r = decode_all(b"ffffffffffffffff\r\nab", u64::MAX).unwrap();
        assert_eq!(r.0, b"ab");
        assert!(!r.1.done);
    }

    #[test]
    fn total_over_max_body_is_too_large() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert!(decode_all(body, 11).unwrap().1.done);
        assert_eq!(decode_all(body, 10).map(|_| ()), Err(ChunkError::TooLarge));
        // Decided at the size line, before the data arrives.
        assert_eq!(
            decode_all(b"5\r\nhello\r\n6\r\n", 10).map(|_| ()),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(ChunkError::TooLarge.status(), 413);
    }

    #[test]
    fn trailer_section_is_bounded() {
        let mut ok = b"0\r\n".to_vec();
        let line = format!("X-Pad: {}\r\n", "a".repeat(8 * 1024 - 9));
        assert_eq!(line.len(), 8 * 1024);
        ok.extend_from_slice(line.as_bytes());
        ok.extend_from_slice(b"\r\n");
        assert!(decode_all(&ok, 0).unwrap().1.done);

        let mut over = b"0\r\n".to_vec();
        over.extend_from_slice(format!("X-Pad: {}\r\n", "a".repeat(8 * 1024 - 8)).as_bytes());
        over.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_all(&over, 0).map(|_| ()),
            Err(ChunkError::TrailerTooLarge)
        );
        // Many short lines add up too.
        let mut many = b"0\r\n".to_vec();
        for _ in 0..2000 {
            many.extend_from_slice(b"A: b\r\n");
        }
        assert_eq!(
            decode_all(&many, 0).map(|_| ()),
            Err(ChunkError::TrailerTooLarge)
        );
    }

    #[test]
    fn long_extensions_are_refused() {
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_EXTENSION));
        long.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(
            decode_all(&long, 10).map(|_| ()),
            Err(ChunkError::BadChunkSize)
        );
        long.remove(2);
        assert!(decode_all(&long, 10).unwrap().1.done);
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"z", &mut out), Err(ChunkError::BadChunkSize));
        assert_eq!(
            d.decode(b"0\r\n\r\n", &mut out),
            Err(ChunkError::BadChunkSize)
        );
        assert_eq!(d.decode(b"", &mut out), Err(ChunkError::BadChunkSize));
    }

    #[test]
    fn empty_input_consumes_nothing() {
        let mut d = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        assert_eq!(
            d.decode(b"", &mut out),
            Ok(Decoded {
                consumed: 0,
                done: false
            })
        );
    }

    #[test]
    fn write_chunk_round_trips() {
        let mut out = Vec::new();
        write_chunk(&mut out, b"");
        assert!(out.is_empty());
        write_chunk(&mut out, b"hello");
        assert_eq!(out, b"5\r\nhello\r\n");
        out.clear();
        let big = vec![b'z'; 0x1a2b];
        write_chunk(&mut out, &big);
        assert!(out.starts_with(b"1a2b\r\nzzz"));
        write_chunk(&mut out, b"!");
        out.extend_from_slice(LAST_CHUNK);
        let (body, r) = decode_all(&out, 1 << 20).unwrap();
        assert_eq!(body.len(), 0x1a2b + 1);
        assert_eq!(r.consumed, out.len());
        assert!(r.done);
    }

    #[test]
    fn error_messages_and_statuses() {
        for e in [
            ChunkError::BadChunkSize,
            ChunkError::BadLineEnding,
            ChunkError::TooLarge,
            ChunkError::TrailerTooLarge,
        ] {
            assert!(!e.message().is_empty());
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(ChunkError::BadChunkSize.status(), 400);
    }
}
