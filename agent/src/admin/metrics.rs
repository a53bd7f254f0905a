//! /metrics of the agent, built from [`Telemetry`] at scrape time.

use std::sync::atomic::Ordering;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use podlens_collector::metrics::{counter, gauge};

use super::{process, readiness::Latch, Telemetry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabel {
    source: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatchLabel {
    latch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabel {
    feature: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabel {
    version: String,
    node: String,
}

fn float_counter(r: &mut Registry, name: &str, help: &str, value: f64) {
    let c: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    c.inc_by(value);
    r.register(name, help, c);
}

fn float_gauge(r: &mut Registry, name: &str, help: &str, value: f64) {
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(value);
    r.register(name, help, g);
}

fn saturating(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn render(t: &Telemetry) -> String {
    let mut r = Registry::with_prefix("podlens_agent");
    let info = Family::<InfoLabel, Gauge>::default();
    info.get_or_create(&InfoLabel { version: env!("CARGO_PKG_VERSION").to_owned(), node: t.node.clone() }).set(1);
    r.register("info", "The agent's version and node (always 1)", info);

    let ready = Family::<LatchLabel, Gauge>::default();
    for latch in Latch::ALL {
        ready.get_or_create(&LatchLabel { latch: latch.name().to_owned() }).set(i64::from(t.ready.is_released(latch)));
    }
    r.register("ready", "Readiness latches released (1) or pending (0)", ready);

    let features = Family::<FeatureLabel, Gauge>::default();
    for (feature, state) in t.features() {
        features.get_or_create(&FeatureLabel { feature, state }).set(1);
    }
    r.register(
        "feature",
        "How each optional feature runs on this node (1): sched = schedinfo | wakeup_probes | off, \
         cgroup_events = on | rescans, dns = on | off",
        features,
    );

    let w = t.window();
    let losses = Family::<CounterLabel, Counter>::default();
    for (source, reason, total) in &w.counters {
        losses
            .get_or_create(&CounterLabel { source: (*source).to_owned(), reason: (*reason).to_owned() })
            .inc_by(*total);
    }
    r.register(
        "losses",
        "Every loss, error and activity counter of the data path, as carried in the stream's loss reports \
         (sources ending in _activity are not losses)",
        losses,
    );
    let records = Family::<KindLabel, Counter>::default();
    for (kind, n) in &w.records {
        records.get_or_create(&KindLabel { kind: (*kind).to_owned() }).inc_by(*n);
    }
    r.register("records", "Records produced, per kind", records);
    counter(&mut r, "windows", "Windows drained", w.windows);
    gauge(
        &mut r,
        "flow_map_entries",
        "Distinct flows in the kernel map at the last drain",
        saturating(w.flow_map_entries),
    );
    gauge(
        &mut r,
        "flow_map_capacity",
        "Flows the kernel map holds per window (--flow-map-entries)",
        saturating(t.flow_map_capacity),
    );
    gauge(
        &mut r,
        "tcp_connections_tracked",
        "TCP connections whose opening end is remembered",
        saturating(w.tcp_connections_tracked),
    );
    gauge(
        &mut r,
        "last_window_timestamp_seconds",
        "When the last window was drained",
        saturating(w.last_window_unix_seconds),
    );

    if let Some(e) = &t.exporter {
        let (bytes, limit, batches) = {
            let b = e.lock();
            (b.bytes() as u64, b.limit() as u64, b.len() as u64)
        };
        gauge(&mut r, "export_buffer_bytes", "Encoded bytes of unacknowledged batches held", saturating(bytes));
        gauge(
            &mut r,
            "export_buffer_limit_bytes",
            "The export buffer's bound (--export-buffer-bytes)",
            saturating(limit),
        );
        gauge(&mut r, "export_buffer_batches", "Unacknowledged batches held", saturating(batches));
        let s = &e.stream;
        gauge(
            &mut r,
            "stream_connected",
            "The collector stream is open (1) or not (0)",
            i64::from(s.connected.load(Ordering::Acquire)),
        );
        counter(&mut r, "stream_connects", "Collector streams opened", s.connects.load(Ordering::Relaxed));
        counter(
            &mut r,
            "stream_failures",
            "Collector connections or streams that failed",
            s.failures.load(Ordering::Relaxed),
        );
    }

    let p = process::read();
    float_counter(&mut r, "process_cpu_seconds", "CPU time of the agent process (user + system)", p.cpu_seconds);
    gauge(
        &mut r,
        "process_resident_memory_bytes",
        "Resident memory of the agent process",
        saturating(p.resident_bytes),
    );
    gauge(&mut r, "process_open_fds", "Open file descriptors", saturating(p.open_fds));
    float_gauge(&mut r, "process_start_time_seconds", "Start time, Unix seconds", p.start_time_seconds);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}
