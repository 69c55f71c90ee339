//! Who may call: operators (`SLUICE_OPERATOR_TOKEN`) and nodes (`SLUICE_NODE_TOKEN`), each
//! with a bearer token in the `authorization` metadata. Tokens are compared as SHA-256
//! digests in constant time (the digest hides the length too) and never logged.
//!
//! A kind of caller with no token configured is not checked: [`Tokens::open_to`] says which,
//! and `sluice-control` refuses to listen beyond loopback while any is open.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// Which kind of caller an RPC is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// An operator (`sluicectl`): Apply, Get, Diff, listings, overlays, usage queries.
    Operator,
    /// A data-plane node: Register, Watch, Ack, usage reports.
    Node,
}

/// The configured tokens, as digests.
#[derive(Clone, Default)]
pub struct Tokens {
    operator: Option<[u8; 32]>,
    node: Option<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("operator", &self.operator.is_some())
            .field("node", &self.node.is_some())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Tokens from the given values; an empty value counts as none.
    pub fn new(operator: Option<&str>, node: Option<&str>) -> Self {
        Self {
            operator: operator.filter(|t| !t.is_empty()).map(digest),
            node: node.filter(|t| !t.is_empty()).map(digest),
        }
    }

    /// Tokens from `SLUICE_OPERATOR_TOKEN` and `SLUICE_NODE_TOKEN`.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok();
        Self::new(
            var("SLUICE_OPERATOR_TOKEN").as_deref(),
            var("SLUICE_NODE_TOKEN").as_deref(),
        )
    }

    /// The kinds of callers no token guards.
    pub fn open_to(&self) -> Vec<Caller> {
        let mut open = Vec::new();
        if self.operator.is_none() {
            open.push(Caller::Operator);
        }
        if self.node.is_none() {
            open.push(Caller::Node);
        }
        open
    }

    /// Admits a call from `caller` carrying `metadata`, or refuses it `UNAUTHENTICATED`
    /// (no bearer token, or the wrong one; the answer does not say which).
    pub fn check(&self, caller: Caller, metadata: &MetadataMap) -> Result<(), Status> {
        let expected = match caller {
            Caller::Operator => self.operator,
            Caller::Node => self.node,
        };
        let Some(expected) = expected else {
            return Ok(());
        };
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        match presented {
            Some(token) if bool::from(digest(token).ct_eq(&expected)) => Ok(()),
            _ => Err(Status::unauthenticated(match caller {
                Caller::Operator => {
                    "operator token required: send `authorization: Bearer <SLUICE_OPERATOR_TOKEN>`"
                }
                Caller::Node => {
                    "node token required: send `authorization: Bearer <SLUICE_NODE_TOKEN>`"
                }
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn each_kind_of_caller_needs_its_own_token() {
        let tokens = Tokens::new(Some("op-secret"), Some("node-secret"));
        assert!(tokens.open_to().is_empty());
        assert!(tokens
            .check(Caller::Operator, &with("Bearer op-secret"))
            .is_ok());
        assert!(tokens
            .check(Caller::Operator, &with("bearer  op-secret "))
            .is_ok());
        assert!(tokens
            .check(Caller::Node, &with("Bearer node-secret"))
            .is_ok());
        for (caller, value) in [
            (Caller::Operator, "Bearer node-secret"),
            (Caller::Node, "Bearer op-secret"),
            (Caller::Operator, "op-secret"),
            (Caller::Operator, "Basic op-secret"),
            (Caller::Operator, "Bearer op-secre"),
        ] {
            let refused = tokens.check(caller, &with(value)).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
            assert!(!refused.message().contains("op-secret"), "{refused:?}");
            assert!(!refused.message().contains("node-secret"), "{refused:?}");
        }
        assert!(tokens.check(Caller::Node, &MetadataMap::new()).is_err());
        let open = Tokens::new(None, Some(""));
        assert_eq!(open.open_to(), [Caller::Operator, Caller::Node]);
        assert!(open.check(Caller::Node, &MetadataMap::new()).is_ok());
    }
}
