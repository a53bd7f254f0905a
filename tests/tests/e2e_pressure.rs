//! Tier 3, pressure and noisy neighbours: the real agent with its scheduler
//! probes, emulated pods pinned to one CPU (a victim that wakes every
//! millisecond and measures its own lateness, CPU burners as culprits), a
//! burner in a host cgroup, and a pod throttled by its own CFS quota.
//!
//! Windows are 1 s. A finding needs two windows that say so (the detector's
//! default hysteresis), so it must name the culprit in a window ending at most
//! three windows after the culprit started (the partial one plus two).

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use podlens_e2e::{
    agent::{Agent, Observer},
    cluster::{write_inventory, Driver, Node, Pod, Proc, Qos},
    cpu_limit::{v1_cpu_mount, CpuQuota},
    privileged::unique,
};
use podlens_proto::v1::{self as pb, record::Kind};

const SEC: u64 = 1_000_000_000;

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_nanos() as u64
}

/// The CPU the victim and culprits share: the last one, away from CPU 0.
fn shared_cpu() -> String {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n - 1).to_string()
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&d).expect("test dir");
    eprintln!("logs: {}", d.display());
    d
}

/// The agent with the scheduler probes required, timing waits as `timing` says.
fn start_agent(node: &str, pods: &[&Pod], dir: &std::path::Path, timing: &str) -> (Agent, Observer) {
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, node, pods);
    let inv = inventory.display().to_string();
    let agent = Agent::start(node, "1s", &["--pods-file", &inv, "--sched", "on", "--sched-timing", timing], dir);
    let observer = Observer::connect(agent.addr, pb::ObserveRequest::default());
    (agent, observer)
}

fn pod_uid(w: Option<&pb::Workload>) -> Option<&str> {
    match w?.kind.as_ref()? {
        pb::workload::Kind::Pod(p) => Some(p.uid.as_str()),
        pb::workload::Kind::Host(_) => None,
    }
}

/// Pod-level pressure records of `pod` (those carry the verdict), with their window end.
fn pod_pressure<'a>(records: &'a [pb::Record], pod: &Pod) -> Vec<(u64, &'a pb::PressureRecord)> {
    records
        .iter()
        .filter_map(|r| match &r.kind {
            Some(Kind::Pressure(p)) if p.verdict.is_some() && pod_uid(p.local.as_ref()) == Some(pod.uid.as_str()) => {
                Some((r.window_end_unix_nano, p))
            }
            _ => None,
        })
        .collect()
}

/// Noisy-neighbour findings whose victim is `pod`, with their window end.
fn findings_for<'a>(records: &'a [pb::Record], pod: &Pod) -> Vec<(u64, &'a pb::Finding, &'a pb::NoisyNeighbour)> {
    records
        .iter()
        .filter_map(|r| match &r.kind {
            Some(Kind::Finding(f)) => match &f.detail {
                Some(pb::finding::Detail::NoisyNeighbour(n))
                    if pod_uid(n.victim.as_ref()) == Some(pod.uid.as_str()) =>
                {
                    Some((r.window_end_unix_nano, f, n))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn verdicts(records: &[(u64, &pb::PressureRecord)]) -> Vec<String> {
    records
        .iter()
        .map(|(_, p)| {
            let v = p.verdict.clone().unwrap_or_default();
            format!("{:?}/{:?}: {}", v.kind(), v.window_kind(), v.summary)
        })
        .collect()
}

#[test]
fn neighbour_is_named_within_two_windows_after_a_quiet_control_run() {
    let d = dir("nn");
    let cpu = shared_cpu();
    let mut node = Node::new(Driver::Systemd);
    let victim = node.pod("shop", "checkout", Qos::Burstable);
    let culprit = node.pod("batch", "cruncher", Qos::BestEffort);
    let (mut agent, observer) = start_agent("node-nn", &[&victim, &culprit], &d, "schedinfo");

    // Control: the victim alone for at least 10 windows.
    let control_s = 12;
    let culprit_s = 8;
    let total_s = (control_s + culprit_s + 1).to_string();
    let victim_start = unix_nanos(SystemTime::now());
    let victim_proc: Proc =
        victim.spawn(&["victim", "--cpu", &cpu, "--period-us", "1000", "--work-us", "200", "--seconds", &total_s]);
    let quiet = observer.wait_until(Duration::from_secs(40), |r| {
        pod_pressure(r, &victim)
            .iter()
            .filter(|(_, p)| p.run_queue.as_ref().is_some_and(|q| q.wakeup_waits > 0))
            .count()
            >= 11
    });
    let control = pod_pressure(&quiet, &victim);
    assert!(findings_for(&quiet, &victim).is_empty(), "no finding without a culprit: {:#?}", verdicts(&control));
    for (_, p) in &control {
        let v = p.verdict.clone().unwrap_or_default();
        assert_eq!(v.kind(), pb::VerdictKind::Healthy, "control run: {:#?}", verdicts(&control));
    }

    // The culprit starts burning the same CPU.
    let t0 = unix_nanos(SystemTime::now());
    let burner = culprit.spawn(&["burn", "--cpu", &cpu, "--threads", "3", "--seconds", &culprit_s.to_string()]);
    let seen = observer.wait_until(Duration::from_secs(20), |r| !findings_for(r, &victim).is_empty());
    let found = findings_for(&seen, &victim);
    let (end, f, nn) = found.first().unwrap_or_else(|| {
        panic!("no finding for the victim; verdicts: {:#?}", verdicts(&pod_pressure(&seen, &victim)))
    });
    assert_eq!(f.state(), pb::FindingState::Open);
    assert_eq!(nn.verdict(), pb::VerdictKind::Neighbour, "{f:#?}");
    assert!(*end <= t0 + 3 * SEC + SEC / 2, "named {} ms after the culprit started", (end - t0) / 1_000_000);
    let top = nn.culprits.first().expect("culprits");
    assert_eq!(top.kind(), pb::CulpritKind::Pod, "{f:#?}");
    assert_eq!(pod_uid(top.workload.as_ref()), Some(culprit.uid.as_str()), "{f:#?}");
    assert!(top.share >= 0.5, "the culprit caused most of the wait: {f:#?}");
    match top.workload.as_ref().and_then(|w| w.kind.as_ref()) {
        Some(pb::workload::Kind::Pod(p)) => assert_eq!((p.namespace.as_str(), p.name.as_str()), ("batch", "cruncher")),
        other => panic!("culprit identity: {other:?}"),
    }
    assert!(f.summary.contains("batch/cruncher"), "summary names the culprit: {}", f.summary);

    // The agent's run-queue latency against the victim's own measurement.
    let own = victim_proc.wait_json(Duration::from_secs(60));
    let own = own.iter().find(|v| v["role"] == "victim").expect("victim report");
    let (wakeups, late_sum) = (own["wakeups"].as_u64().unwrap(), own["late_sum_ns"].as_u64().unwrap());
    burner.wait_json(Duration::from_secs(30));
    // the victim's last waits are in the window that holds its exit: wait for the one after
    let exited = unix_nanos(SystemTime::now());
    let all = observer.wait_until(Duration::from_secs(10), |r| {
        pod_pressure(r, &victim).last().is_some_and(|(end, _)| *end > exited + SEC + SEC / 2)
    });
    let (mut waits, mut wait_ns) = (0u64, 0u64);
    let per_window: Vec<(i64, u64)> = pod_pressure(&all, &victim)
        .iter()
        .map(|(end, p)| {
            let ms = (*end as i64 - victim_start as i64) / 1_000_000;
            (ms, p.run_queue.as_ref().map_or(0, |q| q.wakeup_waits + q.preempt_waits))
        })
        .collect();
    eprintln!("agent waits per window: {per_window:?}");
    for (_, p) in pod_pressure(&all, &victim) {
        let q = p.run_queue.clone().unwrap_or_default();
        waits += q.wakeup_waits + q.preempt_waits;
        wait_ns += q.wakeup_wait_ns + q.preempt_wait_ns;
    }
    let sched_counters: Vec<String> = all
        .iter()
        .rev()
        .find_map(|r| match &r.kind {
            Some(Kind::Loss(l)) => Some(l),
            _ => None,
        })
        .map(|l| {
            l.counters
                .iter()
                .filter(|c| c.source.starts_with("kernel_sched") || c.source == "pressure")
                .map(|c| format!("{}/{}={}", c.source, c.reason, c.total))
                .collect()
        })
        .unwrap_or_default();
    eprintln!("scheduler counters: {sched_counters:?}");
    let agent_mean = wait_ns / wakeups;
    let own_mean = late_sum / wakeups;
    eprintln!(
        "victim: {wakeups} wakeups, lateness mean {own_mean} ns; agent: {waits} waits, wait per wakeup {agent_mean} ns"
    );
    // The victim's lateness = timer latency (tens of µs here) + run-queue wait;
    // the agent sees the run-queue part.
    // Every sleep ends in a wakeup the scheduler queues; preemptions add waits of their own.
    let slept = own["slept"].as_u64().unwrap();
    assert!(waits >= slept * 99 / 100, "the agent saw the victim's wakeups: {waits} waits, {slept} sleeps");
    assert!(agent_mean <= own_mean + 20_000, "agent {agent_mean} ns vs victim {own_mean} ns per wakeup");
    assert!(
        agent_mean + 100_000 + own_mean / 5 >= own_mean,
        "agent {agent_mean} ns vs victim {own_mean} ns per wakeup (tolerance 100 µs + 20 %)"
    );
    agent.stop();
}

/// Also covers the wakeup-probe timing (kernels without schedinfo).
#[test]
fn a_host_process_is_reported_as_the_host() {
    let d = dir("nnhost");
    let cpu = shared_cpu();
    let mut node = Node::new(Driver::Cgroupfs);
    let victim = node.pod("shop", "checkout", Qos::Guaranteed);
    let unit = node.host_unit("system.slice/backup.service");
    let (mut agent, observer) = start_agent("node-host", &[&victim], &d, "wakeup-probes");
    let _victim = victim.spawn(&["victim", "--cpu", &cpu, "--work-us", "200", "--seconds", "12"]);
    std::thread::sleep(Duration::from_secs(2));
    let _burner = node.spawn_in(&unit, &node.netns, &["burn", "--cpu", &cpu, "--threads", "3", "--seconds", "9"]);
    let seen = observer.wait_until(Duration::from_secs(20), |r| !findings_for(r, &victim).is_empty());
    let found = findings_for(&seen, &victim);
    let (_, f, nn) = found.first().unwrap_or_else(|| {
        panic!("no finding for the victim; verdicts: {:#?}", verdicts(&pod_pressure(&seen, &victim)))
    });
    assert_eq!(nn.verdict(), pb::VerdictKind::Host, "{f:#?}");
    let top = nn.culprits.first().expect("culprits");
    assert_eq!(top.kind(), pb::CulpritKind::Host, "{f:#?}");
    let path = top.workload.as_ref().map(|w| w.cgroup_path.as_str()).unwrap_or_default();
    assert!(path.ends_with("system.slice/backup.service"), "culprit cgroup {path}");
    agent.stop();
}

#[test]
fn a_pod_over_its_own_quota_is_self_throttled_and_the_files_match() {
    let d = dir("throttle");
    let mut node = Node::new(Driver::Systemd);
    let pod = node.pod("batch", "capped", Qos::Burstable);
    let quota = CpuQuota::apply(&pod.pod_cgroup, 20_000, 100_000);
    let (mut agent, observer) = start_agent("node-throttle", &[&pod], &d, "auto");
    let mut args: Vec<String> = quota.podrun_args();
    args.extend(["burn", "--threads", "1", "--seconds", "6"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let burner = pod.spawn(&argv);
    let seen = observer.wait_until(Duration::from_secs(20), |r| {
        pod_pressure(r, &pod)
            .iter()
            .any(|(_, p)| p.verdict.as_ref().is_some_and(|v| v.kind() == pb::VerdictKind::SelfThrottled))
    });
    let records = pod_pressure(&seen, &pod);
    assert!(
        records.iter().any(|(_, p)| p.verdict.as_ref().is_some_and(|v| v.kind() == pb::VerdictKind::SelfThrottled)),
        "{:#?}",
        verdicts(&records)
    );
    let throttled = records
        .iter()
        .filter_map(|(_, p)| p.cpu_stat.as_ref())
        .find(|c| c.nr_throttled.is_some_and(|n| n.delta > 0) && c.throttled_usec.is_some_and(|t| t.delta > 0));
    let c = throttled.unwrap_or_else(|| panic!("no throttling in the records: {records:#?}"));
    let want_source = if quota.v1_dir.is_some() { "cgroup1" } else { "cgroup2" };
    assert_eq!(c.throttling_source, want_source);
    assert!((c.limit_cores - 0.2).abs() < 1e-9, "limit {}", c.limit_cores);
    burner.wait_json(Duration::from_secs(30));

    // Quiet now: the files stop moving, and the next records must show them exactly.
    std::thread::sleep(Duration::from_millis(2500));
    let read = || Files::read(&pod, &quota);
    let before = read();
    let t_read = unix_nanos(SystemTime::now());
    let after_read = observer
        .wait_until(Duration::from_secs(10), |r| pod_pressure(r, &pod).iter().any(|(end, _)| *end > t_read + SEC / 10));
    assert_eq!(read(), before, "the files moved while the pod was idle");
    let (_, rec) = *pod_pressure(&after_read, &pod).last().expect("a record after the read");
    let total = |c: Option<pb::Counter>| c.map(|c| c.total);
    let cpu_stat = rec.cpu_stat.clone().unwrap_or_default();
    let got = Files {
        cpu_some_usec: total(rec.cpu.as_ref().and_then(|p| p.some_usec)),
        cpu_full_usec: total(rec.cpu.as_ref().and_then(|p| p.full_usec)),
        usage_usec: total(cpu_stat.usage_usec),
        nr_periods: total(cpu_stat.nr_periods),
        nr_throttled: total(cpu_stat.nr_throttled),
        throttled_usec: total(cpu_stat.throttled_usec),
    };
    assert_eq!(got, before, "record totals equal the kernel files");
    assert!(findings_for(&after_read, &pod).is_empty(), "a throttled pod is nobody's victim");
    agent.stop();
    drop(pod);
    drop(quota);
}

/// The kernel files of one pod, read by the test itself.
#[derive(Debug, PartialEq, Eq)]
struct Files {
    cpu_some_usec: Option<u64>,
    cpu_full_usec: Option<u64>,
    usage_usec: Option<u64>,
    nr_periods: Option<u64>,
    nr_throttled: Option<u64>,
    throttled_usec: Option<u64>,
}

impl Files {
    fn read(pod: &Pod, quota: &CpuQuota) -> Self {
        let psi = std::fs::read_to_string(pod.pod_cgroup.join("cpu.pressure")).expect("cpu.pressure");
        let psi_total = |kind: &str| {
            psi.lines().find(|l| l.starts_with(kind)).and_then(|l| {
                l.split_whitespace().find_map(|kv| kv.strip_prefix("total=")).and_then(|v| v.parse().ok())
            })
        };
        let key = |text: &str, k: &str| {
            text.lines().find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(k)).then(|| w.next().and_then(|v| v.parse::<u64>().ok())).flatten()
            })
        };
        let v2 = std::fs::read_to_string(pod.pod_cgroup.join("cpu.stat")).expect("cpu.stat");
        let (nr_periods, nr_throttled, throttled_usec) = match &quota.v1_dir {
            Some(v1) => {
                let s = std::fs::read_to_string(v1.join("cpu.stat")).expect("v1 cpu.stat");
                (key(&s, "nr_periods"), key(&s, "nr_throttled"), key(&s, "throttled_time").map(|ns| ns / 1000))
            }
            None => (key(&v2, "nr_periods"), key(&v2, "nr_throttled"), key(&v2, "throttled_usec")),
        };
        assert!(quota.v1_dir.is_none() || v1_cpu_mount().is_some());
        Self {
            cpu_some_usec: psi_total("some"),
            cpu_full_usec: psi_total("full"),
            usage_usec: key(&v2, "usage_usec"),
            nr_periods,
            nr_throttled,
            throttled_usec,
        }
    }
}
