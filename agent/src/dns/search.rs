//! Search-path amplification. A resolver with search domains and ndots (five
//! in Kubernetes) tries "api.example.com.shop.svc.cluster.local",
//! "api.example.com.svc.cluster.local", ... before "api.example.com": every
//! expansion that ends in NXDOMAIN is a wasted round trip. The expansions are
//! recognised without knowing the pod's resolv.conf: an NXDOMAIN for the name
//! that then resolved with labels inserted after its first one (see
//! [`is_expansion`]), asked by the same workload for the same type shortly
//! before.

use std::collections::{HashMap, VecDeque};

/// NXDOMAIN names remembered per (workload, qtype).
const MAX_RECENT: usize = 32;

#[derive(Default)]
pub struct SearchChains {
    recent: HashMap<(u64, u16), VecDeque<(u64, String)>>,
    window_ns: u64,
}

/// Whether `nx` looks like a search expansion of the lookup that resolved
/// `resolved`: `resolved` with labels inserted after at least its first one.
/// That covers the two ways a search ends: the bare name resolving as given
/// after "api.example.com.svc.cluster.local" failed, and the bare name
/// resolving with a later search domain that is a parent of the one that
/// failed ("a.ns.svc.cluster.local" failed, "a.svc.cluster.local" resolved:
/// the Kubernetes list is ordered that way). Sharing leading labels is not
/// enough: "www.typo.com" failing says nothing about "www.google.com".
/// Without the resolv.conf two cases stay ambiguous: a later search domain
/// that is not a parent of the failed one is missed (an undercount), and a
/// failed name that really is the resolved one with a label inserted
/// ("api.staging.example.com" before "api.example.com") is grouped.
fn is_expansion(nx: &str, resolved: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (nx.split('.').collect(), resolved.split('.').collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count();
    // some split of `resolved` after label k >= 1 is a prefix and a suffix of `nx`
    a.len() > b.len() && prefix >= 1 && prefix + suffix >= b.len()
}

impl SearchChains {
    /// Expansions are grouped with a lookup that resolves within `window`.
    pub fn new(window: std::time::Duration) -> Self {
        Self { recent: HashMap::new(), window_ns: window.as_nanos().min(u128::from(u64::MAX)) as u64 }
    }

    pub fn nxdomain(&mut self, cgroup_id: u64, qtype: u16, name: &str, ts_ns: u64) {
        let q = self.recent.entry((cgroup_id, qtype)).or_default();
        if q.len() == MAX_RECENT {
            q.pop_front();
        }
        q.push_back((ts_ns, name.to_string()));
    }

    /// A lookup that resolved (NOERROR): the NXDOMAIN expansions it ends, now
    /// taken out so none is counted twice.
    pub fn resolved(&mut self, cgroup_id: u64, qtype: u16, name: &str, ts_ns: u64) -> Vec<String> {
        let Some(q) = self.recent.get_mut(&(cgroup_id, qtype)) else { return Vec::new() };
        let since = ts_ns.saturating_sub(self.window_ns);
        let mut wasted = Vec::new();
        q.retain(|(t, nx)| {
            let grouped = *t >= since && *t <= ts_ns && is_expansion(nx, name);
            if grouped {
                wasted.push(nx.clone());
            }
            !grouped
        });
        if q.is_empty() {
            self.recent.remove(&(cgroup_id, qtype));
        }
        wasted
    }

    /// Forgets expansions older than the window.
    pub fn expire(&mut self, now_ns: u64) {
        let since = now_ns.saturating_sub(self.window_ns);
        self.recent.retain(|_, q| {
            q.retain(|(t, _)| *t >= since);
            !q.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn kubernetes_ndots_expansions_are_grouped_with_the_answer() {
        let mut c = SearchChains::new(Duration::from_secs(5));
        for (i, suffix) in ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"].iter().enumerate() {
            c.nxdomain(1, 1, &format!("api.example.com.{suffix}"), i as u64);
        }
        let wasted = c.resolved(1, 1, "api.example.com", 10);
        assert_eq!(wasted.len(), 3);
        assert!(c.resolved(1, 1, "api.example.com", 11).is_empty(), "each counted once");
    }

    #[test]
    fn a_short_name_resolving_through_a_later_search_domain() {
        let mut c = SearchChains::new(Duration::from_secs(5));
        c.nxdomain(1, 28, "kubernetes.default.shop.svc.cluster.local", 0);
        let wasted = c.resolved(1, 28, "kubernetes.default.svc.cluster.local", 1);
        assert_eq!(wasted, vec!["kubernetes.default.shop.svc.cluster.local".to_string()]);
    }

    #[test]
    fn unrelated_names_other_types_workloads_and_old_ones_are_not_grouped() {
        let mut c = SearchChains::new(Duration::from_secs(5));
        c.nxdomain(1, 1, "nothing.here.example", 0);
        c.nxdomain(1, 28, "api.example.com.svc.cluster.local", 0);
        c.nxdomain(2, 1, "api.example.com.svc.cluster.local", 0);
        c.nxdomain(1, 1, "api.example.com.cluster.local", 0);
        assert!(c.resolved(1, 1, "api.example.com", 6 * S).is_empty(), "older than the window");
        c.nxdomain(1, 1, "api.example.com.cluster.local", 7 * S);
        assert_eq!(c.resolved(1, 1, "api.example.com", 8 * S).len(), 1);
        c.expire(20 * S);
        assert!(c.recent.is_empty());
    }

    #[test]
    fn expansion_shape() {
        assert!(is_expansion("a.b.svc.cluster.local", "a.b"));
        assert!(is_expansion("a.ns.svc.cluster.local", "a.svc.cluster.local"));
        assert!(!is_expansion("a.b", "a.b"));
        assert!(!is_expansion("a.b", "a.b.c"), "the resolved name is longer: not an expansion of it");
        assert!(!is_expansion("x.svc.cluster.local", "a.svc.cluster.local"));
        assert!(is_expansion("a.b.ns.svc.cluster.local", "a.b.cluster.local"));
        // indistinguishable from a search domain without the resolv.conf
        assert!(is_expansion("api.staging.example.com", "api.example.com"));
    }

    #[test]
    fn names_sharing_only_leading_labels_are_not_expansions() {
        assert!(!is_expansion("www.typo.com", "www.google.com"));
        assert!(!is_expansion("api.v1.example.com", "api.v2.example.com"));
        assert!(!is_expansion("a.ns.svc.cluster.local", "a.other.org"));
        let mut c = SearchChains::new(Duration::from_secs(5));
        c.nxdomain(1, 1, "www.typo.com", 0);
        assert!(c.resolved(1, 1, "www.google.com", 1).is_empty());
    }
}
