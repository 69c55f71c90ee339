//! Limits: the `limits` lists of products and deployments and `[server] client_ip_limits`,
//! checked (unit, scope for the owner, rate or quota and its period, burst, name) and turned
//! into [`Limit`]s, each with its stable name and limiter-state id.

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;

use super::check::{check_not_empty, line_of};
use super::error::Reporter;
use super::schema::{LimitEntry, SpannedList};
use crate::snapshot::access::{
    Limit, LimitIndex, LimitOwner, LimitScope, LimitUnit, LimitWindow, QuotaSpec, QuotaWindow,
    RateSpec,
};

/// The limits compiled so far; a limit's [`Limit::index`] is its position here.
pub(super) struct LimitTable {
    pub(super) limits: Vec<Limit>,
    /// Whether the file has a `[[jwt]]` (a `claim:` scope needs one).
    pub(super) has_jwt: bool,
    /// Whether TLS listeners verify client certificates (a `client_cert` scope needs it).
    pub(super) has_client_certs: bool,
}

impl LimitTable {
    /// Compiles one `limits` list, adding the good entries; returns their indexes. `label`
    /// names the owner (`product:standard`); each limit's name must be unique in the list.
    pub(super) fn compile(
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
                    let at = format!("{field}.name");
                    if !check_not_empty(report, name, &at) || !check_limit_name(report, name, &at) {
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
            // A given name labels the limit; else its place in the list does.
            let limit_label = match &e.name {
                Some(_) => format!("{label}/{name}"),
                None => format!("{label}#{j}"),
            };
            self.limits.push(Limit {
                index,
                id: limit_state_id(label, &name, &scope, unit, &window),
                name,
                label: limit_label,
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
                "\"subscription\", \"subscription_deployment\", \"claim:<name>\" or \"client_cert\"",
                "a product's limits",
            ),
            LimitOwner::Deployment(_) => (
                LimitScope::Deployment,
                "\"deployment\", \"subscription_deployment\", \"claim:<name>\" or \"client_cert\"",
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
            "client_cert" => LimitScope::ClientCert,
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
                    | LimitScope::ClientCert
            ),
            LimitOwner::Deployment(_) => matches!(
                scope,
                LimitScope::Deployment
                    | LimitScope::SubscriptionDeployment
                    | LimitScope::Claim(_)
                    | LimitScope::ClientCert
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
        if scope == LimitScope::ClientCert && !self.has_client_certs {
            report.at(
                value.span(),
                field,
                "a `client_cert` scope counts verified client certificates, but no [server.tls] client_ca_file asks for them",
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
        "second" => (Some(Duration::from_secs(1)), None),
        "minute" => (Some(Duration::from_secs(60)), None),
        "hour" => (None, Some(QuotaWindow::Hour)),
        "day" => (None, Some(QuotaWindow::Day)),
        "month" => (None, Some(QuotaWindow::Month)),
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
                    format!(
                        "a `rate` is per \"second\" or \"minute\"; for {} {per} use `quota`",
                        if per.starts_with('h') { "an" } else { "a" }
                    ),
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
            fine.then_some(LimitWindow::Rate(
                RateSpec::per(*rate.get_ref(), per).with_burst(burst),
            ))
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
            fine.then_some(LimitWindow::Quota(QuotaSpec {
                limit: *quota.get_ref(),
                window: per,
            }))
        }
    }
}

/// A limit's `name` must be at most 64 of `A-Z a-z 0-9 - _ . : /`: it labels the limit in
/// refusals and the `x-sluice-trace` header, so nothing that could end or split a header
/// field (RFC 9110 §5.5) gets in.
fn check_limit_name(report: &mut Reporter<'_>, name: &Spanned<String>, field: &str) -> bool {
    let text = name.get_ref();
    let ok = text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if !ok {
        report.at(
            name.span(),
            field,
            format!("limit name {text:?}: use at most 64 of A-Z a-z 0-9 - _ . : /"),
        );
    }
    ok
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
        LimitScope::ClientCert => "client_cert",
        LimitScope::Claim(claim) => return format!("{unit}:claim:{claim}:{}", amount(window)),
    };
    format!("{unit}:{scope}:{}", amount(window))
}

/// `AMOUNT/PER` of a window.
fn amount(window: LimitWindow) -> String {
    match window {
        LimitWindow::Rate(spec) => {
            let per = if spec.period == Duration::from_secs(1) {
                "second"
            } else {
                "minute"
            };
            format!("{}/{per}", spec.limit)
        }
        LimitWindow::Quota(spec) => {
            let per = match spec.window {
                QuotaWindow::Hour => "hour",
                QuotaWindow::Day => "day",
                QuotaWindow::Month => "month",
            };
            format!("{}/{per}", spec.limit)
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
    (owner, name, scope, unit).hash(&mut h);
    match window {
        LimitWindow::Rate(spec) => (0u8, spec.limit, spec.period, spec.burst).hash(&mut h),
        LimitWindow::Quota(spec) => {
            let per: u8 = match spec.window {
                QuotaWindow::Hour => 1,
                QuotaWindow::Day => 2,
                QuotaWindow::Month => 3,
            };
            (1u8, spec.limit, per).hash(&mut h);
        }
    }
    // The tables key by 32 bits: fold the hash rather than drop its upper half.
    let folded = h.finish();
    crate::limit::LimitId((folded ^ (folded >> 32)) as u32)
}
