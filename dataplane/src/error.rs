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

/// An error Sluice answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    /// HTTP status.
    pub status: u16,
    /// Whose fault.
    pub fault: Fault,
    /// The OpenAI `error.type`.
    pub kind: &'static str,
    /// The OpenAI `error.code` (`null` when `None`).
    pub code: Option<&'static str>,
    /// The OpenAI `error.param` (`null` when `None`).
    pub param: Option<&'static str>,
    /// A message for the developer reading it.
    pub message: Cow<'static, str>,
    /// Close the client connection after answering (framing errors, where the rest of the
    /// stream cannot be trusted).
    pub close: bool,
    /// When to come back (`Retry-After` and `retry-after-ms` on the answer).
    pub retry_after: Option<std::time::Duration>,
}

impl GatewayError {
    fn new(
        status: u16,
        fault: Fault,
        kind: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            fault,
            kind,
            code: None,
            param: None,
            message: message.into(),
            close: false,
            retry_after: None,
        }
    }

    /// A malformed or oversized request that ends the connection (400, 408, 413, 414, 431).
    pub fn bad_framing(status: u16, message: &'static str) -> Self {
        Self {
            close: true,
            ..Self::new(status, Fault::Client, "invalid_request_error", message)
        }
    }

    /// A request Sluice understood but refuses (400), naming the offending parameter.
    pub fn invalid_request(
        message: impl Into<Cow<'static, str>>,
        param: Option<&'static str>,
    ) -> Self {
        Self {
            param,
            ..Self::new(400, Fault::Client, "invalid_request_error", message)
        }
    }

    /// No such route (404).
    pub fn not_found() -> Self {
        Self {
            code: Some("NotFound"),
            ..Self::new(
                404,
                Fault::Client,
                "invalid_request_error",
                "Resource not found: no such API path on this gateway.",
            )
        }
    }

    /// The route exists with another method (405).
    pub fn method_not_allowed(allowed: &'static str) -> Self {
        let message = match allowed {
            "GET" => "Method not allowed: this path takes GET.",
            _ => "Method not allowed: this path takes POST.",
        };
        Self {
            code: Some("MethodNotAllowed"),
            ..Self::new(405, Fault::Client, "invalid_request_error", message)
        }
    }

    /// The deployment the request names is not configured (404).
    pub fn deployment_not_found(name: &str) -> Self {
        let shown: String = name.chars().take(128).collect();
        Self {
            code: Some("DeploymentNotFound"),
            param: Some("model"),
            ..Self::new(
                404,
                Fault::Client,
                "invalid_request_error",
                format!("The API deployment for this resource does not exist: '{shown}' is not configured on this gateway."),
            )
        }
    }

    /// No backend could be reached (502).
    pub fn upstream_unavailable() -> Self {
        Self {
            code: Some("upstream_unavailable"),
            ..Self::new(
                502,
                Fault::Upstream,
                "server_error",
                "Bad gateway: no backend of this deployment could be reached.",
            )
        }
    }

    /// A backend answered with something that is not valid HTTP (502).
    pub fn upstream_protocol(message: &'static str) -> Self {
        Self {
            code: Some("upstream_protocol_error"),
            ..Self::new(502, Fault::Upstream, "server_error", message)
        }
    }

    /// A backend did not start answering in time (504).
    pub fn upstream_timeout() -> Self {
        Self {
            code: Some("upstream_timeout"),
            ..Self::new(
                504,
                Fault::Upstream,
                "server_error",
                "Gateway timeout: the backend did not answer in time.",
            )
        }
    }

    /// No valid credential (401).
    pub fn unauthorized(code: &'static str, message: &'static str) -> Self {
        Self {
            code: Some(code),
            ..Self::new(401, Fault::Client, "invalid_request_error", message)
        }
    }

    /// The caller may not do this (403).
    pub fn forbidden(code: &'static str, message: &'static str) -> Self {
        Self {
            code: Some(code),
            ..Self::new(403, Fault::Client, "invalid_request_error", message)
        }
    }

    /// Over a rate limit (429), passing again after `retry_after`. `unit` is `requests` or
    /// `tokens` (the OpenAI `error.type` of a rate limit).
    pub fn rate_limited(unit: &'static str, retry_after: std::time::Duration, label: &str) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after),
            ..Self::new(
                429,
                Fault::Client,
                unit,
                format!(
                    "Rate limit reached for {unit} ({label}). Retry after {} ms.",
                    retry_after.as_millis()
                ),
            )
        }
    }

    /// Over a quota (403), which resets after `retry_after`.
    pub fn quota_exceeded(retry_after: std::time::Duration, label: &str) -> Self {
        Self {
            code: Some("quota_exceeded"),
            retry_after: Some(retry_after),
            ..Self::new(
                403,
                Fault::Client,
                "insufficient_quota",
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
        Self {
            code: Some("rate_limit_exceeded"),
            ..Self::new(
                429,
                Fault::Client,
                "tokens",
                format!("The request is larger than the limit {label} can ever admit; lower max_tokens or the prompt."),
            )
        }
    }

    /// A request that alone costs more than a quota's whole window (403, as over a quota).
    pub fn too_large_for_quota(label: &str) -> Self {
        Self {
            code: Some("quota_exceeded"),
            ..Self::new(
                403,
                Fault::Client,
                "insufficient_quota",
                format!("The request is larger than the quota {label} admits in a whole window; lower max_tokens or the prompt."),
            )
        }
    }

    /// The gateway is shutting down (503).
    pub fn shutting_down() -> Self {
        Self {
            close: true,
            ..Self::new(
                503,
                Fault::Gateway,
                "server_error",
                "The gateway is shutting down; retry.",
            )
        }
    }

    /// Appends the OpenAI error body (`{"error":{"message","type","param","code"}}`).
    pub fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"error\":{\"message\":");
        write_json_string(out, &self.message);
        out.extend_from_slice(b",\"type\":");
        write_json_string(out, self.kind);
        out.extend_from_slice(b",\"param\":");
        write_json_opt(out, self.param);
        out.extend_from_slice(b",\"code\":");
        write_json_opt(out, self.code);
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
    fn control_characters_are_escaped() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\u{1}b");
        assert_eq!(out, b"\"a\\u0001b\"");
    }
}
