//! The agent's own resource use, from /proc/self: what a scrape reports
//! about the process besides its data path.

use std::path::Path;

/// CPU time, resident memory, open descriptors and start time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub start_time_seconds: f64,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`) and the page size.
fn ticks_and_page() -> (f64, u64) {
    // SAFETY: sysconf reads a constant of the running system.
    let (tck, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    (if tck > 0 { tck as f64 } else { 100.0 }, if page > 0 { page as u64 } else { 4096 })
}

/// Reads /proc/self; a file that cannot be read leaves its fields at zero.
pub fn read() -> ProcessStats {
    let (ticks, page) = ticks_and_page();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s)).unwrap_or(0);
    let mut out = parse_stat(&stat, ticks, page, boot).unwrap_or_default();
    out.open_fds = count_entries(Path::new("/proc/self/fd"));
    out
}

fn count_entries(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.count() as u64).unwrap_or(0)
}

/// `btime` of /proc/stat: boot time in Unix seconds.
pub fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// Fields of /proc/<pid>/stat after the command name (which may hold spaces
/// and parentheses, so it is skipped up to the last ')').
pub fn parse_stat(stat: &str, ticks: f64, page: u64, boot_unix: u64) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after the name: state is field 3, so field n is f[n - 3]
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let (utime, stime, start, rss) = (num(14)?, num(15)?, num(22)?, num(24)?);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_bytes: rss * page,
        open_fds: 0,
        start_time_seconds: boot_unix as f64 + start as f64 / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (podlens (agent) x) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 50 0 0 20 0 9 0 \
                    12345 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(stat, 100.0, 4096, 1_700_000_000).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.resident_bytes, 2048 * 4096);
        assert_eq!(s.start_time_seconds, 1_700_000_000.0 + 123.45);
        assert!(parse_stat("4242 (x) S 1", 100.0, 4096, 0).is_none(), "truncated");
        assert!(parse_stat("garbage", 100.0, 4096, 0).is_none());
    }

    #[test]
    fn boot_time_and_this_process() {
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
        assert_eq!(boot_time("cpu 1 2\n"), None);
        let me = read();
        assert!(me.resident_bytes > 0 && me.open_fds > 0 && me.start_time_seconds > 1e9, "{me:?}");
    }
}
