//! Content codings (RFC 9110 §8.4): reading an answer's `Content-Encoding` and decoding its
//! body as it streams, in bounded pieces.
//!
//! Sluice decodes an answer only when it must read it (a token limit is settled from its
//! usage) and the backend content-coded it although Sluice asked for `identity`. The client
//! then gets the decoded body: identity is always acceptable to a client (RFC 9110
//! §12.5.3), whatever its own `Accept-Encoding` said.
//!
//! [`ContentDecoder`] is pull-based: each call decodes at most [`PIECE`] bytes of output and
//! says how much input it took, so the caller hands each piece on (through the usage tap, to
//! the client) before asking for more. A decompression bomb costs time, never memory: the
//! buffers are one [`PIECE`] per coding, plus each decoder's own window (32 KiB for
//! deflate; up to 16 MiB for brotli, whose large-window extension is refused).
//!
//! Decoders: gzip and deflate with `flate2` (pure-Rust `miniz_oxide` backend; the gzip
//! header and trailer, CRC-32 and length included, are read here so that a truncated or
//! corrupt member is an error, and members may follow each other, RFC 1952 §2.2); br with
//! `brotli-decompressor`'s `BrotliDecompressStream`. `deflate` is meant to be zlib-wrapped
//! (RFC 9110 §8.4.1.2) but some servers send raw deflate: the first two bytes tell (a zlib
//! header is `CMF FLG` with compression method 8 and `CMF·256 + FLG` a multiple of 31; a raw
//! stream from any encoder cannot start so, as its first block would be a stored block
//! with non-zero padding bits), as browsers do.

use std::fmt;

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use flate2::{Crc, Decompress, FlushDecompress, Status};

use super::list_items;

/// The most output one [`ContentDecoder::decode`] call gives, and the size of each buffer
/// between two stacked codings: 32 KiB.
pub const PIECE: usize = 32 * 1024;

/// The most codings one answer may stack; more reads as [`Codings::Unsupported`].
pub const MAX_CODINGS: usize = 4;

/// A content coding Sluice decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` or `x-gzip` (RFC 1952, RFC 9110 §8.4.1.3).
    Gzip,
    /// `deflate`: zlib-wrapped (RFC 1950) or raw (RFC 1951), told apart by its first bytes.
    Deflate,
    /// `br` (RFC 7932).
    Br,
}

impl Coding {
    /// The coding's name as `Content-Encoding` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
        }
    }
}

impl fmt::Display for Coding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an answer's `Content-Encoding` fields say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codings {
    /// No coding (no field, empty, or only `identity`).
    Identity,
    /// Codings Sluice decodes, in the order they were applied (the last is undone first).
    Decodable(Vec<Coding>),
    /// A coding Sluice does not decode (`zstd`, `compress`, an unknown token), or more than
    /// [`MAX_CODINGS`]: its name, as sent.
    Unsupported(String),
}

impl Codings {
    /// Reads every `Content-Encoding` field value of an answer, in order (several fields
    /// make one list, RFC 9110 §5.3). Names are case-insensitive; `identity` is skipped.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Codings {
        let mut codings = Vec::new();
        for value in values {
            for item in list_items(value) {
                let coding =
                    if item.eq_ignore_ascii_case(b"gzip") || item.eq_ignore_ascii_case(b"x-gzip") {
                        Coding::Gzip
                    } else if item.eq_ignore_ascii_case(b"deflate") {
                        Coding::Deflate
                    } else if item.eq_ignore_ascii_case(b"br") {
                        Coding::Br
                    } else if item.eq_ignore_ascii_case(b"identity") {
                        continue;
                    } else {
                        return Codings::Unsupported(String::from_utf8_lossy(item).into_owned());
                    };
                if codings.len() == MAX_CODINGS {
                    return Codings::Unsupported(format!("more than {MAX_CODINGS} codings"));
                }
                codings.push(coding);
            }
        }
        if codings.is_empty() {
            Codings::Identity
        } else {
            Codings::Decodable(codings)
        }
    }
}

/// A coded body that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid stream of the coding (a bad header, block, check sum or
    /// length).
    #[error("the {0} body is corrupt")]
    Corrupt(Coding),
    /// The body ended before the coded stream did.
    #[error("the {0} body ends before its coded stream does")]
    Truncated(Coding),
    /// Bytes follow the end of the coded stream.
    #[error("bytes follow the end of the {0} stream")]
    Trailing(Coding),
}

/// Decodes a body coded with one or more [`Coding`]s, in bounded pieces.
pub struct ContentDecoder {
    /// One per coding, in decoding order (the last applied first).
    stages: Vec<Stage>,
    /// `pipes[i]` holds what `stages[i]` decoded and the next stage has not read; the last
    /// one is the output piece.
    pipes: Vec<Pipe>,
    /// Some coded byte arrived: an empty body is empty whatever its coding says.
    started: bool,
}

impl ContentDecoder {
    /// A decoder for a body whose codings were applied in the order of `applied` (as
    /// [`Codings::Decodable`] lists them).
    pub fn new(applied: &[Coding]) -> Self {
        let stages: Vec<Stage> = applied.iter().rev().map(|&c| Stage::new(c)).collect();
        let pipes = stages.iter().map(|_| Pipe::new()).collect();
        ContentDecoder {
            stages,
            pipes,
            started: false,
        }
    }

    /// Decodes from `input`: returns how many of its bytes were taken and the next piece of
    /// output (at most [`PIECE`] bytes, valid until the next call). An empty piece means
    /// all of `input` was taken and more is needed; call again with the rest of `input`
    /// otherwise.
    ///
    /// # Errors
    /// [`DecodeError::Corrupt`] or [`DecodeError::Trailing`] as soon as the bytes show it.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, &[u8]), DecodeError> {
        self.started |= !input.is_empty();
        let last = self.stages.len() - 1;
        self.pipes[last].clear();
        let mut taken = 0;
        loop {
            let mut progress = false;
            // Back to front: each stage first makes room for the one before it.
            for i in (0..=last).rev() {
                let (before, rest) = self.pipes.split_at_mut(i);
                let out = &mut rest[0];
                out.compact();
                let room = out.room();
                let src = match before.last() {
                    Some(pipe) => pipe.readable(),
                    None => &input[taken..],
                };
                if room.is_empty() && !src.is_empty() {
                    continue;
                }
                let (used, made) = self.stages[i].run(src, room)?;
                out.end += made;
                match before.last_mut() {
                    Some(pipe) => pipe.start += used,
                    None => taken += used,
                }
                progress |= used > 0 || made > 0;
            }
            if !progress || self.pipes[last].room().is_empty() {
                break;
            }
        }
        let piece = self.pipes[last].readable();
        if piece.is_empty() && taken < input.len() {
            // No stage could take more input, nor give output: a stream that stalls.
            return Err(DecodeError::Corrupt(self.stages[0].coding()));
        }
        Ok((taken, piece))
    }

    /// The body ended: every coded stream must have ended with it — unless the body was
    /// empty, which decodes to nothing (as curl and httpx read an empty `gzip` body, e.g.
    /// of a 429 with `Content-Length: 0`).
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] for the first stream that did not end.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if !self.started {
            return Ok(());
        }
        match self.stages.iter().find(|s| !s.ended()) {
            Some(stage) => Err(DecodeError::Truncated(stage.coding())),
            None => Ok(()),
        }
    }
}

/// A buffer between two stages: `buf[start..end]` is unread.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            buf: vec![0; PIECE].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn readable(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Moves the unread bytes to the front.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// One coding being undone.
enum Stage {
    Gzip(Box<Gzip>),
    Deflate(Box<Deflate>),
    Br(Box<Brotli>),
}

impl Stage {
    fn new(coding: Coding) -> Self {
        match coding {
            Coding::Gzip => Stage::Gzip(Box::new(Gzip::new())),
            Coding::Deflate => Stage::Deflate(Box::new(Deflate::new())),
            Coding::Br => Stage::Br(Box::new(Brotli::new())),
        }
    }

    fn coding(&self) -> Coding {
        match self {
            Stage::Gzip(_) => Coding::Gzip,
            Stage::Deflate(_) => Coding::Deflate,
            Stage::Br(_) => Coding::Br,
        }
    }

    /// Decodes from `src` into `dst`: (bytes taken, bytes made).
    fn run(&mut self, src: &[u8], dst: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        match self {
            Stage::Gzip(g) => g.run(src, dst),
            Stage::Deflate(d) => d.run(src, dst),
            Stage::Br(b) => b.run(src, dst),
        }
    }

    fn ended(&self) -> bool {
        match self {
            Stage::Gzip(g) => g.state == GzState::Between,
            Stage::Deflate(d) => d.ended,
            Stage::Br(b) => b.ended,
        }
    }
}

/// gzip header flags (RFC 1952 §2.3.1).
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// Where a gzip stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GzState {
    /// The fixed 10-byte header (the first `n` read into `fixed`).
    Fixed,
    /// The 2-byte FEXTRA length.
    ExtraLen,
    /// FEXTRA bytes to skip.
    Extra(u16),
    /// The zero-terminated file name.
    Name,
    /// The zero-terminated comment.
    Comment,
    /// The header CRC, bytes to skip.
    HeaderCrc(u8),
    /// The deflate data.
    Body,
    /// The 8-byte trailer (CRC-32, length mod 2³²).
    Trailer,
    /// A member ended: the body may end here, or another member start.
    Between,
}

struct Gzip {
    state: GzState,
    /// Header or trailer bytes read so far.
    head: [u8; 10],
    n: usize,
    flags: u8,
    inflate: Decompress,
    crc: Crc,
}

impl Gzip {
    fn new() -> Self {
        Gzip {
            state: GzState::Fixed,
            head: [0; 10],
            n: 0,
            flags: 0,
            inflate: Decompress::new(false),
            crc: Crc::new(),
        }
    }

    /// Reads header or trailer bytes into `head` until `want` are there; whether they are.
    fn fill(&mut self, src: &[u8], i: &mut usize, want: usize) -> bool {
        let k = (want - self.n).min(src.len() - *i);
        self.head[self.n..self.n + k].copy_from_slice(&src[*i..*i + k]);
        self.n += k;
        *i += k;
        self.n == want
    }

    /// The header part after `done` (flags say which come).
    fn after(&self, done: GzState) -> GzState {
        let order = [
            (FEXTRA, GzState::ExtraLen),
            (FNAME, GzState::Name),
            (FCOMMENT, GzState::Comment),
            (FHCRC, GzState::HeaderCrc(2)),
        ];
        let from = match done {
            GzState::Fixed => 0,
            GzState::ExtraLen | GzState::Extra(_) => 1,
            GzState::Name => 2,
            GzState::Comment => 3,
            _ => 4,
        };
        order[from..]
            .iter()
            .find(|(flag, _)| self.flags & flag != 0)
            .map_or(GzState::Body, |&(_, state)| state)
    }

    fn run(&mut self, src: &[u8], dst: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        let corrupt = DecodeError::Corrupt(Coding::Gzip);
        let mut i = 0;
        let mut made = 0;
        loop {
            if i == src.len() && self.state != GzState::Body {
                return Ok((i, made));
            }
            match self.state {
                GzState::Between => {
                    // More bytes: another member (RFC 1952 §2.2).
                    self.state = GzState::Fixed;
                    self.n = 0;
                }
                GzState::Fixed => {
                    if !self.fill(src, &mut i, 10) {
                        continue;
                    }
                    // ID1 ID2, CM = 8 (deflate), no reserved flag bits.
                    if self.head[..3] != [0x1f, 0x8b, 8] || self.head[3] & 0xe0 != 0 {
                        return Err(corrupt);
                    }
                    self.flags = self.head[3];
                    self.n = 0;
                    self.state = self.after(GzState::Fixed);
                }
                GzState::ExtraLen => {
                    if self.fill(src, &mut i, 2) {
                        self.state =
                            GzState::Extra(u16::from_le_bytes([self.head[0], self.head[1]]));
                        self.n = 0;
                    }
                }
                GzState::Extra(left) => {
                    let k = usize::from(left).min(src.len() - i);
                    i += k;
                    let left = left - k as u16;
                    self.state = if left == 0 {
                        self.after(GzState::Extra(0))
                    } else {
                        GzState::Extra(left)
                    };
                }
                GzState::Name | GzState::Comment => match memchr::memchr(0, &src[i..]) {
                    Some(k) => {
                        i += k + 1;
                        self.state = self.after(self.state);
                    }
                    None => i = src.len(),
                },
                GzState::HeaderCrc(left) => {
                    let k = usize::from(left).min(src.len() - i);
                    i += k;
                    let left = left - k as u8;
                    self.state = if left == 0 {
                        GzState::Body
                    } else {
                        GzState::HeaderCrc(left)
                    };
                }
                GzState::Body => {
                    let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
                    let status = self
                        .inflate
                        .decompress(&src[i..], &mut dst[made..], FlushDecompress::None)
                        .map_err(|_| corrupt)?;
                    let used = (self.inflate.total_in() - in0) as usize;
                    let out = (self.inflate.total_out() - out0) as usize;
                    self.crc.update(&dst[made..made + out]);
                    i += used;
                    made += out;
                    if status == Status::StreamEnd {
                        self.state = GzState::Trailer;
                        self.n = 0;
                    } else if (used == 0 && out == 0) || i == src.len() || made == dst.len() {
                        return Ok((i, made));
                    }
                }
                GzState::Trailer => {
                    if !self.fill(src, &mut i, 8) {
                        continue;
                    }
                    let crc = u32::from_le_bytes([
                        self.head[0],
                        self.head[1],
                        self.head[2],
                        self.head[3],
                    ]);
                    let len = u32::from_le_bytes([
                        self.head[4],
                        self.head[5],
                        self.head[6],
                        self.head[7],
                    ]);
                    if crc != self.crc.sum() || len != self.crc.amount() {
                        return Err(corrupt);
                    }
                    self.inflate.reset(false);
                    self.crc.reset();
                    self.state = GzState::Between;
                }
            }
        }
    }
}

/// `deflate`: zlib-wrapped or raw, decided on the first two bytes.
struct Deflate {
    /// `None` until the first two bytes are known (zlib or raw).
    inflate: Option<Decompress>,
    /// The first bytes, held until the kind is known and then fed first.
    held: [u8; 2],
    n_held: usize,
    /// Held bytes already fed to the decoder.
    fed: usize,
    ended: bool,
}

impl Deflate {
    fn new() -> Self {
        Deflate {
            inflate: None,
            held: [0; 2],
            n_held: 0,
            fed: 0,
            ended: false,
        }
    }

    /// Whether two bytes open a zlib stream (RFC 1950 §2.2): CM = 8, CINFO ≤ 7, and
    /// `CMF·256 + FLG` a multiple of 31.
    fn is_zlib(cmf: u8, flg: u8) -> bool {
        cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
    }

    fn run(&mut self, src: &[u8], dst: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        if self.ended {
            return if src.is_empty() {
                Ok((0, 0))
            } else {
                Err(DecodeError::Trailing(Coding::Deflate))
            };
        }
        let mut i = 0;
        if self.n_held < 2 {
            let k = (2 - self.n_held).min(src.len());
            self.held[self.n_held..self.n_held + k].copy_from_slice(&src[..k]);
            self.n_held += k;
            i = k;
            if self.n_held < 2 {
                return Ok((i, 0));
            }
        }
        let zlib = Self::is_zlib(self.held[0], self.held[1]);
        let inflate = self.inflate.get_or_insert_with(|| Decompress::new(zlib));
        let mut made = 0;
        // The held bytes go first, then the rest of `src`.
        while self.fed < self.n_held && made < dst.len() {
            let (in0, out0) = (inflate.total_in(), inflate.total_out());
            let status = inflate
                .decompress(
                    &self.held[self.fed..self.n_held],
                    &mut dst[made..],
                    FlushDecompress::None,
                )
                .map_err(|_| DecodeError::Corrupt(Coding::Deflate))?;
            self.fed += (inflate.total_in() - in0) as usize;
            made += (inflate.total_out() - out0) as usize;
            if status == Status::StreamEnd {
                self.ended = true;
                return if self.fed < self.n_held || i < src.len() {
                    Err(DecodeError::Trailing(Coding::Deflate))
                } else {
                    Ok((i, made))
                };
            }
        }
        if self.fed < self.n_held {
            return Ok((i, made));
        }
        let (in0, out0) = (inflate.total_in(), inflate.total_out());
        let status = inflate
            .decompress(&src[i..], &mut dst[made..], FlushDecompress::None)
            .map_err(|_| DecodeError::Corrupt(Coding::Deflate))?;
        i += (inflate.total_in() - in0) as usize;
        made += (inflate.total_out() - out0) as usize;
        if status == Status::StreamEnd {
            self.ended = true;
            if i < src.len() {
                return Err(DecodeError::Trailing(Coding::Deflate));
            }
        }
        Ok((i, made))
    }
}

/// `br`, through `BrotliDecompressStream` with the standard (16 MiB at most) window.
struct Brotli {
    /// One allocator type serves the decoder's `u8`, `u32` and Huffman tables.
    state: BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>,
    ended: bool,
}

impl Brotli {
    fn new() -> Self {
        Brotli {
            // Strict: RFC 7932 windows only (large-window brotli could ask for 1 GiB).
            state: BrotliState::new_strict(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ),
            ended: false,
        }
    }

    fn run(&mut self, src: &[u8], dst: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        if self.ended {
            return if src.is_empty() {
                Ok((0, 0))
            } else {
                Err(DecodeError::Trailing(Coding::Br))
            };
        }
        let (mut avail_in, mut in_off) = (src.len(), 0);
        let (mut avail_out, mut out_off, mut total) = (dst.len(), 0, 0);
        let result = BrotliDecompressStream(
            &mut avail_in,
            &mut in_off,
            src,
            &mut avail_out,
            &mut out_off,
            dst,
            &mut total,
            &mut self.state,
        );
        match result {
            BrotliResult::ResultFailure => Err(DecodeError::Corrupt(Coding::Br)),
            BrotliResult::ResultSuccess => {
                self.ended = true;
                if in_off < src.len() {
                    Err(DecodeError::Trailing(Coding::Br))
                } else {
                    Ok((in_off, out_off))
                }
            }
            BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => Ok((in_off, out_off)),
        }
    }
}

#[cfg(test)]
mod tests;
