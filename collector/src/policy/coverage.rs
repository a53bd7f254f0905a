//! NetworkPolicy coverage per namespace of the observed traffic, for
//! `podlens policy report`.

use std::collections::BTreeMap;

use podlens_proto::v1 as pb;

use super::{classify::Class, owners::Workload};

/// Bounds: namespaces tracked, workloads per namespace.
const MAX_NAMESPACES: usize = 10_000;
const MAX_WORKLOADS: usize = 10_000;

#[derive(Default)]
struct Namespace {
    /// Per workload: selected by a policy for (ingress, egress), as last
    /// seen, and when it was last seen.
    workloads: BTreeMap<Workload, (bool, bool, u64)>,
    flows: u64,
    covered: u64,
    broad: u64,
    uncovered: u64,
    denied: u64,
}

#[derive(Default)]
pub struct Coverage {
    namespaces: BTreeMap<String, Namespace>,
    /// Ends not tracked because a bound was reached.
    pub dropped: u64,
}

impl Coverage {
    /// One end of one flow record: its workload, whether it is the server
    /// (ingress) end, and how a policy covers that end.
    pub fn add(&mut self, w: &Workload, server: bool, class: &Class, now: u64) {
        let isolated = match class {
            Class::NotApplicable => return,
            Class::NotIsolated => false,
            Class::Exempt(_) | Class::AllowedSpecific(_) | Class::AllowedBroad(_) | Class::EnforcementGap { .. } => {
                true
            }
        };
        if !self.namespaces.contains_key(&w.namespace) && self.namespaces.len() >= MAX_NAMESPACES {
            self.dropped += 1;
            return;
        }
        let ns = self.namespaces.entry(w.namespace.clone()).or_default();
        let known = ns.workloads.contains_key(w);
        if known || ns.workloads.len() < MAX_WORKLOADS {
            let e = ns.workloads.entry(w.clone()).or_insert((false, false, now));
            e.2 = e.2.max(now);
            if server {
                e.0 = isolated;
            } else {
                e.1 = isolated;
            }
        } else {
            self.dropped += 1;
        }
        ns.flows += 1;
        match class {
            Class::Exempt(_) | Class::AllowedSpecific(_) => ns.covered += 1,
            Class::AllowedBroad(_) => ns.broad += 1,
            Class::NotIsolated => ns.uncovered += 1,
            Class::EnforcementGap { .. } => ns.denied += 1,
            Class::NotApplicable => {}
        }
    }

    /// Forgets workloads last seen before `cutoff` (deleted ones would
    /// otherwise count forever); flow counts stay cumulative.
    pub fn expire(&mut self, cutoff: u64) {
        for ns in self.namespaces.values_mut() {
            ns.workloads.retain(|_, (_, _, seen)| *seen >= cutoff);
        }
    }

    pub fn report(&self, only: &[String]) -> Vec<pb::NamespaceCoverage> {
        self.namespaces
            .iter()
            .filter(|(name, _)| only.is_empty() || only.contains(name))
            .map(|(name, ns)| pb::NamespaceCoverage {
                namespace: name.clone(),
                workloads: ns.workloads.len() as u32,
                workloads_ingress_isolated: ns.workloads.values().filter(|(i, _, _)| *i).count() as u32,
                workloads_egress_isolated: ns.workloads.values().filter(|(_, e, _)| *e).count() as u32,
                flows: ns.flows,
                flows_covered: ns.covered,
                flows_broad: ns.broad,
                flows_uncovered: ns.uncovered,
                flows_denied: ns.denied,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::eval::{Direction, RuleRef};

    fn w(ns: &str, name: &str) -> Workload {
        Workload { namespace: ns.into(), kind: "Deployment".into(), name: name.into() }
    }

    #[test]
    fn ends_are_counted_per_namespace_by_how_they_are_covered() {
        let rule = RuleRef {
            namespace: "shop".into(),
            policy: "p".into(),
            direction: Direction::Ingress,
            rule_index: 0,
            broad: false,
        };
        let mut c = Coverage::default();
        c.add(&w("shop", "api"), true, &Class::AllowedSpecific(vec![rule.clone()]), 1);
        c.add(&w("shop", "web"), false, &Class::NotIsolated, 1);
        c.add(&w("shop", "web"), false, &Class::AllowedBroad(vec![RuleRef { broad: true, ..rule }]), 1);
        c.add(&w("ops", "debug"), false, &Class::EnforcementGap { selecting: vec![] }, 1);
        c.add(&w("ops", "debug"), true, &Class::NotApplicable, 1);
        let r = c.report(&[]);
        assert_eq!(r.len(), 2);
        let shop = r.iter().find(|n| n.namespace == "shop").unwrap();
        assert_eq!((shop.workloads, shop.workloads_ingress_isolated, shop.workloads_egress_isolated), (2, 1, 1));
        assert_eq!(
            (shop.flows, shop.flows_covered, shop.flows_broad, shop.flows_uncovered, shop.flows_denied),
            (3, 1, 1, 1, 0)
        );
        let ops = &c.report(&["ops".into()])[0];
        assert_eq!((ops.flows, ops.flows_denied, ops.workloads_egress_isolated), (1, 1, 1));
        c.add(&w("shop", "api"), true, &Class::NotIsolated, 5);
        c.expire(3);
        let shop = c.report(&["shop".into()]).remove(0);
        assert_eq!((shop.workloads, shop.workloads_ingress_isolated, shop.flows), (1, 0, 4), "web idle since 1");
    }
}
