//! The pressure source on a fake cgroup tree and a recorded scheduler window.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use podlens_agent_ebpf::sched::RUNQ_BUCKETS;
use podlens_proto::v1 as pb;

use super::*;
use crate::{
    identity::{cgroups::CgroupTable, pods::PodStore, Resolver},
    noisy::{episodes::Hysteresis, verdict::Thresholds},
    pressure::runqueue::RunQueueWindow,
};

const UID_A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const UID_B: &str = "bbbbbbbb-0000-0000-0000-000000000002";
const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const WINDOW: u64 = 5_000_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    v2: std::path::PathBuf,
    proc: std::path::PathBuf,
    cgroups: Vec<CgroupInfo>,
    resolver: Resolver,
}

fn psi(some: u64) -> String {
    format!("some avg10=0.00 avg60=0.00 avg300=0.00 total={some}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file), text).unwrap();
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("cgroup");
    let proc = dir.path().join("pressure");
    let paths = [
        (10, format!("/kubepods/burstable/pod{UID_A}")),
        (11, format!("/kubepods/burstable/pod{UID_A}/{CID}")),
        (20, format!("/kubepods/besteffort/pod{UID_B}")),
        (21, format!("/kubepods/besteffort/pod{UID_B}/{CID}")),
        (30, "/system.slice/backup.service".to_string()),
    ];
    let mut table = CgroupTable::new(&v2, Duration::from_secs(60));
    let mut cgroups = Vec::new();
    for (id, path) in &paths {
        std::fs::create_dir_all(v2.join(path.trim_start_matches('/'))).unwrap();
        table.insert(*id, path);
        cgroups.push(CgroupInfo { id: *id, path: path.clone(), removed: false });
    }
    let pod_a = v2.join(paths[0].1.trim_start_matches('/'));
    write(&pod_a, "cpu.pressure", &psi(1_000_000));
    write(
        &pod_a,
        "cpu.stat",
        "usage_usec 100\nuser_usec 50\nsystem_usec 50\nnr_periods 10\nnr_throttled 0\nthrottled_usec 0\n",
    );
    write(&pod_a, "memory.events", "low 0\nhigh 2\nmax 0\noom 0\noom_kill 0\n");
    for f in ["cpu", "memory", "io"] {
        write(&proc, f, &psi(42));
    }
    let resolver = Resolver::new(table, Arc::new(RwLock::new(PodStore::new(Duration::from_secs(60)))));
    Fixture { _dir: dir, v2, proc, cgroups, resolver }
}

fn source(f: &Fixture) -> PressureSource {
    let cfg = Config {
        hierarchies: crate::pressure::mounts::Hierarchies { v2: Some(f.v2.clone()), v1: BTreeMap::new() },
        proc_pressure: f.proc.clone(),
        thresholds: Thresholds::default(),
        hysteresis: Hysteresis::default(),
        containers: true,
    };
    PressureSource::new(cfg, None, "node/1/nn-".into())
}

fn run(s: &mut PressureSource, f: &mut Fixture, sched: Option<SchedWindow>, n: u64) -> Vec<pb::record::Kind> {
    let ids: Vec<u64> = f.cgroups.iter().map(|c| c.id).collect();
    let mut w = f.resolver.window(ids);
    s.build(sched, false, &f.cgroups, (n * WINDOW, (n + 1) * WINDOW), &mut w)
}

fn pod_record<'a>(out: &'a [pb::record::Kind], uid: &str) -> &'a pb::PressureRecord {
    out.iter()
        .find_map(|k| match k {
            pb::record::Kind::Pressure(p) if p.verdict.is_some() => match p.local.as_ref()?.kind.as_ref()? {
                pb::workload::Kind::Pod(pod) if pod.uid == uid => Some(p),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_else(|| panic!("no pod record for {uid}: {out:#?}"))
}

#[test]
fn files_become_totals_and_window_deltas_and_absent_stays_absent() {
    let mut f = fixture();
    let mut s = source(&f);
    let out = run(&mut s, &mut f, None, 0);
    let a = pod_record(&out, UID_A);
    let cpu = a.cpu.as_ref().unwrap();
    assert_eq!(cpu.some_usec, Some(pb::Counter { total: 1_000_000, delta: 0 }), "first window: no delta");
    assert_eq!(a.memory, None, "no memory.pressure file: absent, not zero");
    assert_eq!(a.memory_events.as_ref().unwrap().high, Some(pb::Counter { total: 2, delta: 0 }));
    assert_eq!(a.run_queue, None, "probes off: no run queue");
    let node = out.iter().find_map(|k| match k {
        pb::record::Kind::Pressure(p) if p.node => Some(p),
        _ => None,
    });
    assert_eq!(node.unwrap().io.as_ref().unwrap().some_usec.unwrap().total, 42);
    let containers =
        out.iter().filter(|k| matches!(k, pb::record::Kind::Pressure(p) if !p.node && p.verdict.is_none())).count();
    assert_eq!(containers, 2, "one record per container");

    let pod_a = f.v2.join(format!("kubepods/burstable/pod{UID_A}"));
    write(&pod_a, "cpu.pressure", &psi(1_500_000));
    let out = run(&mut s, &mut f, None, 1);
    let cpu = pod_record(&out, UID_A).cpu.unwrap();
    assert_eq!(cpu.some_usec, Some(pb::Counter { total: 1_500_000, delta: 500_000 }));
    assert!((cpu.some_share - 0.1).abs() < 1e-9, "{}", cpu.some_share);
    assert_eq!(cpu.full_usec, Some(pb::Counter { total: 0, delta: 0 }));
}

#[test]
fn malformed_files_are_counted_and_left_out() {
    let mut f = fixture();
    let mut s = source(&f);
    write(&f.v2.join(format!("kubepods/besteffort/pod{UID_B}")), "cpu.pressure", "garbage\n");
    let out = run(&mut s, &mut f, None, 0);
    assert_eq!(pod_record(&out, UID_B).cpu, None);
    assert_eq!(s.counters.file_errors, 1);
    assert!(pod_record(&out, UID_A).cpu.is_some(), "one bad file costs nobody else");
}

/// Pod A's container waited 1 s in a 5 s window: 0.8 s behind pod B's
/// container, 0.1 s behind a host unit, 0.05 s on an idle CPU.
fn contended() -> SchedWindow {
    let mut w = SchedWindow::default();
    let mut hist = [0u64; RUNQ_BUCKETS];
    hist[12] = 100; // 2..4 ms
    w.cgroups
        .insert(11, RunQueueWindow { wakeup_waits: 100, wakeup_wait_ns: 1_000_000_000, hist, ..Default::default() });
    w.pairs.insert((11, 21), 800_000_000);
    w.pairs.insert((11, 30), 100_000_000);
    w.pairs.insert((11, 0), 50_000_000);
    w
}

#[test]
fn waits_are_charged_to_pods_and_the_host_and_a_finding_opens_after_two_windows() {
    let mut f = fixture();
    let mut s = source(&f);
    let pod_a = f.v2.join(format!("kubepods/burstable/pod{UID_A}"));
    let mut findings = Vec::new();
    for n in 0..4u64 {
        // PSI cpu some grows by 20 % of every window
        write(&pod_a, "cpu.pressure", &psi(1_000_000 + n * 1_000_000));
        let out = run(&mut s, &mut f, Some(contended()), n);
        let a = pod_record(&out, UID_A);
        assert_eq!(a.run_queue.as_ref().unwrap().wakeup_wait_ns, 1_000_000_000);
        if n >= 1 {
            let v = a.verdict.as_ref().unwrap();
            assert_eq!(v.window_kind(), pb::VerdictKind::Neighbour, "window {n}: {v:?}");
            let top = &a.culprits[0];
            assert_eq!((top.kind(), top.workload.as_ref().map(|w| w.cgroup_id)), (pb::CulpritKind::Pod, Some(20)));
            assert!((top.share - 0.8 / 1.0).abs() < 0.01 || (top.share - 0.8 / 0.95).abs() < 0.01, "{top:?}");
        }
        findings.extend(out.into_iter().filter_map(|k| match k {
            pb::record::Kind::Finding(f) => Some((n, f)),
            _ => None,
        }));
    }
    let (n, first) = &findings[0];
    assert_eq!((*n, first.state()), (2, pb::FindingState::Open), "opens on the second delayed window");
    assert_eq!(first.start_unix_nano, WINDOW, "the episode starts with its first delayed window");
    let Some(pb::finding::Detail::NoisyNeighbour(nn)) = &first.detail else { panic!("{first:?}") };
    assert_eq!(nn.verdict(), pb::VerdictKind::Neighbour);
    let kinds: Vec<_> = nn.culprits.iter().map(|c| c.kind()).collect();
    assert_eq!(kinds, vec![pb::CulpritKind::Pod, pb::CulpritKind::Host], "idle is not a culprit");
    assert_eq!(nn.culprits[1].workload.as_ref().unwrap().cgroup_path, "/system.slice/backup.service");
    assert_eq!(findings[1].1.state(), pb::FindingState::Ongoing);
    assert_eq!(findings[1].1.id, first.id, "one id per episode");
    assert!(first.id.starts_with("node/1/nn-"));
}

#[test]
fn a_restarted_container_is_its_own_pod_not_a_neighbour_and_its_last_window_counts() {
    let mut f = fixture();
    let mut s = source(&f);
    // container 11 was replaced by 12 (a restart); 11 is removed but its last waits are in the window
    let new_path = format!("/kubepods/burstable/pod{UID_A}/{}", "f".repeat(64));
    std::fs::create_dir_all(f.v2.join(new_path.trim_start_matches('/'))).unwrap();
    f.resolver.cgroups.insert(12, &new_path);
    f.cgroups.push(CgroupInfo { id: 12, path: new_path, removed: false });
    f.cgroups.iter_mut().filter(|c| c.id == 11).for_each(|c| c.removed = true);
    let mut hist = [0u64; RUNQ_BUCKETS];
    hist[12] = 100;
    let mut w = SchedWindow::default();
    w.cgroups.insert(11, RunQueueWindow { wakeup_waits: 3, wakeup_wait_ns: 300, ..Default::default() });
    w.cgroups
        .insert(12, RunQueueWindow { wakeup_waits: 100, wakeup_wait_ns: 1_000_000_000, hist, ..Default::default() });
    w.pairs.insert((12, 11), 900_000_000);
    let pod_a = f.v2.join(format!("kubepods/burstable/pod{UID_A}"));
    write(&pod_a, "cpu.pressure", &psi(1_000_000));
    run(&mut s, &mut f, Some(w.clone()), 0);
    write(&pod_a, "cpu.pressure", &psi(2_000_000));
    let out = run(&mut s, &mut f, Some(w), 1);
    let a = pod_record(&out, UID_A);
    let q = a.run_queue.as_ref().unwrap();
    assert_eq!((q.wakeup_waits, q.wakeup_wait_ns), (103, 1_000_000_300), "the removed container's last window counts");
    let v = a.verdict.as_ref().unwrap();
    assert_eq!(v.window_kind(), pb::VerdictKind::SelfContention, "waits behind its own old container: {v:?}");
    let containers =
        out.iter().filter(|k| matches!(k, pb::record::Kind::Pressure(p) if !p.node && p.verdict.is_none())).count();
    assert_eq!(containers, 2, "live containers only: the new one and pod B's");
    assert!(findings_free(&out));
}

fn findings_free(out: &[pb::record::Kind]) -> bool {
    !out.iter().any(|k| matches!(k, pb::record::Kind::Finding(_)))
}
