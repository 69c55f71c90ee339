//! Pool selection: `Balancer::select` (smooth weighted round robin within the best priority
//! group, then the fallbacks in order) for pools of 2 and 8 members, against a naive
//! selector that recomputes a weighted random pick by a linear scan on every call and lists
//! the other usable members after it, unsorted. Both write the whole candidate list, as the
//! forwarding code needs it.

#![allow(
    missing_docs,
    reason = "criterion_group! defines a public fn that cannot carry a doc comment"
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::balance::Balancer;
use sluice::snapshot::{BackendId, PoolMember};

/// The naive selector: no state but its random generator.
struct NaiveSelector {
    members: Vec<PoolMember>,
    rng: u64,
}

impl NaiveSelector {
    fn new(pool: &[PoolMember]) -> Self {
        let mut members = pool.to_vec();
        members.sort_by_key(|m| m.priority);
        Self {
            members,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn select(&mut self, usable: impl Fn(BackendId) -> bool, out: &mut Vec<BackendId>) {
        out.clear();
        let Some(group) = self
            .members
            .iter()
            .find(|m| usable(m.backend))
            .map(|m| m.priority)
        else {
            out.extend(self.members.iter().map(|m| m.backend));
            return;
        };
        let in_group = |m: &&PoolMember| m.priority == group && usable(m.backend);
        let total: u64 = self
            .members
            .iter()
            .filter(in_group)
            .map(|m| u64::from(m.weight))
            .sum();
        // xorshift64: enough randomness for a baseline, and no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mut r = self.rng % total.max(1);
        let mut chosen = None;
        for m in self.members.iter().filter(in_group) {
            if r < u64::from(m.weight) {
                chosen = Some(m.backend);
                break;
            }
            r -= u64::from(m.weight);
        }
        let Some(chosen) = chosen else { return };
        out.push(chosen);
        out.extend(
            self.members
                .iter()
                .filter(|m| m.backend != chosen && usable(m.backend))
                .map(|m| m.backend),
        );
    }
}

fn member(backend: BackendId, weight: u32, priority: u32) -> PoolMember {
    PoolMember {
        backend,
        weight,
        priority,
    }
}

fn selection(c: &mut Criterion) {
    let pools = [
        ("2_members", vec![member(0, 3, 0), member(1, 1, 0)]),
        (
            // Six primaries of mixed weight and two lower-priority spill-over members.
            "8_members",
            vec![
                member(0, 4, 0),
                member(1, 2, 0),
                member(2, 1, 0),
                member(3, 1, 0),
                member(4, 2, 0),
                member(5, 1, 0),
                member(6, 1, 1),
                member(7, 1, 1),
            ],
        ),
    ];
    for (name, pool) in pools {
        let mut balancer = Balancer::new(&pool);
        let mut naive = NaiveSelector::new(&pool);
        let mut out = Vec::with_capacity(pool.len());

        // Both list every member, the choice first.
        balancer.select(|_| true, &mut out);
        assert_eq!(out.len(), pool.len());
        naive.select(|_| true, &mut out);
        assert_eq!(out.len(), pool.len());

        let mut group = c.benchmark_group(format!("balance/{name}"));
        group.bench_function("sluice_smooth_wrr", |b| {
            b.iter(|| {
                balancer.select(|id| black_box(id) < 64, &mut out);
                out.first().copied()
            })
        });
        group.bench_function("naive_weighted_random", |b| {
            b.iter(|| {
                naive.select(|id| black_box(id) < 64, &mut out);
                out.first().copied()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, selection);
criterion_main!(benches);
