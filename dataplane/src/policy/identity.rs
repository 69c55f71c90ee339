//! Who is calling, and may they call this: the subscription key or JWT of a request mapped
//! to a subscription (401 when it cannot be), then its product checked against the
//! deployment and operation (403).
//!
//! Built once per config snapshot from [`crate::snapshot::access::Access`]; read by every
//! worker without a lock (the key table is immutable, the JWKS caches are swapped whole).

use std::path::Path;

use crate::auth::jwt::JwtValidator;
use crate::auth::keys::{extract_credential, query_has_key, KeyCheck};
use crate::config::{ConfigError, ConfigErrors};
use crate::error::{ErrorKind, GatewayError};
use crate::http::RequestHead;
use crate::route::Operation;
use crate::snapshot::access::{Access, Product};

/// The caller, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Index of the subscription in [`Access::subscriptions`].
    pub subscription: usize,
    /// The claims (name, value) that `claim:` limit scopes count by, when the caller came
    /// with a token that carries them.
    pub claims: Vec<(String, String)>,
    /// The token's `sub` claim (a JWT caller), for the audit record.
    pub subject: Option<String>,
    /// The value of the issuer's subscription claim (`appid`, `azp`, …: the calling
    /// application), for the audit record.
    pub app_id: Option<String>,
}

impl Caller {
    /// The value of claim `name`, if the caller's token carried it.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The runtime side of access control for one snapshot.
pub struct Identity {
    jwt: Option<JwtValidator>,
}

impl Identity {
    /// Builds the JWT validator of `access` from its issuers as compiled ([`Access::jwt`],
    /// from `source`; the key table is the snapshot's own, [`Access::keys`]), taking
    /// over from `previous` — the identity of the snapshot being replaced — the JWKS caches
    /// and refresh threads of JWKS URLs configured the same way (see
    /// [`JwtValidator::carry_over`]). Starts no thread: [`start`](Self::start) does.
    ///
    /// The config compiler has already parsed every key with the same code, so this fails
    /// only if the two disagree; the error is then a [`ConfigErrors`] naming the `[[jwt]]`
    /// tables, like any other config error.
    pub fn build(
        access: &Access,
        source: &Path,
        previous: Option<&Identity>,
    ) -> Result<Self, ConfigErrors> {
        let refuse = |field: &str, message: String| {
            ConfigErrors(vec![ConfigError {
                file: source.to_path_buf(),
                line: 1,
                column: 1,
                field: field.to_string(),
                message,
                scope: crate::config::Scope::Document,
            }])
        };
        let jwt = if access.jwt.is_empty() {
            None
        } else {
            let mut validator =
                JwtValidator::new(access.jwt.clone()).map_err(|e| refuse("jwt", e.to_string()))?;
            if let Some(old) = previous.and_then(|p| p.jwt.as_ref()) {
                let carried = validator.carry_over(old);
                tracing::debug!(
                    carried,
                    "JWKS key sets carried over from the running config"
                );
            }
            Some(validator)
        };
        Ok(Self { jwt })
    }

    /// Starts the side threads this identity needs: a refresher for each JWKS URL not
    /// carried over with its thread. Not called by `sluice --check`.
    pub fn start(&self) -> std::io::Result<()> {
        match &self.jwt {
            Some(jwt) => jwt.spawn_refreshers(),
            None => Ok(()),
        }
    }

    /// Authenticates a request (auth is on): its key or token → the subscription.
    pub fn authenticate(
        &self,
        access: &Access,
        head: &RequestHead,
        buf: &[u8],
        now_unix: u64,
    ) -> Result<Caller, GatewayError> {
        if query_has_key(head.target(buf)) {
            return Err(GatewayError::new(
                ErrorKind::KeyInQuery,
                "Keys are not accepted in the query string (they end up in logs); send the key as the api-key header, Ocp-Apim-Subscription-Key or Authorization: Bearer.",
            ));
        }
        let Some(credential) = extract_credential(head, buf) else {
            return Err(invalid_key());
        };
        if credential.is_jwt() {
            let Some(jwt) = &self.jwt else {
                return Err(invalid_key());
            };
            let token = std::str::from_utf8(credential.value).map_err(|_| invalid_key())?;
            let principal = jwt.validate(token, now_unix).map_err(|e| {
                tracing::debug!(reason = e.name(), "JWT refused");
                GatewayError::new(
                    ErrorKind::InvalidToken,
                    "Access denied: the bearer token is not valid for this gateway.",
                )
            })?;
            let subscription = principal.subscription.ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::InvalidToken,
                    "Access denied: the bearer token maps to no subscription.",
                )
            })?;
            return Ok(Caller {
                subscription: subscription.index(),
                claims: principal.claims,
                subject: principal.subject,
                app_id: principal.claim_value,
            });
        }
        match access.keys.lookup(credential.value) {
            KeyCheck::Valid(id) if id.index() < access.subscriptions.len() => Ok(Caller {
                subscription: id.index(),
                claims: Vec::new(),
                subject: None,
                app_id: None,
            }),
            KeyCheck::Revoked(id) => {
                let name = access
                    .subscriptions
                    .get(id.index())
                    .map_or("", |s| s.name.as_str());
                tracing::info!(subscription = name, "revoked key refused");
                Err(invalid_key())
            }
            _ => Err(invalid_key()),
        }
    }
}

/// The caller's product, if it allows `deployment` and `op` (else 403).
pub fn authorize<'a>(
    access: &'a Access,
    caller: &Caller,
    deployment: &str,
    op: Operation,
) -> Result<&'a Product, GatewayError> {
    let product = authorize_operation(access, caller, op)?;
    if !product.deployments.contains(deployment) {
        return Err(GatewayError::new(
            ErrorKind::DeploymentNotAllowed,
            "Your subscription's product does not allow this deployment.",
        ));
    }
    Ok(product)
}

/// The caller's product, if it allows `op` (else 403) — for operations without a
/// deployment (`GET /v1/models`).
pub fn authorize_operation<'a>(
    access: &'a Access,
    caller: &Caller,
    op: Operation,
) -> Result<&'a Product, GatewayError> {
    let product = access
        .subscriptions
        .get(caller.subscription)
        .and_then(|s| access.products.get(s.product))
        .ok_or_else(invalid_key)?;
    if !product.operations.contains(op) {
        return Err(GatewayError::new(
            ErrorKind::OperationNotAllowed,
            "Your subscription's product does not allow this operation.",
        ));
    }
    Ok(product)
}

fn invalid_key() -> GatewayError {
    GatewayError::new(
        ErrorKind::InvalidApiKey,
        "Access denied due to a missing or invalid subscription key. Send a valid key as the api-key header, Ocp-Apim-Subscription-Key or Authorization: Bearer.",
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::Identity;
    use crate::auth::testkeys::{jwks, rsa_jwk, wait_for, JwksServer};

    /// `refresh` is written on each `jwks_url` key, so each URL is refetched on its own
    /// schedule: a 1 s URL listed before a 1 h one of the same issuer is refetched within
    /// seconds, and the 1 h one is not (neither takes the other's `refresh`).
    #[test]
    fn each_jwks_url_is_refetched_on_its_own_refresh() {
        let fast = JwksServer::start(jwks(&[rsa_jwk("fast")]));
        let slow = JwksServer::start(jwks(&[rsa_jwk("slow")]));
        let text = format!(
            "[[backend]]\nname = \"m\"\nkind = \"mock\"\n\n[[deployment]]\nname = \"d\"\n\
             backends = [{{ backend = \"m\" }}]\n\n[[jwt]]\nname = \"remote\"\n\
             issuer = \"https://issuer.test\"\naudiences = [\"api://sluice\"]\n\
             subscription_claim = \"appid\"\nkeys = [\n\
             {{ jwks_url = \"{}\", algorithms = [\"RS256\"], refresh = \"1s\" }},\n\
             {{ jwks_url = \"{}\", algorithms = [\"RS256\"], refresh = \"1h\" }},\n]\n",
            fast.url, slow.url
        );
        let snapshot =
            crate::config::load_str(Path::new("sluice.toml"), &text, &|_| None, None).unwrap();
        let identity = Identity::build(&snapshot.access, &snapshot.source, None).unwrap();
        identity.start().unwrap();
        assert!(
            wait_for(|| slow.hits() == 1),
            "the 1 h URL is fetched at start"
        );
        assert!(
            wait_for(|| fast.hits() >= 2),
            "the 1 s URL is refetched after a second, not an hour: {} fetches",
            fast.hits()
        );
        assert_eq!(slow.hits(), 1, "the 1 h URL keeps its own schedule");
    }

    /// A reload that changes one `jwks_url`'s `refresh` starts that URL afresh and keeps
    /// the fetched key set of every other URL of the issuer, whichever of them changed.
    #[test]
    fn a_changed_refresh_restarts_only_its_own_url() {
        let text = |first: &str, second: &str| {
            format!(
                "[[backend]]\nname = \"m\"\nkind = \"mock\"\n\n[[deployment]]\nname = \"d\"\n\
                 backends = [{{ backend = \"m\" }}]\n\n[[jwt]]\nname = \"remote\"\n\
                 issuer = \"https://issuer.test\"\naudiences = [\"api://sluice\"]\n\
                 subscription_claim = \"appid\"\nkeys = [\n\
                 {{ jwks_url = \"http://127.0.0.1:1/a\", algorithms = [\"RS256\"], refresh = \"{first}\" }},\n\
                 {{ jwks_url = \"http://127.0.0.1:1/b\", algorithms = [\"RS256\"], refresh = \"{second}\" }},\n]\n"
            )
        };
        let build = |text: &str, previous: Option<&Identity>| {
            let snapshot =
                crate::config::load_str(Path::new("sluice.toml"), text, &|_| None, None).unwrap();
            Identity::build(&snapshot.access, &snapshot.source, previous).unwrap()
        };
        let caches = |identity: &Identity| -> Vec<_> {
            let jwt = identity.jwt.as_ref().unwrap();
            jwt.jwks_caches().cloned().collect()
        };
        let old = build(&text("1h", "1h"), None);
        for (first, second, kept) in [("2h", "1h", [false, true]), ("1h", "2h", [true, false])] {
            let next = build(&text(first, second), Some(&old));
            let kept_now: Vec<bool> = caches(&old)
                .iter()
                .zip(caches(&next).iter())
                .map(|(o, n)| std::sync::Arc::ptr_eq(o, n))
                .collect();
            assert_eq!(kept_now, kept, "refresh {first} and {second}");
        }
    }
}
