//! A deployment's `cache = { ttl, max_entries, max_bytes, per_subscription, nondeterministic,
//! ignore_fields }`: compiled into [`CacheSettings`], and the running deployment's store
//! carried over a reload that changes neither them nor the backends answering
//! ([`carry_over`]).

use std::sync::Arc;

use toml::Spanned;

use super::check::{parse_duration, parse_size};
use super::compile::same_answers;
use super::error::Reporter;
use super::schema::CacheSection;
use crate::cache::{CacheSettings, ResponseCache};
use crate::json_name::folds_to;
use crate::snapshot::{Backend, BackendKind, Deployment, PoolMember, Snapshot};

/// The smallest `max_bytes`: one ordinary answer with its key.
const MIN_BYTES: u64 = 1024;

/// Request fields that change the answer (OpenAI chat, completions and embeddings API
/// references, and `top_k`, which OpenAI-compatible servers take): never ignorable, in any
/// case a backend may fold to them (`json_name`), or one request's answer would be served
/// to another.
const ANSWER_FIELDS: &[&str] = &[
    "messages",
    "prompt",
    "input",
    "model",
    "suffix",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "temperature",
    "top_p",
    "seed",
    "n",
    "best_of",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "echo",
    "dimensions",
    "encoding_format",
    "reasoning_effort",
    "modalities",
    "audio",
    "prediction",
    "parallel_tool_calls",
    "verbosity",
    "web_search_options",
    "top_k",
];

/// Compiles deployment `name`'s `cache` (at `field`, e.g. `deployment[0].cache`): its store,
/// the one `previous` (the running snapshot) has for `name` when its settings are the same,
/// else a new empty one. `None` without a `cache` (or with errors, reported).
pub(crate) fn compile(
    section: Option<&Spanned<CacheSection>>,
    field: &str,
    report: &mut Reporter<'_>,
) -> Option<Arc<ResponseCache>> {
    let section = section?.get_ref();
    let field = format!("{field}.cache");
    let defaults = CacheSettings::default();
    let mut ok = true;
    let ttl = match &section.ttl {
        None => defaults.ttl,
        Some(v) => match parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                report.at(v.span(), format!("{field}.ttl"), "must be more than 0");
                ok = false;
                defaults.ttl
            }
            Err(e) => {
                report.at(v.span(), format!("{field}.ttl"), e);
                ok = false;
                defaults.ttl
            }
        },
    };
    let max_entries = match &section.max_entries {
        None => defaults.max_entries,
        Some(v) if *v.get_ref() == 0 => {
            report.at(
                v.span(),
                format!("{field}.max_entries"),
                "must be 1 or more",
            );
            ok = false;
            defaults.max_entries
        }
        Some(v) => *v.get_ref(),
    };
    let max_bytes = match &section.max_bytes {
        None => defaults.max_bytes,
        Some(v) => match parse_size(v.get_ref()) {
            Ok(n) if n >= MIN_BYTES => n,
            Ok(_) => {
                report.at(
                    v.span(),
                    format!("{field}.max_bytes"),
                    "must be at least 1KiB",
                );
                ok = false;
                defaults.max_bytes
            }
            Err(e) => {
                report.at(v.span(), format!("{field}.max_bytes"), e);
                ok = false;
                defaults.max_bytes
            }
        },
    };
    let ignore_fields = match &section.ignore_fields {
        None => defaults.ignore_fields,
        Some(list) => {
            for (i, f) in list.get_ref().iter().enumerate() {
                if f.get_ref().is_empty() {
                    report.at(
                        f.span(),
                        format!("{field}.ignore_fields[{i}]"),
                        "must not be empty",
                    );
                    ok = false;
                } else if ANSWER_FIELDS
                    .iter()
                    .any(|a| folds_to(f.get_ref().as_bytes(), a.as_bytes()))
                {
                    report.at(
                        f.span(),
                        format!("{field}.ignore_fields[{i}]"),
                        format!(
                            "`{}` changes the answer: ignoring it would serve one request's answer to another",
                            f.get_ref()
                        ),
                    );
                    ok = false;
                }
            }
            list.get_ref().iter().map(|f| f.get_ref().clone()).collect()
        }
    };
    if !ok {
        return None;
    }
    let settings = CacheSettings {
        ttl,
        max_entries,
        max_bytes,
        per_subscription: section
            .per_subscription
            .unwrap_or(defaults.per_subscription),
        nondeterministic: section
            .nondeterministic
            .unwrap_or(defaults.nondeterministic),
        ignore_fields,
    };
    Some(Arc::new(ResponseCache::new(settings)))
}

/// Keeps the running store of each cached deployment a reload changes neither the cache
/// settings of nor what answers it — the same backends, at the same targets with the same
/// models and API versions (`same_answers`), whatever their weights, priorities and
/// credentials — so the answers stored before still hold. Any other change starts the
/// deployment on an empty cache: an answer from the backend it no longer uses is never
/// served for it.
pub(super) fn carry_over(
    deployments: &mut [Deployment],
    backends: &[Backend],
    previous: Option<&Snapshot>,
) {
    let Some(previous) = previous else {
        return;
    };
    for deployment in deployments {
        let Some(cache) = &mut deployment.cache else {
            continue;
        };
        let Some(old) = previous.deployments.get(&deployment.name) else {
            continue;
        };
        let Some(old_cache) = &old.cache else {
            continue;
        };
        let (now, before) = (
            kinds(&deployment.pool, backends),
            kinds(&old.pool, &previous.backends),
        );
        let same_pool = now.len() == before.len()
            && now
                .iter()
                .all(|k| before.iter().any(|o| same_answers(k, o)))
            && before
                .iter()
                .all(|o| now.iter().any(|k| same_answers(k, o)));
        if old_cache.settings() == cache.settings() && same_pool {
            *cache = Arc::clone(old_cache);
        }
    }
}

/// The kinds (targets) of a pool's backends.
fn kinds<'a>(pool: &[PoolMember], all: &'a [Backend]) -> Vec<&'a BackendKind> {
    pool.iter()
        .filter_map(|m| all.get(m.backend))
        .map(|b| &b.kind)
        .collect()
}
