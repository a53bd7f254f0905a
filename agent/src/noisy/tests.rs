use super::episodes::{Detector, Episode, Hysteresis, Limits, Observation, Transition};
use super::verdict::{assess, assess_named, CulpritKey, CulpritShare, PodWindow, Thresholds, VerdictKind};
use VerdictKind::*;

const MS: u64 = 1_000_000;
const WINDOW: u64 = 5_000 * MS;
const T0: u64 = 1_700_000_000_000_000_000;

fn pod(uid: &str) -> CulpritKey {
    CulpritKey::Pod(uid.to_string())
}

fn host(path: &str) -> CulpritKey {
    CulpritKey::Host(path.to_string())
}

/// A CPU-delayed window: 1 s of wait (20%), p99 4 ms, 100 waits; culprit waits given in ms.
fn delayed(culprits: &[(CulpritKey, u64)]) -> PodWindow {
    PodWindow {
        window_ns: WINDOW,
        waits: 100,
        wait_ns: 1_000 * MS,
        run_queue_p99_ns: 4 * MS,
        culprits: culprits.iter().map(|(k, ms)| (k.clone(), ms * MS)).collect(),
        ..Default::default()
    }
}

fn neighbour() -> PodWindow {
    delayed(&[(pod("a"), 800), (CulpritKey::SelfPod, 100)])
}

fn host_heavy() -> PodWindow {
    delayed(&[(host("system.slice/x.service"), 700)])
}

fn healthy() -> PodWindow {
    PodWindow { window_ns: WINDOW, waits: 50, wait_ns: 10 * MS, run_queue_p99_ns: MS / 4, ..Default::default() }
}

fn span(i: u64) -> (u64, u64) {
    (T0 + i * WINDOW, T0 + (i + 1) * WINDOW)
}

fn share(key: CulpritKey, ms: u64, share: f64) -> CulpritShare {
    CulpritShare { key, wait_ns: ms * MS, share }
}

#[test]
fn assess_rules_and_priorities() {
    let with = |mut w: PodWindow, f: &dyn Fn(&mut PodWindow)| {
        f(&mut w);
        w
    };
    let throttled = |w: &mut PodWindow| (w.nr_periods, w.nr_throttled) = (Some(50), Some(10));
    let memory = |w: &mut PodWindow| w.memory_some_share = Some(0.10);
    let cases: Vec<(&str, PodWindow, VerdictKind)> = vec![
        ("baseline", healthy(), Healthy),
        ("throttled 10 of 50 periods", with(healthy(), &throttled), SelfThrottled),
        (
            "throttled 9 of 50 periods",
            with(healthy(), &|w| (w.nr_periods, w.nr_throttled) = (Some(50), Some(9))),
            Healthy,
        ),
        (
            "4 periods below min_periods",
            with(healthy(), &|w| (w.nr_periods, w.nr_throttled) = (Some(4), Some(4))),
            Healthy,
        ),
        ("250 ms throttled is 5%", with(healthy(), &|w| w.throttled_ns = Some(250 * MS)), SelfThrottled),
        ("249 ms throttled", with(healthy(), &|w| w.throttled_ns = Some(249 * MS)), Healthy),
        ("throttling beats a neighbour", with(neighbour(), &throttled), SelfThrottled),
        (
            "psi 10% with 2% wait",
            with(neighbour(), &|w| (w.cpu_some_share, w.wait_ns) = (Some(0.10), 100 * MS)),
            Neighbour,
        ),
        ("psi beats wait share", with(neighbour(), &|w| w.cpu_some_share = Some(0.05)), Healthy),
        ("psi NaN falls back to wait", with(neighbour(), &|w| w.cpu_some_share = Some(f64::NAN)), Neighbour),
        ("p99 below 1 ms", with(neighbour(), &|w| w.run_queue_p99_ns = MS - 1), Healthy),
        ("19 waits", with(neighbour(), &|w| w.waits = 19), Healthy),
        ("neighbour 80%", neighbour(), Neighbour),
        ("host 70%", host_heavy(), Host),
        ("pods tie host at 40%", delayed(&[(pod("a"), 400), (host("h"), 400)]), Neighbour),
        ("host 50% beats pods 35%", delayed(&[(pod("a"), 350), (host("h"), 500)]), Host),
        ("itself 60%", delayed(&[(CulpritKey::SelfPod, 600), (pod("a"), 200)]), SelfContention),
        ("pods 35% blamed before itself 45%", delayed(&[(CulpritKey::SelfPod, 450), (pod("a"), 350)]), Neighbour),
        ("host 30% blamed before itself 60%", delayed(&[(CulpritKey::SelfPod, 600), (host("h"), 300)]), Host),
        ("pods 29% idle 71%", delayed(&[(pod("a"), 290), (CulpritKey::Idle, 710)]), Healthy),
        ("memory 10%", with(healthy(), &memory), MemoryPressure),
        ("memory 9%", with(healthy(), &|w| w.memory_some_share = Some(0.09)), Healthy),
        ("io 20%", with(healthy(), &|w| w.io_some_share = Some(0.2)), IoPressure),
        ("memory beats io", with(with(healthy(), &memory), &|w| w.io_some_share = Some(0.5)), MemoryPressure),
        ("neighbour beats memory", with(neighbour(), &memory), Neighbour),
        ("self contention beats memory", with(delayed(&[(CulpritKey::SelfPod, 900)]), &memory), SelfContention),
        ("unattributed delay falls to memory", with(delayed(&[(CulpritKey::Idle, 900)]), &memory), MemoryPressure),
    ];
    let t = Thresholds::default();
    for (name, w, want) in cases {
        assert_eq!(assess(&w, &t).kind, want, "{name}");
    }
}

#[test]
fn broken_inputs_do_not_panic_and_count_as_absent() {
    let t = Thresholds::default();
    let mut zero = neighbour();
    (zero.window_ns, zero.throttled_ns, zero.memory_some_share) = (0, Some(WINDOW), Some(0.9));
    let a = assess(&zero, &t);
    assert_eq!((a.kind, a.culprits.len(), a.summary.as_str()), (Healthy, 0, "empty window"));
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5] {
        let mut w = healthy();
        (w.cpu_some_share, w.memory_some_share, w.io_some_share) = (Some(bad), Some(bad), Some(bad));
        assert_eq!(assess(&w, &t).kind, Healthy, "{bad}");
    }
    // More throttled periods than periods, and a zero-period window, are clamped rather than trusted.
    let mut w = healthy();
    (w.nr_periods, w.nr_throttled) = (Some(0), Some(7));
    assert_eq!(assess(&w, &Thresholds { min_periods: 0, ..Thresholds::default() }).kind, Healthy);
    // Over-charged culprits: shares are of the charged sum, never above 1.
    let mut w = delayed(&[(pod("a"), 1_500), (pod("a"), 500)]);
    w.wait_ns = 1_000 * MS;
    assert_eq!(assess(&w, &t).culprits, vec![share(pod("a"), 2_000, 1.0)]);
    let nan = Thresholds { cpu_delay_share: f64::NAN, min_attributed_share: f64::NAN, ..Thresholds::default() };
    assert_eq!(assess(&neighbour(), &nan).kind, Healthy);
}

#[test]
fn culprits_are_ranked_filtered_and_bounded() {
    let w = delayed(&[
        (pod("b"), 200),
        (pod("a"), 200),
        (host("h"), 300),
        (pod("small"), 99),
        (CulpritKey::SelfPod, 150),
        (CulpritKey::Idle, 50),
    ]);
    let a = assess(&w, &Thresholds::default());
    assert_eq!(a.kind, Neighbour, "pods 49.9% vs host 30%");
    let want = vec![share(host("h"), 300, 0.3), share(pod("a"), 200, 0.2), share(pod("b"), 200, 0.2)];
    assert_eq!(a.culprits, want);
    let two = assess(&w, &Thresholds { max_culprits: 2, ..Thresholds::default() });
    assert_eq!(two.culprits, want[..2].to_vec());
    let spread: Vec<(CulpritKey, u64)> = (0..8).map(|i| (pod(&format!("p{i}")), 60)).collect();
    let a = assess(&delayed(&spread), &Thresholds::default());
    assert_eq!((a.kind, a.culprits.len()), (Neighbour, 0));
    assert!(a.summary.ends_with("48% while other pods ran, none alone above the listing threshold"), "{}", a.summary);
}

#[test]
fn summaries_carry_the_numbers() {
    let t = Thresholds::default();
    let names = |k: &CulpritKey| match k {
        CulpritKey::Pod(uid) if uid == "a" => "shop/batch-7f".to_string(),
        other => other.to_string(),
    };
    let a = assess_named(&neighbour(), &t, &names);
    assert_eq!(a.summary, "waited 1000 ms (20% of the window, p99 4.0 ms); 80% while shop/batch-7f ran");
    assert_eq!(
        assess(&host_heavy(), &t).summary,
        "waited 1000 ms (20% of the window, p99 4.0 ms); 70% while system.slice/x.service ran"
    );
    let mut w = neighbour();
    (w.nr_periods, w.nr_throttled, w.throttled_ns, w.cpu_some_share) = (Some(50), Some(12), Some(310 * MS), Some(0.14));
    let want = "throttled in 12 of 50 periods, 310 ms throttled (6% of the window); \
                waited 1000 ms (20% of the window, p99 4.0 ms, cpu pressure 14%)";
    assert_eq!(assess(&w, &t).summary, want);
    let unknown = delayed(&[(CulpritKey::Idle, 500), (CulpritKey::Unattributed, 200), (pod("a"), 100)]);
    assert_eq!(
        assess(&unknown, &t).summary,
        "waited 1000 ms (20% of the window, p99 4.0 ms); delay unattributed: 50% idle CPU, 40% unknown, 10% pods, 0% host, 0% itself"
    );
    let mut w = healthy();
    w.memory_some_share = Some(0.234);
    assert_eq!(assess(&w, &t).summary, "memory stalls 23% of the window");
    assert_eq!(assess(&healthy(), &t).summary, "no notable delay: waited 10 ms (0% of the window, p99 250 µs)");
}

fn detector() -> Detector {
    Detector::new(Thresholds::default(), Hysteresis::default())
}

/// Feeds `windows` from window index `first`, returning each observation.
fn feed(d: &mut Detector, uid: &str, first: u64, windows: &[PodWindow]) -> Vec<Observation> {
    (first..).zip(windows).map(|(i, w)| d.observe(uid, span(i).0, span(i).1, w)).collect()
}

fn opened(o: &Observation) -> &Episode {
    match &o.transition {
        Some(Transition::Opened(e)) => e,
        other => panic!("expected Opened, got {other:?}"),
    }
}

#[test]
fn clean_neighbour_episode() {
    let mut d = detector();
    let (n, h) = (neighbour(), healthy());
    let obs =
        feed(&mut d, "p", 0, &[h.clone(), n.clone(), n.clone(), n.clone(), n, h.clone(), h.clone(), h.clone(), h]);
    assert_eq!((obs[0].stable, obs[0].since_unix_nano, &obs[0].transition), (Healthy, span(0).0, &None));
    assert_eq!((obs[1].stable, &obs[1].transition), (Healthy, &None));
    let e = opened(&obs[2]);
    assert_eq!((obs[2].stable, obs[2].since_unix_nano), (Neighbour, span(1).0));
    assert_eq!((e.id, e.kind, e.start_unix_nano, e.last_unix_nano, e.windows), (1, Neighbour, span(1).0, span(2).1, 2));
    assert_eq!(e.culprits, vec![share(pod("a"), 1_600, 0.8)]);
    for (i, windows, last) in [(3, 3, span(3).1), (4, 4, span(4).1), (5, 4, span(4).1), (6, 4, span(4).1)] {
        let Some(Transition::Ongoing(e)) = &obs[i].transition else { panic!("window {i}: {:?}", obs[i].transition) };
        assert_eq!((obs[i].stable, e.id, e.windows, e.last_unix_nano), (Neighbour, 1, windows, last), "window {i}");
    }
    let Some(Transition::Resolved(e)) = &obs[7].transition else { panic!("{:?}", obs[7].transition) };
    assert_eq!((e.id, e.start_unix_nano, e.last_unix_nano, e.windows), (1, span(1).0, span(4).1, 4));
    assert_eq!(e.last.kind, Neighbour);
    assert_eq!((obs[7].stable, obs[7].since_unix_nano), (Healthy, span(5).0));
    assert_eq!((obs[8].stable, &obs[8].transition), (Healthy, &None));
    assert!(d.pod("p").is_some_and(|s| s.open_episode().is_none()));
}

#[test]
fn alternating_every_window_never_opens() {
    let mut d = detector();
    let windows: Vec<PodWindow> = (0..40).map(|i| if i % 2 == 0 { neighbour() } else { healthy() }).collect();
    for o in feed(&mut d, "p", 0, &windows) {
        assert_eq!((o.stable, o.since_unix_nano, o.transition), (Healthy, span(0).0, None));
    }
}

#[test]
fn two_on_one_off_opens_once_and_stays_open() {
    let mut d = detector();
    let windows: Vec<PodWindow> = (0..30).map(|i| if i % 3 == 2 { healthy() } else { neighbour() }).collect();
    let obs = feed(&mut d, "p", 0, &windows);
    assert_eq!(obs[0].transition, None);
    assert_eq!(opened(&obs[1]).start_unix_nano, span(0).0);
    for (i, o) in obs.iter().enumerate().skip(2) {
        assert_eq!((o.stable, o.since_unix_nano), (Neighbour, span(0).0), "window {i}");
        assert!(matches!(&o.transition, Some(Transition::Ongoing(e)) if e.id == 1), "window {i}");
    }
    let e = d.pod("p").and_then(|s| s.open_episode()).cloned();
    assert_eq!(e.map(|e| (e.windows, e.last_unix_nano)), Some((20, span(28).1)));
}

#[test]
fn culprits_accumulate_over_the_episode() {
    let mut d = detector();
    let b = delayed(&[(pod("b"), 600), (CulpritKey::Idle, 100)]);
    let obs = feed(&mut d, "p", 0, &[neighbour(), neighbour(), healthy(), b.clone(), b]);
    let Some(Transition::Ongoing(e)) = &obs[4].transition else { panic!("{:?}", obs[4].transition) };
    // 4 s of wait over the four neighbour windows; the healthy one adds nothing.
    assert_eq!(e.culprits, vec![share(pod("a"), 1_600, 0.4), share(pod("b"), 1_200, 0.3)]);
    assert_eq!(e.last.culprits, vec![share(pod("b"), 600, 0.6)]);
    assert_eq!(e.windows, 4);
}

#[test]
fn neighbour_to_host_resolves_and_opens() {
    let mut d = detector();
    let (n, ho, h) = (neighbour(), host_heavy(), healthy());
    let obs = feed(&mut d, "p", 0, &[n.clone(), n, ho.clone(), ho, h.clone(), h.clone(), h]);
    assert_eq!(opened(&obs[1]).id, 1);
    assert!(matches!(&obs[2].transition, Some(Transition::Ongoing(e)) if e.windows == 2 && e.kind == Neighbour));
    assert_eq!(obs[2].stable, Neighbour);
    let old = obs[3].superseded.as_ref().map(|e| (e.id, e.kind, e.last_unix_nano));
    assert_eq!(old, Some((1, Neighbour, span(1).1)));
    let e = opened(&obs[3]);
    assert_eq!((e.id, e.kind, e.start_unix_nano, e.windows), (2, Host, span(2).0, 2));
    assert_eq!(e.culprits, vec![share(host("system.slice/x.service"), 1_400, 0.7)]);
    assert_eq!((obs[3].stable, obs[3].since_unix_nano), (Host, span(2).0));
    assert!(matches!(&obs[6].transition, Some(Transition::Resolved(e)) if e.id == 2 && e.last_unix_nano == span(3).1));
}

#[test]
fn mixed_other_windows_exit_to_healthy() {
    let mut d = detector();
    let mut memory = healthy();
    memory.memory_some_share = Some(0.3);
    let obs = feed(&mut d, "p", 0, &[neighbour(), neighbour(), host_heavy(), healthy(), memory.clone(), memory]);
    assert!(matches!(&obs[4].transition, Some(Transition::Resolved(e)) if e.id == 1));
    assert_eq!((obs[4].stable, obs[4].since_unix_nano), (Healthy, span(2).0));
    assert_eq!((obs[5].stable, obs[5].since_unix_nano, &obs[5].transition), (MemoryPressure, span(4).0, &None));
}

#[test]
fn self_throttled_pod_never_opens_a_neighbour_episode() {
    let mut d = detector();
    let mut w = delayed(&[(pod("a"), 900)]);
    (w.nr_periods, w.nr_throttled, w.throttled_ns) = (Some(50), Some(40), Some(1_500 * MS));
    w.wait_ns = 4_000 * MS;
    let obs = feed(&mut d, "p", 0, &vec![w; 10]);
    for (i, o) in obs.iter().enumerate() {
        let want = if i == 0 { Healthy } else { SelfThrottled };
        assert_eq!((o.stable, o.since_unix_nano, &o.transition), (want, span(0).0, &None), "window {i}");
        assert_eq!((o.this_window.kind, o.this_window.culprits.len()), (SelfThrottled, 0));
    }
}

#[test]
fn forgotten_pod_resolves_its_episode() {
    let mut d = detector();
    for i in 0..14 {
        feed(&mut d, "q", i, &[healthy()]);
        if i < 2 {
            feed(&mut d, "p", i, &[neighbour()]);
        }
        if i == 0 {
            feed(&mut d, "r", i, &[healthy()]);
        }
        let out = d.end_window(span(i).1);
        match i {
            12 => assert_eq!((out.len(), d.tracked_pods(), d.pod("r").is_none()), (0, 2, true)),
            13 => {
                assert_eq!(out.len(), 1);
                let (uid, Transition::Resolved(e)) = &out[0] else { panic!("{out:?}") };
                assert_eq!((uid.as_str(), e.id, e.start_unix_nano, e.last_unix_nano), ("p", 1, span(0).0, span(1).1));
                assert_eq!((d.tracked_pods(), d.pod("p").is_none()), (1, true));
            }
            _ => assert_eq!((out.len(), d.tracked_pods()), (0, 3)),
        }
    }
}

#[test]
fn max_pods_is_respected() {
    let limits = Limits { max_pods: 3, forget_after_windows: 2 };
    let mut d = Detector::with_limits(Thresholds::default(), Hysteresis::default(), limits);
    for i in 0..2 {
        for p in 0..5 {
            let o = feed(&mut d, &format!("p{p}"), i, &[neighbour()]).remove(0);
            let want = if i == 1 && p < 3 { Neighbour } else { Healthy };
            assert_eq!(o.stable, want, "window {i} pod {p}");
            assert_eq!(o.transition.is_some(), want == Neighbour);
        }
        assert!(d.end_window(span(i).1).is_empty());
    }
    assert_eq!((d.tracked_pods(), d.untracked_observations()), (3, 4));
    feed(&mut d, "p0", 2, &[neighbour()]);
    assert!(d.end_window(span(2).1).is_empty(), "one missed window is below forget_after_windows");
    feed(&mut d, "p0", 3, &[neighbour()]);
    let out = d.end_window(span(3).1);
    assert_eq!(
        out.iter().map(|(uid, t)| (uid.as_str(), t.episode().id)).collect::<Vec<_>>(),
        vec![("p1", 2), ("p2", 3)]
    );
    let o = feed(&mut d, "p4", 4, &[neighbour()]).remove(0);
    assert_eq!((d.tracked_pods(), o.since_unix_nano, d.untracked_observations()), (2, span(4).0, 4));
}

#[test]
fn episode_culprits_are_bounded() {
    let t = Thresholds { min_culprit_share: 0.0, max_culprits: 100, ..Thresholds::default() };
    let mut d = Detector::new(t, Hysteresis::default());
    let many: Vec<(CulpritKey, u64)> = (0..70).map(|i| (pod(&format!("c{i:02}")), i + 1)).collect();
    let mut w = delayed(&many);
    w.wait_ns = (1..=70).sum::<u64>() * MS;
    let e = opened(&feed(&mut d, "p", 0, &[w.clone(), w]).remove(1)).clone();
    assert_eq!(e.culprits.len(), 64);
    assert_eq!((e.culprits[0].key.clone(), e.culprits[63].key.clone()), (pod("c69"), pod("c06")));
}
