//! Findings from every node for `podlens findings`: the latest report of each
//! episode, bounded in number and age, and the worst neighbours across them.
//!
//! Agents report an episode every window (OPEN, then ONGOING with the same id,
//! then RESOLVED); only its latest state is worth keeping.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use podlens_proto::{
    compact::Tables,
    v1::{self as pb, finding::Detail, record::Kind, workload},
};

/// Findings kept at most.
pub const DEFAULT_MAX_FINDINGS: usize = 10_000;
/// Findings whose episode ended longer ago than this are dropped.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// One episode. Agents promise ids unique per node and agent run only, so a
/// restarted agent's first id must not land on (and be ignored as a reopening
/// of) the previous run's resolved episode.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    node: Arc<str>,
    agent_epoch: u64,
    id: String,
}

/// Which findings a query wants. Empty lists and strings match everything.
#[derive(Clone, Debug, Default)]
pub struct FindingsFilter {
    /// Only findings whose end is at or after this (Unix ns).
    pub since: u64,
    /// Only findings whose victim is a pod in one of these namespaces.
    pub namespaces: Vec<String>,
    pub kinds: Vec<pb::FindingKind>,
    pub node: String,
}

impl FindingsFilter {
    fn matches(&self, node: &str, f: &pb::Finding) -> bool {
        f.end_unix_nano >= self.since
            && (self.node.is_empty() || self.node == node)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| *k as i32 == f.kind))
            && (self.namespaces.is_empty()
                || subject_namespace(f).is_some_and(|ns| self.namespaces.iter().any(|n| n == ns)))
    }
}

/// The namespace of what a finding is about: the victim pod's, or the workload's for policy gaps.
pub fn subject_namespace(f: &pb::Finding) -> Option<&str> {
    match &f.detail {
        Some(Detail::PolicyGap(g)) => g.workload.as_ref().map(|w| w.namespace.as_str()),
        _ => victim_pod(f).map(|p| p.namespace.as_str()),
    }
}

/// The pod a finding is about, when it is about a pod.
pub fn victim_pod(f: &pb::Finding) -> Option<&pb::PodRef> {
    let Some(Detail::NoisyNeighbour(n)) = &f.detail else { return None };
    match n.victim.as_ref()?.kind.as_ref()? {
        workload::Kind::Pod(p) => Some(p),
        workload::Kind::Host(_) => None,
    }
}

fn resolved(f: &pb::Finding) -> bool {
    f.state == pb::FindingState::Resolved as i32
}

/// Whether `new` is a later report of the episode than `old`. A resolved
/// episode stays resolved; otherwise the report that reaches further wins, so
/// a report delayed behind a newer one does not roll the numbers back.
fn supersedes(new: &pb::Finding, old: &pb::Finding) -> bool {
    match (resolved(old), resolved(new)) {
        (true, false) => false,
        (false, true) => true,
        _ => new.end_unix_nano >= old.end_unix_nano,
    }
}

pub struct Findings {
    entries: HashMap<Key, pb::Finding>,
    /// (end, key) of every finding: the retention and last-resort eviction order.
    by_end: BTreeSet<(u64, Key)>,
    /// The same for resolved findings, which are evicted first.
    resolved_by_end: BTreeSet<(u64, Key)>,
    max: usize,
    retention_ns: u64,
    /// The latest end of a finding evicted for room: before it, the store is incomplete.
    evicted_until: u64,
    /// Findings evicted because the store was full.
    pub evicted: u64,
}

impl Findings {
    /// Keeps at most `max` findings, none that ended more than `retention` ago.
    pub fn new(max: usize, retention: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            by_end: BTreeSet::new(),
            resolved_by_end: BTreeSet::new(),
            max: max.max(1),
            retention_ns: u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX),
            evicted_until: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes the finding records of a batch from the agent run started at
    /// `agent_epoch`, received at `now` (Unix ns).
    pub fn add(&mut self, records: &[pb::Record], tables: &Tables<'_>, agent_epoch: u64, now: u64) {
        self.expire(now);
        let oldest_kept = self.oldest_kept(now);
        for r in records {
            let Some(Kind::Finding(f)) = &r.kind else { continue };
            if f.end_unix_nano < oldest_kept {
                continue;
            }
            let key = Key { node: Arc::from(tables.node(r)), agent_epoch, id: f.id.clone() };
            self.upsert(key, f);
        }
    }

    fn oldest_kept(&self, now: u64) -> u64 {
        now.saturating_sub(self.retention_ns)
    }

    fn upsert(&mut self, key: Key, f: &pb::Finding) {
        match self.entries.get(&key) {
            Some(old) if !supersedes(f, old) => return,
            Some(_) => {
                self.remove(&key);
            }
            None if self.entries.len() >= self.max => self.evict_one(),
            None => {}
        }
        self.by_end.insert((f.end_unix_nano, key.clone()));
        if resolved(f) {
            self.resolved_by_end.insert((f.end_unix_nano, key.clone()));
        }
        self.entries.insert(key, f.clone());
    }

    fn remove(&mut self, key: &Key) -> Option<pb::Finding> {
        let f = self.entries.remove(key)?;
        // Keys are unique in the indexes; the (end, key) pair is rebuilt to look them up.
        let entry = (f.end_unix_nano, key.clone());
        self.by_end.remove(&entry);
        self.resolved_by_end.remove(&entry);
        Some(f)
    }

    fn evict_one(&mut self) {
        let victim = self.resolved_by_end.first().or_else(|| self.by_end.first()).map(|(_, k)| k.clone());
        if let Some(f) = victim.and_then(|k| self.remove(&k)) {
            self.evicted += 1;
            self.evicted_until = self.evicted_until.max(f.end_unix_nano);
        }
    }

    /// Drops findings that ended before the retention period.
    fn expire(&mut self, now: u64) {
        let oldest_kept = self.oldest_kept(now);
        while let Some((end, key)) = self.by_end.first().cloned() {
            if end >= oldest_kept {
                break;
            }
            self.remove(&key);
        }
    }

    /// The findings matching `filter`, newest end first, at most `limit`; the
    /// worst neighbours over all of them; and since when the store is complete.
    pub fn query(&mut self, filter: &FindingsFilter, limit: usize, now: u64) -> pb::FindingsResponse {
        self.expire(now);
        let mut matching: Vec<(&Key, &pb::Finding)> =
            self.entries.iter().filter(|(k, f)| filter.matches(&k.node, f)).collect();
        matching.sort_by(|(ka, a), (kb, b)| b.end_unix_nano.cmp(&a.end_unix_nano).then_with(|| ka.cmp(kb)));
        let worst_neighbours = worst_neighbours(&matching, limit);
        let findings = matching
            .iter()
            .take(limit)
            .map(|(k, f)| pb::NodeFinding { node: k.node.to_string(), finding: Some((*f).clone()) })
            .collect();
        pb::FindingsResponse {
            findings,
            worst_neighbours,
            retained_since_unix_nano: self.oldest_kept(now).max(self.evicted_until),
        }
    }
}

/// Who a culprit is across findings: a pod by uid (its cgroup changes when it
/// is recreated, its uid does not), anything else by cgroup path.
fn culprit_identity(w: &pb::Workload) -> String {
    match &w.kind {
        Some(workload::Kind::Pod(p)) if !p.uid.is_empty() => p.uid.clone(),
        _ if !w.cgroup_path.is_empty() => w.cgroup_path.clone(),
        Some(workload::Kind::Host(h)) => h.unit.clone(),
        _ => format!("cgroup:{}", w.cgroup_id),
    }
}

struct Rank<'a> {
    culprit: &'a pb::Workload,
    wait_ns: u64,
    victims: HashSet<String>,
    findings: u32,
}

/// Culprits (other pods and host units, not the victim itself, idle CPUs or
/// the unknown) ranked by the wait they caused over `findings`, which come
/// newest first so each culprit is shown by its latest identity.
fn worst_neighbours(findings: &[(&Key, &pb::Finding)], limit: usize) -> Vec<pb::NeighbourRank> {
    let mut ranks: HashMap<(&str, i32, String), Rank<'_>> = HashMap::new();
    for (key, f) in findings {
        let Some(Detail::NoisyNeighbour(n)) = &f.detail else { continue };
        let victim = n.victim.as_ref().map(culprit_identity).unwrap_or_default();
        for c in &n.culprits {
            let neighbour = [pb::CulpritKind::Pod as i32, pb::CulpritKind::Host as i32].contains(&c.kind);
            let Some(w) = c.workload.as_ref().filter(|_| neighbour && c.wait_ns > 0) else { continue };
            let r = ranks.entry((key.node.as_ref(), c.kind, culprit_identity(w))).or_insert_with(|| Rank {
                culprit: w,
                wait_ns: 0,
                victims: HashSet::new(),
                findings: 0,
            });
            r.wait_ns = r.wait_ns.saturating_add(c.wait_ns);
            r.victims.insert(victim.clone());
            r.findings += 1;
        }
    }
    let mut out: Vec<(String, pb::NeighbourRank)> = ranks
        .into_iter()
        .map(|((node, kind, identity), r)| {
            let rank = pb::NeighbourRank {
                node: node.to_string(),
                kind,
                culprit: Some(r.culprit.clone()),
                wait_ns: r.wait_ns,
                victims: r.victims.len() as u32,
                findings: r.findings,
            };
            (identity, rank)
        })
        .collect();
    out.sort_by(|(ia, a), (ib, b)| {
        b.wait_ns.cmp(&a.wait_ns).then_with(|| a.node.cmp(&b.node)).then(a.kind.cmp(&b.kind)).then_with(|| ia.cmp(ib))
    });
    out.into_iter().take(limit).map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000_000;

    fn pod(ns: &str, uid: &str) -> pb::Workload {
        pb::Workload {
            cgroup_id: uid.bytes().map(u64::from).sum(),
            cgroup_path: format!("/kubepods/pod{uid}"),
            kind: Some(workload::Kind::Pod(pb::PodRef {
                uid: uid.into(),
                namespace: ns.into(),
                name: format!("name-{uid}"),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn host(unit: &str) -> pb::Workload {
        pb::Workload {
            cgroup_path: format!("/{unit}"),
            kind: Some(workload::Kind::Host(pb::HostUnit { unit: unit.into() })),
            ..Default::default()
        }
    }

    fn culprit(kind: pb::CulpritKind, w: Option<pb::Workload>, wait_ns: u64) -> pb::Culprit {
        pb::Culprit { kind: kind as i32, workload: w, wait_ns, share: 0.0 }
    }

    fn finding(
        id: &str,
        state: pb::FindingState,
        end: u64,
        victim: pb::Workload,
        culprits: Vec<pb::Culprit>,
    ) -> pb::Finding {
        pb::Finding {
            id: id.into(),
            kind: pb::FindingKind::NoisyNeighbour as i32,
            state: state as i32,
            start_unix_nano: end.saturating_sub(MIN),
            end_unix_nano: end,
            summary: format!("{id} waited"),
            detail: Some(Detail::NoisyNeighbour(pb::NoisyNeighbour {
                victim: Some(victim),
                verdict: pb::VerdictKind::Neighbour as i32,
                culprits,
                windows: 1,
                ..Default::default()
            })),
        }
    }

    fn rec(node: &str, f: pb::Finding) -> pb::Record {
        pb::Record { node: node.into(), kind: Some(Kind::Finding(f)), ..Default::default() }
    }

    fn simple(id: &str, state: pb::FindingState, end: u64) -> pb::Finding {
        finding(id, state, end, pod("shop", "v"), vec![])
    }

    fn add(store: &mut Findings, node: &str, f: pb::Finding, now: u64) {
        store.add(&[rec(node, f)], &Tables::default(), 1, now);
    }

    fn ids(r: &pb::FindingsResponse) -> Vec<(String, String, i32)> {
        r.findings
            .iter()
            .map(|n| {
                let f = n.finding.as_ref().unwrap();
                (n.node.clone(), f.id.clone(), f.state)
            })
            .collect()
    }

    use pb::FindingState::{Ongoing, Open, Resolved};

    #[test]
    fn updates_replace_newest_first_and_resolved_stays_resolved() {
        let mut s = Findings::new(100, DEFAULT_RETENTION);
        let now = 100 * MIN;
        add(&mut s, "n1", simple("a", Open, 10 * MIN), now);
        add(&mut s, "n1", simple("b", Open, 11 * MIN), now);
        add(&mut s, "n1", simple("a", Ongoing, 12 * MIN), now);
        add(&mut s, "n2", simple("a", Open, 5 * MIN), now);
        let r = s.query(&FindingsFilter::default(), 100, now);
        let expected = [
            ("n1".to_string(), "a".to_string(), Ongoing as i32),
            ("n1".into(), "b".into(), Open as i32),
            ("n2".into(), "a".into(), Open as i32),
        ];
        assert_eq!(ids(&r), expected, "one per (node, id), newest end first");
        assert_eq!(s.len(), 3);

        add(&mut s, "n1", simple("a", Resolved, 13 * MIN), now);
        add(&mut s, "n1", simple("a", Open, 14 * MIN), now);
        add(&mut s, "n1", simple("a", Ongoing, 15 * MIN), now);
        let a = &s.query(&FindingsFilter::default(), 1, now).findings[0];
        let f = a.finding.as_ref().unwrap();
        assert_eq!((f.state, f.end_unix_nano), (Resolved as i32, 13 * MIN), "a resolved episode does not reopen");

        add(&mut s, "n1", simple("b", Ongoing, 9 * MIN), now);
        let b = s.query(&FindingsFilter { node: "n1".into(), ..Default::default() }, 100, now).findings[1].clone();
        assert_eq!(b.finding.unwrap().end_unix_nano, 11 * MIN, "a late, older report does not roll back");
    }

    #[test]
    fn a_restarted_agent_reusing_an_id_starts_a_new_episode() {
        let mut s = Findings::new(100, DEFAULT_RETENTION);
        let t = Tables::default();
        s.add(&[rec("n1", simple("nn-1", Resolved, MIN))], &t, 1, 10 * MIN);
        s.add(&[rec("n1", simple("nn-1", Open, 2 * MIN))], &t, 2, 10 * MIN);
        let states: Vec<i32> =
            ids(&s.query(&FindingsFilter::default(), 10, 10 * MIN)).into_iter().map(|i| i.2).collect();
        assert_eq!(states, [Open as i32, Resolved as i32]);
    }

    #[test]
    fn bounded_evicting_resolved_first_then_oldest_and_counted() {
        let mut s = Findings::new(3, DEFAULT_RETENTION);
        let now = 100 * MIN;
        add(&mut s, "n1", simple("old-open", Open, MIN), now);
        add(&mut s, "n1", simple("resolved", Resolved, 5 * MIN), now);
        add(&mut s, "n1", simple("open", Open, 6 * MIN), now);
        add(&mut s, "n1", simple("new", Open, 7 * MIN), now);
        let names = |s: &mut Findings| -> Vec<String> {
            ids(&s.query(&FindingsFilter::default(), 10, now)).into_iter().map(|i| i.1).collect()
        };
        assert_eq!(names(&mut s), ["new", "open", "old-open"], "the resolved one went first, though newer");
        assert_eq!(s.evicted, 1);
        add(&mut s, "n1", simple("open", Ongoing, 8 * MIN), now);
        assert_eq!(s.evicted, 1, "an update takes no room");
        add(&mut s, "n1", simple("newer", Open, 9 * MIN), now);
        assert_eq!(names(&mut s), ["newer", "open", "new"], "then the oldest by end");
        assert_eq!(s.evicted, 2);
        let r = s.query(&FindingsFilter::default(), 10, now);
        assert_eq!(r.retained_since_unix_nano, 5 * MIN, "complete only after what was evicted");
    }

    #[test]
    fn findings_older_than_the_retention_are_dropped() {
        let mut s = Findings::new(100, Duration::from_secs(3600));
        add(&mut s, "n1", simple("a", Resolved, MIN), 30 * MIN);
        add(&mut s, "n1", simple("b", Open, 50 * MIN), 30 * MIN);
        assert_eq!(s.len(), 2);
        add(&mut s, "n1", simple("stale", Open, MIN), 70 * MIN);
        assert_eq!(s.len(), 1, "a ended more than an hour ago, and a report past retention is not stored");
        let r = s.query(&FindingsFilter::default(), 10, 70 * MIN);
        assert_eq!(ids(&r), [("n1".to_string(), "b".to_string(), Open as i32)]);
        assert_eq!(r.retained_since_unix_nano, 10 * MIN);
        assert!(s.query(&FindingsFilter::default(), 10, 3 * 60 * MIN).findings.is_empty());
        assert!(s.is_empty());
    }

    #[test]
    fn every_filter() {
        let mut s = Findings::new(100, DEFAULT_RETENTION);
        let now = 100 * MIN;
        add(&mut s, "n1", finding("shop", Open, 10 * MIN, pod("shop", "v1"), vec![]), now);
        add(&mut s, "n2", finding("db", Open, 20 * MIN, pod("db", "v2"), vec![]), now);
        add(&mut s, "n2", finding("host", Open, 30 * MIN, host("system.slice/x.service"), vec![]), now);
        let mut other = finding("other-kind", Open, 40 * MIN, pod("shop", "v3"), vec![]);
        other.kind = pb::FindingKind::Unspecified as i32;
        add(&mut s, "n1", other, now);
        let q = |s: &mut Findings, f: FindingsFilter, limit: usize| -> Vec<String> {
            ids(&s.query(&f, limit, now)).into_iter().map(|i| i.1).collect()
        };
        assert_eq!(q(&mut s, FindingsFilter::default(), 100), ["other-kind", "host", "db", "shop"]);
        assert_eq!(q(&mut s, FindingsFilter::default(), 2), ["other-kind", "host"], "limit keeps the newest");
        assert_eq!(
            q(&mut s, FindingsFilter { since: 20 * MIN, ..Default::default() }, 100),
            ["other-kind", "host", "db"]
        );
        let ns = FindingsFilter { namespaces: vec!["shop".into(), "db".into()], ..Default::default() };
        assert_eq!(q(&mut s, ns, 100), ["other-kind", "db", "shop"], "host victims have no namespace");
        let kinds = FindingsFilter { kinds: vec![pb::FindingKind::NoisyNeighbour], ..Default::default() };
        assert_eq!(q(&mut s, kinds, 100), ["host", "db", "shop"]);
        assert_eq!(q(&mut s, FindingsFilter { node: "n2".into(), ..Default::default() }, 100), ["host", "db"]);
    }

    #[test]
    fn worst_neighbours_over_two_victims_and_two_nodes() {
        use pb::CulpritKind::{Host, Idle, Pod, Self_, Unattributed};
        let mut s = Findings::new(100, DEFAULT_RETENTION);
        let now = 100 * MIN;
        let noisy = pod("batch", "noisy");
        let mut renamed = noisy.clone();
        renamed.cgroup_id = 999; // the same pod, recreated cgroup
        let victim1 = vec![
            culprit(Pod, Some(noisy.clone()), 700),
            culprit(Host, Some(host("system.slice/backup.service")), 200),
            culprit(Self_, Some(pod("shop", "v1")), 900),
            culprit(Idle, None, 50),
            culprit(Unattributed, None, 50),
        ];
        add(&mut s, "n1", finding("f1", Resolved, 10 * MIN, pod("shop", "v1"), victim1), now);
        add(
            &mut s,
            "n1",
            finding("f2", Open, 20 * MIN, pod("shop", "v2"), vec![culprit(Pod, Some(renamed), 500)]),
            now,
        );
        add(
            &mut s,
            "n1",
            finding("f3", Open, 30 * MIN, pod("shop", "v1"), vec![culprit(Pod, Some(noisy.clone()), 100)]),
            now,
        );
        // the same pod uid on another node is another neighbour
        add(&mut s, "n2", finding("f1", Open, 15 * MIN, pod("db", "v9"), vec![culprit(Pod, Some(noisy), 400)]), now);

        let r = s.query(&FindingsFilter::default(), 100, now);
        let ranked: Vec<(String, i32, u64, u32, u32)> =
            r.worst_neighbours.iter().map(|n| (n.node.clone(), n.kind, n.wait_ns, n.victims, n.findings)).collect();
        assert_eq!(
            ranked,
            [
                ("n1".to_string(), Pod as i32, 1300, 2, 3),
                ("n2".into(), Pod as i32, 400, 1, 1),
                ("n1".into(), Host as i32, 200, 1, 1),
            ],
            "self, idle and unattributed are nobody's neighbour"
        );
        assert_eq!(r.worst_neighbours[0].culprit.as_ref().unwrap().cgroup_id, pod("batch", "noisy").cgroup_id);
        assert_eq!(s.query(&FindingsFilter::default(), 1, now).worst_neighbours.len(), 1, "at most limit");
        let shop = s.query(&FindingsFilter { namespaces: vec!["db".into()], ..Default::default() }, 100, now);
        assert_eq!(shop.worst_neighbours.len(), 1, "over the matching findings only");
        assert_eq!(shop.worst_neighbours[0].wait_ns, 400);
    }
}
