//! Placement: which nodes hold a replica of each container, and which
//! nodes vote in the metadata group.
//!
//! The metadata leader computes it from the node list and the replication
//! factor and records it in `meta`; container leaders then move their
//! group's members to match, one raft conf change at a time. It is a pure
//! function of the previous placement, so every replica that can stay
//! stays: a node joining or leaving moves only about its share.
//!
//! It never places two replicas of a container on one node, and never
//! places more replicas than there are nodes.

use std::collections::{BTreeMap, BTreeSet};

/// Voters of the metadata group, at most; every other node follows it as a
/// learner (each node reads stream metadata locally).
pub const META_VOTERS_MAX: usize = 3;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub replication_factor: u32,
    /// Voters of `meta`, in the order they were chosen.
    pub meta_voters: Vec<u64>,
    /// The replicas of container `i` at index `i`.
    pub containers: Vec<Vec<u64>>,
}

impl Placement {
    /// The nodes that should hold container `id` (empty: not placed yet).
    pub fn replicas(&self, id: u32) -> &[u64] {
        self.containers.get(id as usize).map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }
}

/// The placement for `nodes` that keeps as much of `prev` as it can: each
/// container on `min(replication_factor, nodes)` distinct nodes, replica
/// counts per node differing by at most one.
pub fn place(
    prev: &Placement,
    nodes: &BTreeSet<u64>,
    replication_factor: u32,
    containers: u32,
) -> Placement {
    let order: Vec<u64> = nodes.iter().copied().collect();
    let want = (replication_factor.max(1) as usize).min(order.len());
    let mut load: BTreeMap<u64, usize> = order.iter().map(|&n| (n, 0)).collect();
    let mut out: Vec<Vec<u64>> = (0..containers)
        .map(|c| {
            let mut kept: Vec<u64> = Vec::with_capacity(want);
            for &n in prev.replicas(c) {
                if nodes.contains(&n) && !kept.contains(&n) && kept.len() < want {
                    kept.push(n);
                }
            }
            kept
        })
        .collect();
    for r in &out {
        for n in r {
            *load.entry(*n).or_default() += 1;
        }
    }
    for (c, replicas) in out.iter_mut().enumerate() {
        while replicas.len() < want {
            // Least loaded first; ties rotate with the container, so equal
            // nodes take turns.
            let pick = order
                .iter()
                .enumerate()
                .filter(|(_, n)| !replicas.contains(n))
                .min_by_key(|(i, n)| (load[n], (i + order.len() - c % order.len()) % order.len()))
                .map(|(_, &n)| n);
            let Some(n) = pick else { break };
            replicas.push(n);
            *load.entry(n).or_default() += 1;
        }
    }
    // Even out: move one replica from the most to the least loaded node
    // while they differ by more than one. Each move narrows the gap, so
    // this ends; the bound is a backstop.
    for _ in 0..containers as usize * order.len().max(1) {
        let (Some((&most, &high)), Some((&least, &low))) = (
            load.iter().max_by_key(|(&n, &l)| (l, std::cmp::Reverse(n))),
            load.iter().min_by_key(|(&n, &l)| (l, n)),
        ) else {
            break;
        };
        if high <= low + 1 {
            break;
        }
        let Some(r) = out
            .iter_mut()
            .find(|r| r.contains(&most) && !r.contains(&least))
        else {
            break;
        };
        for n in r.iter_mut() {
            if *n == most {
                *n = least;
            }
        }
        *load.entry(most).or_default() -= 1;
        *load.entry(least).or_default() += 1;
    }
    let mut meta_voters: Vec<u64> = prev
        .meta_voters
        .iter()
        .copied()
        .filter(|n| nodes.contains(n))
        .take(META_VOTERS_MAX)
        .collect();
    for &n in &order {
        if meta_voters.len() >= META_VOTERS_MAX.min(order.len()) {
            break;
        }
        if !meta_voters.contains(&n) {
            meta_voters.push(n);
        }
    }
    Placement {
        replication_factor,
        meta_voters,
        containers: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn loads(p: &Placement) -> BTreeMap<u64, usize> {
        let mut l = BTreeMap::new();
        for r in &p.containers {
            for n in r {
                *l.entry(*n).or_default() += 1;
            }
        }
        l
    }

    fn check(p: &Placement, nodes: &BTreeSet<u64>, rf: usize) {
        for r in &p.containers {
            assert_eq!(r.len(), rf.min(nodes.len()), "{p:?}");
            let distinct: BTreeSet<u64> = r.iter().copied().collect();
            assert_eq!(distinct.len(), r.len(), "a node twice: {p:?}");
            assert!(distinct.is_subset(nodes), "{p:?}");
        }
        let l = loads(p);
        let (lo, hi) = (l.values().min().copied(), l.values().max().copied());
        assert!(hi.unwrap_or(0) <= lo.unwrap_or(0) + 1, "uneven {l:?}");
        assert_eq!(p.meta_voters.len(), nodes.len().min(META_VOTERS_MAX));
    }

    fn moved(a: &Placement, b: &Placement) -> usize {
        a.containers
            .iter()
            .zip(&b.containers)
            .map(|(x, y)| y.iter().filter(|n| !x.contains(n)).count())
            .sum()
    }

    #[test]
    fn every_container_on_rf_distinct_nodes_evenly() {
        for n in 1..=7u64 {
            let ids: Vec<u64> = (1..=n).collect();
            for rf in 1..=4 {
                for containers in [1, 4, 8, 13] {
                    let p = place(&Placement::default(), &nodes(&ids), rf, containers);
                    check(&p, &nodes(&ids), rf as usize);
                }
            }
        }
    }

    #[test]
    fn three_nodes_rf3_is_everyone_and_stable() {
        let all = nodes(&[1, 2, 3]);
        let p = place(&Placement::default(), &all, 3, 4);
        assert!(p.containers.iter().all(|r| nodes(r) == all));
        assert_eq!(place(&p, &all, 3, 4), p, "recomputing changes nothing");
        assert_eq!(p.meta_voters, vec![1, 2, 3]);
    }

    #[test]
    fn a_join_or_leave_moves_only_a_share() {
        let three = nodes(&[1, 2, 3]);
        let four = nodes(&[1, 2, 3, 4]);
        let p3 = place(&Placement::default(), &three, 3, 8);
        let p4 = place(&p3, &four, 3, 8);
        check(&p4, &four, 3);
        // 24 replicas over 4 nodes: node 4 takes 6, nothing else moves.
        assert_eq!(moved(&p3, &p4), 6);
        assert_eq!(loads(&p4)[&4], 6);
        assert_eq!(p4.meta_voters, vec![1, 2, 3], "meta voters stay");

        let without_2 = nodes(&[1, 3, 4]);
        let p = place(&p4, &without_2, 3, 8);
        check(&p, &without_2, 3);
        assert!(p.containers.iter().all(|r| !r.contains(&2)));
        assert_eq!(moved(&p4, &p), 6, "only node 2's replicas move");
        assert_eq!(p.meta_voters, vec![1, 3, 4]);
    }

    #[test]
    fn fewer_nodes_than_the_factor_places_on_all() {
        let two = nodes(&[5, 9]);
        let p = place(&Placement::default(), &two, 3, 4);
        check(&p, &two, 3);
        assert!(p.containers.iter().all(|r| r.len() == 2));
        assert_eq!(
            place(&Placement::default(), &BTreeSet::new(), 3, 2).containers,
            vec![Vec::<u64>::new(); 2]
        );
    }
}
