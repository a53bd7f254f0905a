//! IP -> name, per workload, from its own DNS answers: a flow to an address
//! the workload just resolved carries the name it asked for. An entry lives
//! for the answer's TTL (at most a day) plus a grace period (clients keep
//! using an address somewhat past its TTL, and a long connection outlives
//! it), and the cache is bounded as a whole and per owner: when full, the
//! entries closest to expiry make room, a tenth of the bound at a time so a
//! full cache does not pay a scan per insert.

use std::{collections::HashMap, net::IpAddr};

/// Longest TTL honoured: a longer one would let a single answer pin an entry
/// (and, being far from expiry, keep it from ever being evicted).
pub const MAX_TTL_S: u32 = 86_400;

/// Whose answers: a pod (all its containers share a network namespace) or a
/// cgroup that is not a pod's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Pod(String),
    Cgroup(u64),
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    expires_ns: u64,
}

type Names = HashMap<IpAddr, Entry>;

pub struct FqdnCache {
    owners: HashMap<Owner, Names>,
    len: usize,
    max_entries: usize,
    max_per_owner: usize,
    grace_ns: u64,
    /// Entries pushed out before expiry because the cache was full.
    pub evicted: u64,
    /// Entries pushed out before expiry because their owner had
    /// `max_per_owner` (one busy pod does not crowd out the others).
    pub owner_evicted: u64,
}

/// RFC 2181 section 8: a TTL with the top bit set is read as 0.
fn ttl_ns(ttl_s: u32) -> u64 {
    let ttl = if ttl_s & 0x8000_0000 != 0 { 0 } else { ttl_s.min(MAX_TTL_S) };
    u64::from(ttl) * 1_000_000_000
}

/// Drops expired entries; returns how many.
fn prune_names(names: &mut Names, now_ns: u64) -> usize {
    let before = names.len();
    names.retain(|_, e| e.expires_ns >= now_ns);
    before - names.len()
}

impl FqdnCache {
    pub fn new(max_entries: usize, max_per_owner: usize, grace: std::time::Duration) -> Self {
        Self {
            owners: HashMap::new(),
            len: 0,
            max_entries,
            max_per_owner,
            grace_ns: grace.as_nanos().min(u128::from(u64::MAX)) as u64,
            evicted: 0,
            owner_evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `owner` resolved `name` to `ip` at `ts_ns` with `ttl_s`.
    pub fn insert(&mut self, owner: Owner, ip: IpAddr, name: &str, ts_ns: u64, ttl_s: u32) {
        if self.max_entries == 0 || self.max_per_owner == 0 {
            return;
        }
        let expires_ns = ts_ns.saturating_add(ttl_ns(ttl_s)).saturating_add(self.grace_ns);
        if !self.owners.get(&owner).is_some_and(|m| m.contains_key(&ip)) {
            if self.owned(&owner) >= self.max_per_owner {
                if let Some(m) = self.owners.get_mut(&owner) {
                    self.len -= prune_names(m, ts_ns);
                }
                if self.owned(&owner) >= self.max_per_owner {
                    self.owner_evicted += self.evict(Some(&owner), (self.max_per_owner / 10).max(1));
                }
            }
            if self.len >= self.max_entries {
                self.prune(ts_ns);
                if self.len >= self.max_entries {
                    self.evicted += self.evict(None, (self.max_entries / 10).max(1));
                }
            }
        }
        let entry = Entry { name: name.to_string(), expires_ns };
        if self.owners.entry(owner).or_default().insert(ip, entry).is_none() {
            self.len += 1;
        }
    }

    fn owned(&self, owner: &Owner) -> usize {
        self.owners.get(owner).map_or(0, HashMap::len)
    }

    /// Removes the `n` entries (of `only`, or of everyone) closest to expiry;
    /// returns how many went.
    fn evict(&mut self, only: Option<&Owner>, n: usize) -> u64 {
        let mut expiries: Vec<u64> = match only {
            Some(o) => self.owners.get(o).map(|m| m.values().map(|e| e.expires_ns).collect()).unwrap_or_default(),
            None => self.owners.values().flat_map(|m| m.values().map(|e| e.expires_ns)).collect(),
        };
        let n = n.min(expiries.len());
        let Some(nth) = n.checked_sub(1) else { return 0 };
        let (closer, limit, _) = expiries.select_nth_unstable(nth);
        let limit = *limit;
        // Entries expiring at `limit` itself go only as far as `n` needs: the
        // addresses of one answer share an expiry, and taking every entry up
        // to and including the limit could empty the cache.
        let mut ties = n - closer.iter().filter(|e| **e < limit).count();
        let mut removed = 0;
        let mut sweep = |m: &mut Names| {
            m.retain(|_, e| {
                let go = if e.expires_ns == limit && ties > 0 {
                    ties -= 1;
                    true
                } else {
                    e.expires_ns < limit
                };
                removed += u64::from(go);
                !go
            })
        };
        match only {
            Some(o) => {
                if let Some(m) = self.owners.get_mut(o) {
                    sweep(m);
                    if m.is_empty() {
                        self.owners.remove(o);
                    }
                }
            }
            None => {
                self.owners.values_mut().for_each(&mut sweep);
                self.owners.retain(|_, m| !m.is_empty());
            }
        }
        self.len -= removed as usize;
        removed
    }

    /// The name `owner` last resolved `ip` from, if still valid at `now_ns`.
    pub fn lookup(&self, owner: &Owner, ip: IpAddr, now_ns: u64) -> Option<&str> {
        let e = self.owners.get(owner)?.get(&ip)?;
        (e.expires_ns >= now_ns).then_some(e.name.as_str())
    }

    /// Drops expired entries.
    pub fn prune(&mut self, now_ns: u64) {
        let mut removed = 0;
        self.owners.retain(|_, m| {
            removed += prune_names(m, now_ns);
            !m.is_empty()
        });
        self.len -= removed;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const S: u64 = 1_000_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn names_are_per_owner_and_live_for_ttl_plus_grace() {
        let mut c = FqdnCache::new(100, 100, Duration::from_secs(30));
        let pod = Owner::Pod("u1".into());
        c.insert(pod.clone(), ip(1), "api.example.com", 10 * S, 60);
        assert_eq!(c.lookup(&pod, ip(1), 11 * S), Some("api.example.com"));
        assert_eq!(c.lookup(&Owner::Pod("u2".into()), ip(1), 11 * S), None, "another pod did not resolve it");
        assert_eq!(c.lookup(&pod, ip(1), 100 * S), Some("api.example.com"), "within TTL + grace");
        assert_eq!(c.lookup(&pod, ip(1), 101 * S), None);
        // a newer answer replaces the name
        c.insert(pod.clone(), ip(1), "cdn.example.net", 200 * S, 5);
        assert_eq!(c.lookup(&pod, ip(1), 201 * S), Some("cdn.example.net"));
        c.prune(300 * S);
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_those_closest_to_expiry_and_counts_them() {
        let mut c = FqdnCache::new(10, 1000, Duration::ZERO);
        let o = Owner::Cgroup(3);
        for i in 0..10u8 {
            c.insert(o.clone(), ip(i), "n", 0, u32::from(i) + 100);
        }
        c.insert(o.clone(), ip(200), "new", 0, 1000);
        assert!(c.len() <= 10);
        assert!(c.evicted >= 1);
        assert_eq!(c.lookup(&o, ip(200), 0), Some("new"));
        assert_eq!(c.lookup(&o, ip(0), 0), None, "the entry closest to expiry went first");
        assert_eq!(c.lookup(&o, ip(9), 0), Some("n"));
    }

    #[test]
    fn ties_at_the_cut_off_do_not_empty_the_cache() {
        let mut c = FqdnCache::new(20, 1000, Duration::ZERO);
        let o = Owner::Cgroup(3);
        // one answer's worth of addresses: the same expiry for all
        for i in 0..20u8 {
            c.insert(o.clone(), ip(i), "n", 0, 60);
        }
        c.insert(o.clone(), ip(200), "new", 0, 60);
        assert_eq!((c.len(), c.evicted), (19, 2), "a tenth made room, not every entry with the same expiry");
        assert_eq!(c.lookup(&o, ip(200), 0), Some("new"));
    }

    #[test]
    fn ttls_are_clamped() {
        let mut c = FqdnCache::new(10, 1000, Duration::ZERO);
        let o = Owner::Cgroup(3);
        c.insert(o.clone(), ip(1), "forever", 0, u32::MAX >> 1);
        c.insert(o.clone(), ip(2), "negative", 0, 0x8000_0001);
        assert_eq!(c.lookup(&o, ip(1), 86_400 * S), Some("forever"));
        assert_eq!(c.lookup(&o, ip(1), 86_401 * S), None, "a day at most");
        assert_eq!(c.lookup(&o, ip(2), 0), Some("negative"));
        assert_eq!(c.lookup(&o, ip(2), 1), None, "RFC 2181 8: a TTL with the top bit set is 0");
    }

    #[test]
    fn an_owner_at_its_cap_makes_room_from_its_own_entries() {
        let mut c = FqdnCache::new(100, 10, Duration::ZERO);
        let (a, b) = (Owner::Pod("a".into()), Owner::Pod("b".into()));
        c.insert(b.clone(), ip(0), "b", 0, 1);
        for i in 0..10u8 {
            c.insert(a.clone(), ip(i), "a", 0, 100 + u32::from(i));
        }
        c.insert(a.clone(), ip(3), "a again", 0, 200);
        assert_eq!((c.len(), c.owner_evicted), (11, 0), "a new answer for a known address takes no room");
        c.insert(a.clone(), ip(100), "new", 0, 5000);
        assert_eq!((c.len(), c.owner_evicted, c.evicted), (11, 1, 0));
        assert_eq!(c.lookup(&a, ip(0), 0), None, "a's entry closest to expiry made room");
        assert_eq!(c.lookup(&a, ip(100), 0), Some("new"));
        assert_eq!(c.lookup(&b, ip(0), 0), Some("b"), "b's entry is closer to expiry but not a's to evict");
        c.prune(10_000 * S);
        assert!(c.is_empty());
    }
}
