//! The upstream leg (DESIGN.md steps 8–10): from a request the pipeline admitted to the
//! answer the client gets. [`forward`] takes the candidates selection offers for the
//! deployment in order (the choice, then the fallbacks), prepares each attempt through the
//! pipeline's `on_upstream_request`, rewrites the request for that backend and sends it on a
//! pooled or new connection ([`pool`]), failing over while the client has seen nothing and
//! never resending a request whose bytes reached a backend — over plain TCP or, for
//! `https://` backends, TLS ([`stream`]); [`relay`] streams the answer
//! back through `on_response_head` and `on_body_chunk`, decoding a content coding a policy
//! cannot read; [`mock`] answers from the built-in mock backend through the same phases.
//!
//! The leg owns its buffers ([`Leg`], one per client connection, reused) and answers the
//! client through the connection's [`Downstream`].

mod cool_down;
mod forward;
mod mock;
mod pool;
mod relay;
mod retry;
mod stream;

pub use cool_down::go_duration;
pub use forward::refused_header_name;
pub use pool::{Tenant, UpstreamPools};
pub use retry::Retries;

use crate::downstream::Downstream;
use crate::http::ResponseHead;

/// The upstream leg's buffers for one client connection, reused from request to request.
#[derive(Default)]
pub struct Leg {
    /// The upstream request being sent.
    req: Vec<u8>,
    /// Bytes read from the upstream.
    ubuf: Vec<u8>,
    /// The upstream answer's parsed head (ranges into `ubuf`).
    resp: ResponseHead,
    /// Decoded chunk data on its way to the client.
    scratch: Vec<u8>,
    /// Selection candidates.
    candidates: Vec<usize>,
    /// The backends a request tried, in order.
    tried: Vec<usize>,
    /// The end of the answer's body relayed so far.
    tail: relay::Tail,
    /// What the body phase lets through when a policy rewrites the body.
    filtered: Vec<u8>,
}

/// One request's trip upstream: the leg's buffers and the client it answers.
pub struct Exchange<'a> {
    /// The leg's buffers.
    pub leg: &'a mut Leg,
    /// The client.
    pub down: &'a mut Downstream,
}
