//! The agent's data path in userspace: every interval, drain the kernel flow
//! maps, merge overflow events, resolve identities, add the window's DNS
//! records and name flows from DNS answers, attach the loss report and publish
//! one batch. Kernel events and DNS packets are read continuously in between.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use podlens_proto::v1 as pb;
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::{
    admin::{Telemetry, WindowStats},
    dns::{self, fqdn::Owner, DnsSource},
    ebpf::{clock::TickClock, events, Kernel},
    flows::{monotonic_ns, unix_nanos, Clock, FlowWindow, Initiators},
    identity::Resolver,
    losses::LossTracker,
    pressure::{CgroupInfo, PressureSource},
};

/// Where batches go: the embedded collector, the exporter, or both.
pub trait Sink: Send + Sync {
    fn publish(&self, batch: pb::Batch);

    /// This sink's own loss counters (source, reason, cumulative total).
    fn losses(&self) -> Vec<(&'static str, &'static str, u64)> {
        Vec::new()
    }
}

/// Several sinks, each receiving every batch.
pub struct Fanout(pub Vec<Arc<dyn Sink>>);

impl Sink for Fanout {
    fn publish(&self, batch: pb::Batch) {
        if let Some((last, rest)) = self.0.split_last() {
            for s in rest {
                s.publish(batch.clone());
            }
            last.publish(batch);
        }
    }

    fn losses(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.0.iter().flat_map(|s| s.losses()).collect()
    }
}

/// Records per batch: a full window is split so no message nears the
/// collector's size limit (a flow record is about 150 bytes encoded).
pub const MAX_RECORDS_PER_BATCH: usize = 2000;

/// Userspace drop points, cumulative.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserCounters {
    pub event_decode_errors: u64,
    pub cgroup_paths_truncated: u64,
    pub drain_errors: u64,
}

/// How often the ring buffer is read when the kernel does not wake us.
const EVENT_POLL: Duration = Duration::from_millis(200);
/// Earliest a map-full overflow may force an extra drain after the last one.
const MIN_EARLY_DRAIN: Duration = Duration::from_secs(1);

/// The DNS ring and what reads it.
struct DnsPath {
    ring: AsyncFd<RingBuf<MapData>>,
    source: DnsSource,
}

pub struct Pipeline {
    kernel: Kernel,
    events: AsyncFd<RingBuf<MapData>>,
    dns: Option<DnsPath>,
    pressure: Option<PressureSource>,
    pub resolver: Resolver,
    window: FlowWindow,
    initiators: Initiators,
    window_start: u64,
    last_drain: Instant,
    node: pb::NodeIdentity,
    sequence: u64,
    losses: LossTracker,
    user: UserCounters,
    overflow_pending: bool,
    /// The first jiffies/monotonic sample: the far end for measuring the tick.
    first_clock: podlens_agent_ebpf::ClockSample,
    sink: Arc<dyn Sink>,
    telemetry: Option<Arc<Telemetry>>,
    /// Records produced since start, per kind, and windows drained.
    produced: BTreeMap<&'static str, u64>,
    windows: u64,
    /// The counters of the last loss report, for /metrics.
    last_totals: Vec<(&'static str, &'static str, u64)>,
}

fn kind_name(r: &pb::Record) -> &'static str {
    match &r.kind {
        Some(pb::record::Kind::Flow(_)) => "flow",
        Some(pb::record::Kind::Dns(_)) => "dns",
        Some(pb::record::Kind::Pressure(_)) => "pressure",
        Some(pb::record::Kind::Finding(_)) => "finding",
        Some(pb::record::Kind::Loss(_)) => "loss",
        _ => "other",
    }
}

impl Pipeline {
    /// `dns`: the DNS analysis settings, None when DNS is off; `pressure`:
    /// the pressure source, None when pressure reporting is off.
    pub fn new(
        mut kernel: Kernel,
        resolver: Resolver,
        node: pb::NodeIdentity,
        sink: Arc<dyn Sink>,
        dns: Option<dns::Config>,
        pressure: Option<PressureSource>,
    ) -> std::io::Result<Self> {
        let ring = kernel.take_events().ok_or_else(|| std::io::Error::other("events ring buffer already taken"))?;
        let first_clock = kernel.clock_sample().map_err(std::io::Error::other)?;
        let events = readable(ring)?;
        let dns = match dns {
            Some(cfg) => {
                let ring = kernel.take_dns_events().ok_or_else(|| std::io::Error::other("DNS ring already taken"))?;
                Some(DnsPath { ring: readable(ring)?, source: DnsSource::new(cfg) })
            }
            None => None,
        };
        Ok(Self {
            kernel,
            events,
            dns,
            pressure,
            resolver,
            window: FlowWindow::default(),
            initiators: Initiators::default(),
            window_start: unix_nanos(std::time::SystemTime::now()),
            last_drain: Instant::now(),
            node,
            sequence: 0,
            losses: LossTracker::default(),
            user: UserCounters::default(),
            overflow_pending: false,
            first_clock,
            sink,
            telemetry: None,
            produced: BTreeMap::new(),
            windows: 0,
            last_totals: Vec::new(),
        })
    }

    /// Reports every window's counters to `telemetry` (for /metrics).
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Reads every pending DNS packet; returns how many.
    pub fn poll_dns(&mut self) -> usize {
        let Some(dns) = &mut self.dns else { return 0 };
        let resolver = &self.resolver;
        let ring = dns.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            n += 1;
            match events::decode(&item) {
                Ok(events::Event::Dns(p)) => dns.source.packet(&p, |id| resolver.fqdn_owner(id)),
                Ok(other) => {
                    self.user.event_decode_errors += 1;
                    tracing::warn!(event = ?other, "non-DNS event on the DNS ring");
                }
                Err(e) => {
                    self.user.event_decode_errors += 1;
                    tracing::warn!(error = %e, "undecodable DNS event");
                }
            }
        }
        n
    }

    /// Reads every pending kernel event; returns how many.
    pub fn poll_events(&mut self) -> usize {
        let mut n = 0;
        let ring = self.events.get_mut();
        while let Some(item) = ring.next() {
            n += 1;
            match events::decode(&item) {
                Ok(events::Event::FlowOverflow(e)) => {
                    self.window.add_overflow(&e);
                    self.overflow_pending = true;
                }
                Ok(events::Event::CgroupMkdir { id, path }) => {
                    if events::path_truncated(&path) {
                        // A cut path would misattribute: let a rescan find the real one.
                        self.user.cgroup_paths_truncated += 1;
                    } else {
                        self.resolver.cgroups.insert(id, &path);
                    }
                }
                Ok(events::Event::CgroupRmdir { id, path }) => {
                    if events::path_truncated(&path) {
                        self.user.cgroup_paths_truncated += 1;
                    }
                    // A known id keeps its full path; a cut one is never stored.
                    self.resolver.cgroups.remove(
                        id,
                        (!events::path_truncated(&path)).then_some(path.as_str()),
                        Instant::now(),
                    );
                }
                Ok(events::Event::Dns(_)) => {
                    // the kernel writes DNS only to its own ring
                    self.user.event_decode_errors += 1;
                    tracing::warn!("DNS event on the events ring");
                }
                Err(e) => {
                    self.user.event_decode_errors += 1;
                    tracing::warn!(error = %e, "undecodable kernel event");
                }
            }
        }
        n
    }

    /// Ends the window: drains the kernel, builds and publishes one batch.
    pub fn end_window(&mut self) -> usize {
        let mut entries = Vec::new();
        let drained = tokio::task::block_in_place(|| self.kernel.flow_maps.drain(&mut entries));
        if let Err(e) = &drained {
            // What was read before the error is still published below.
            self.user.drain_errors += 1;
            tracing::error!(error = %e, recovered = entries.len(), "draining the flow maps failed");
        }
        // Overflow events submitted before the swap are already in the ring.
        self.poll_events();
        self.poll_dns();
        let now_mono = monotonic_ns();
        let dns_window = self.dns.as_mut().map(|d| {
            d.source.tick(now_mono);
            d.source.take_window(now_mono)
        });
        let ticks = match self.kernel.clock_sample() {
            Ok(now) => TickClock::calibrate(self.first_clock, now),
            Err(e) => {
                // Counts are unaffected; only first/last seen lose their anchor.
                self.user.drain_errors += 1;
                tracing::warn!(error = %e, "sampling the kernel clocks failed");
                TickClock::calibrate(self.first_clock, self.first_clock)
            }
        };
        self.window.add_kernel(entries, &ticks);
        self.last_drain = Instant::now();
        self.overflow_pending = false;

        let window_end = unix_nanos(std::time::SystemTime::now());
        let window = (self.window_start, window_end);
        self.window_start = window_end;
        let flows = std::mem::take(&mut self.window);
        let flow_entries = flows.len() as u64;
        let bad_direction = flows.bad_overflow_events;
        let clock = Clock::now();
        let dns_ids: Vec<u64> = dns_window.iter().flat_map(|w| w.cgroup_ids()).collect();
        let cgroups: Vec<CgroupInfo> = match &self.pressure {
            Some(_) => self
                .resolver
                .cgroups
                .entries()
                .map(|(id, path, removed)| CgroupInfo { id, path: path.to_string(), removed })
                .collect(),
            None => Vec::new(),
        };
        let mut records = {
            let mut ids = self.resolver.window(flows.cgroup_ids().chain(dns_ids).collect::<Vec<_>>());
            let mut records = flows.into_records(&self.node.name, window, &clock, &mut ids, &mut self.initiators);
            if let (Some(w), Some(d)) = (dns_window, &self.dns) {
                records.extend(w.into_records(&d.source.config().limits, |id| ids.workload(id)).into_iter().map(|r| {
                    pb::Record {
                        node: self.node.name.clone(),
                        window_start_unix_nano: window.0,
                        window_end_unix_nano: window.1,
                        kind: Some(pb::record::Kind::Dns(r)),
                    }
                }));
            }
            if let Some(p) = &mut self.pressure {
                // cgroup files: a few reads per pod
                let kinds = tokio::task::block_in_place(|| p.window(&cgroups, window, &mut ids));
                records.extend(kinds.into_iter().map(|kind| pb::Record {
                    node: self.node.name.clone(),
                    window_start_unix_nano: window.0,
                    window_end_unix_nano: window.1,
                    kind: Some(kind),
                }));
            }
            records
        };
        if let Some(d) = &self.dns {
            name_flows(&mut records, &d.source, now_mono);
        }
        let n = records.len();
        self.user.event_decode_errors += bad_direction;
        records.push(pb::Record {
            node: self.node.name.clone(),
            window_start_unix_nano: window.0,
            window_end_unix_nano: window.1,
            kind: Some(pb::record::Kind::Loss(self.loss_report())),
        });
        self.windows += 1;
        for r in &records {
            *self.produced.entry(kind_name(r)).or_default() += 1;
        }
        if let Some(t) = &self.telemetry {
            t.window_done(WindowStats {
                counters: self.last_totals.clone(),
                records: self.produced.iter().map(|(k, v)| (*k, *v)).collect(),
                windows: self.windows,
                flow_map_entries: flow_entries,
                tcp_connections_tracked: self.initiators.len() as u64,
                last_window_unix_seconds: window.1 / 1_000_000_000,
            });
        }
        // The loss report travels in the window's last batch.
        let mut rest = records.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<pb::Record> = rest.by_ref().take(MAX_RECORDS_PER_BATCH).collect();
            self.sequence += 1;
            // each pod's identity travels once per batch
            self.sink.publish(podlens_proto::compact::compact(self.node.clone(), self.sequence, chunk));
        }
        n
    }

    fn loss_report(&mut self) -> pb::LossReport {
        let mut totals: Vec<(&'static str, &'static str, u64)> = Vec::new();
        match self.kernel.counters() {
            Ok(counters) => totals.extend(counters.into_iter().map(|(c, v)| (c.source(), c.name(), v))),
            Err(e) => tracing::warn!(error = %e, "reading kernel counters failed"),
        }
        let id = self.resolver.stats();
        totals.extend([
            ("ringbuf", "decode_error", self.user.event_decode_errors),
            ("identity", "cgroup_path_truncated", self.user.cgroup_paths_truncated),
            ("identity", "unresolved_cgroup", id.unresolved_cgroups),
            ("identity", "unknown_layout", id.unknown_layouts),
            ("identity", "pod_without_metadata", id.pods_without_metadata),
            ("agent", "drain_error", self.user.drain_errors),
            ("flows", "initiator_untracked", self.initiators.untracked),
        ]);
        if let Some(d) = &self.dns {
            totals.extend(d.source.losses());
        }
        if let Some(p) = &self.pressure {
            totals.extend(p.losses());
        }
        totals.extend(self.sink.losses());
        self.last_totals.clone_from(&totals);
        self.losses.report(totals)
    }

    /// Runs until `shutdown` flips, then flushes one last window.
    pub async fn run(mut self, interval: Duration, mut shutdown: watch::Receiver<bool>) -> Self {
        self.initiators.set_idle(crate::flows::initiator::DEFAULT_IDLE, interval);
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval_at(start + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(EVENT_POLL);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.drain_logged(),
                ready = self.events.readable_mut() => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    self.poll_events();
                }
                ready = dns_readable(&mut self.dns) => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    // cgroup events first: a new pod's path names the owner
                    // of its first DNS answers
                    self.poll_events();
                    self.poll_dns();
                }
                _ = poll.tick() => {
                    self.poll_events();
                    self.poll_dns();
                    if let Some(d) = &mut self.dns {
                        d.source.tick(monotonic_ns());
                    }
                }
            }
            if self.overflow_pending && self.last_drain.elapsed() >= MIN_EARLY_DRAIN {
                tracing::info!("flow map full: draining early");
                self.drain_logged();
                tick.reset();
            }
        }
        self.drain_logged();
        self
    }

    fn drain_logged(&mut self) {
        let n = self.end_window();
        tracing::debug!(flows = n, sequence = self.sequence, "window published");
    }
}

fn readable(ring: RingBuf<MapData>) -> std::io::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // for as long as the AsyncFd owns the ring buffer.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Readiness of the DNS ring; never ready when DNS is off.
async fn dns_readable(
    dns: &mut Option<DnsPath>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match dns {
        Some(d) => d.ring.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Stamps each flow's remote end with the name its workload resolved the
/// address from, when the DNS answers gave one.
fn name_flows(records: &mut [pb::Record], dns: &DnsSource, now_mono: u64) {
    for r in records {
        let Some(pb::record::Kind::Flow(f)) = &mut r.kind else { continue };
        let Some(local) = &f.local else { continue };
        let owner = match &local.kind {
            Some(pb::workload::Kind::Pod(p)) => Owner::Pod(p.uid.clone()),
            _ => Owner::Cgroup(local.cgroup_id),
        };
        let cgroup_id = local.cgroup_id;
        let Some(remote) = &mut f.remote else { continue };
        let Ok(ip) = remote.ip.parse() else { continue };
        // An answer that arrived before its cgroup's path was known is filed
        // under the cgroup, not the pod.
        let name = dns.fqdn(&owner, ip, now_mono).or_else(|| match owner {
            Owner::Pod(_) => dns.fqdn(&Owner::Cgroup(cgroup_id), ip, now_mono),
            Owner::Cgroup(_) => None,
        });
        if let Some(name) = name {
            remote.fqdn = name.to_string();
        }
    }
}
