//! The access half of the compiler: puts together what [`super::limits`],
//! [`super::products`] and [`super::jwt`] check — `[[product]]`, `[[subscription]]`,
//! `[[jwt]]`, the `limits` of products and deployments, `[server]`'s access settings — into
//! [`Access`] (see [`crate::snapshot::access`]), and compiles deployments' `tokens`.
//!
//! Like the rest of the compiler it reports every problem it finds and does no I/O of its
//! own: environment variables and key files come through the `env` and `read` parameters.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::check::{check_not_empty, line_of, EnvLookup, ReadFile};
use super::error::Reporter;
use super::jwt::{compile_jwt, IssuerCommon};
use super::limits::LimitTable;
use super::products::{compile_product, KeyHashes, SubscriptionTables};
use super::schema::{ConfigFile, TokensSection};
use crate::auth::keys::KeyTable;
use crate::snapshot::access::{
    Access, Estimator, EstimatorChoice, Family, LimitOwner, LimitScope, SubscriptionId,
};
use crate::snapshot::{Deployment, TokenSettings};

/// Checks the access sections of `file`, fills in each deployment's `limits` and `tokens`
/// (`deployments` are in file order, one per `[[deployment]]`), and returns the rest.
pub(crate) fn compile_access(
    source: &Path,
    file: &ConfigFile,
    deployments: &mut [Deployment],
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
    read: ReadFile<'_>,
) -> Access {
    let has_jwt = !file.jwt.is_empty();
    let has_client_certs = file
        .server
        .tls
        .as_ref()
        .is_some_and(|tls| tls.get_ref().client_ca_file.is_some());
    let mut limits = LimitTable {
        limits: Vec::new(),
        has_jwt,
        has_client_certs,
    };

    let deployment_names: Vec<&str> = file
        .deployment
        .iter()
        .map(|d| d.get_ref().name.get_ref().as_str())
        .collect();
    let mut product_ids: HashMap<&str, usize> = HashMap::new();
    let mut products = Vec::with_capacity(file.product.len());
    for (i, section) in file.product.iter().enumerate() {
        let id = products.len();
        let product = compile_product(
            section.get_ref(),
            i,
            id,
            &deployment_names,
            &mut limits,
            report,
        );
        let name = &section.get_ref().name;
        if let Some(&first) = product_ids.get(name.get_ref().as_str()) {
            let first_line = line_of(report, &file.product[first].get_ref().name);
            report.at(
                name.span(),
                format!("product[{i}].name"),
                format!(
                    "duplicate product name `{}` (first defined on line {first_line})",
                    name.get_ref()
                ),
            );
        } else {
            product_ids.insert(name.get_ref(), i);
        }
        products.push(product);
    }

    for (i, (section, deployment)) in file.deployment.iter().zip(deployments).enumerate() {
        let d = section.get_ref();
        let field = format!("deployment[{i}]");
        deployment.limits = limits.compile(
            &d.limits,
            &format!("{field}.limits"),
            &LimitOwner::Deployment(d.name.get_ref().clone()),
            &format!("deployment:{}", d.name.get_ref()),
            report,
        );
        if let Some(tokens) = &d.tokens {
            deployment.tokens =
                compile_tokens(tokens.get_ref(), &format!("{field}.tokens"), report);
        }
    }

    let client_ip_limits = limits.compile(
        &file.server.client_ip_limits,
        "server.client_ip_limits",
        &LimitOwner::Server,
        "server",
        report,
    );

    let mut tables = SubscriptionTables {
        names: file
            .subscription
            .iter()
            .map(|s| s.get_ref().name.get_ref().as_str())
            .collect(),
        has_jwt,
        keys: KeyHashes::default(),
        claim_values: HashMap::new(),
    };
    let mut subscriptions = Vec::with_capacity(file.subscription.len());
    let mut subscription_ids: HashMap<&str, usize> = HashMap::new();
    for (i, section) in file.subscription.iter().enumerate() {
        let s = section.get_ref();
        let field = format!("subscription[{i}]");
        check_not_empty(report, &s.name, &format!("{field}.name"));
        if let Some(&first) = subscription_ids.get(s.name.get_ref().as_str()) {
            let first_line = line_of(report, &file.subscription[first].get_ref().name);
            report.at(
                s.name.span(),
                format!("{field}.name"),
                format!(
                    "duplicate subscription name `{}` (first defined on line {first_line})",
                    s.name.get_ref()
                ),
            );
        } else {
            subscription_ids.insert(s.name.get_ref(), i);
        }
        let product = match product_ids.get(s.product.get_ref().as_str()) {
            Some(&id) => id,
            None => {
                report.at(
                    s.product.span(),
                    format!("{field}.product"),
                    format!("unknown product `{}`", s.product.get_ref()),
                );
                0
            }
        };
        let Ok(id) = u32::try_from(i).map(SubscriptionId) else {
            report.at(
                s.name.span(),
                format!("{field}.name"),
                format!("too many subscriptions: at most {} per file", u32::MAX),
            );
            continue;
        };
        subscriptions.push(tables.compile(section, &field, id, product, report));
    }

    let claim_values: Arc<HashMap<String, SubscriptionId>> = Arc::new(
        tables
            .claim_values
            .into_iter()
            .map(|(value, (subscription, _))| (value, subscription))
            .collect(),
    );
    // The claims `claim:` limit scopes count by, once each in limit order.
    let mut scope_claims: Vec<String> = Vec::new();
    for limit in &limits.limits {
        if let LimitScope::Claim(name) = &limit.scope {
            if !scope_claims.contains(name) {
                scope_claims.push(name.clone());
            }
        }
    }
    let common = IssuerCommon {
        claim_values: &claim_values,
        scope_claims: &scope_claims,
    };
    let mut issuers = Vec::with_capacity(file.jwt.len());
    let mut issuer_names: HashMap<&str, usize> = HashMap::new();
    let mut issuer_values: HashMap<&str, usize> = HashMap::new();
    for (i, section) in file.jwt.iter().enumerate() {
        let j = section.get_ref();
        let field = format!("jwt[{i}]");
        check_not_empty(report, &j.name, &format!("{field}.name"));
        if let Some(&first) = issuer_names.get(j.name.get_ref().as_str()) {
            let first_line = line_of(report, &file.jwt[first].get_ref().name);
            report.at(
                j.name.span(),
                format!("{field}.name"),
                format!(
                    "duplicate jwt name `{}` (first defined on line {first_line})",
                    j.name.get_ref()
                ),
            );
        } else {
            issuer_names.insert(j.name.get_ref(), i);
        }
        if let Some(&first) = issuer_values.get(j.issuer.get_ref().as_str()) {
            let first = file.jwt[first].get_ref();
            report.at(
                j.issuer.span(),
                format!("{field}.issuer"),
                format!(
                    "issuer `{}` is already trusted by jwt `{}` (line {})",
                    j.issuer.get_ref(),
                    first.name.get_ref(),
                    line_of(report, &first.issuer)
                ),
            );
        } else {
            issuer_values.insert(j.issuer.get_ref(), i);
        }
        issuers.push(compile_jwt(
            section, &field, source, report, env, read, &common,
        ));
    }

    // Duplicate hashes were reported above and left out, so the table always builds.
    let keys = KeyTable::new(tables.keys.entries).unwrap_or_else(|e| {
        report.at(0..0, "subscription", e.to_string());
        KeyTable::default()
    });
    Access {
        products,
        subscriptions,
        keys,
        claim_values,
        jwt: issuers,
        limits: limits.limits,
        client_ip_limits,
        trace_header: file.server.trace_header.unwrap_or(true),
    }
}

fn compile_tokens(t: &TokensSection, field: &str, report: &mut Reporter<'_>) -> TokenSettings {
    let defaults = TokenSettings::default();
    // `None`: BPE (the default), family from `family` or the model.
    let heuristic = match &t.estimator {
        None => false,
        Some(v) => match v.get_ref().as_str() {
            "bpe" => false,
            "heuristic" => true,
            other => {
                report.at(
                    v.span(),
                    format!("{field}.estimator"),
                    format!("unknown estimator `{other}`: expected \"bpe\" or \"heuristic\""),
                );
                false
            }
        },
    };
    let family = match &t.family {
        None => None,
        Some(v) => {
            if heuristic {
                report.at(
                    v.span(),
                    format!("{field}.family"),
                    "`family` applies only to estimator = \"bpe\"",
                );
            }
            match v.get_ref().as_str() {
                "o200k" => Some(Family::O200k),
                "cl100k" => Some(Family::Cl100k),
                other => {
                    report.at(
                        v.span(),
                        format!("{field}.family"),
                        format!(
                            "unknown tokenizer family `{other}`: expected \"o200k\" or \"cl100k\""
                        ),
                    );
                    None
                }
            }
        }
    };
    let estimator = match (heuristic, family) {
        (true, _) => EstimatorChoice::Fixed(Estimator::Heuristic),
        (false, Some(family)) => EstimatorChoice::Fixed(Estimator::Bpe(family)),
        (false, None) => EstimatorChoice::BpeByModel,
    };
    TokenSettings {
        estimator,
        default_max_tokens: t
            .default_max_tokens
            .as_ref()
            .map_or(defaults.default_max_tokens, |v| *v.get_ref()),
        stream_usage: t.stream_usage.unwrap_or(defaults.stream_usage),
    }
}
