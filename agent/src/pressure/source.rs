//! One window of pressure: cgroup files per pod and container, the scheduler
//! probes' run-queue numbers, the culprits behind each pod's waits, the
//! detector's verdicts and the NoisyNeighbour findings.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
};

use podlens_proto::v1 as pb;

use super::{
    mounts::Hierarchies,
    read::{cpu_limit_cores, read_cgroup, read_node, CgroupSample, NodeSample},
    records::{self, Evidence},
    runqueue::{Deltas, RunQueueWindow, SchedWindow},
};
use crate::{
    ebpf::sched::{SchedMode, SchedProbes},
    identity::{
        cgroup::{parse_cgroup_path, CgroupOwner},
        WindowResolver,
    },
    noisy::{
        episodes::{Detector, Hysteresis, Transition},
        verdict::{CulpritKey, PodWindow, Thresholds},
    },
};

/// Pressure settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub hierarchies: Hierarchies,
    /// Node PSI directory (/proc/pressure).
    pub proc_pressure: PathBuf,
    pub thresholds: Thresholds,
    pub hysteresis: Hysteresis,
    /// Also report each container cgroup, not only pods.
    pub containers: bool,
}

/// Drop points and errors, cumulative.
#[derive(Clone, Copy, Debug, Default)]
pub struct PressureCounters {
    /// Files that exist but could not be read or parsed (the field is left out).
    pub file_errors: u64,
    /// Scheduler map reads that failed (the window has no run-queue data).
    pub sched_read_errors: u64,
}

/// A cgroup the identity table knows.
#[derive(Clone, Debug)]
pub struct CgroupInfo {
    pub id: u64,
    pub path: String,
    pub removed: bool,
}

/// A pod's cgroups: the pod level (when seen), its containers, and cgroups of
/// it removed since (a restarted container's old one: its last run-queue
/// window still counts, and waits behind it are the pod's own).
#[derive(Debug, Default)]
struct PodGroup {
    pod: Option<(u64, String)>,
    containers: Vec<(u64, String)>,
    removed: Vec<u64>,
}

impl PodGroup {
    fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.pod.iter().map(|p| p.0).chain(self.containers.iter().map(|c| c.0)).chain(self.removed.iter().copied())
    }

    fn identity_id(&self) -> Option<u64> {
        self.pod
            .as_ref()
            .map(|p| p.0)
            .or_else(|| self.containers.first().map(|c| c.0))
            .or_else(|| self.removed.first().copied())
    }

    fn live(&self) -> bool {
        self.pod.is_some() || !self.containers.is_empty()
    }
}

pub struct PressureSource {
    cfg: Config,
    prev: HashMap<u64, CgroupSample>,
    prev_node: Option<NodeSample>,
    sched: Option<(SchedProbes, Deltas)>,
    detector: Detector,
    finding_prefix: String,
    /// Per pod: the victim identity and last evidence, for findings resolved later.
    last_seen: HashMap<String, (pb::Workload, Evidence)>,
    warned: HashSet<PathBuf>,
    pub counters: PressureCounters,
}

/// Paths whose read errors are logged (each once); beyond it, only counted.
const MAX_WARNED: usize = 1000;

impl PressureSource {
    /// `finding_prefix` makes finding ids unique per node and agent run.
    pub fn new(cfg: Config, sched: Option<SchedProbes>, finding_prefix: String) -> Self {
        let detector = Detector::new(cfg.thresholds.clone(), cfg.hysteresis);
        Self {
            cfg,
            prev: HashMap::new(),
            prev_node: None,
            sched: sched.map(|p| (p, Deltas::default())),
            detector,
            finding_prefix,
            last_seen: HashMap::new(),
            warned: HashSet::new(),
            counters: PressureCounters::default(),
        }
    }

    pub fn sched_enabled(&self) -> bool {
        self.sched.is_some()
    }

    /// Loss and error counters: ours, and the probes' kernel counters.
    pub fn losses(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = vec![
            ("pressure", "file_error", self.counters.file_errors),
            ("pressure", "sched_read_error", self.counters.sched_read_errors),
        ];
        if let Some((probes, _)) = &self.sched {
            match probes.counters() {
                Ok(c) => {
                    out.extend(c.into_iter().map(|(c, v)| {
                        (if c.is_loss() { "kernel_sched" } else { "kernel_sched_activity" }, c.name(), v)
                    }))
                }
                Err(e) => tracing::warn!(error = %e, "reading scheduler counters failed"),
            }
        }
        out
    }

    /// The scheduler's window; read first, as close to the window's end as possible.
    fn sched_window(&mut self) -> Option<SchedWindow> {
        let (probes, deltas) = self.sched.as_mut()?;
        match probes.snapshot() {
            Ok(s) => Some(deltas.window(s)),
            Err(e) => {
                self.counters.sched_read_errors += 1;
                tracing::warn!(error = %e, "reading the scheduler maps failed");
                None
            }
        }
    }

    fn read(&mut self, rel: &str) -> CgroupSample {
        let s = read_cgroup(&self.cfg.hierarchies, rel);
        for e in &s.errors {
            self.counters.file_errors += 1;
            if self.warned.len() < MAX_WARNED && self.warned.insert(e.path.clone()) {
                tracing::warn!(error = %e, "cgroup pressure file unreadable; the field is left out");
            }
        }
        s
    }

    /// Builds the window's records. `cgroups`: every cgroup the identity
    /// table knows; `ids` resolves identities for this window.
    pub fn window(
        &mut self,
        cgroups: &[CgroupInfo],
        window: (u64, u64),
        ids: &mut WindowResolver<'_>,
    ) -> Vec<pb::record::Kind> {
        let sched = self.sched_window();
        let split = self.sched.as_ref().is_some_and(|(p, _)| p.mode() == SchedMode::WakeupProbes);
        let idle: HashSet<u64> = match &sched {
            Some(w) => self
                .sched
                .as_ref()
                .map_or_else(HashSet::new, |(_, d)| d.known().filter(|id| !w.cgroups.contains_key(id)).collect()),
            None => HashSet::new(),
        };
        let out = self.build(sched, split, cgroups, window, ids);
        self.forget_gone(cgroups, &idle);
        out
    }

    /// The window's records from the scheduler's window (None: probes off)
    /// and the cgroup files; the kernel-free part of [`Self::window`].
    pub(crate) fn build(
        &mut self,
        sched: Option<SchedWindow>,
        split: bool,
        cgroups: &[CgroupInfo],
        window: (u64, u64),
        ids: &mut WindowResolver<'_>,
    ) -> Vec<pb::record::Kind> {
        let window_ns = window.1.saturating_sub(window.0);
        let mut pods: BTreeMap<String, PodGroup> = BTreeMap::new();
        let mut owner_of: HashMap<u64, CulpritKey> = HashMap::new();
        for c in cgroups {
            match parse_cgroup_path(&c.path) {
                CgroupOwner::Pod(p) => {
                    owner_of.insert(c.id, CulpritKey::Pod(p.uid.clone()));
                    let g = pods.entry(p.uid).or_default();
                    if c.removed {
                        g.removed.push(c.id);
                        continue;
                    }
                    match p.container {
                        None => g.pod = Some((c.id, c.path.clone())),
                        Some(_) => g.containers.push((c.id, c.path.clone())),
                    }
                }
                CgroupOwner::Host { .. } | CgroupOwner::UnknownLayout { .. } => {
                    owner_of.insert(c.id, CulpritKey::Host(c.path.clone()));
                }
            }
        }
        let pod_ids: HashMap<String, u64> =
            pods.iter().filter_map(|(uid, g)| g.identity_id().map(|id| (uid.clone(), id))).collect();
        let host_ids: HashMap<String, u64> = cgroups
            .iter()
            .filter(|c| matches!(owner_of.get(&c.id), Some(CulpritKey::Host(_))))
            .map(|c| (c.path.clone(), c.id))
            .collect();

        let pod_names: HashMap<CulpritKey, String> = pod_ids
            .iter()
            .filter_map(|(uid, id)| match ids.workload(*id).kind {
                Some(pb::workload::Kind::Pod(p)) if !p.name.is_empty() => {
                    Some((CulpritKey::Pod(uid.clone()), format!("{}/{}", p.namespace, p.name)))
                }
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (uid, g) in &pods {
            let Some(pod_id) = g.identity_id() else { continue };
            let active = sched.as_ref().is_some_and(|s| g.ids().any(|id| s.cgroups.contains_key(&id)));
            if !g.live() && !active {
                // deleted, and its last window already reported
                continue;
            }
            seen.extend(g.ids());
            let mut rq = RunQueueWindow::default();
            for id in g.ids() {
                if let Some(w) = sched.as_ref().and_then(|s| s.cgroups.get(&id)) {
                    rq.add(w);
                }
            }
            let mut record = match &g.pod {
                Some((id, path)) => self.cgroup_record(*id, path, window_ns, ids),
                None => pb::PressureRecord { local: Some(ids.workload(pod_id)), ..Default::default() },
            };
            let victim = record.local.clone().unwrap_or_default();
            let mut by_culprit: BTreeMap<CulpritKey, u64> = BTreeMap::new();
            if let Some(s) = &sched {
                record.run_queue = Some(pb::RunQueue { wait_kinds_split: split, ..rq.to_pb() });
                let mine: HashSet<u64> = g.ids().collect();
                for ((v, c), ns) in &s.pairs {
                    if !mine.contains(v) {
                        continue;
                    }
                    let key = match owner_of.get(c) {
                        _ if *c == 0 => CulpritKey::Idle,
                        _ if mine.contains(c) => CulpritKey::SelfPod,
                        Some(CulpritKey::Pod(u)) if u == uid => CulpritKey::SelfPod,
                        Some(k) => k.clone(),
                        None => CulpritKey::Unattributed,
                    };
                    *by_culprit.entry(key).or_default() += ns;
                }
                if rq.unattributed_ns > 0 {
                    *by_culprit.entry(CulpritKey::Unattributed).or_default() += rq.unattributed_ns;
                }
            }
            let cpu = record.cpu.as_ref();
            let throttle = record.cpu_stat.as_ref();
            let pw = PodWindow {
                window_ns,
                cpu_some_share: cpu.and_then(|p| p.some_usec.map(|_| p.some_share)),
                memory_some_share: record.memory.as_ref().and_then(|p| p.some_usec.map(|_| p.some_share)),
                io_some_share: record.io.as_ref().and_then(|p| p.some_usec.map(|_| p.some_share)),
                nr_periods: throttle.and_then(|c| c.nr_periods.map(|c| c.delta)),
                nr_throttled: throttle.and_then(|c| c.nr_throttled.map(|c| c.delta)),
                throttled_ns: throttle.and_then(|c| c.throttled_usec.map(|c| c.delta.saturating_mul(1000))),
                waits: rq.waits(),
                wait_ns: rq.wait_ns(),
                run_queue_p99_ns: rq.quantile_ns(0.99),
                culprits: by_culprit.into_iter().collect(),
            };
            let name = |k: &CulpritKey| pod_names.get(k).cloned().unwrap_or_else(|| k.to_string());
            let obs = self.detector.observe_named(uid, window.0, window.1, &pw, &name);
            let mut resolve = |k: &CulpritKey| culprit_workload(k, &pod_ids, &host_ids, ids);
            record.culprits = records::culprits(&obs.this_window.culprits, &mut resolve);
            record.verdict = Some(pb::Verdict {
                kind: records::verdict_kind(obs.stable) as i32,
                since_unix_nano: obs.since_unix_nano,
                window_kind: records::verdict_kind(obs.this_window.kind) as i32,
                summary: obs.this_window.summary.clone(),
            });
            let evidence = Evidence {
                wait_ns: pw.wait_ns,
                run_queue_p99_ns: pw.run_queue_p99_ns,
                cpu_some_share: pw.cpu_some_share.unwrap_or(0.0),
            };
            if obs.this_window.kind.is_finding() || !self.last_seen.contains_key(uid) {
                self.last_seen.insert(uid.clone(), (victim.clone(), evidence));
            }
            out.push(pb::record::Kind::Pressure(record));
            let ev = self.last_seen.get(uid).map_or(evidence, |(_, e)| *e);
            for t in obs.superseded.map(Transition::Resolved).into_iter().chain(obs.transition) {
                let f = records::finding(&self.finding_prefix, &t, victim.clone(), ev, &mut resolve);
                out.push(pb::record::Kind::Finding(f));
            }
            if self.cfg.containers {
                for (id, path) in &g.containers {
                    let mut r = self.cgroup_record(*id, path, window_ns, ids);
                    if let Some(w) = sched.as_ref().map(|s| s.cgroups.get(id).copied().unwrap_or_default()) {
                        r.run_queue = Some(pb::RunQueue { wait_kinds_split: split, ..w.to_pb() });
                    }
                    out.push(pb::record::Kind::Pressure(r));
                }
            }
        }
        for (uid, t) in self.detector.end_window(window.1) {
            let (victim, ev) = self.last_seen.get(&uid).cloned().unwrap_or_default();
            let mut resolve = |k: &CulpritKey| culprit_workload(k, &pod_ids, &host_ids, ids);
            out.push(pb::record::Kind::Finding(records::finding(&self.finding_prefix, &t, victim, ev, &mut resolve)));
        }
        self.last_seen.retain(|uid, _| self.detector.pod(uid).is_some());
        self.prev.retain(|id, _| seen.contains(id));
        out.push(pb::record::Kind::Pressure(self.node_record(window_ns)));
        out
    }

    fn cgroup_record(
        &mut self,
        id: u64,
        path: &str,
        window_ns: u64,
        ids: &mut WindowResolver<'_>,
    ) -> pb::PressureRecord {
        let cur = self.read(path);
        let limit = match cpu_limit_cores(&self.cfg.hierarchies, path) {
            Ok(l) => l,
            Err(e) => {
                self.counters.file_errors += 1;
                tracing::debug!(error = %e, "cpu limit unreadable");
                None
            }
        };
        let prev = self.prev.get(&id);
        let r = pb::PressureRecord {
            local: Some(ids.workload(id)),
            cpu: records::psi(prev.and_then(|p| p.cpu.as_ref()), cur.cpu.as_ref(), window_ns),
            memory: records::psi(prev.and_then(|p| p.memory.as_ref()), cur.memory.as_ref(), window_ns),
            io: records::psi(prev.and_then(|p| p.io.as_ref()), cur.io.as_ref(), window_ns),
            cpu_stat: records::cpu_stat(prev, &cur, limit),
            memory_events: records::memory_events(prev, &cur),
            ..Default::default()
        };
        self.prev.insert(id, cur);
        r
    }

    fn node_record(&mut self, window_ns: u64) -> pb::PressureRecord {
        let cur = read_node(&self.cfg.proc_pressure);
        for e in &cur.errors {
            self.counters.file_errors += 1;
            if self.warned.len() < MAX_WARNED && self.warned.insert(e.path.clone()) {
                tracing::warn!(error = %e, "node pressure file unreadable");
            }
        }
        let prev = self.prev_node.as_ref();
        let r = pb::PressureRecord {
            node: true,
            cpu: records::psi(prev.and_then(|p| p.cpu.as_ref()), cur.cpu.as_ref(), window_ns),
            memory: records::psi(prev.and_then(|p| p.memory.as_ref()), cur.memory.as_ref(), window_ns),
            io: records::psi(prev.and_then(|p| p.io.as_ref()), cur.io.as_ref(), window_ns),
            ..Default::default()
        };
        self.prev_node = Some(cur);
        r
    }

    /// Frees the kernel entries of cgroups that are not live (removed, or
    /// never known to the identity table) and had no activity this window:
    /// their last window was reported above, and the maps must only ever fill
    /// with live cgroups. One that becomes active again starts from zero.
    fn forget_gone(&mut self, cgroups: &[CgroupInfo], idle: &HashSet<u64>) {
        let Some((probes, deltas)) = self.sched.as_mut() else { return };
        let live: HashSet<u64> = cgroups.iter().filter(|c| !c.removed).map(|c| c.id).collect();
        let gone: Vec<u64> = idle.iter().copied().filter(|id| !live.contains(id)).collect();
        if !gone.is_empty() {
            let n = probes.forget(&gone);
            deltas.forget(&gone);
            tracing::debug!(cgroups = gone.len(), entries = n, "scheduler entries of gone cgroups freed");
        }
    }
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;

fn culprit_workload(
    k: &CulpritKey,
    pod_ids: &HashMap<String, u64>,
    host_ids: &HashMap<String, u64>,
    ids: &mut WindowResolver<'_>,
) -> Option<pb::Workload> {
    match k {
        CulpritKey::Pod(uid) => match pod_ids.get(uid) {
            Some(id) => Some(ids.workload(*id)),
            None => Some(pb::Workload {
                kind: Some(pb::workload::Kind::Pod(pb::PodRef { uid: uid.clone(), ..Default::default() })),
                ..Default::default()
            }),
        },
        CulpritKey::Host(path) => host_ids.get(path).map(|id| ids.workload(*id)),
        CulpritKey::SelfPod | CulpritKey::Idle | CulpritKey::Unattributed => None,
    }
}
