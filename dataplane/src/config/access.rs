//! The access half of the compiler: `[[product]]`, `[[subscription]]`, `[[jwt]]`, the
//! `limits` of products and deployments, deployments' `tokens` and the `[server]` access
//! settings, checked and turned into [`Access`] (see [`crate::snapshot::access`]).
//!
//! Like the rest of the compiler it reports every problem it finds and does no I/O of its
//! own: environment variables and key files come through the `env` and `read` parameters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::compile::{check_not_empty, line_of, parse_duration, EnvLookup};
use super::error::Reporter;
use super::schema::{
    ConfigFile, JwtKeyEntry, JwtSection, LimitEntry, ProductSection, SpannedList,
    SubscriptionSection, TokensSection,
};
use crate::http::url::{parse_http_url, UrlError};
use crate::snapshot::access::{
    Access, DeploymentSet, Estimator, JwtAlg, JwtIssuer, JwtKey, JwtKeySource, JwtRequire,
    KeyDigest, KeyEntry, Limit, LimitIndex, LimitOwner, LimitScope, LimitUnit, LimitWindow,
    OperationSet, Product, QuotaPeriod, RatePeriod, RequiredClaim, Subscription, SubscriptionId,
    TokenizerFamily, DEFAULT_JWKS_REFRESH, DEFAULT_JWT_LEEWAY,
};
use crate::snapshot::{Deployment, Secret, TokenSettings};

/// Reads a key file (already resolved against the config file's folder), or says why not.
pub(crate) type ReadFile<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// Reads with `std::fs`.
pub(crate) fn system_read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

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
    let mut limits = LimitTable {
        limits: Vec::new(),
        has_jwt,
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
        keys: KeyTable::default(),
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
        issuers.push(compile_jwt(section, &field, source, report, env, read));
    }

    Access {
        products,
        subscriptions,
        keys: tables.keys.entries,
        claim_values: tables
            .claim_values
            .into_iter()
            .map(|(value, (subscription, _))| (value, subscription))
            .collect(),
        jwt: issuers,
        limits: limits.limits,
        client_ip_limits,
        trace_header: file.server.trace_header.unwrap_or(true),
    }
}

/// The limits compiled so far; a limit's [`Limit::index`] is its position here.
struct LimitTable {
    limits: Vec<Limit>,
    /// Whether the file has a `[[jwt]]` (a `claim:` scope needs one).
    has_jwt: bool,
}

impl LimitTable {
    /// Compiles one `limits` list, adding the good entries; returns their indexes. `label`
    /// names the owner (`product:standard`); each limit's name must be unique in the list.
    fn compile(
        &mut self,
        list: &Option<SpannedList<LimitEntry>>,
        field: &str,
        owner: &LimitOwner,
        label: &str,
        report: &mut Reporter<'_>,
    ) -> Vec<LimitIndex> {
        let Some(list) = list else {
            return Vec::new();
        };
        let mut indexes = Vec::with_capacity(list.get_ref().len());
        // Name → line of the entry that took it.
        let mut names: HashMap<String, usize> = HashMap::new();
        for (j, entry) in list.get_ref().iter().enumerate() {
            let field = format!("{field}[{j}]");
            let Some((scope, unit, window)) = self.compile_one(entry, &field, owner, report) else {
                continue;
            };
            let e = entry.get_ref();
            let name = match &e.name {
                Some(name) => {
                    if !check_not_empty(report, name, &format!("{field}.name")) {
                        continue;
                    }
                    name.get_ref().clone()
                }
                None => default_limit_name(&scope, unit, window),
            };
            let line = line_of(report, e.name.as_ref().unwrap_or(&e.unit));
            if let Some(&first) = names.get(&name) {
                let (span, at) = match &e.name {
                    Some(n) => (n.span(), format!("{field}.name")),
                    None => (entry.span(), field.clone()),
                };
                report.at(
                    span,
                    at,
                    format!(
                        "limit name `{name}` is already taken in this list (line {first}): give each limit its own `name`"
                    ),
                );
                continue;
            }
            names.insert(name.clone(), line);
            let index = self.limits.len();
            self.limits.push(Limit {
                index,
                id: limit_state_id(label, &name, &scope, unit, &window),
                name,
                label: format!("{label}#{j}"),
                owner: owner.clone(),
                scope,
                unit,
                window,
                shadow: e.shadow.unwrap_or(false),
            });
            indexes.push(index);
        }
        indexes
    }

    fn compile_one(
        &self,
        entry: &Spanned<LimitEntry>,
        field: &str,
        owner: &LimitOwner,
        report: &mut Reporter<'_>,
    ) -> Option<(LimitScope, LimitUnit, LimitWindow)> {
        let e = entry.get_ref();
        let scope = self.scope(e, field, owner, report);
        let unit = match e.unit.get_ref().as_str() {
            "requests" => Some(LimitUnit::Requests),
            "tokens" => Some(LimitUnit::Tokens),
            other => {
                report.at(
                    e.unit.span(),
                    format!("{field}.unit"),
                    format!("unknown unit `{other}`: expected \"requests\" or \"tokens\""),
                );
                None
            }
        };
        let window = window(entry, field, report);
        Some((scope?, unit?, window?))
    }

    fn scope(
        &self,
        e: &LimitEntry,
        field: &str,
        owner: &LimitOwner,
        report: &mut Reporter<'_>,
    ) -> Option<LimitScope> {
        let (default, allowed, whose) = match owner {
            LimitOwner::Product(_) => (
                LimitScope::Subscription,
                "\"subscription\", \"subscription_deployment\" or \"claim:<name>\"",
                "a product's limits",
            ),
            LimitOwner::Deployment(_) => (
                LimitScope::Deployment,
                "\"deployment\", \"subscription_deployment\" or \"claim:<name>\"",
                "a deployment's limits",
            ),
            LimitOwner::Server => (LimitScope::ClientIp, "\"client_ip\"", "client_ip_limits"),
        };
        let Some(value) = &e.scope else {
            return Some(default);
        };
        let field = format!("{field}.scope");
        let text = value.get_ref().as_str();
        let scope = match text {
            "subscription" => LimitScope::Subscription,
            "subscription_deployment" => LimitScope::SubscriptionDeployment,
            "deployment" => LimitScope::Deployment,
            "client_ip" => LimitScope::ClientIp,
            _ => match text.strip_prefix("claim:") {
                Some("") => {
                    report.at(
                        value.span(),
                        field,
                        "`claim:` needs a claim name, e.g. \"claim:oid\"",
                    );
                    return None;
                }
                Some(claim) => LimitScope::Claim(claim.to_string()),
                None => {
                    report.at(
                        value.span(),
                        field,
                        format!("unknown scope `{text}`: expected {allowed}"),
                    );
                    return None;
                }
            },
        };
        let fits = match owner {
            LimitOwner::Product(_) => matches!(
                scope,
                LimitScope::Subscription
                    | LimitScope::SubscriptionDeployment
                    | LimitScope::Claim(_)
            ),
            LimitOwner::Deployment(_) => matches!(
                scope,
                LimitScope::Deployment | LimitScope::SubscriptionDeployment | LimitScope::Claim(_)
            ),
            LimitOwner::Server => scope == LimitScope::ClientIp,
        };
        if !fits {
            let shown = if matches!(scope, LimitScope::Claim(_)) {
                "claim:<name>"
            } else {
                text
            };
            report.at(
                value.span(),
                field,
                format!("scope `{shown}` does not apply to {whose} (they take {allowed})"),
            );
            return None;
        }
        if matches!(scope, LimitScope::Claim(_)) && !self.has_jwt {
            report.at(
                value.span(),
                field,
                "a `claim:` scope counts JWT claim values, but no [[jwt]] is configured",
            );
            return None;
        }
        Some(scope)
    }
}

/// The amount and window of a limit: `rate` per second/minute (with `burst`) or `quota` per
/// hour/day/month.
fn window(
    entry: &Spanned<LimitEntry>,
    field: &str,
    report: &mut Reporter<'_>,
) -> Option<LimitWindow> {
    let e = entry.get_ref();
    let per = e.per.get_ref().as_str();
    let (rate_period, quota_period) = match per {
        "second" => (Some(RatePeriod::Second), None),
        "minute" => (Some(RatePeriod::Minute), None),
        "hour" => (None, Some(QuotaPeriod::Hour)),
        "day" => (None, Some(QuotaPeriod::Day)),
        "month" => (None, Some(QuotaPeriod::Month)),
        other => {
            report.at(
                e.per.span(),
                format!("{field}.per"),
                format!(
                    "unknown period `{other}`: expected \"second\" or \"minute\" (with `rate`), \"hour\", \"day\" or \"month\" (with `quota`)"
                ),
            );
            (None, None)
        }
    };
    let known_per = rate_period.is_some() || quota_period.is_some();
    let at_least_one = |report: &mut Reporter<'_>, v: &Spanned<u64>, name: &str| {
        if *v.get_ref() == 0 {
            report.at(v.span(), format!("{field}.{name}"), "must be 1 or more");
            false
        } else {
            true
        }
    };
    match (&e.rate, &e.quota) {
        (Some(_), Some(quota)) => {
            report.at(
                quota.span(),
                format!("{field}.quota"),
                "give either `rate` (per second or minute) or `quota` (per hour, day or month), not both",
            );
            None
        }
        (None, None) => {
            report.at(
                entry.span(),
                format!("{field}.rate"),
                "missing: a limit needs `rate` (per second or minute) or `quota` (per hour, day or month)",
            );
            None
        }
        (Some(rate), None) => {
            let mut fine = at_least_one(report, rate, "rate");
            if known_per && rate_period.is_none() {
                fine = false;
                report.at(
                    e.per.span(),
                    format!("{field}.per"),
                    format!("a `rate` is per \"second\" or \"minute\"; for a {per} use `quota`"),
                );
            }
            let burst = match &e.burst {
                None => *rate.get_ref(),
                Some(burst) => {
                    fine &= at_least_one(report, burst, "burst");
                    *burst.get_ref()
                }
            };
            let per = rate_period?;
            fine.then_some(LimitWindow::Rate {
                rate: *rate.get_ref(),
                per,
                burst,
            })
        }
        (None, Some(quota)) => {
            let mut fine = at_least_one(report, quota, "quota");
            if known_per && quota_period.is_none() {
                fine = false;
                report.at(
                    e.per.span(),
                    format!("{field}.per"),
                    format!(
                        "a `quota` is per \"hour\", \"day\" or \"month\"; for a {per} use `rate`"
                    ),
                );
            }
            if let Some(burst) = &e.burst {
                fine = false;
                report.at(
                    burst.span(),
                    format!("{field}.burst"),
                    "`burst` applies only to a `rate`",
                );
            }
            let per = quota_period?;
            fine.then_some(LimitWindow::Quota {
                quota: *quota.get_ref(),
                per,
            })
        }
    }
}

/// A limit's name when the config gives none: `UNIT:SCOPE:AMOUNT/PER`, e.g.
/// `requests:subscription:600/minute` or `tokens:claim:oid:5000000/month` — what it counts,
/// never where it sits in its list, so inserting a limit renames no other.
pub(crate) fn default_limit_name(
    scope: &LimitScope,
    unit: LimitUnit,
    window: LimitWindow,
) -> String {
    let unit = match unit {
        LimitUnit::Requests => "requests",
        LimitUnit::Tokens => "tokens",
    };
    let scope = match scope {
        LimitScope::Subscription => "subscription",
        LimitScope::SubscriptionDeployment => "subscription_deployment",
        LimitScope::Deployment => "deployment",
        LimitScope::ClientIp => "client_ip",
        LimitScope::Claim(claim) => return format!("{unit}:claim:{claim}:{}", amount(window)),
    };
    format!("{unit}:{scope}:{}", amount(window))
}

/// `AMOUNT/PER` of a window.
fn amount(window: LimitWindow) -> String {
    match window {
        LimitWindow::Rate { rate, per, .. } => {
            let per = match per {
                RatePeriod::Second => "second",
                RatePeriod::Minute => "minute",
            };
            format!("{rate}/{per}")
        }
        LimitWindow::Quota { quota, per } => {
            let per = match per {
                QuotaPeriod::Hour => "hour",
                QuotaPeriod::Day => "day",
                QuotaPeriod::Month => "month",
            };
            format!("{quota}/{per}")
        }
    }
}

/// The limiter-state key of a limit: a hash of its owner, its name and what defines its state
/// (unit, scope, window with its burst), so it does not depend on the limit's position in
/// the file. Within one process (std's `DefaultHasher` is fixed for a build), the same limit
/// always gets the same id; the state it keys is process-local.
pub(crate) fn limit_state_id(
    owner: &str,
    name: &str,
    scope: &LimitScope,
    unit: LimitUnit,
    window: &LimitWindow,
) -> crate::limit::LimitId {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (owner, name, scope, unit, window).hash(&mut h);
    // The tables key by 32 bits: fold the hash rather than drop its upper half.
    let folded = h.finish();
    crate::limit::LimitId((folded ^ (folded >> 32)) as u32)
}

fn compile_product(
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
    }
}

fn compile_tokens(t: &TokensSection, field: &str, report: &mut Reporter<'_>) -> TokenSettings {
    let defaults = TokenSettings::default();
    let estimator = match &t.estimator {
        None => defaults.estimator,
        Some(v) => match v.get_ref().as_str() {
            "bpe" => Estimator::Bpe,
            "heuristic" => Estimator::Heuristic,
            other => {
                report.at(
                    v.span(),
                    format!("{field}.estimator"),
                    format!("unknown estimator `{other}`: expected \"bpe\" or \"heuristic\""),
                );
                defaults.estimator
            }
        },
    };
    let family = match &t.family {
        None => None,
        Some(v) => {
            if estimator == Estimator::Heuristic {
                report.at(
                    v.span(),
                    format!("{field}.family"),
                    "`family` applies only to estimator = \"bpe\"",
                );
            }
            match v.get_ref().as_str() {
                "o200k" => Some(TokenizerFamily::O200k),
                "cl100k" => Some(TokenizerFamily::Cl100k),
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
    TokenSettings {
        estimator,
        family,
        default_max_tokens: t
            .default_max_tokens
            .as_ref()
            .map_or(defaults.default_max_tokens, |v| *v.get_ref()),
        stream_usage: t.stream_usage.unwrap_or(defaults.stream_usage),
    }
}

/// Every key hash seen so far, for duplicates across subscriptions.
#[derive(Default)]
struct KeyTable {
    entries: HashMap<KeyDigest, KeyEntry>,
    /// Where each was first listed: line and subscription.
    first: HashMap<KeyDigest, (usize, SubscriptionId)>,
}

/// Where subscriptions are being compiled: the names of all of them (for messages about
/// duplicates) and what has been claimed so far.
struct SubscriptionTables<'f> {
    names: Vec<&'f str>,
    has_jwt: bool,
    keys: KeyTable,
    /// Claim value → subscription and the line it was listed on.
    claim_values: HashMap<String, (SubscriptionId, usize)>,
}

impl SubscriptionTables<'_> {
    fn compile(
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
                            self.names[owner.0 as usize]
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
        if !listed(&s.keys) && !listed(&s.revoked_keys) && !listed(&s.jwt_claim_values) {
            let span = s.keys.as_ref().map_or(section.span(), Spanned::span);
            report.at(
                span,
                format!("{field}.keys"),
                "missing: a subscription needs `keys` (hashes from `sluice keygen`) or `jwt_claim_values`",
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
                        self.names[owner.0 as usize]
                    ),
                );
                continue;
            }
            self.keys
                .first
                .insert(digest, (line_of(report, item), index));
            self.keys.entries.insert(
                digest,
                KeyEntry {
                    subscription: index,
                    revoked,
                },
            );
            digests.push(digest);
        }
        digests
    }
}

/// `sha256:` and 64 lowercase hex digits → the 32 bytes. Messages never repeat the value: a
/// key pasted here by mistake must not reach the logs.
pub(crate) fn parse_key_hash(text: &str) -> Result<KeyDigest, String> {
    let Some(hex) = text.strip_prefix("sha256:") else {
        return Err("expected a key hash: `sha256:` and 64 lowercase hex digits, as `sluice keygen` prints (never the key itself)".to_string());
    };
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bad =
        || "expected `sha256:` and 64 lowercase hex digits, as `sluice keygen` prints".to_string();
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => *out = hi << 4 | lo,
            _ => return Err(bad()),
        }
    }
    Ok(KeyDigest(digest))
}

fn compile_jwt(
    section: &Spanned<JwtSection>,
    field: &str,
    source: &Path,
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
    read: ReadFile<'_>,
) -> JwtIssuer {
    let j = section.get_ref();
    check_not_empty(report, &j.issuer, &format!("{field}.issuer"));
    check_not_empty(
        report,
        &j.subscription_claim,
        &format!("{field}.subscription_claim"),
    );

    let audiences = non_empty_strings(&j.audiences, &format!("{field}.audiences"), report);

    let leeway = match &j.leeway {
        None => DEFAULT_JWT_LEEWAY,
        Some(v) => parse_duration(v.get_ref()).unwrap_or_else(|message| {
            report.at(v.span(), format!("{field}.leeway"), message);
            DEFAULT_JWT_LEEWAY
        }),
    };

    let require = match &j.require {
        None => JwtRequire::default(),
        Some(list) => {
            let mut require = JwtRequire {
                exp: false,
                aud: false,
                iss: false,
                nbf: false,
            };
            for (k, item) in list.get_ref().iter().enumerate() {
                let slot = match item.get_ref().as_str() {
                    "exp" => &mut require.exp,
                    "aud" => &mut require.aud,
                    "iss" => &mut require.iss,
                    "nbf" => &mut require.nbf,
                    other => {
                        report.at(
                            item.span(),
                            format!("{field}.require[{k}]"),
                            format!(
                                "unknown claim `{other}`: expected \"exp\", \"aud\", \"iss\" or \"nbf\" (other claims go in `required_claims`)"
                            ),
                        );
                        continue;
                    }
                };
                if *slot {
                    report.at(
                        item.span(),
                        format!("{field}.require[{k}]"),
                        format!("`{}` is listed twice", item.get_ref()),
                    );
                }
                *slot = true;
            }
            require
        }
    };
    if require.aud && audiences.is_empty() {
        let span = j.audiences.as_ref().map_or(section.span(), Spanned::span);
        report.at(
            span,
            format!("{field}.audiences"),
            "missing: list the accepted `aud` values, e.g. [\"api://sluice\"], or remove \"aud\" from `require`",
        );
    }

    let mut required_claims: Vec<(usize, RequiredClaim)> = Vec::new();
    for (name, values) in j.required_claims.iter().flatten() {
        let claim_field = format!("{field}.required_claims.{}", name.get_ref());
        check_not_empty(report, name, &claim_field);
        let values = non_empty_strings(&Some(values.clone()), &claim_field, report);
        required_claims.push((
            name.span().start,
            RequiredClaim {
                name: name.get_ref().clone(),
                values,
            },
        ));
    }
    required_claims.sort_by_key(|(start, _)| *start);

    let mut keys = Vec::new();
    match &j.keys {
        None => report.at(
            section.span(),
            format!("{field}.keys"),
            "missing: a [[jwt]] needs at least one key, e.g. keys = [{ jwks_url = \"http://127.0.0.1:9999/keys\", algorithms = [\"RS256\"] }]",
        ),
        Some(list) if list.get_ref().is_empty() => report.at(
            list.span(),
            format!("{field}.keys"),
            "a [[jwt]] needs at least one key",
        ),
        Some(list) => {
            let mut kids: HashMap<&str, usize> = HashMap::new();
            for (k, entry) in list.get_ref().iter().enumerate() {
                let key_field = format!("{field}.keys[{k}]");
                if let Some(kid) = &entry.get_ref().kid {
                    if let Some(&line) = kids.get(kid.get_ref().as_str()) {
                        report.at(
                            kid.span(),
                            format!("{key_field}.kid"),
                            format!(
                                "kid `{}` is already used by this issuer's key on line {line}",
                                kid.get_ref()
                            ),
                        );
                    } else {
                        kids.insert(kid.get_ref(), line_of(report, kid));
                    }
                }
                if let Some(key) = compile_jwt_key(entry, &key_field, source, report, env, read)
                {
                    keys.push(key);
                }
            }
        }
    }

    JwtIssuer {
        name: j.name.get_ref().clone(),
        issuer: j.issuer.get_ref().clone(),
        audiences,
        subscription_claim: j.subscription_claim.get_ref().clone(),
        leeway,
        require,
        required_claims: required_claims.into_iter().map(|(_, c)| c).collect(),
        keys,
    }
}

/// A list of strings none of which may be empty (absent: none).
fn non_empty_strings(
    list: &Option<SpannedList<String>>,
    field: &str,
    report: &mut Reporter<'_>,
) -> Vec<String> {
    let Some(list) = list else {
        return Vec::new();
    };
    list.get_ref()
        .iter()
        .enumerate()
        .filter(|(k, item)| check_not_empty(report, item, &format!("{field}[{k}]")))
        .map(|(_, item)| item.get_ref().clone())
        .collect()
}

/// The names of a key's four sources, in the order the reference lists them.
const KEY_SOURCES: &str = "`public_key_file`, `secret_env`, `jwks_file` or `jwks_url`";

fn compile_jwt_key(
    entry: &Spanned<JwtKeyEntry>,
    field: &str,
    source: &Path,
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
    read: ReadFile<'_>,
) -> Option<JwtKey> {
    let e = entry.get_ref();
    let present: Vec<(&str, &Spanned<String>)> = [
        ("public_key_file", &e.public_key_file),
        ("secret_env", &e.secret_env),
        ("jwks_file", &e.jwks_file),
        ("jwks_url", &e.jwks_url),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
    .collect();
    let (kind, value) = match present.as_slice() {
        [] => {
            report.at(
                entry.span(),
                field,
                format!("missing: a key needs one of {KEY_SOURCES}"),
            );
            return None;
        }
        [one] => *one,
        [first, rest @ ..] => {
            for (name, value) in rest {
                report.at(
                    value.span(),
                    format!("{field}.{name}"),
                    format!(
                        "give one of {KEY_SOURCES} per key, not both `{}` and `{name}`",
                        first.0
                    ),
                );
            }
            return None;
        }
    };
    let mut fine = true;

    let algorithms = algorithms(entry, field, kind, report);
    fine &= algorithms.is_some();

    let is_jwks = matches!(kind, "jwks_file" | "jwks_url");
    let kid = match &e.kid {
        Some(kid) if is_jwks => {
            report.at(
                kid.span(),
                format!("{field}.kid"),
                "`kid` does not apply to a JWKS: its keys carry their own",
            );
            fine = false;
            None
        }
        Some(kid) => {
            fine &= check_not_empty(report, kid, &format!("{field}.kid"));
            Some(kid.get_ref().clone())
        }
        None => None,
    };

    let refresh = match &e.refresh {
        None => DEFAULT_JWKS_REFRESH,
        Some(v) if kind != "jwks_url" => {
            report.at(
                v.span(),
                format!("{field}.refresh"),
                "`refresh` applies only to a `jwks_url` key",
            );
            fine = false;
            DEFAULT_JWKS_REFRESH
        }
        Some(v) => match parse_duration(v.get_ref()) {
            Ok(d) if d < Duration::from_secs(1) => {
                report.at(v.span(), format!("{field}.refresh"), "must be at least 1s");
                fine = false;
                d
            }
            Ok(d) => d,
            Err(message) => {
                report.at(v.span(), format!("{field}.refresh"), message);
                fine = false;
                DEFAULT_JWKS_REFRESH
            }
        },
    };

    let value_field = format!("{field}.{kind}");
    if !check_not_empty(report, value, &value_field) {
        return None;
    }
    let text = value.get_ref();
    let source = match kind {
        "public_key_file" => {
            let path = resolve_path(source, text);
            let pem = read_key_file(&path, value, &value_field, report, read)?;
            if let Err(message) = check_pem(&pem) {
                report.at(value.span(), value_field, format!("`{text}` {message}"));
                return None;
            }
            JwtKeySource::PublicKeyPem { path, pem }
        }
        "jwks_file" => {
            let path = resolve_path(source, text);
            let json = read_key_file(&path, value, &value_field, report, read)?;
            if let Err(message) = check_jwks(&json) {
                report.at(value.span(), value_field, format!("`{text}` {message}"));
                return None;
            }
            JwtKeySource::JwksFile { path, json }
        }
        "jwks_url" => {
            let checked = match parse_http_url(text) {
                Ok(_) => Ok(()),
                Err(UrlError::Https) => Err("https JWKS URLs are not supported yet: use an http:// URL (TLS is a later issue)".to_string()),
                Err(UrlError::Form(message)) => Err(message),
            };
            if let Err(message) = checked {
                report.at(value.span(), value_field, message);
                return None;
            }
            JwtKeySource::JwksUrl {
                url: text.clone(),
                refresh,
            }
        }
        _ => {
            let secret = match env(text) {
                Some(secret) if !secret.is_empty() => secret,
                Some(_) => {
                    report.at(
                        value.span(),
                        value_field,
                        format!("environment variable `{text}` is empty"),
                    );
                    return None;
                }
                None => {
                    report.at(
                        value.span(),
                        value_field,
                        format!("environment variable `{text}` is not set"),
                    );
                    return None;
                }
            };
            let needed = algorithms
                .iter()
                .flatten()
                .max_by_key(|a| a.min_secret_len());
            if let Some(&alg) = needed {
                let min = alg.min_secret_len();
                if secret.len() < min {
                    report.at(
                        value.span(),
                        value_field,
                        format!(
                            "environment variable `{text}` holds {} bytes; {} needs a secret of at least {min} bytes",
                            secret.len(),
                            alg.name()
                        ),
                    );
                    return None;
                }
            }
            JwtKeySource::Secret {
                env: text.clone(),
                secret: Secret::new(secret),
            }
        }
    };
    let algorithms = algorithms?;
    if fine {
        if let Err(message) = verify_key(kid.as_deref(), &algorithms, &source) {
            report.at(value.span(), value_field, format!("`{text}`: {message}"));
            return None;
        }
    }
    Some(JwtKey {
        kid,
        algorithms,
        source,
    })
    .filter(|_| fine)
}

/// Builds the key the way the JWT validator will (PEM and JWKS parsed, key sizes and kinds
/// checked against the pinned algorithms, a JWKS URL parsed), so a key that cannot verify
/// anything is a located config error here rather than a failure when the runtime is built.
fn verify_key(
    kid: Option<&str>,
    algorithms: &[JwtAlg],
    source: &JwtKeySource,
) -> Result<(), String> {
    use crate::auth::jwks::{parse_jwks, JwksCache, JwksSettings, KeyKind, VerifyKey};
    use crate::auth::jwt::AlgSet;
    let pin = AlgSet::from_algs(algorithms);
    let kid = kid.map(str::to_string);
    let checked = match source {
        JwtKeySource::PublicKeyPem { pem, .. } => {
            VerifyKey::from_pem(kid, pem.as_bytes(), pin).map(drop)
        }
        JwtKeySource::Secret { secret, .. } => {
            VerifyKey::hmac(kid, secret.expose().as_bytes(), pin).map(drop)
        }
        JwtKeySource::JwksFile { json, .. } => parse_jwks(json.as_bytes(), pin).map(drop),
        JwtKeySource::JwksUrl { url, .. } => JwksCache::new(
            url,
            pin.intersect(KeyKind::PUBLIC_ALGS),
            JwksSettings::default(),
        )
        .map(drop),
    };
    checked.map_err(|e| e.to_string())
}

/// The key's `algorithms`, each known, listed once and fitting the key's source: HS* with a
/// secret only, and never with a public key or a JWKS (the algorithm-confusion guard).
fn algorithms(
    entry: &Spanned<JwtKeyEntry>,
    field: &str,
    kind: &str,
    report: &mut Reporter<'_>,
) -> Option<Vec<JwtAlg>> {
    let field = format!("{field}.algorithms");
    let Some(list) = &entry.get_ref().algorithms else {
        report.at(
            entry.span(),
            field,
            "missing: pin the algorithms this key may verify, e.g. algorithms = [\"RS256\"]",
        );
        return None;
    };
    if list.get_ref().is_empty() {
        report.at(list.span(), field, "list at least one algorithm");
        return None;
    }
    let mut fine = true;
    let mut algs: Vec<JwtAlg> = Vec::new();
    for (k, item) in list.get_ref().iter().enumerate() {
        let item_field = format!("{field}[{k}]");
        let name = item.get_ref();
        let Some(alg) = JwtAlg::from_name(name) else {
            let message = if name.eq_ignore_ascii_case("none") {
                "unsigned tokens (`none`) are never accepted".to_string()
            } else {
                format!(
                    "unknown algorithm `{name}`: expected one of {}",
                    JwtAlg::ALL.map(JwtAlg::name).join(", ")
                )
            };
            report.at(item.span(), item_field, message);
            fine = false;
            continue;
        };
        let misfit = if kind == "secret_env" {
            (!alg.is_hmac()).then(|| {
                format!(
                    "`{name}` verifies with a public key; a `secret_env` key takes only HS256, HS384 or HS512"
                )
            })
        } else if alg.is_hmac() {
            Some(format!(
                "`{name}` verifies with a shared secret (`secret_env`), never with a public key or JWKS (that would allow algorithm confusion)"
            ))
        } else if kind == "public_key_file"
            && algs
                .iter()
                .any(|a| a.is_rsa() != alg.is_rsa() || (!alg.is_rsa() && *a != alg))
        {
            Some(
                "one PEM key is either RSA (RS256, RS384, RS512, PS256) or one EC curve (ES256 or ES384): declare another key for the other"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(message) = misfit {
            report.at(item.span(), item_field, message);
            fine = false;
        } else if algs.contains(&alg) {
            report.at(item.span(), item_field, format!("`{name}` is listed twice"));
            fine = false;
        } else {
            algs.push(alg);
        }
    }
    fine.then_some(algs)
}

/// A key file's path: relative paths are relative to the config file's folder.
fn resolve_path(config: &Path, written: &str) -> PathBuf {
    config.parent().unwrap_or(Path::new("")).join(written)
}

fn read_key_file(
    path: &Path,
    value: &Spanned<String>,
    field: &str,
    report: &mut Reporter<'_>,
    read: ReadFile<'_>,
) -> Option<String> {
    match read(path) {
        Ok(text) => Some(text),
        Err(e) => {
            report.at(
                value.span(),
                field,
                format!("cannot read `{}`: {e}", value.get_ref()),
            );
            None
        }
    }
}

/// Checks that PEM text holds a public key and nothing private. (The key itself is parsed
/// when the validator is built.)
fn check_pem(pem: &str) -> Result<(), &'static str> {
    if !pem.contains("-----BEGIN ") {
        Err("is not a PEM file (no -----BEGIN line)")
    } else if pem.contains("PRIVATE KEY-----") {
        Err("holds a private key: give the public key only (e.g. `openssl pkey -pubout`)")
    } else if pem.contains("-----BEGIN CERTIFICATE-----") {
        Err("holds a certificate: give its public key (`openssl x509 -pubkey -noout`)")
    } else if !pem.contains("-----BEGIN PUBLIC KEY-----")
        && !pem.contains("-----BEGIN RSA PUBLIC KEY-----")
    {
        Err("holds no public key (expected -----BEGIN PUBLIC KEY-----)")
    } else {
        Ok(())
    }
}

/// Checks that JSON text is a JWKS: an object with a non-empty `keys` array of objects,
/// none of them carrying private material (`d`).
fn check_jwks(json: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("is not JSON: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .filter(|k| !k.is_empty() && k.iter().all(|key| key.is_object()))
        .ok_or("is not a JWKS: expected an object with a non-empty `keys` array of keys")?;
    if keys.iter().any(|key| key.get("d").is_some()) {
        return Err("holds a private key (a `d` member): publish public keys only".to_string());
    }
    Ok(())
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
    fn pem_and_jwks_texts_are_checked_lightly() {
        assert!(check_pem("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n").is_ok());
        assert!(check_pem("-----BEGIN RSA PUBLIC KEY-----\nx\n").is_ok());
        assert!(check_pem("hello").unwrap_err().contains("not a PEM"));
        assert!(check_pem("-----BEGIN PRIVATE KEY-----\n")
            .unwrap_err()
            .contains("private"));
        assert!(check_pem("-----BEGIN EC PRIVATE KEY-----\n")
            .unwrap_err()
            .contains("private"));
        assert!(check_pem("-----BEGIN CERTIFICATE-----\n")
            .unwrap_err()
            .contains("certificate"));
        assert!(check_jwks(r#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB"}]}"#).is_ok());
        assert!(check_jwks("{").unwrap_err().starts_with("is not JSON"));
        assert!(check_jwks(r#"{"keys":[]}"#)
            .unwrap_err()
            .contains("non-empty"));
        assert!(check_jwks(r#"[1]"#).unwrap_err().contains("non-empty"));
        assert!(check_jwks(r#"{"keys":[{"kty":"EC","d":"secret"}]}"#)
            .unwrap_err()
            .contains("private"));
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
