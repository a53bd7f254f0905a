//! `bench sched`: the scheduler probes' cost. A pipe ping-pong between two
//! threads pinned to one CPU (every round trip is two wakeups and two context
//! switches) with and without the probes attached, interleaved; the probes'
//! own nanoseconds per run from bpf_stats; and their map memory with 1000
//! cgroups that ran a task.

use std::{
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use podlens_agent::ebpf::sched::{SchedMode, SchedOptions, SchedProbes};
use podlens_e2e::{cluster::cgroup2_root, privileged::unique};

use crate::median;

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two fds into the array we own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn xfer(read: &OwnedFd, write: &OwnedFd) -> Result<()> {
    let mut b = [0u8; 1];
    // SAFETY: one byte into / out of a buffer we own, on open pipe fds.
    unsafe {
        if libc::read(read.as_raw_fd(), b.as_mut_ptr().cast(), 1) != 1 {
            bail!("ping-pong read: {}", std::io::Error::last_os_error());
        }
        if libc::write(write.as_raw_fd(), b.as_ptr().cast(), 1) != 1 {
            bail!("ping-pong write: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Round trips per second of `rounds` ping-pongs on one CPU (two threads of
/// their own, so the caller stays unpinned).
fn pingpong(rounds: u64, cpu: usize) -> Result<f64> {
    std::thread::spawn(move || pingpong_pinned(rounds, cpu))
        .join()
        .map_err(|_| anyhow::anyhow!("ping-pong thread panicked"))?
}

fn pingpong_pinned(rounds: u64, cpu: usize) -> Result<f64> {
    let (a_r, a_w) = pipe()?;
    let (b_r, b_w) = pipe()?;
    let peer = std::thread::spawn(move || -> Result<()> {
        pin(cpu);
        for _ in 0..rounds {
            xfer(&a_r, &b_w)?;
        }
        Ok(())
    });
    pin(cpu);
    let start = Instant::now();
    let b = [1u8; 1];
    let mut back = [0u8; 1];
    for _ in 0..rounds {
        // SAFETY: one byte on open pipe fds, buffers we own.
        unsafe {
            if libc::write(a_w.as_raw_fd(), b.as_ptr().cast(), 1) != 1
                || libc::read(b_r.as_raw_fd(), back.as_mut_ptr().cast(), 1) != 1
            {
                bail!("ping-pong: {}", std::io::Error::last_os_error());
            }
        }
    }
    let rate = rounds as f64 / start.elapsed().as_secs_f64();
    peer.join().map_err(|_| anyhow::anyhow!("ping-pong peer panicked"))??;
    Ok(rate)
}

fn attached(mode: SchedMode) -> Result<SchedProbes> {
    let mut p =
        SchedProbes::load(&SchedOptions { mode, ..SchedOptions::default() }).context("loading the scheduler probes")?;
    p.attach().context("attaching the scheduler probes")?;
    Ok(p)
}

/// memlock of every map of this process whose name starts with `prefix`, from fdinfo.
fn map_memory(prefix: &str) -> Result<Vec<(String, u64, u32)>> {
    let mut out = Vec::new();
    for info in aya::maps::loaded_maps() {
        let info = info?;
        let Some(name) = info.name_as_str().map(str::to_string) else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        let fd = info.fd()?;
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))?;
        let memlock =
            text.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        out.push((name, memlock, info.max_entries()));
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// Creates `n` cgroups and runs a short task in each, so each gets stats entries.
fn populate(n: usize, probes: &SchedProbes) -> Result<usize> {
    let dir = cgroup2_root().join(unique("plbench-sched"));
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> Result<usize> {
        for i in 0..n {
            let cg = dir.join(format!("c{i}"));
            std::fs::create_dir(&cg)?;
            let procs = cg.join("cgroup.procs");
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("echo $$ > {} && sleep 0.001", procs.display()))
                .status()?;
            if !status.success() {
                bail!("running a task in {}", cg.display());
            }
        }
        let ids: std::collections::HashSet<u64> = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| std::os::unix::fs::MetadataExt::ino(&e.metadata().ok()?).into())
            .collect();
        let snap = probes.snapshot()?;
        Ok(snap.cgroups.keys().filter(|id| ids.contains(id)).count())
    })();
    for i in 0..n {
        let _ = std::fs::remove_dir(dir.join(format!("c{i}")));
    }
    let _ = std::fs::remove_dir(&dir);
    result
}

struct ModeResult {
    mode: SchedMode,
    base: f64,
    with: f64,
    ratio: f64,
    per_prog: Vec<(&'static str, u64, f64)>,
}

/// Interleaved runs without and with the probes (bpf_stats off, it costs
/// time itself), then one run with bpf_stats on for the per-program cost.
fn measure_mode(mode: SchedMode, reps: usize, rounds: u64, cpu: usize) -> Result<ModeResult> {
    let (mut ratios, mut bases, mut withs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let base = pingpong(rounds, cpu)?;
        let probes = attached(mode)?;
        let with = pingpong(rounds, cpu)?;
        drop(probes);
        ratios.push(with / base);
        bases.push(base);
        withs.push(with);
    }
    let probes = attached(mode)?;
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling bpf_stats")?;
    let before: Vec<_> = probes.program_info().into_iter().map(|(n, i)| (n, i.run_time(), i.run_count())).collect();
    pingpong(rounds, cpu)?;
    let mut per_prog = Vec::new();
    for ((n, t0, c0), (_, i)) in before.into_iter().zip(probes.program_info()) {
        let runs = i.run_count() - c0;
        if runs > 0 {
            per_prog.push((n, runs, (i.run_time() - t0).as_nanos() as f64 / runs as f64));
        }
    }
    drop(stats);
    Ok(ModeResult { mode, base: median(bases), with: median(withs), ratio: median(ratios), per_prog })
}

pub fn run(reps: usize, rounds: u64) -> Result<()> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = ncpu - 1;
    pingpong(rounds / 10, cpu)?; // warm-up
    let detected = SchedMode::detect();
    let mut results = Vec::new();
    for mode in [SchedMode::Schedinfo, SchedMode::WakeupProbes] {
        results.push(measure_mode(mode, reps, rounds, cpu)?);
    }
    let probes = attached(detected)?;
    let populated = populate(1000, &probes)?;
    let maps = map_memory("sched_")?;
    drop(probes);

    println!("### Scheduler probes (`cargo xtask bench sched`)\n");
    println!(
        "Pipe ping-pong between two threads pinned to CPU {cpu} (two wakeups and two context switches per round \
         trip), {rounds} round trips per run, {reps} interleaved runs each way. This kernel's default timing: {detected:?}.\n"
    );
    println!("| timing | round trips/s without | with probes | **ratio** (median of pairs; target >= 0.95) |");
    println!("|---|---|---|---|");
    for r in &results {
        println!("| {:?} | {:.0} | {:.0} | **{:.3}** |", r.mode, r.base, r.with, r.ratio);
    }
    println!("\n| timing | program | runs | ns per run (bpf_stats) |\n|---|---|---|---|");
    for r in &results {
        for (name, runs, ns) in &r.per_prog {
            println!("| {:?} | {name} | {runs} | {ns:.0} |", r.mode);
        }
    }
    println!(
        "\nMap memory (memlock from fdinfo, {detected:?} timing) after 1000 cgroups each ran a task ({populated} of them \
         have stats entries; the hash maps are preallocated, so this is also their size when empty):\n"
    );
    println!("| map | max entries | memlock bytes |\n|---|---|---|");
    let mut total = 0;
    for (name, mem, max) in &maps {
        total += mem;
        println!("| {name} | {max} | {mem} |");
    }
    println!("| **total** | | **{total}** ({:.1} MiB on {ncpu} CPUs) |", total as f64 / (1 << 20) as f64);
    Ok(())
}
