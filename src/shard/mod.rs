//! Shards: how N replicas split the objects between them.
//!
//! An object's shard is a stable hash (FNV-1a, 64 bits) of its
//! **namespace**, modulo the number of shards (`--shards`). Every reference
//! in Tether is same-namespace (a run's Workflow, the ExternalResources it
//! owns, the ones they reference, the TargetSystem they all use, the
//! Approvals of its gates), so all of them land on one shard: one replica
//! reconciles them and holds the TargetSystem's one rate limiter and
//! concurrency limit. Cluster-scoped Adapters belong to shard 0.
//!
//! The shard is the label [`LABEL`] on each namespaced object, so that a
//! replica's watches select their shards on the API server
//! ([`selector`]) and its caches hold only those objects. What a replica
//! holds is decided by [`fair_share`] over the live replicas (`lease`), and
//! unlabelled objects are labelled by the holder of shard 0 (`labeller`).
//!
//! This module is pure; `lease` and `labeller` talk to the API server.

pub mod labeller;
pub mod lease;

use std::collections::{BTreeMap, BTreeSet};

/// The label that says which shard an object belongs to.
pub const LABEL: &str = "tether.dev/shard";

/// The shard of the objects of `namespace`, among `count` shards.
pub fn of(namespace: &str, count: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = namespace
        .bytes()
        .fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME));
    u32::try_from(hash % u64::from(count.max(1))).unwrap_or(0)
}

/// The label selector of the objects of the shards `held` (non-empty).
pub fn selector(held: &BTreeSet<u32>) -> String {
    let list: Vec<String> = held.iter().map(u32::to_string).collect();
    format!("{LABEL} in ({})", list.join(","))
}

/// The label selector of objects without a valid shard label: no label, or
/// one that names no shard of `count`.
pub fn unlabelled(count: u32) -> String {
    let list: Vec<String> = (0..count.max(1)).map(|i| i.to_string()).collect();
    format!("{LABEL} notin ({})", list.join(","))
}

/// How many shards `me` should hold, given the live replicas `members`
/// (names; `me` among them or not): `count` split as evenly as possible,
/// the first replicas in name order taking one more when it does not
/// divide. Every replica computes the same split from the same list, and
/// the parts add up to `count`.
pub fn fair_share(count: u32, members: &BTreeSet<String>, me: &str) -> u32 {
    let mut all = members.clone();
    all.insert(me.to_owned());
    let n = u32::try_from(all.len()).unwrap_or(u32::MAX).max(1);
    let rank = u32::try_from(all.iter().position(|m| m == me).unwrap_or(0)).unwrap_or(0);
    count / n + u32::from(rank < count % n)
}

/// What a replica holding `held` does next, given the share it should hold
/// and the live holder of every shard (`holders`; absent: free).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: it holds its share, or no shard is free to take.
    Stay,
    /// Give up these shards (the highest it holds).
    Release(Vec<u32>),
    /// Try to take these free shards (the lowest).
    Acquire(Vec<u32>),
}

/// The next step towards the share (see [`Step`]).
pub fn next_step(count: u32, held: &BTreeSet<u32>, share: u32, holders: &BTreeMap<u32, String>) -> Step {
    let have = u32::try_from(held.len()).unwrap_or(u32::MAX);
    if have > share {
        let surplus = (have - share) as usize;
        return Step::Release(held.iter().rev().take(surplus).copied().collect());
    }
    let free: Vec<u32> = (0..count)
        .filter(|i| !held.contains(i) && !holders.contains_key(i))
        .take((share - have) as usize)
        .collect();
    if free.is_empty() {
        Step::Stay
    } else {
        Step::Acquire(free)
    }
}

/// Which objects this process reconciles: all of its scope (one shard, the
/// default), or those of the shards it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Shards in all (`--shards`).
    pub count: u32,
    /// Held shards; `None`: all of them (unsharded).
    pub shards: Option<BTreeSet<u32>>,
}

impl Held {
    /// Unsharded: every object of the scope.
    pub fn all() -> Self {
        Self { count: 1, shards: None }
    }

    /// The shards `shards` of `count`.
    pub fn some(count: u32, shards: BTreeSet<u32>) -> Self {
        Self {
            count,
            shards: Some(shards),
        }
    }

    /// Whether objects of `namespace` are this process's to reconcile.
    pub fn holds(&self, namespace: &str) -> bool {
        self.shards
            .as_ref()
            .is_none_or(|held| held.contains(&of(namespace, self.count)))
    }

    /// Whether this process reconciles cluster-scoped objects (Adapters).
    pub fn holds_cluster_scoped(&self) -> bool {
        self.shards.as_ref().is_none_or(|held| held.contains(&0))
    }

    /// The shard label an object of `namespace` is created with, when
    /// sharded (objects Tether creates carry it from the start: no second
    /// write to label them).
    pub fn label(&self, namespace: &str) -> Option<(&'static str, String)> {
        (self.count > 1).then(|| (LABEL, of(namespace, self.count).to_string()))
    }

    /// The label selector of the held shards, when sharded and holding some.
    pub fn selector(&self) -> Option<String> {
        self.shards.as_ref().filter(|s| !s.is_empty()).map(selector)
    }

    /// Holding no shard at all (a replica beyond the number of shards, or
    /// one that has not taken any yet).
    pub fn none(&self) -> bool {
        self.shards.as_ref().is_some_and(BTreeSet::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_namespace_maps_to_one_stable_shard_in_range() {
        // FNV-1a of "" is its offset basis; pinned values keep the mapping
        // stable across releases (a change would move every object).
        assert_eq!(of("", 1 << 31), (0xcbf2_9ce4_8422_2325_u64 % (1 << 31)) as u32);
        assert_eq!(of("team-a", 1), 0);
        for count in 1..10 {
            for ns in ["default", "team-a", "team-b", "payments", "x"] {
                assert!(of(ns, count) < count);
                assert_eq!(of(ns, count), of(ns, count));
            }
        }
        assert_eq!(of("anything", 0), 0, "zero shards count as one");
    }

    #[test]
    fn namespaces_spread_over_the_shards() {
        let mut seen = [0u32; 4];
        for i in 0..400 {
            seen[of(&format!("ns-{i}"), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|n| (60..140).contains(n)), "{seen:?}");
    }

    #[test]
    fn shares_split_the_shards_evenly_and_add_up() {
        let members = set(&["r1", "r2", "r3", "r4"]);
        let shares: Vec<u32> = members.iter().map(|m| fair_share(6, &members, m)).collect();
        assert_eq!(shares, [2, 2, 1, 1]);
        assert_eq!(
            fair_share(6, &set(&["r1", "r3"]), "r3"),
            3,
            "a dead replica's shards are shared out"
        );
        assert_eq!(fair_share(3, &set(&[]), "alone"), 3, "a replica alone holds them all");
        assert_eq!(
            fair_share(2, &set(&["a", "b", "c"]), "c"),
            0,
            "more replicas than shards"
        );
        for n in 1..8 {
            let members: BTreeSet<String> = (0..n).map(|i| format!("m{i}")).collect();
            let total: u32 = members.iter().map(|m| fair_share(5, &members, m)).sum();
            assert_eq!(total, 5, "{n} replicas");
        }
    }

    #[test]
    fn the_next_step_releases_the_surplus_or_takes_free_shards() {
        let held: BTreeSet<u32> = [0, 1, 2, 3].into();
        assert_eq!(next_step(4, &held, 2, &BTreeMap::new()), Step::Release(vec![3, 2]));
        let held: BTreeSet<u32> = [1].into();
        let holders = BTreeMap::from([(1, "me".to_owned()), (0, "other".to_owned())]);
        assert_eq!(next_step(4, &held, 3, &holders), Step::Acquire(vec![2, 3]));
        assert_eq!(next_step(4, &held, 1, &holders), Step::Stay);
        let all_taken = BTreeMap::from([(0, "a".to_owned()), (1, "me".to_owned())]);
        assert_eq!(next_step(2, &held, 2, &all_taken), Step::Stay, "nothing free: wait");
    }

    #[test]
    fn selectors_name_the_held_shards_and_the_unlabelled() {
        assert_eq!(selector(&[0, 2].into()), "tether.dev/shard in (0,2)");
        assert_eq!(unlabelled(3), "tether.dev/shard notin (0,1,2)");
        let held = Held::some(4, [of("team-a", 4)].into());
        assert!(held.holds("team-a"));
        assert_eq!(held.label("team-a"), Some((LABEL, of("team-a", 4).to_string())));
        assert_eq!(Held::all().label("team-a"), None, "unsharded objects carry no label");
        assert!(Held::all().holds("anything") && Held::all().holds_cluster_scoped());
        assert!(Held::some(4, BTreeSet::new()).none());
    }
}
