//! Backend selection for one deployment's pool: smooth weighted round robin (nginx's
//! algorithm) inside the lowest-numbered priority group that has a usable member.
//!
//! A [`Balancer`] is per worker and per deployment, so it needs no atomics. Selection gives an
//! ordered list of candidates — the choice first, then the fallbacks — so the retry logic
//! never re-implements selection:
//! 1. the smooth-WRR pick among the usable members of the best group;
//! 2. the other usable members, by priority group, heavier first.
//!
//! No candidate at all when no member is usable: the request is then answered 429 at once
//! (`pool_exhausted`, see `upstream/forward.rs`) rather than sent to a backend that asked
//! for a pause or keeps failing.

use crate::snapshot::{BackendId, PoolMember};

/// Most members one pool may have (the config compiler refuses more); selection keeps a
/// bit per member in one `u128`.
pub const MAX_POOL_MEMBERS: usize = 128;

/// Per-worker selection state for one pool.
#[derive(Debug, Clone)]
pub struct Balancer {
    /// Members sorted by priority (stable, so config order breaks ties).
    members: Vec<PoolMember>,
    /// Smooth WRR running weights, one per member.
    current: Vec<i64>,
    /// Member indices in fallback order: by priority group, heavier first, then config
    /// order. Depends only on the config, so it is computed once.
    fallback: Vec<usize>,
}

impl Balancer {
    /// A balancer for `pool`.
    pub fn new(pool: &[PoolMember]) -> Self {
        let mut members = pool.to_vec();
        members.sort_by_key(|m| m.priority);
        let current = vec![0; members.len()];
        let mut fallback: Vec<usize> = (0..members.len()).collect();
        fallback.sort_by_key(|&i| (members[i].priority, u32::MAX - members[i].weight));
        Self {
            members,
            current,
            fallback,
        }
    }

    /// A balancer for `pool` that goes on from `previous`'s smooth-WRR cursor, for a reload
    /// that left the pool's shape alone (the same members by name, weight and priority, in
    /// the same order). The members themselves come from `pool`: a reload may renumber the
    /// backends (blocks reordered or added), and `previous` holds the old numbers. A cursor
    /// of another length is not carried.
    pub fn resume(pool: &[PoolMember], previous: &Balancer) -> Self {
        let mut next = Self::new(pool);
        if next.current.len() == previous.current.len() {
            next.current.clone_from(&previous.current);
        }
        next
    }

    /// Writes the candidates for one request into `out` (cleared first), best first:
    /// the members `usable(backend)` accepts (out of cool-down, not ejected). Empty when
    /// there are none.
    pub fn select(&mut self, usable: impl Fn(BackendId) -> bool, out: &mut Vec<BackendId>) {
        out.clear();
        let n = self.members.len();
        let mut usable_mask: u128 = 0;
        for (i, m) in self.members.iter().enumerate().take(MAX_POOL_MEMBERS) {
            if usable(m.backend) {
                usable_mask |= 1 << i;
            }
        }
        if usable_mask == 0 {
            return;
        }
        let first = usable_mask.trailing_zeros() as usize;
        let group = self.members[first].priority;
        // Smooth weighted round robin within the group, over its usable members.
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for i in first..n.min(MAX_POOL_MEMBERS) {
            let m = self.members[i];
            if m.priority != group {
                break;
            }
            if usable_mask & (1 << i) == 0 {
                continue;
            }
            let w = i64::from(m.weight);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let Some(chosen) = best else { return };
        self.current[chosen] -= total;
        out.push(self.members[chosen].backend);
        // Fallbacks: the other usable members in the precomputed order. The config compiler
        // refuses a backend listed twice in a pool, so no backend repeats.
        for &i in &self.fallback {
            if i != chosen && i < MAX_POOL_MEMBERS && usable_mask & (1 << i) != 0 {
                out.push(self.members[i].backend);
            }
        }
    }

    /// The pool's members, sorted by priority.
    pub fn members(&self) -> &[PoolMember] {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(backend: BackendId, weight: u32, priority: u32) -> PoolMember {
        PoolMember {
            backend,
            weight,
            priority,
        }
    }

    fn picks(b: &mut Balancer, n: usize, usable: impl Fn(BackendId) -> bool + Copy) -> Vec<usize> {
        let mut counts = vec![0; 8];
        let mut out = Vec::new();
        for _ in 0..n {
            b.select(usable, &mut out);
            counts[out[0]] += 1;
        }
        counts
    }

    #[test]
    fn weights_split_exactly_and_smoothly() {
        let mut b = Balancer::new(&[member(0, 3, 0), member(1, 1, 0)]);
        let counts = picks(&mut b, 400, |_| true);
        assert_eq!(&counts[..2], &[300, 100]);
        // Smooth: the light member is never starved for long (nginx order a a b a).
        let mut out = Vec::new();
        let seq: Vec<_> = (0..4)
            .map(|_| {
                b.select(|_| true, &mut out);
                out[0]
            })
            .collect();
        assert_eq!(seq.iter().filter(|&&x| x == 1).count(), 1);
    }

    #[test]
    fn lower_priority_group_only_when_first_has_no_usable_member() {
        let mut b = Balancer::new(&[member(2, 1, 1), member(0, 1, 0), member(1, 1, 0)]);
        assert_eq!(&picks(&mut b, 100, |_| true)[..3], &[50, 50, 0]);
        assert_eq!(&picks(&mut b, 100, |id| id != 0)[..3], &[0, 100, 0]);
        assert_eq!(&picks(&mut b, 100, |id| id == 2)[..3], &[0, 0, 100]);
    }

    #[test]
    fn fallbacks_follow_the_choice_in_priority_order() {
        let mut b = Balancer::new(&[member(0, 1, 0), member(1, 5, 1), member(2, 1, 1)]);
        let mut out = Vec::new();
        b.select(|_| true, &mut out);
        assert_eq!(out, vec![0, 1, 2]);
        b.select(|id| id != 1, &mut out);
        assert_eq!(out, vec![0, 2]);
    }

    #[test]
    fn a_resumed_balancer_keeps_the_cursor_and_takes_the_new_backend_numbers() {
        let mut old = Balancer::new(&[member(0, 1, 0), member(1, 1, 0)]);
        let mut out = Vec::new();
        old.select(|_| true, &mut out);
        assert_eq!(out[0], 0);
        // The same pool after a reload that renumbered its backends (0 → 5, 1 → 4).
        let mut next = Balancer::resume(&[member(5, 1, 0), member(4, 1, 0)], &old);
        next.select(|_| true, &mut out);
        assert_eq!(
            out,
            vec![4, 5],
            "the rotation goes on, with the new numbers"
        );
    }

    #[test]
    fn nothing_usable_gives_no_candidate() {
        let mut b = Balancer::new(&[member(0, 1, 0), member(1, 1, 0), member(2, 1, 1)]);
        let mut out = vec![7];
        b.select(|_| false, &mut out);
        assert!(out.is_empty());
    }
}
