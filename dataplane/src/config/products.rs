//! Products, subscriptions and their keys: `[[product]]` (deployments, operations, trace,
//! limits) and `[[subscription]]` (product, key hashes, revoked key hashes, JWT claim values),
//! checked across the whole file (a key hash or claim value belongs to one subscription).

use std::collections::HashMap;

use toml::Spanned;

use super::check::{check_not_empty, line_of};
use super::error::Reporter;
use super::limits::LimitTable;
use super::schema::{ProductSection, SpannedList, SubscriptionSection};
use crate::auth::keys::{KeyEntry, KeyHashError};
use crate::snapshot::access::{
    DeploymentSet, KeyDigest, LimitOwner, OperationSet, Product, Subscription, SubscriptionId,
};

pub(super) fn compile_product(
    p: &ProductSection,
    index: usize,
    id: usize,
    deployment_names: &[&str],
    limits: &mut LimitTable,
    report: &mut Reporter<'_>,
) -> Product {
    let field = format!("product[{index}]");
    check_not_empty(report, &p.name, &format!("{field}.name"));

    let deployments = match &p.deployments {
        None => DeploymentSet::All,
        Some(list) => {
            let field = format!("{field}.deployments");
            let items = list.get_ref();
            if items.is_empty() {
                report.at(
                    list.span(),
                    &field,
                    "list at least one deployment, or [\"*\"] for all of them",
                );
            }
            let mut names: Vec<String> = Vec::with_capacity(items.len());
            let mut all = false;
            for (j, item) in items.iter().enumerate() {
                let name = item.get_ref();
                if name == "*" {
                    all = true;
                    if items.len() > 1 {
                        report.at(
                            item.span(),
                            format!("{field}[{j}]"),
                            "`*` already means every deployment: list it alone",
                        );
                    }
                } else if !deployment_names.contains(&name.as_str()) {
                    report.at(
                        item.span(),
                        format!("{field}[{j}]"),
                        format!("unknown deployment `{name}`"),
                    );
                } else if names.contains(name) {
                    report.at(
                        item.span(),
                        format!("{field}[{j}]"),
                        format!("deployment `{name}` is listed twice"),
                    );
                } else {
                    names.push(name.clone());
                }
            }
            if all {
                DeploymentSet::All
            } else {
                DeploymentSet::Only(names)
            }
        }
    };

    let operations = match &p.operations {
        None => OperationSet::all(),
        Some(list) => {
            let field = format!("{field}.operations");
            if list.get_ref().is_empty() {
                report.at(
                    list.span(),
                    &field,
                    "list at least one operation, or leave `operations` out for all of them",
                );
            }
            let mut set = OperationSet::empty();
            for (j, item) in list.get_ref().iter().enumerate() {
                match OperationSet::from_config_name(item.get_ref()) {
                    Some(op) if set.contains(op) => report.at(
                        item.span(),
                        format!("{field}[{j}]"),
                        format!("operation `{}` is listed twice", item.get_ref()),
                    ),
                    Some(op) => set = set.with(op),
                    None => report.at(
                        item.span(),
                        format!("{field}[{j}]"),
                        format!(
                            "unknown operation `{}`: expected \"chat\", \"completions\", \"embeddings\", \"responses\" or \"models\"",
                            item.get_ref()
                        ),
                    ),
                }
            }
            set
        }
    };

    let limit_ids = limits.compile(
        &p.limits,
        &format!("{field}.limits"),
        &LimitOwner::Product(id),
        &format!("product:{}", p.name.get_ref()),
        report,
    );
    Product {
        name: p.name.get_ref().clone(),
        deployments,
        operations,
        trace: p.trace.unwrap_or(false),
        limits: limit_ids,
        audit_content: super::audit::product_content(p.audit.as_ref(), &field, report),
    }
}

/// Every key hash seen so far, for duplicates across subscriptions; `entries` become the
/// snapshot's [`crate::auth::keys::KeyTable`].
#[derive(Default)]
pub(super) struct KeyHashes {
    pub(super) entries: Vec<KeyEntry>,
    /// Where each was first listed: line and subscription.
    first: HashMap<KeyDigest, (usize, SubscriptionId)>,
}

/// Where subscriptions are being compiled: the names of all of them (for messages about
/// duplicates) and what has been claimed so far.
pub(super) struct SubscriptionTables<'f> {
    pub(super) names: Vec<&'f str>,
    pub(super) has_jwt: bool,
    pub(super) keys: KeyHashes,
    /// Claim value → subscription and the line it was listed on.
    pub(super) claim_values: HashMap<String, (SubscriptionId, usize)>,
}

impl SubscriptionTables<'_> {
    pub(super) fn compile(
        &mut self,
        section: &Spanned<SubscriptionSection>,
        field: &str,
        index: SubscriptionId,
        product: usize,
        report: &mut Reporter<'_>,
    ) -> Subscription {
        let s = section.get_ref();
        let live = self.key_hashes(&s.keys, field, "keys", index, false, report);
        let revoked = self.key_hashes(&s.revoked_keys, field, "revoked_keys", index, true, report);

        let mut values = Vec::new();
        if let Some(list) = &s.jwt_claim_values {
            if !self.has_jwt {
                report.at(
                    list.span(),
                    format!("{field}.jwt_claim_values"),
                    "no [[jwt]] is configured, so no token can carry these values",
                );
            }
            for (j, item) in list.get_ref().iter().enumerate() {
                let item_field = format!("{field}.jwt_claim_values[{j}]");
                if !check_not_empty(report, item, &item_field) {
                    continue;
                }
                if let Some(&(owner, line)) = self.claim_values.get(item.get_ref()) {
                    report.at(
                        item.span(),
                        item_field,
                        format!(
                            "claim value `{}` already maps to subscription `{}` (line {line})",
                            item.get_ref(),
                            self.names[owner.index()]
                        ),
                    );
                    continue;
                }
                self.claim_values
                    .insert(item.get_ref().clone(), (index, line_of(report, item)));
                values.push(item.get_ref().clone());
            }
        }

        let listed = |list: &Option<SpannedList<String>>| {
            list.as_ref().is_some_and(|l| !l.get_ref().is_empty())
        };
        // `keys = []` written out says the keys come from elsewhere: a control plane's
        // `sluicectl keys create`.
        if s.keys.is_none() && !listed(&s.revoked_keys) && !listed(&s.jwt_claim_values) {
            report.at(
                section.span(),
                format!("{field}.keys"),
                "missing: a subscription needs `keys` (hashes from `sluice keygen`; `keys = []` when a control plane makes them) or `jwt_claim_values`",
            );
        }

        Subscription {
            name: s.name.get_ref().clone(),
            product,
            keys: live,
            revoked_keys: revoked,
            jwt_claim_values: values,
        }
    }

    /// One list of key hashes, each decoded and new in the whole file.
    fn key_hashes(
        &mut self,
        list: &Option<SpannedList<String>>,
        field: &str,
        name: &str,
        index: SubscriptionId,
        revoked: bool,
        report: &mut Reporter<'_>,
    ) -> Vec<KeyDigest> {
        let mut digests = Vec::new();
        let Some(list) = list else {
            return digests;
        };
        for (j, item) in list.get_ref().iter().enumerate() {
            let field = format!("{field}.{name}[{j}]");
            let digest = match parse_key_hash(item.get_ref()) {
                Ok(digest) => digest,
                Err(message) => {
                    report.at(item.span(), field, message);
                    continue;
                }
            };
            if let Some(&(line, owner)) = self.keys.first.get(&digest) {
                report.at(
                    item.span(),
                    field,
                    format!(
                        "this key hash is already listed on line {line} (subscription `{}`)",
                        self.names[owner.index()]
                    ),
                );
                continue;
            }
            self.keys
                .first
                .insert(digest, (line_of(report, item), index));
            self.keys.entries.push(KeyEntry {
                hash: digest.0,
                subscription: index,
                revoked,
            });
            digests.push(digest);
        }
        digests
    }
}

/// `sha256:` and 64 lowercase hex digits → the digest. Parsed by
/// [`crate::auth::keys::parse_key_hash`] (the one key-hash parser); the config also asks for
/// the canonical lowercase form `sluice keygen` prints, so one key is written one way. Messages
/// never repeat the value: a key pasted here by mistake must not reach the logs.
pub(crate) fn parse_key_hash(text: &str) -> Result<KeyDigest, String> {
    let canonical =
        || "expected `sha256:` and 64 lowercase hex digits, as `sluice keygen` prints".to_string();
    match crate::auth::keys::parse_key_hash(text) {
        Err(KeyHashError::MissingPrefix) => Err("expected a key hash: `sha256:` and 64 lowercase hex digits, as `sluice keygen` prints (never the key itself)".to_string()),
        Err(KeyHashError::BadHex) => Err(canonical()),
        Ok(_) if text.bytes().any(|b| b.is_ascii_uppercase()) => Err(canonical()),
        Ok(digest) => Ok(KeyDigest(digest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_are_sha256_and_64_lowercase_hex_digits() {
        let hex = "579084b337941a6a4a172d804df80263a01442341327e1c8aded14669aee6724";
        let digest = parse_key_hash(&format!("sha256:{hex}")).unwrap();
        assert_eq!(digest.0[0], 0x57);
        assert_eq!(digest.0[31], 0x24);
        assert_eq!(format!("{digest:?}"), format!("sha256:{hex}"));
        for bad in [
            hex.to_string(),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{hex}0"),
            format!("SHA256:{hex}"),
            format!("sha256:{}g", &hex[1..]),
        ] {
            assert!(parse_key_hash(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn operation_sets_hold_what_was_added() {
        use crate::route::Operation;
        let set = OperationSet::empty().with(Operation::Embeddings);
        assert!(set.contains(Operation::Embeddings));
        assert!(!set.contains(Operation::ChatCompletions));
        assert!(OperationSet::OPERATIONS
            .iter()
            .all(|&op| OperationSet::all().contains(op)));
        assert_eq!(
            format!("{:?}", OperationSet::all()),
            "{\"chat\", \"completions\", \"embeddings\", \"responses\", \"models\"}"
        );
        assert_eq!(
            OperationSet::from_config_name("chat"),
            Some(Operation::ChatCompletions)
        );
        assert_eq!(OperationSet::from_config_name("chat/completions"), None);
    }
}
