//! Routing: `sluice::route::route` on an OpenAI path and an Azure deployment path with its
//! `api-version` query, against a naive `HashMap<String, Route>` holding every exact target
//! the benchmark sends (and the other operations', so the table has a realistic size). The
//! naive table cannot serve real traffic — any deployment name or query string misses — so
//! it is the price of one hashed lookup, the floor for "a table lookup" routing.

#![allow(
    missing_docs,
    reason = "criterion_group! defines a public fn that cannot carry a doc comment"
)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::route::{route, DeploymentRef, Operation, Route, RouteError};

const OPENAI_TARGET: &str = "/v1/chat/completions";
const AZURE_TARGET: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";

/// Every exact target of the OpenAI and Azure paths for a few deployments, each with the
/// route `route` gives it.
fn naive_table() -> HashMap<String, Route<'static>> {
    let ops = [
        Operation::ChatCompletions,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Responses,
        Operation::Models,
    ];
    let mut table = HashMap::new();
    for op in ops {
        let deployment = match op {
            Operation::Models => DeploymentRef::None,
            _ => DeploymentRef::BodyModel,
        };
        let route = Route {
            operation: op,
            deployment,
        };
        table.insert(format!("/v1/{}", op.path_suffix()), route);
        table.insert(format!("/openai/v1/{}", op.path_suffix()), route);
    }
    for name in ["gpt-4o", "gpt-4o-mini", "o3-mini", "text-embedding-3-small"] {
        for op in [
            Operation::ChatCompletions,
            Operation::Completions,
            Operation::Embeddings,
        ] {
            let target = format!(
                "/openai/deployments/{name}/{}?api-version=2024-10-21",
                op.path_suffix()
            );
            table.insert(
                target,
                Route {
                    operation: op,
                    deployment: DeploymentRef::Path(name),
                },
            );
        }
    }
    table
}

/// The naive router: one lookup of the whole target, then the method check `route` makes.
fn naive_route<'t>(
    table: &HashMap<String, Route<'t>>,
    method: &str,
    target: &str,
) -> Result<Route<'t>, RouteError> {
    let found = *table.get(target).ok_or(RouteError::NotFound)?;
    if method != found.operation.method() {
        return Err(RouteError::MethodNotAllowed(found.operation.method()));
    }
    Ok(found)
}

fn routing(c: &mut Criterion) {
    let table = naive_table();
    for (name, target) in [("openai", OPENAI_TARGET), ("azure", AZURE_TARGET)] {
        // Both routers must agree on what they are timed on.
        assert!(route("POST", target).is_ok());
        assert_eq!(route("POST", target), naive_route(&table, "POST", target));

        let mut group = c.benchmark_group(format!("route/{name}"));
        group.bench_function("sluice_route", |b| {
            b.iter(|| route(black_box("POST"), black_box(target)))
        });
        group.bench_function("naive_hashmap", |b| {
            b.iter(|| naive_route(&table, black_box("POST"), black_box(target)))
        });
        group.finish();
    }
}

criterion_group!(benches, routing);
criterion_main!(benches);
