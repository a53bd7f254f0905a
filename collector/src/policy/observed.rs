//! What each workload was seen doing: the input of its suggested policy, and
//! the flows the policies selecting it deny (the input of the minimal change
//! to one of them). Remembers which workloads changed, so suggestions are
//! rebuilt only for those.

use std::collections::{BTreeMap, BTreeSet};

use super::{classify::ObjectId, owners::Workload, selector::Labels, suggest};

/// Bounds (workloads, flows and pods per workload).
pub const MAX_WORKLOADS: usize = 10_000;
pub const MAX_FLOWS: usize = 256;
pub const MAX_PODS: usize = 64;

#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Labels per pod name.
    pub labels: BTreeMap<String, Labels>,
    pub flows: BTreeSet<suggest::Flow>,
    /// Flows the policies selecting the workload deny, with those policies.
    pub denied: BTreeMap<suggest::Flow, Vec<ObjectId>>,
    last_seen: u64,
}

#[derive(Debug, Default)]
pub struct ObservedFlows {
    by_workload: BTreeMap<Workload, Observed>,
    changed: BTreeSet<Workload>,
    /// Workloads, flows or pods not remembered because a bound was reached.
    pub dropped: u64,
}

impl ObservedFlows {
    /// One flow of `w` (through its pod `pod`, labelled `labels`); `denied_by`
    /// the policies denying it, if they do.
    pub fn add(
        &mut self,
        w: &Workload,
        pod: (&str, Option<&Labels>),
        flow: suggest::Flow,
        denied_by: Option<&[ObjectId]>,
        now: u64,
    ) {
        if !self.by_workload.contains_key(w) && self.by_workload.len() >= MAX_WORKLOADS {
            self.dropped += 1;
            return;
        }
        let o = self.by_workload.entry(w.clone()).or_default();
        o.last_seen = o.last_seen.max(now);
        let mut changed = false;
        if let (name, Some(labels)) = pod {
            if !o.labels.contains_key(name) {
                if o.labels.len() < MAX_PODS {
                    o.labels.insert(name.to_owned(), labels.clone());
                    changed = true;
                } else {
                    self.dropped += 1;
                }
            }
        }
        if let Some(selecting) = denied_by {
            if !o.denied.contains_key(&flow) {
                if o.denied.len() < MAX_FLOWS {
                    o.denied.insert(flow.clone(), selecting.to_vec());
                    changed = true;
                } else {
                    self.dropped += 1;
                }
            }
        }
        if !o.flows.contains(&flow) {
            if o.flows.len() < MAX_FLOWS {
                o.flows.insert(flow);
                changed = true;
            } else {
                self.dropped += 1;
            }
        }
        if changed {
            self.changed.insert(w.clone());
        }
    }

    pub fn get(&self, w: &Workload) -> Option<&Observed> {
        self.by_workload.get(w)
    }

    /// Whether `w` changed since the last [`ObservedFlows::take_changed`].
    pub fn is_changed(&self, w: &Workload) -> bool {
        self.changed.contains(w)
    }

    pub fn take_changed(&mut self) -> BTreeSet<Workload> {
        std::mem::take(&mut self.changed)
    }

    /// Forgets workloads last seen before `cutoff`; returns how many.
    pub fn expire(&mut self, cutoff: u64) -> usize {
        let before = self.by_workload.len();
        self.by_workload.retain(|_, o| o.last_seen >= cutoff);
        before - self.by_workload.len()
    }

    pub fn len(&self) -> usize {
        self.by_workload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_workload.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::policy::eval::{Direction, Protocol};

    fn w(name: &str) -> Workload {
        Workload { namespace: "prod".into(), kind: "Deployment".into(), name: name.into() }
    }

    fn flow(port: u16) -> suggest::Flow {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        suggest::Flow {
            direction: Direction::Egress,
            peer: suggest::Peer::External { ip, fqdn: None },
            port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn only_new_flows_pods_or_denials_mark_a_workload_changed() {
        let mut o = ObservedFlows::default();
        let labels = Labels::from([("app".to_owned(), "web".to_owned())]);
        o.add(&w("web"), ("web-1", Some(&labels)), flow(443), None, 10);
        assert_eq!(o.take_changed().len(), 1);
        o.add(&w("web"), ("web-1", Some(&labels)), flow(443), None, 20);
        assert!(!o.is_changed(&w("web")), "the same flow again");
        o.add(&w("web"), ("web-2", Some(&labels)), flow(443), None, 30);
        assert!(o.is_changed(&w("web")), "a new pod");
        o.take_changed();
        let denying = [("prod".to_owned(), "deny".to_owned())];
        o.add(&w("web"), ("web-2", None), flow(443), Some(&denying), 40);
        assert!(o.is_changed(&w("web")), "now denied");
        let seen = o.get(&w("web")).unwrap();
        assert_eq!((seen.labels.len(), seen.flows.len(), seen.denied.len()), (2, 1, 1));
    }

    #[test]
    fn bounded_and_expired() {
        let mut o = ObservedFlows::default();
        for port in 0..=MAX_FLOWS as u16 {
            o.add(&w("web"), ("web-1", None), flow(port), None, 5);
        }
        assert_eq!((o.get(&w("web")).unwrap().flows.len(), o.dropped), (MAX_FLOWS, 1));
        o.add(&w("api"), ("api-1", None), flow(80), None, 100);
        assert_eq!(o.expire(50), 1);
        assert!(o.get(&w("web")).is_none() && o.get(&w("api")).is_some());
    }
}
