//! The one data-plane error type: what went wrong, whose fault it is, and how it is answered
//! (an HTTP status and the OpenAI error body that SDKs parse).
//!
//! Cheap to build on the hot path: messages are `&'static str` unless a detail (a deployment
//! name) must be named.

use std::borrow::Cow;

/// Whose fault an error is; decides logging level and whether a retry elsewhere may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong; retrying the same request will not help.
    Client,
    /// A backend failed or misbehaved; another backend may do better.
    Upstream,
    /// Sluice itself could not serve the request (shutting down, internal limit).
    Gateway,
}

/// Every kind of error Sluice answers itself. Each kind has one status, one OpenAI
/// `error.type` and `error.code`, one fault and one retry verdict — all in the `match`es
/// below, so a kind cannot be answered two ways. Statuses follow RFC 9110 §15; types and
/// codes follow what the OpenAI and Azure OpenAI APIs send for the same condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Malformed HTTP framing (400; the connection closes).
    MalformedRequest,
    /// The head or body did not arrive in time (408; the connection closes).
    RequestTimeout,
    /// The body is larger than accepted (413; the connection closes).
    PayloadTooLarge,
    /// The request line is longer than accepted (414; the connection closes).
    UriTooLong,
    /// The head or a trailer section is larger than accepted (431; the connection closes).
    HeadersTooLarge,
    /// A request Sluice understood but refuses, naming the offending parameter (400).
    InvalidRequest,
    /// No such API path (404 `NotFound`).
    NotFound,
    /// The path exists with another method (405 `MethodNotAllowed`).
    MethodNotAllowed,
    /// The deployment named is not configured (404 `DeploymentNotFound`, Azure's code).
    DeploymentNotFound,
    /// A key sent in the query string (401 `key_in_query`).
    KeyInQuery,
    /// A missing, unknown or revoked key (401 `invalid_api_key`).
    InvalidApiKey,
    /// A bearer token that is not valid here, or maps to no subscription (401
    /// `invalid_token`).
    InvalidToken,
    /// The product does not allow this deployment (403 `deployment_not_allowed`).
    DeploymentNotAllowed,
    /// The product does not allow this operation (403 `operation_not_allowed`).
    OperationNotAllowed,
    /// Over a requests rate limit (429, type `requests`, `rate_limit_exceeded`).
    RequestsRateLimited,
    /// Over a tokens rate limit (429, type `tokens`, `rate_limit_exceeded`).
    TokensRateLimited,
    /// A request larger than a rate limit can ever admit (429, type `tokens`).
    TooLargeForLimit,
    /// Over a quota (403 `insufficient_quota` / `quota_exceeded`, as APIM's quota policy).
    QuotaExceeded,
    /// A request larger than a quota admits in a whole window (403, as over a quota).
    TooLargeForQuota,
    /// No backend of the deployment could be reached (502 `upstream_unavailable`).
    UpstreamUnavailable,
    /// A backend broke the exchange or answered with invalid HTTP (502
    /// `upstream_protocol_error`).
    UpstreamProtocol,
    /// A backend did not start answering in time (504 `upstream_timeout`).
    UpstreamTimeout,
    /// Every backend of the deployment is cooling down or ejected, or every attempt the
    /// request was allowed ended in a 429 (429, type `requests`, `rate_limit_exceeded`,
    /// with `Retry-After` = the soonest any backend is usable again).
    PoolExhausted,
    /// The gateway's shutdown grace ended before the request was answered (503
    /// `shutting_down`; the connection closes). Its bytes may have reached a backend.
    ShuttingDown,
}

impl ErrorKind {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        use ErrorKind::*;
        match self {
            MalformedRequest | InvalidRequest => 400,
            KeyInQuery | InvalidApiKey | InvalidToken => 401,
            DeploymentNotAllowed | OperationNotAllowed | QuotaExceeded | TooLargeForQuota => 403,
            NotFound | DeploymentNotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            PayloadTooLarge => 413,
            UriTooLong => 414,
            RequestsRateLimited | TokensRateLimited | TooLargeForLimit | PoolExhausted => 429,
            HeadersTooLarge => 431,
            UpstreamUnavailable | UpstreamProtocol => 502,
            ShuttingDown => 503,
            UpstreamTimeout => 504,
        }
    }

    /// The kind's name in audit records and metrics: the variant in snake case
    /// (`invalid_api_key`, `tokens_rate_limited`, `upstream_timeout`, …).
    pub fn name(self) -> &'static str {
        use ErrorKind::*;
        match self {
            MalformedRequest => "malformed_request",
            RequestTimeout => "request_timeout",
            PayloadTooLarge => "payload_too_large",
            UriTooLong => "uri_too_long",
            HeadersTooLarge => "headers_too_large",
            InvalidRequest => "invalid_request",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            DeploymentNotFound => "deployment_not_found",
            KeyInQuery => "key_in_query",
            InvalidApiKey => "invalid_api_key",
            InvalidToken => "invalid_token",
            DeploymentNotAllowed => "deployment_not_allowed",
            OperationNotAllowed => "operation_not_allowed",
            RequestsRateLimited => "requests_rate_limited",
            TokensRateLimited => "tokens_rate_limited",
            TooLargeForLimit => "too_large_for_limit",
            QuotaExceeded => "quota_exceeded",
            TooLargeForQuota => "too_large_for_quota",
            UpstreamUnavailable => "upstream_unavailable",
            UpstreamProtocol => "upstream_protocol",
            UpstreamTimeout => "upstream_timeout",
            PoolExhausted => "pool_exhausted",
            ShuttingDown => "shutting_down",
        }
    }

    /// The OpenAI `error.type`.
    pub fn openai_type(self) -> &'static str {
        use ErrorKind::*;
        match self {
            RequestsRateLimited | PoolExhausted => "requests",
            TokensRateLimited | TooLargeForLimit => "tokens",
            QuotaExceeded | TooLargeForQuota => "insufficient_quota",
            UpstreamUnavailable | UpstreamProtocol | UpstreamTimeout | ShuttingDown => {
                "server_error"
            }
            _ => "invalid_request_error",
        }
    }

    /// The OpenAI `error.code` (`null` when `None`).
    pub fn code(self) -> Option<&'static str> {
        use ErrorKind::*;
        Some(match self {
            MalformedRequest | RequestTimeout | PayloadTooLarge | UriTooLong | HeadersTooLarge
            | InvalidRequest => return None,
            NotFound => "NotFound",
            MethodNotAllowed => "MethodNotAllowed",
            DeploymentNotFound => "DeploymentNotFound",
            KeyInQuery => "key_in_query",
            InvalidApiKey => "invalid_api_key",
            InvalidToken => "invalid_token",
            DeploymentNotAllowed => "deployment_not_allowed",
            OperationNotAllowed => "operation_not_allowed",
            RequestsRateLimited | TokensRateLimited | TooLargeForLimit | PoolExhausted => {
                "rate_limit_exceeded"
            }
            QuotaExceeded | TooLargeForQuota => "quota_exceeded",
            UpstreamUnavailable => "upstream_unavailable",
            UpstreamProtocol => "upstream_protocol_error",
            UpstreamTimeout => "upstream_timeout",
            ShuttingDown => "shutting_down",
        })
    }

    /// Whose fault.
    pub fn fault(self) -> Fault {
        use ErrorKind::*;
        match self {
            UpstreamUnavailable | UpstreamProtocol | UpstreamTimeout | PoolExhausted => {
                Fault::Upstream
            }
            ShuttingDown => Fault::Gateway,
            _ => Fault::Client,
        }
    }

    /// Whether the same request may succeed when sent again (later, or elsewhere): over a
    /// rate or quota (after its retry time), a backend's failure, a head or body too slow.
    /// Malformed, refused or too large requests will fail the same way.
    pub fn retryable(self) -> bool {
        use ErrorKind::*;
        matches!(
            self,
            RequestTimeout
                | RequestsRateLimited
                | TokensRateLimited
                | QuotaExceeded
                | UpstreamUnavailable
                | UpstreamProtocol
                | UpstreamTimeout
                | PoolExhausted
                | ShuttingDown
        )
    }

    /// Whether the connection closes after the answer: framing errors, where the rest of the
    /// stream cannot be trusted.
    pub fn closes(self) -> bool {
        use ErrorKind::*;
        matches!(
            self,
            MalformedRequest
                | RequestTimeout
                | PayloadTooLarge
                | UriTooLong
                | HeadersTooLarge
                | ShuttingDown
        )
    }

    /// The framing error kind of an HTTP status a framing parser gave (400, 408, 413, 414,
    /// 431; anything else reads as malformed).
    fn framing(status: u16) -> Self {
        match status {
            408 => Self::RequestTimeout,
            413 => Self::PayloadTooLarge,
            414 => Self::UriTooLong,
            431 => Self::HeadersTooLarge,
            _ => Self::MalformedRequest,
        }
    }
}

/// An error Sluice answers itself: its kind, and what the answer says about this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    /// What went wrong (status, type, code, fault, retry: see [`ErrorKind`]).
    pub kind: ErrorKind,
    /// The OpenAI `error.param` (`null` when `None`).
    pub param: Option<&'static str>,
    /// A message for the developer reading it.
    pub message: Cow<'static, str>,
    /// When to come back (`Retry-After` and `retry-after-ms` on the answer).
    pub retry_after: Option<std::time::Duration>,
    /// The limit that refused the request (an index into
    /// [`crate::snapshot::Access::limits`]), for a limit's refusal.
    pub limit: Option<usize>,
}

impl From<crate::http::RequestError> for GatewayError {
    fn from(e: crate::http::RequestError) -> Self {
        Self::new(ErrorKind::framing(e.status()), e.message())
    }
}

impl From<crate::http::ChunkError> for GatewayError {
    fn from(e: crate::http::ChunkError) -> Self {
        Self::new(ErrorKind::framing(e.status()), e.message())
    }
}

impl From<crate::route::RouteError> for GatewayError {
    fn from(e: crate::route::RouteError) -> Self {
        use crate::route::RouteError;
        match e {
            RouteError::NotFound => Self::not_found(),
            RouteError::MethodNotAllowed(allowed) => Self::method_not_allowed(allowed),
            RouteError::MissingApiVersion => Self::invalid_request(
                "Missing required query parameter: api-version.",
                Some("api-version"),
            ),
        }
    }
}

impl GatewayError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            param: None,
            message: message.into(),
            retry_after: None,
            limit: None,
        }
    }

    /// The same error, naming the limit (its index) that refused the request.
    pub fn refused_by(self, limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..self
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// Whether the connection closes after this answer.
    pub fn closes(&self) -> bool {
        self.kind.closes()
    }

    /// A head or body that did not arrive in time (408; the connection closes).
    pub fn request_timeout(message: &'static str) -> Self {
        Self::new(ErrorKind::RequestTimeout, message)
    }

    /// A request Sluice understood but refuses (400), naming the offending parameter.
    pub fn invalid_request(
        message: impl Into<Cow<'static, str>>,
        param: Option<&'static str>,
    ) -> Self {
        Self {
            param,
            ..Self::new(ErrorKind::InvalidRequest, message)
        }
    }

    /// No such route (404).
    pub fn not_found() -> Self {
        Self::new(
            ErrorKind::NotFound,
            "Resource not found: no such API path on this gateway.",
        )
    }

    /// The route exists with another method (405).
    pub fn method_not_allowed(allowed: &'static str) -> Self {
        let message = match allowed {
            "GET" => "Method not allowed: this path takes GET.",
            _ => "Method not allowed: this path takes POST.",
        };
        Self::new(ErrorKind::MethodNotAllowed, message)
    }

    /// The deployment the request names is not configured (404).
    pub fn deployment_not_found(name: &str) -> Self {
        let shown: String = name.chars().take(128).collect();
        Self {
            param: Some("model"),
            ..Self::new(
                ErrorKind::DeploymentNotFound,
                format!("The API deployment for this resource does not exist: '{shown}' is not configured on this gateway."),
            )
        }
    }

    /// No backend could be reached (502).
    pub fn upstream_unavailable() -> Self {
        Self::new(
            ErrorKind::UpstreamUnavailable,
            "Bad gateway: no backend of this deployment could be reached.",
        )
    }

    /// A backend answered with something that is not valid HTTP (502).
    pub fn upstream_protocol(message: &'static str) -> Self {
        Self::new(ErrorKind::UpstreamProtocol, message)
    }

    /// A backend did not start answering in time (504).
    pub fn upstream_timeout() -> Self {
        Self::new(
            ErrorKind::UpstreamTimeout,
            "Gateway timeout: the backend did not answer in time.",
        )
    }

    /// Over a rate limit (429), passing again after `retry_after`; `tokens`: a tokens limit,
    /// else a requests one (the OpenAI `error.type` says which).
    pub fn rate_limited(tokens: bool, retry_after: std::time::Duration, label: &str) -> Self {
        let (kind, unit) = if tokens {
            (ErrorKind::TokensRateLimited, "tokens")
        } else {
            (ErrorKind::RequestsRateLimited, "requests")
        };
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                kind,
                format!(
                    "Rate limit reached for {unit} ({label}). Retry after {} ms.",
                    retry_after.as_millis()
                ),
            )
        }
    }

    /// No backend of the deployment can take the request before `retry_after` (429): all are
    /// cooling down or ejected.
    pub fn pool_exhausted(retry_after: std::time::Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                ErrorKind::PoolExhausted,
                format!(
                    "Every backend of this deployment is throttled or failing. Retry after {} ms.",
                    retry_after.as_millis()
                ),
            )
        }
    }

    /// Over a quota (403), which resets after `retry_after`.
    pub fn quota_exceeded(retry_after: std::time::Duration, label: &str) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "Out of quota ({label}); it resets in {} s.",
                    retry_after.as_secs()
                ),
            )
        }
    }

    /// A request that alone costs more than a limit can ever admit (429 without a useful
    /// retry time, as Azure does for a request over its TPM).
    pub fn too_large_for_limit(label: &str) -> Self {
        Self::new(
            ErrorKind::TooLargeForLimit,
            format!("The request is larger than the limit {label} can ever admit; lower max_tokens or the prompt."),
        )
    }

    /// A request that alone costs more than a quota's whole window (403, as over a quota).
    pub fn too_large_for_quota(label: &str) -> Self {
        Self::new(
            ErrorKind::TooLargeForQuota,
            format!("The request is larger than the quota {label} admits in a whole window; lower max_tokens or the prompt."),
        )
    }

    /// Appends the OpenAI error body (`{"error":{"message","type","param","code"}}`).
    pub fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"error\":{\"message\":");
        write_json_string(out, &self.message);
        out.extend_from_slice(b",\"type\":");
        write_json_string(out, self.kind.openai_type());
        out.extend_from_slice(b",\"param\":");
        write_json_opt(out, self.param);
        out.extend_from_slice(b",\"code\":");
        write_json_opt(out, self.kind.code());
        out.extend_from_slice(b"}}");
    }
}

fn write_json_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => write_json_string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `s` as a JSON string literal with the escapes JSON requires.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &GatewayError) -> serde_json::Value {
        let mut out = Vec::new();
        e.write_body(&mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn errors_have_the_openai_shape() {
        let v = body(&GatewayError::deployment_not_found("gpt-\"5\"\n"));
        let e = &v["error"];
        assert!(e["message"].as_str().unwrap().contains("gpt-\"5\"\n"));
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"], "model");
        assert_eq!(e["code"], "DeploymentNotFound");
        let v = body(&GatewayError::upstream_unavailable());
        assert_eq!(v["error"]["param"], serde_json::Value::Null);
        assert_eq!(v["error"]["type"], "server_error");
    }

    #[test]
    fn each_kind_answers_one_consistent_way() {
        use ErrorKind::*;
        let all = [
            MalformedRequest,
            RequestTimeout,
            PayloadTooLarge,
            UriTooLong,
            HeadersTooLarge,
            InvalidRequest,
            NotFound,
            MethodNotAllowed,
            DeploymentNotFound,
            KeyInQuery,
            InvalidApiKey,
            InvalidToken,
            DeploymentNotAllowed,
            OperationNotAllowed,
            RequestsRateLimited,
            TokensRateLimited,
            TooLargeForLimit,
            QuotaExceeded,
            TooLargeForQuota,
            UpstreamUnavailable,
            UpstreamProtocol,
            UpstreamTimeout,
        ];
        for kind in all {
            let status = kind.status();
            match kind.fault() {
                Fault::Client => assert!((400..500).contains(&status), "{kind:?}"),
                Fault::Upstream | Fault::Gateway => {
                    assert!((500..600).contains(&status), "{kind:?}");
                    assert!(kind.retryable(), "{kind:?}");
                    assert_eq!(kind.openai_type(), "server_error");
                }
            }
            // Only framing errors end the connection.
            assert_eq!(
                kind.closes(),
                status != 400 && kind.code().is_none() && status < 500 || kind == MalformedRequest,
                "{kind:?}"
            );
            if status == 429 {
                assert_eq!(kind.code(), Some("rate_limit_exceeded"));
            }
        }
        assert!(RequestsRateLimited.retryable() && !TooLargeForLimit.retryable());
        assert_eq!(
            GatewayError::rate_limited(true, std::time::Duration::ZERO, "l")
                .kind
                .openai_type(),
            "tokens"
        );
        assert_eq!(
            GatewayError::rate_limited(false, std::time::Duration::ZERO, "l")
                .kind
                .openai_type(),
            "requests"
        );
    }

    #[test]
    fn framing_errors_convert_by_their_status() {
        use crate::http::{ChunkError, RequestError};
        assert_eq!(
            GatewayError::from(RequestError::UriTooLong).kind,
            ErrorKind::UriTooLong
        );
        assert_eq!(
            GatewayError::from(RequestError::TooManyHeaders).kind,
            ErrorKind::HeadersTooLarge
        );
        assert_eq!(
            GatewayError::from(ChunkError::TooLarge).kind,
            ErrorKind::PayloadTooLarge
        );
        assert_eq!(
            GatewayError::from(ChunkError::BadChunkSize).kind,
            ErrorKind::MalformedRequest
        );
        let err = GatewayError::from(crate::route::RouteError::MissingApiVersion);
        assert_eq!(
            (err.kind, err.param),
            (ErrorKind::InvalidRequest, Some("api-version"))
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\u{1}b");
        assert_eq!(out, b"\"a\\u0001b\"");
    }
}
