//! IP -> name, per workload, from its own DNS answers: a flow to an address
//! the workload just resolved carries the name it asked for. An entry lives
//! for the answer's TTL plus a grace period (clients keep using an address
//! somewhat past its TTL, and a long connection outlives it), and the cache
//! is bounded: when full, entries closest to expiry make room.

use std::{collections::HashMap, net::IpAddr};

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

pub struct FqdnCache {
    entries: HashMap<(Owner, IpAddr), Entry>,
    max_entries: usize,
    grace_ns: u64,
    /// Entries pushed out before expiry because the cache was full.
    pub evicted: u64,
}

impl FqdnCache {
    pub fn new(max_entries: usize, grace: std::time::Duration) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries,
            grace_ns: grace.as_nanos().min(u128::from(u64::MAX)) as u64,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `owner` resolved `name` to `ip` at `ts_ns` with `ttl_s`.
    pub fn insert(&mut self, owner: Owner, ip: IpAddr, name: &str, ts_ns: u64, ttl_s: u32) {
        if self.max_entries == 0 {
            return;
        }
        let expires_ns = ts_ns.saturating_add(u64::from(ttl_s) * 1_000_000_000).saturating_add(self.grace_ns);
        let key = (owner, ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            self.prune(ts_ns);
            if self.entries.len() >= self.max_entries {
                // room by the tenth closest to expiry, so a full cache does
                // not pay a scan per insert
                let mut by_expiry: Vec<u64> = self.entries.values().map(|e| e.expires_ns).collect();
                let cut = (self.max_entries / 10).max(1).min(by_expiry.len() - 1);
                let (_, limit, _) = by_expiry.select_nth_unstable(cut);
                let limit = *limit;
                let before = self.entries.len();
                self.entries.retain(|_, e| e.expires_ns > limit);
                self.evicted += (before - self.entries.len()) as u64;
            }
        }
        self.entries.insert(key, Entry { name: name.to_string(), expires_ns });
    }

    /// The name `owner` last resolved `ip` from, if still valid at `now_ns`.
    pub fn lookup(&self, owner: &Owner, ip: IpAddr, now_ns: u64) -> Option<&str> {
        let e = self.entries.get(&(owner.clone(), ip))?;
        (e.expires_ns >= now_ns).then_some(e.name.as_str())
    }

    /// Drops expired entries.
    pub fn prune(&mut self, now_ns: u64) {
        self.entries.retain(|_, e| e.expires_ns >= now_ns);
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
        let mut c = FqdnCache::new(100, Duration::from_secs(30));
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
        let mut c = FqdnCache::new(10, Duration::ZERO);
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
}
