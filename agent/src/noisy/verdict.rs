//! One window's verdict for one pod: why its tasks were delayed, judged from
//! PSI, CFS throttling and the eBPF run-queue attribution. No memory across
//! windows: hysteresis lives in `episodes`, so this stays table-testable.

use std::collections::BTreeMap;
use std::fmt;

/// Who was running on the CPU while one of the pod's tasks waited for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CulpritKey {
    /// Another pod, by uid.
    Pod(String),
    /// A host cgroup such as `system.slice/x.service`.
    Host(String),
    /// The pod's own tasks.
    SelfPod,
    /// The CPU was idle: the wait began on another CPU, so nobody here is to blame.
    Idle,
    /// The per-CPU history was too short to tell.
    Unattributed,
}

impl fmt::Display for CulpritKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CulpritKey::Pod(uid) => write!(f, "pod {uid}"),
            CulpritKey::Host(path) => f.write_str(path),
            CulpritKey::SelfPod => f.write_str("its own tasks"),
            CulpritKey::Idle => f.write_str("an idle CPU"),
            CulpritKey::Unattributed => f.write_str("unattributed"),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PodWindow {
    pub window_ns: u64,
    /// PSI "some" stall time as a share of wall time in this window (0..1); None when the file is absent.
    pub cpu_some_share: Option<f64>,
    pub memory_some_share: Option<f64>,
    pub io_some_share: Option<f64>,
    /// CFS throttling in the window; None when the pod has no cpu controller data.
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_ns: Option<u64>,
    /// Run-queue waits of the pod's tasks (eBPF): count, total, p99 (upper bound of its log2 bucket).
    pub waits: u64,
    pub wait_ns: u64,
    pub run_queue_p99_ns: u64,
    /// Wait time charged to each culprit; sums to <= wait_ns.
    pub culprits: Vec<(CulpritKey, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VerdictKind {
    Healthy,
    SelfThrottled,
    SelfContention,
    Neighbour,
    Host,
    MemoryPressure,
    IoPressure,
}

impl VerdictKind {
    /// Kinds that open a NoisyNeighbour finding: someone else is taking the pod's CPU.
    pub fn is_finding(self) -> bool {
        matches!(self, VerdictKind::Neighbour | VerdictKind::Host)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Healthy => "healthy",
            VerdictKind::SelfThrottled => "self_throttled",
            VerdictKind::SelfContention => "self_contention",
            VerdictKind::Neighbour => "neighbour",
            VerdictKind::Host => "host",
            VerdictKind::MemoryPressure => "memory_pressure",
            VerdictKind::IoPressure => "io_pressure",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CulpritShare {
    pub key: CulpritKey,
    pub wait_ns: u64,
    /// Of the pod's wait.
    pub share: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub kind: VerdictKind,
    /// Pods and host cgroups only, sorted by wait descending; empty unless the kind is CPU-attributed.
    pub culprits: Vec<CulpritShare>,
    /// One line of evidence with numbers.
    pub summary: String,
}

#[derive(Clone, Debug)]
pub struct Thresholds {
    /// Share of CFS periods throttled that makes a pod self-throttled [0.2]: one period in five is
    /// past occasional burst throttling and is what users feel as tail latency.
    pub throttled_periods_ratio: f64,
    /// Periods needed before that ratio counts [5]: 1 of 2 periods of a mostly idle pod says nothing.
    pub min_periods: u64,
    /// Throttled time as a share of the window that alone makes a pod self-throttled [0.05]:
    /// 250 ms of a 5 s window is visible to any request crossing it.
    pub throttled_share: f64,
    /// CPU delay (PSI cpu "some", or run-queue wait / window without PSI) that counts as delayed [0.10]:
    /// below a tenth of the window, queueing is ordinary on a shared node.
    pub cpu_delay_share: f64,
    /// Run-queue p99 needed to call the pod delayed [1 ms]: shorter waits are normal scheduler latency.
    pub min_p99_ns: u64,
    /// Waits needed to trust the p99 and the attribution [20]: fewer is too small a sample.
    pub min_waits: u64,
    /// Share of the pod's wait one class (pods, host, itself) must reach to be blamed [0.3]: below it,
    /// blame would rest on a minority of the evidence.
    pub min_attributed_share: f64,
    /// Share of the pod's wait a single culprit needs to be listed [0.10]: smaller ones are noise.
    pub min_culprit_share: f64,
    /// Culprits listed at most [5]: keeps findings readable and bounded.
    pub max_culprits: usize,
    /// PSI memory "some" share that counts as memory pressure [0.10], same reasoning as CPU.
    pub memory_share: f64,
    /// PSI io "some" share that counts as IO pressure [0.10], same reasoning as CPU.
    pub io_share: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            throttled_periods_ratio: 0.2,
            min_periods: 5,
            throttled_share: 0.05,
            cpu_delay_share: 0.10,
            min_p99_ns: 1_000_000,
            min_waits: 20,
            min_attributed_share: 0.3,
            min_culprit_share: 0.10,
            max_culprits: 5,
            memory_share: 0.10,
            io_share: 0.10,
        }
    }
}

/// The pod's wait split by culprit, duplicates merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attribution {
    /// Denominator of every share: the pod's wait, raised to the charged sum if the eBPF side
    /// over-charged, so shares never exceed 1.
    pub total_wait_ns: u64,
    pub by_culprit: BTreeMap<CulpritKey, u64>,
}

impl Attribution {
    pub fn of(w: &PodWindow) -> Self {
        let mut by_culprit = BTreeMap::new();
        let mut charged = 0u64;
        for (key, ns) in w.culprits.iter().filter(|(_, ns)| *ns > 0) {
            let slot = by_culprit.entry(key.clone()).or_insert(0u64);
            *slot = slot.saturating_add(*ns);
            charged = charged.saturating_add(*ns);
        }
        Self { total_wait_ns: w.wait_ns.max(charged), by_culprit }
    }

    /// Share of the wait charged to culprits matching `pick`.
    pub fn share(&self, pick: impl Fn(&CulpritKey) -> bool) -> f64 {
        let ns = self.by_culprit.iter().filter(|(k, _)| pick(k)).fold(0u64, |acc, (_, ns)| acc.saturating_add(*ns));
        ratio(ns, self.total_wait_ns)
    }

    fn class_shares(&self) -> (f64, f64, f64) {
        (
            self.share(|k| matches!(k, CulpritKey::Pod(_))),
            self.share(|k| matches!(k, CulpritKey::Host(_))),
            self.share(|k| *k == CulpritKey::SelfPod),
        )
    }
}

/// Pods and host cgroups worth naming, biggest first; ties broken by key so output is stable.
pub fn rank_culprits(by_culprit: &BTreeMap<CulpritKey, u64>, total_wait_ns: u64, t: &Thresholds) -> Vec<CulpritShare> {
    let mut ranked: Vec<CulpritShare> = by_culprit
        .iter()
        .filter(|(k, _)| matches!(k, CulpritKey::Pod(_) | CulpritKey::Host(_)))
        .map(|(k, ns)| CulpritShare { key: k.clone(), wait_ns: *ns, share: ratio(*ns, total_wait_ns) })
        .filter(|c| c.share >= t.min_culprit_share)
        .collect();
    ranked.sort_by(|a, b| b.wait_ns.cmp(&a.wait_ns).then_with(|| a.key.cmp(&b.key)));
    ranked.truncate(t.max_culprits);
    ranked
}

/// Assesses one window, naming culprits with their `Display` form.
pub fn assess(w: &PodWindow, t: &Thresholds) -> Assessment {
    assess_named(w, t, &|k: &CulpritKey| k.to_string())
}

/// Assesses one window; `name` turns culprit keys (pod uids, cgroup paths) into what people read.
pub fn assess_named(w: &PodWindow, t: &Thresholds, name: &dyn Fn(&CulpritKey) -> String) -> Assessment {
    if w.window_ns == 0 {
        return Assessment { kind: VerdictKind::Healthy, culprits: Vec::new(), summary: "empty window".to_string() };
    }
    let attribution = Attribution::of(w);
    let delayed = cpu_delayed(w, t);
    let kind = if self_throttled(w, t) {
        VerdictKind::SelfThrottled
    } else if let Some(kind) = delayed.then(|| cpu_kind(&attribution, t)).flatten() {
        kind
    } else if clean_share(w.memory_some_share).is_some_and(|s| s >= t.memory_share) {
        VerdictKind::MemoryPressure
    } else if clean_share(w.io_some_share).is_some_and(|s| s >= t.io_share) {
        VerdictKind::IoPressure
    } else {
        VerdictKind::Healthy
    };
    let culprits = match kind {
        VerdictKind::Neighbour | VerdictKind::Host | VerdictKind::SelfContention => {
            rank_culprits(&attribution.by_culprit, attribution.total_wait_ns, t)
        }
        _ => Vec::new(),
    };
    let summary = describe(w, kind, delayed, &attribution, &culprits, name);
    Assessment { kind, culprits, summary }
}

fn self_throttled(w: &PodWindow, t: &Thresholds) -> bool {
    let by_periods = match (w.nr_periods, w.nr_throttled) {
        (Some(periods), Some(throttled)) if periods >= t.min_periods.max(1) => {
            ratio(throttled.min(periods), periods) >= t.throttled_periods_ratio
        }
        _ => false,
    };
    by_periods || w.throttled_ns.is_some_and(|ns| ratio(ns, w.window_ns) >= t.throttled_share)
}

/// Without PSI the eBPF wait share stands in: it overstates delay when several tasks wait at once,
/// but the p99 and sample-size gates still apply.
fn cpu_delayed(w: &PodWindow, t: &Thresholds) -> bool {
    let delay = clean_share(w.cpu_some_share).unwrap_or_else(|| ratio(w.wait_ns, w.window_ns));
    delay >= t.cpu_delay_share && w.run_queue_p99_ns >= t.min_p99_ns && w.waits >= t.min_waits
}

/// Others are blamed before the pod itself: a neighbour taking a third of the wait is actionable
/// even when the pod also queues behind its own threads.
fn cpu_kind(a: &Attribution, t: &Thresholds) -> Option<VerdictKind> {
    let (pods, host, own) = a.class_shares();
    if pods >= host && pods >= t.min_attributed_share {
        Some(VerdictKind::Neighbour)
    } else if host >= t.min_attributed_share {
        Some(VerdictKind::Host)
    } else if own >= t.min_attributed_share {
        Some(VerdictKind::SelfContention)
    } else {
        None
    }
}

fn describe(
    w: &PodWindow,
    kind: VerdictKind,
    delayed: bool,
    a: &Attribution,
    culprits: &[CulpritShare],
    name: &dyn Fn(&CulpritKey) -> String,
) -> String {
    let (pods, host, own) = a.class_shares();
    match kind {
        VerdictKind::SelfThrottled => {
            let periods = match (w.nr_periods, w.nr_throttled) {
                (Some(p), Some(n)) => format!("throttled in {n} of {p} periods, "),
                _ => String::new(),
            };
            let time = w.throttled_ns.unwrap_or(0);
            let share = pct(ratio(time, w.window_ns));
            format!("{periods}{} throttled ({share} of the window); {}", duration(time), waited(w))
        }
        VerdictKind::Neighbour | VerdictKind::Host => {
            let (class, others) = if kind == VerdictKind::Neighbour { (pods, "other pods") } else { (host, "host") };
            let named: Vec<String> =
                culprits.iter().map(|c| format!("{} while {} ran", pct(c.share), name(&c.key))).collect();
            if named.is_empty() {
                format!("{}; {} while {others} ran, none alone above the listing threshold", waited(w), pct(class))
            } else {
                format!("{}; {}", waited(w), named.join(", "))
            }
        }
        VerdictKind::SelfContention => format!("{}; {} behind its own tasks", waited(w), pct(own)),
        VerdictKind::MemoryPressure => {
            format!("memory stalls {} of the window", pct(clean_share(w.memory_some_share).unwrap_or(0.0)))
        }
        VerdictKind::IoPressure => {
            format!("io stalls {} of the window", pct(clean_share(w.io_some_share).unwrap_or(0.0)))
        }
        VerdictKind::Healthy if delayed => {
            let idle = a.share(|k| *k == CulpritKey::Idle);
            // Unattributed and never-charged wait are the same to a reader: nobody known.
            let unknown = (1.0 - pods - host - own - idle).max(0.0);
            let (idle, unknown, pods, host, own) = (pct(idle), pct(unknown), pct(pods), pct(host), pct(own));
            format!(
                "{}; delay unattributed: {idle} idle CPU, {unknown} unknown, {pods} pods, {host} host, {own} itself",
                waited(w)
            )
        }
        VerdictKind::Healthy => format!("no notable delay: {}", waited(w)),
    }
}

fn waited(w: &PodWindow) -> String {
    let psi = clean_share(w.cpu_some_share).map(|s| format!(", cpu pressure {}", pct(s))).unwrap_or_default();
    format!(
        "waited {} ({} of the window, p99 {}{psi})",
        duration(w.wait_ns),
        pct(ratio(w.wait_ns, w.window_ns)),
        duration(w.run_queue_p99_ns)
    )
}

fn duration(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1e3)
    }
}

fn pct(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// A zero denominator means nothing was measured, which is no evidence of a problem.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Broken PSI readings are treated as absent rather than trusted; a stall share cannot exceed the window.
fn clean_share(share: Option<f64>) -> Option<f64> {
    share.filter(|s| s.is_finite() && *s >= 0.0).map(|s| s.min(1.0))
}
