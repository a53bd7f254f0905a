//! CPU roles for the pressure tests: a latency-sensitive victim that measures
//! its own scheduling delay, and CPU burners. Both pin themselves to one CPU so
//! they compete for it, and both stop after a fixed time.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

/// Same buckets as the agent: [0] < 1024 ns, [i] in [2^(i+9), 2^(i+10)) ns.
const BUCKETS: usize = 24;

fn bucket(ns: u64) -> usize {
    if ns < 1024 {
        return 0;
    }
    let log = 63 - ns.leading_zeros() as usize;
    (log - 9).min(BUCKETS - 1)
}

fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn mono_ns() -> u64 {
    // SAFETY: clock_gettime writes into the timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn spin(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Wakes every `period_us` on `cpu` (absolute deadlines, 1 ns timer slack),
/// works `work_us`, and reports how late each wakeup ran: the time from the
/// timer's deadline to running again, which is what the run queue cost it plus
/// the timer's own latency.
pub fn victim(cpu: usize, period_us: u64, work_us: u64, seconds: u64) -> Result<()> {
    pin(cpu)?;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let period = period_us * 1000;
    let end = mono_ns() + seconds * 1_000_000_000;
    let mut deadline = mono_ns() + period;
    let (mut wakeups, mut late_sum, mut late_max, mut hist) = (0u64, 0u64, 0u64, [0u64; BUCKETS]);
    // Iterations that really slept (their deadline was still ahead): each is one wakeup the
    // scheduler saw. One preempted past its next deadline returns from the sleep at once.
    let mut slept = 0u64;
    while deadline < end {
        if mono_ns() < deadline {
            slept += 1;
        }
        let ts =
            libc::timespec { tv_sec: (deadline / 1_000_000_000) as i64, tv_nsec: (deadline % 1_000_000_000) as i64 };
        // SAFETY: absolute sleep on CLOCK_MONOTONIC with a valid timespec.
        let rc =
            unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
        if rc != 0 && rc != libc::EINTR {
            bail!("clock_nanosleep: {}", std::io::Error::from_raw_os_error(rc));
        }
        let now = mono_ns();
        let late = now.saturating_sub(deadline);
        wakeups += 1;
        late_sum += late;
        late_max = late_max.max(late);
        hist[bucket(late)] += 1;
        spin(Duration::from_micros(work_us));
        deadline += period;
        let now = mono_ns();
        if deadline < now {
            // fell behind by more than a period: the next wakeup is the next period boundary
            deadline = now + period - (now - deadline) % period;
        }
    }
    println!(
        "{}",
        json!({"role": "victim", "wakeups": wakeups, "slept": slept, "late_sum_ns": late_sum, "late_max_ns": late_max,
               "late_mean_ns": late_sum.checked_div(wakeups).unwrap_or(0), "hist": hist.to_vec()})
    );
    Ok(())
}

/// `threads` threads spinning on `cpu` for `seconds`.
pub fn burn(cpu: usize, threads: usize, seconds: u64) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || -> Result<u64> {
                pin(cpu)?;
                let mut loops = 0u64;
                while Instant::now() < end {
                    spin(Duration::from_micros(100));
                    loops += 1;
                }
                Ok(loops)
            })
        })
        .collect();
    let mut loops = 0;
    for w in workers {
        loops += w.join().map_err(|_| anyhow::anyhow!("burner thread panicked"))??;
    }
    println!("{}", json!({"role": "burn", "threads": threads, "loops": loops}));
    Ok(())
}
