//! Relaying an answer that must be read (a token limit is settled from its usage) but that
//! the backend content-coded although Sluice asked for `identity`: the body is de-framed,
//! decoded piece by piece ([`ContentDecoder`], at most
//! [`PIECE`](crate::http::content_coding::PIECE) bytes a step), each piece
//! read by the usage tap and written to the client before more is decoded — so neither a
//! long answer nor a decompression bomb grows Sluice's memory, and a slow client still slows
//! the backend read.
//!
//! The client gets the decoded body: no `Content-Encoding`, no `Content-Length`, chunked
//! for an HTTP/1.1 client and close-delimited for HTTP/1.0. Identity is acceptable to any
//! client (RFC 9110 §12.5.3), and it is what Sluice asked the backend for.
//!
//! A coded body that does not decode (corrupt, truncated, bytes after its end) is the
//! backend's fault: before any byte of the body reached the client, the client gets a 502
//! `upstream_protocol_error`; after, its connection closes without a clean end, like any
//! broken relay, and the usage tap charges the estimate. A coding Sluice cannot decode
//! (`zstd`, `compress`, unknown) passes through untouched and unread: the estimate stands.

use super::{emit, Broken, Cut, INVALID_CHUNKED};
use crate::http::content_coding::{Codings, ContentDecoder, DecodeError};
use crate::http::{ChunkedDecoder, ResponseFraming};
use crate::policy::context::RequestCtx;
use crate::policy::phase::{BodyCoding, Pipeline, Policy};
use crate::snapshot::Timeouts;
use crate::upstream::stream::UpstreamStream;
use crate::upstream::Exchange;

/// The 502 message for a coded body that does not decode.
const UNDECODABLE_BODY: &str =
    "Bad gateway: the backend sent a content-coded body that does not decode.";

impl Exchange<'_> {
    /// How the body of the answer whose head is in `self.leg.resp` reaches the body phase: with
    /// the decoder when `decode` (Sluice asked for `identity`, a policy reads the body) and
    /// it is coded with codings Sluice decodes; otherwise as it came — [`BodyCoding::Opaque`]
    /// when it is coded at all.
    pub(super) fn answer_coding(&self, decode: bool) -> (Option<ContentDecoder>, BodyCoding) {
        if self.leg.resp.framing == ResponseFraming::None {
            return (None, BodyCoding::Identity);
        }
        let values = self
            .leg
            .resp
            .headers
            .iter()
            .filter(|h| {
                h.name(&self.leg.ubuf)
                    .eq_ignore_ascii_case(b"content-encoding")
            })
            .map(|h| h.value(&self.leg.ubuf));
        match Codings::parse(values) {
            Codings::Identity => (None, BodyCoding::Identity),
            Codings::Decodable(codings) if decode => {
                (Some(ContentDecoder::new(&codings)), BodyCoding::Identity)
            }
            Codings::Decodable(_) | Codings::Unsupported(_) => (None, BodyCoding::Opaque),
        }
    }

    /// Relays the coded body after the head in `out`, decoded: like `relay_body`,
    /// `Ok(true)` when the upstream connection is left exactly at the end of the answer.
    /// The head is held back until the first decoded byte (or the end), so that a body
    /// that does not decode before then is still a 502.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay_decoded<'s, P: Policy>(
        &mut self,
        pipeline: &Pipeline<'s, P>,
        ctx: &mut RequestCtx<'s>,
        upstream: &mut UpstreamStream,
        out: &mut Vec<u8>,
        decoder: &mut ContentDecoder,
        framed: bool,
        t: &Timeouts,
    ) -> Result<bool, Broken> {
        let body_start = self.leg.resp.head_len;
        let mut flushed = false;
        let clean = match self.leg.resp.framing {
            ResponseFraming::Chunked => {
                let mut chunks = ChunkedDecoder::new(u64::MAX);
                let mut pos = body_start;
                loop {
                    let mut coded = std::mem::take(&mut self.leg.scratch);
                    coded.clear();
                    let step = match chunks.decode(&self.leg.ubuf[pos..], &mut coded) {
                        Ok(step) => step,
                        Err(_) => {
                            self.leg.scratch = coded;
                            return Err(if flushed {
                                Broken::Upstream(Cut::Framing)
                            } else {
                                Broken::Unsent(INVALID_CHUNKED)
                            });
                        }
                    };
                    let passed = self
                        .pass(pipeline, ctx, decoder, &coded, out, framed, &mut flushed)
                        .await;
                    self.leg.scratch = coded;
                    passed?;
                    pos += step.consumed;
                    if step.done {
                        break pos == self.leg.ubuf.len();
                    }
                    self.leg.ubuf.drain(..pos);
                    pos = 0;
                    self.read_upstream(ctx, upstream, t).await?;
                }
            }
            ResponseFraming::Close => {
                self.pass_read(
                    pipeline,
                    ctx,
                    decoder,
                    body_start,
                    usize::MAX,
                    out,
                    framed,
                    &mut flushed,
                )
                .await?;
                loop {
                    self.leg.ubuf.clear();
                    match self.read_upstream_or_end(ctx, upstream, t).await? {
                        0 => break,
                        n => {
                            self.pass_read(pipeline, ctx, decoder, 0, n, out, framed, &mut flushed)
                                .await?
                        }
                    }
                }
                false
            }
            ResponseFraming::Length(n) => {
                let have = (self.leg.ubuf.len() - body_start) as u64;
                let mut clean = have <= n;
                let first = have.min(n) as usize;
                self.pass_read(
                    pipeline,
                    ctx,
                    decoder,
                    body_start,
                    first,
                    out,
                    framed,
                    &mut flushed,
                )
                .await?;
                let mut remaining = n - first as u64;
                while remaining > 0 {
                    self.leg.ubuf.clear();
                    let k = (self.read_upstream(ctx, upstream, t).await? as u64).min(remaining);
                    clean &= self.leg.ubuf.len() as u64 == k;
                    remaining -= k;
                    self.pass_read(
                        pipeline,
                        ctx,
                        decoder,
                        0,
                        k as usize,
                        out,
                        framed,
                        &mut flushed,
                    )
                    .await?;
                }
                clean
            }
            // `answer_coding` gives no decoder for a bodiless answer: nothing to decode.
            ResponseFraming::None => self.leg.ubuf.len() == body_start,
        };
        decoder
            .finish()
            .map_err(|error| undecodable(error, flushed))?;
        self.finish_body(pipeline, ctx, out, framed);
        self.flush(out).await?;
        Ok(clean)
    }

    /// [`Exchange::pass`] for up to `len` bytes of `self.leg.ubuf` from `start`.
    #[allow(clippy::too_many_arguments)]
    async fn pass_read<'s, P: Policy>(
        &mut self,
        pipeline: &Pipeline<'s, P>,
        ctx: &mut RequestCtx<'s>,
        decoder: &mut ContentDecoder,
        start: usize,
        len: usize,
        out: &mut Vec<u8>,
        framed: bool,
        flushed: &mut bool,
    ) -> Result<(), Broken> {
        let read = std::mem::take(&mut self.leg.ubuf);
        let end = start.saturating_add(len).min(read.len());
        let passed = self
            .pass(
                pipeline,
                ctx,
                decoder,
                &read[start..end],
                out,
                framed,
                flushed,
            )
            .await;
        self.leg.ubuf = read;
        passed
    }

    /// Decodes `coded`, handing each decoded piece through the body phase to the client
    /// before decoding more. `flushed` turns true once a body byte was written.
    #[allow(clippy::too_many_arguments)]
    async fn pass<'s, P: Policy>(
        &mut self,
        pipeline: &Pipeline<'s, P>,
        ctx: &mut RequestCtx<'s>,
        decoder: &mut ContentDecoder,
        coded: &[u8],
        out: &mut Vec<u8>,
        framed: bool,
        flushed: &mut bool,
    ) -> Result<(), Broken> {
        let mut pos = 0;
        loop {
            let (taken, piece) = decoder
                .decode(&coded[pos..])
                .map_err(|error| undecodable(error, *flushed))?;
            pos += taken;
            if piece.is_empty() {
                return Ok(());
            }
            let before = out.len();
            emit(
                pipeline,
                ctx,
                &mut self.leg.filtered,
                &mut self.leg.tail,
                out,
                piece,
                framed,
            );
            if out.len() > before {
                self.flush(out).await?;
                *flushed = true;
            }
        }
    }
}

/// What a coded body that does not decode breaks: the 502 when no byte of it was relayed.
fn undecodable(error: DecodeError, flushed: bool) -> Broken {
    tracing::warn!(%error, relayed = flushed, "backend sent a content-coded body that does not decode");
    if flushed {
        Broken::Upstream(Cut::Undecodable)
    } else {
        Broken::Unsent(UNDECODABLE_BODY)
    }
}
