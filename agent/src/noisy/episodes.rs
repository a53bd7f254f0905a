//! Hysteresis over per-window verdicts, and the NoisyNeighbour findings
//! (episodes) it opens, keeps and resolves. A single bad window never opens a
//! finding and a single good one never closes it, so findings do not flap.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use super::verdict::{
    assess_named, rank_culprits, Assessment, Attribution, CulpritKey, CulpritShare, PodWindow, Thresholds, VerdictKind,
};

/// Culprits remembered per episode: pod churn during a days-long episode must not grow memory without bound.
const MAX_TRACKED_CULPRITS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    /// Consecutive windows assessing the same unhealthy kind to switch to it [2]: one window can be a blip.
    pub enter_windows: u32,
    /// Consecutive windows of anything else to fall back to Healthy [3]: slower out than in, so an
    /// intermittent neighbour keeps one finding instead of a stream of them.
    pub exit_windows: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self { enter_windows: 2, exit_windows: 3 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Pods tracked at most [10_000]: far above any kubelet's max-pods, so only a bug or an attack hits it.
    pub max_pods: usize,
    /// Windows without an observation after which a pod is forgotten [12]: a minute at 5 s windows,
    /// enough to ride out a slow scrape but short enough to close findings of deleted pods.
    pub forget_after_windows: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_pods: 10_000, forget_after_windows: 12 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// Unique per detector.
    pub id: u64,
    /// Neighbour or Host only.
    pub kind: VerdictKind,
    /// Start of the first window of the streak that opened it.
    pub start_unix_nano: u64,
    /// End of the last window that assessed `kind`.
    pub last_unix_nano: u64,
    /// Windows that assessed `kind`; healthy windows inside the episode do not count.
    pub windows: u32,
    /// Wait per culprit summed over those windows, shares of their summed wait.
    pub culprits: Vec<CulpritShare>,
    /// The latest window that assessed `kind`.
    pub last: Assessment,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    Opened(Episode),
    Ongoing(Episode),
    Resolved(Episode),
}

impl Transition {
    pub fn episode(&self) -> &Episode {
        match self {
            Transition::Opened(e) | Transition::Ongoing(e) | Transition::Resolved(e) => e,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub stable: VerdictKind,
    pub since_unix_nano: u64,
    pub this_window: Assessment,
    pub transition: Option<Transition>,
    /// Resolved in this same window because the stable verdict switched straight to the other
    /// finding kind (Neighbour -> Host); report it before `transition`, which then is `Opened`.
    pub superseded: Option<Episode>,
}

/// Shares are recomputed from summed waits so a culprit that appears mid-episode weighs by its real time.
#[derive(Clone, Debug, Default)]
struct Accumulator {
    total_wait_ns: u64,
    by_culprit: BTreeMap<CulpritKey, u64>,
}

impl Accumulator {
    fn add(&mut self, a: &Attribution) {
        self.total_wait_ns = self.total_wait_ns.saturating_add(a.total_wait_ns);
        for (key, ns) in a.by_culprit.iter().filter(|(k, _)| matches!(k, CulpritKey::Pod(_) | CulpritKey::Host(_))) {
            let slot = self.by_culprit.entry(key.clone()).or_insert(0);
            *slot = slot.saturating_add(*ns);
        }
        while self.by_culprit.len() > MAX_TRACKED_CULPRITS {
            let smallest = self.by_culprit.iter().min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)));
            let smallest = smallest.map(|(k, _)| k.clone());
            match smallest {
                Some(key) => self.by_culprit.remove(&key),
                None => break,
            };
        }
    }
}

/// A run of windows assessing one kind other than the stable one.
#[derive(Clone, Debug)]
struct Candidate {
    kind: VerdictKind,
    streak: u32,
    start_unix_nano: u64,
    last_end_unix_nano: u64,
    acc: Accumulator,
}

#[derive(Clone, Debug)]
struct OpenEpisode {
    episode: Episode,
    acc: Accumulator,
}

/// One pod's hysteresis: the stable verdict, the run that may replace it, and its open episode.
#[derive(Clone, Debug)]
pub struct PodState {
    stable: VerdictKind,
    since_unix_nano: u64,
    candidate: Option<Candidate>,
    /// Consecutive windows not assessing the stable kind, and when the first of them started.
    away: u32,
    away_start_unix_nano: u64,
    open: Option<OpenEpisode>,
    last_seen_window: u64,
}

impl PodState {
    fn new(since_unix_nano: u64, window: u64) -> Self {
        Self {
            stable: VerdictKind::Healthy,
            since_unix_nano,
            candidate: None,
            away: 0,
            away_start_unix_nano: since_unix_nano,
            open: None,
            last_seen_window: window,
        }
    }

    pub fn stable(&self) -> VerdictKind {
        self.stable
    }

    pub fn since_unix_nano(&self) -> u64 {
        self.since_unix_nano
    }

    pub fn open_episode(&self) -> Option<&Episode> {
        self.open.as_ref().map(|o| &o.episode)
    }

    /// Advances the hysteresis by one window; returns the transition and any superseded episode.
    fn step(&mut self, this: &Assessment, a: &Attribution, span: (u64, u64), d: &mut Shared<'_>) -> Steps {
        let (start, end) = span;
        let previous = self.stable;
        let mut switched_from = None;
        if this.kind == self.stable {
            self.candidate = None;
            self.away = 0;
        } else {
            if self.away == 0 {
                self.away_start_unix_nano = start;
            }
            self.away = self.away.saturating_add(1);
            if this.kind == VerdictKind::Healthy {
                self.candidate = None;
            } else {
                let mut candidate = match self.candidate.take() {
                    Some(c) if c.kind == this.kind => c,
                    _ => Candidate {
                        kind: this.kind,
                        streak: 0,
                        start_unix_nano: start,
                        last_end_unix_nano: end,
                        acc: Accumulator::default(),
                    },
                };
                candidate.streak = candidate.streak.saturating_add(1);
                candidate.last_end_unix_nano = end;
                if this.kind.is_finding() {
                    candidate.acc.add(a);
                }
                if candidate.streak >= d.hysteresis.enter_windows.max(1) {
                    self.stable = this.kind;
                    self.since_unix_nano = candidate.start_unix_nano;
                    self.away = 0;
                    switched_from = Some(candidate);
                } else {
                    self.candidate = Some(candidate);
                }
            }
            if switched_from.is_none() && self.away >= d.hysteresis.exit_windows.max(1) {
                self.stable = VerdictKind::Healthy;
                self.since_unix_nano = self.away_start_unix_nano;
                self.away = 0;
            }
        }

        if self.stable == previous {
            let Some(open) = self.open.as_mut() else { return (None, None) };
            if this.kind == open.episode.kind {
                open.acc.add(a);
                open.episode.windows = open.episode.windows.saturating_add(1);
                open.episode.culprits = rank_culprits(&open.acc.by_culprit, open.acc.total_wait_ns, d.thresholds);
                open.episode.last = this.clone();
                open.episode.last_unix_nano = end;
            }
            return (Some(Transition::Ongoing(open.episode.clone())), None);
        }
        let resolved = self.open.take().map(|o| o.episode);
        let opened = switched_from.filter(|c| c.kind.is_finding()).map(|c| {
            *d.next_id += 1;
            let episode = Episode {
                id: *d.next_id,
                kind: c.kind,
                start_unix_nano: c.start_unix_nano,
                last_unix_nano: c.last_end_unix_nano,
                windows: c.streak,
                culprits: rank_culprits(&c.acc.by_culprit, c.acc.total_wait_ns, d.thresholds),
                last: this.clone(),
            };
            self.open = Some(OpenEpisode { episode: episode.clone(), acc: c.acc });
            episode
        });
        match (opened, resolved) {
            (Some(o), resolved) => (Some(Transition::Opened(o)), resolved),
            (None, Some(r)) => (Some(Transition::Resolved(r)), None),
            (None, None) => (None, None),
        }
    }
}

type Steps = (Option<Transition>, Option<Episode>);

/// Detector-wide settings and counters a pod's step needs, borrowed apart from the pod map.
struct Shared<'a> {
    thresholds: &'a Thresholds,
    hysteresis: &'a Hysteresis,
    next_id: &'a mut u64,
}

#[derive(Clone, Debug)]
pub struct Detector {
    thresholds: Thresholds,
    hysteresis: Hysteresis,
    limits: Limits,
    pods: BTreeMap<String, PodState>,
    window: u64,
    next_id: u64,
    untracked: u64,
}

impl Detector {
    pub fn new(t: Thresholds, h: Hysteresis) -> Self {
        Self::with_limits(t, h, Limits::default())
    }

    pub fn with_limits(t: Thresholds, h: Hysteresis, limits: Limits) -> Self {
        Self { thresholds: t, hysteresis: h, limits, pods: BTreeMap::new(), window: 0, next_id: 0, untracked: 0 }
    }

    /// One window for one pod (key: pod uid), culprits named by their `Display` form.
    pub fn observe(
        &mut self,
        pod: &str,
        window_start_unix_nano: u64,
        window_end_unix_nano: u64,
        w: &PodWindow,
    ) -> Observation {
        self.observe_named(pod, window_start_unix_nano, window_end_unix_nano, w, &|k: &CulpritKey| k.to_string())
    }

    /// One window for one pod; `name` renders culprit keys in the summaries.
    /// A new pod beyond `max_pods` is assessed but not tracked, so it stays Healthy and opens nothing.
    pub fn observe_named(
        &mut self,
        pod: &str,
        window_start_unix_nano: u64,
        window_end_unix_nano: u64,
        w: &PodWindow,
        name: &dyn Fn(&CulpritKey) -> String,
    ) -> Observation {
        let this = assess_named(w, &self.thresholds, name);
        let tracked = self.pods.len();
        let state = match self.pods.entry(pod.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if tracked >= self.limits.max_pods => {
                self.untracked = self.untracked.saturating_add(1);
                return Observation {
                    stable: VerdictKind::Healthy,
                    since_unix_nano: window_start_unix_nano,
                    this_window: this,
                    transition: None,
                    superseded: None,
                };
            }
            Entry::Vacant(e) => e.insert(PodState::new(window_start_unix_nano, self.window)),
        };
        state.last_seen_window = self.window;
        let mut shared =
            Shared { thresholds: &self.thresholds, hysteresis: &self.hysteresis, next_id: &mut self.next_id };
        let span = (window_start_unix_nano, window_end_unix_nano);
        let (transition, superseded) = state.step(&this, &Attribution::of(w), span, &mut shared);
        Observation {
            stable: state.stable,
            since_unix_nano: state.since_unix_nano,
            this_window: this,
            transition,
            superseded,
        }
    }

    /// Call once per window after all observe() calls: forgets pods not seen for `forget_after_windows`
    /// windows, resolving their open episodes. Those end at their last evidence, not at this window's
    /// end, so the end time is not needed here.
    pub fn end_window(&mut self, _window_end_unix_nano: u64) -> Vec<(String, Transition)> {
        let now = self.window;
        let forget = self.limits.forget_after_windows.max(1);
        let mut resolved = Vec::new();
        self.pods.retain(|uid, state| {
            let keep = now.saturating_sub(state.last_seen_window) < forget;
            if !keep {
                if let Some(open) = state.open.take() {
                    resolved.push((uid.clone(), Transition::Resolved(open.episode)));
                }
            }
            keep
        });
        self.window = self.window.saturating_add(1);
        resolved
    }

    pub fn pod(&self, uid: &str) -> Option<&PodState> {
        self.pods.get(uid)
    }

    pub fn tracked_pods(&self) -> usize {
        self.pods.len()
    }

    /// Observations of new pods refused because `max_pods` was reached.
    pub fn untracked_observations(&self) -> u64 {
        self.untracked
    }
}
