//! CPU and memory counters from flat "key value" cgroup files: `cpu.stat` (v1
//! and v2), `cpuacct.usage`, `memory.events` (v2) and `memory.oom_control`
//! (v1). Everything time-like is normalised to microseconds so callers never
//! need to know which hierarchy a value came from.

use super::files::{parse_u64, ParseError};

const EXPECTED_KEY_VALUE: &str = "\"<key> <non-negative integer>\"";
const NSEC_PER_USEC: u64 = 1_000;

/// Cumulative CPU counters of one cgroup; None means the file or key was not
/// there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTotals {
    pub usage_usec: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

impl CpuTotals {
    /// Whether any CFS bandwidth (throttling) counter is present.
    pub fn has_throttling(&self) -> bool {
        self.nr_periods.is_some() || self.nr_throttled.is_some() || self.throttled_usec.is_some()
    }
}

/// Cumulative memory event counters of one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryTotals {
    /// Times the cgroup hit its limit and the OOM killer was invoked.
    pub oom: Option<u64>,
    /// Processes killed by the OOM killer.
    pub oom_kill: Option<u64>,
    /// Times usage went over memory.high (v2 only).
    pub high: Option<u64>,
    /// Times usage was about to go over memory.max (v2 only).
    pub max: Option<u64>,
}

/// Values of `keys` in "key value" lines, in the order of `keys`. Other keys
/// are ignored because the kernel keeps adding them (v2 cpu.stat gained
/// nr_bursts, burst_usec, ...); a known key must appear at most once with one
/// non-negative integer, since anything else means we would misread it.
fn parse_keyed<const N: usize>(text: &str, keys: [&str; N]) -> Result<[Option<u64>; N], ParseError> {
    let mut values = [None; N];
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        let mut words = line.split_ascii_whitespace();
        let Some(key) = words.next() else {
            continue;
        };
        let Some(slot) = keys.iter().position(|k| *k == key) else {
            continue;
        };
        let (Some(value), None) = (words.next(), words.next()) else {
            return Err(ParseError::malformed(line_no, EXPECTED_KEY_VALUE, line));
        };
        if values[slot].is_some() {
            return Err(ParseError::Duplicate { line: line_no, key: key.to_string() });
        }
        values[slot] = Some(parse_u64(value).ok_or_else(|| ParseError::not_a_number(line_no, key, value))?);
    }
    Ok(values)
}

/// cgroup2 `cpu.stat`. `usage_usec` is there whenever the file is (the core
/// accounts CPU time without the cpu controller); the throttling keys appear
/// only where the cpu controller is enabled.
pub fn parse_cpu_stat_v2(text: &str) -> Result<CpuTotals, ParseError> {
    let [usage_usec, nr_periods, nr_throttled, throttled_usec] =
        parse_keyed(text, ["usage_usec", "nr_periods", "nr_throttled", "throttled_usec"])?;
    Ok(CpuTotals { usage_usec, nr_periods, nr_throttled, throttled_usec })
}

/// cgroup v1 `cpu.stat`: throttling only (usage lives in cpuacct), with
/// `throttled_time` in nanoseconds.
pub fn parse_cpu_stat_v1(text: &str) -> Result<CpuTotals, ParseError> {
    let [nr_periods, nr_throttled, throttled_ns] = parse_keyed(text, ["nr_periods", "nr_throttled", "throttled_time"])?;
    Ok(CpuTotals {
        usage_usec: None,
        nr_periods,
        nr_throttled,
        throttled_usec: throttled_ns.map(|ns| ns / NSEC_PER_USEC),
    })
}

/// cgroup v1 `cpuacct.usage`: total CPU time in nanoseconds, as microseconds.
pub fn parse_cpuacct_usage(text: &str) -> Result<u64, ParseError> {
    let value = text.trim();
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Err(ParseError::malformed(1, "one number of nanoseconds", value));
    }
    let ns = parse_u64(value).ok_or_else(|| ParseError::not_a_number(1, "cpuacct.usage", value))?;
    Ok(ns / NSEC_PER_USEC)
}

/// cgroup2 `memory.events`. `low` and `oom_group_kill` are checked but not
/// kept: nothing reports them yet.
pub fn parse_memory_events_v2(text: &str) -> Result<MemoryTotals, ParseError> {
    let [_low, high, max, oom, oom_kill, _oom_group_kill] =
        parse_keyed(text, ["low", "high", "max", "oom", "oom_kill", "oom_group_kill"])?;
    Ok(MemoryTotals { oom, oom_kill, high, max })
}

/// cgroup v1 `memory.oom_control`. Only `oom_kill` is a counter (`under_oom`
/// is a current state), and kernels before 4.13 do not print it at all.
pub fn parse_memory_oom_control_v1(text: &str) -> Result<MemoryTotals, ParseError> {
    let [_disable, _under_oom, oom_kill] = parse_keyed(text, ["oom_kill_disable", "under_oom", "oom_kill"])?;
    Ok(MemoryTotals { oom_kill, ..MemoryTotals::default() })
}

/// cgroup2 `cpu.max` (`"<quota> <period>"` or `"max <period>"`) as cores; None
/// when unlimited.
pub fn parse_cpu_max(text: &str) -> Result<Option<f64>, ParseError> {
    let line = text.trim();
    let mut words = line.split_ascii_whitespace();
    let (Some(quota), Some(period), None) = (words.next(), words.next(), words.next()) else {
        return Err(ParseError::malformed(1, "\"<quota|max> <period>\"", line));
    };
    let period = parse_period(period)?;
    if quota == "max" {
        return Ok(None);
    }
    let quota = parse_u64(quota).ok_or_else(|| ParseError::not_a_number(1, "quota", quota))?;
    Ok(Some(quota as f64 / period as f64))
}

/// cgroup v1 `cpu.cfs_quota_us`: microseconds per period, None for -1
/// (unlimited, the only negative value the kernel prints).
pub fn parse_cfs_quota_us(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim() {
        "-1" => Ok(None),
        q => parse_u64(q).map(Some).ok_or_else(|| ParseError::not_a_number(1, "cpu.cfs_quota_us", q)),
    }
}

/// cgroup v1 `cpu.cfs_period_us`.
pub fn parse_cfs_period_us(text: &str) -> Result<u64, ParseError> {
    parse_period(text.trim())
}

/// A bandwidth period; zero would make the core count a division by zero, and
/// the kernel never allows it.
fn parse_period(s: &str) -> Result<u64, ParseError> {
    match parse_u64(s) {
        Some(0) => Err(ParseError::Invalid("period is 0".to_string())),
        Some(p) => Ok(p),
        None => Err(ParseError::not_a_number(1, "period", s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_cpu_stat_with_the_cpu_controller() {
        let text = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 2\n\
                    throttled_usec 3000\nnr_bursts 0\nburst_usec 0\n";
        let t = parse_cpu_stat_v2(text).unwrap();
        let want = CpuTotals {
            usage_usec: Some(1500),
            nr_periods: Some(10),
            nr_throttled: Some(2),
            throttled_usec: Some(3000),
        };
        assert_eq!(t, want);
        assert!(t.has_throttling());
    }

    #[test]
    fn v2_cpu_stat_without_the_cpu_controller() {
        // This machine's unified root: usage only.
        let text = "usage_usec 10763409040\nuser_usec 8160342695\nsystem_usec 2603066345\nnice_usec 0\n";
        let t = parse_cpu_stat_v2(text).unwrap();
        assert_eq!(t, CpuTotals { usage_usec: Some(10_763_409_040), ..CpuTotals::default() });
        assert!(!t.has_throttling());
        assert_eq!(parse_cpu_stat_v2("").unwrap(), CpuTotals::default());
    }

    #[test]
    fn v1_cpu_stat_converts_nanoseconds() {
        let text = "nr_periods 7\nnr_throttled 3\nthrottled_time 2500999\nnr_bursts 0\nburst_time 0\n";
        let t = parse_cpu_stat_v1(text).unwrap();
        let want =
            CpuTotals { usage_usec: None, nr_periods: Some(7), nr_throttled: Some(3), throttled_usec: Some(2500) };
        assert_eq!(t, want);
    }

    #[test]
    fn cpuacct_usage() {
        assert_eq!(parse_cpuacct_usage("10961486314663\n"), Ok(10_961_486_314));
        assert_eq!(parse_cpuacct_usage("999"), Ok(0));
        assert!(matches!(parse_cpuacct_usage(""), Err(ParseError::Malformed { line: 1, .. })));
        assert!(matches!(parse_cpuacct_usage("1 2"), Err(ParseError::Malformed { .. })));
        let e = parse_cpuacct_usage("12ns").unwrap_err();
        assert_eq!(e.to_string(), r#"line 1: cpuacct.usage: "12ns" is not a non-negative integer"#);
    }

    #[test]
    fn cpu_limits() {
        assert_eq!(parse_cpu_max("max 100000\n"), Ok(None));
        assert_eq!(parse_cpu_max("20000 100000\n"), Ok(Some(0.2)));
        assert_eq!(parse_cpu_max("150000 100000"), Ok(Some(1.5)));
        assert!(matches!(parse_cpu_max("max"), Err(ParseError::Malformed { .. })));
        assert!(matches!(parse_cpu_max("1 2 3"), Err(ParseError::Malformed { .. })));
        assert!(matches!(parse_cpu_max("lots 100000"), Err(ParseError::NotANumber { .. })));
        assert_eq!(parse_cpu_max("max 0").unwrap_err().to_string(), "period is 0");
        assert_eq!(parse_cfs_quota_us("-1\n"), Ok(None));
        assert_eq!(parse_cfs_quota_us("50000\n"), Ok(Some(50_000)));
        assert!(parse_cfs_quota_us("-2").is_err());
        assert!(parse_cfs_quota_us("").is_err());
        assert_eq!(parse_cfs_period_us("100000\n"), Ok(100_000));
        assert!(parse_cfs_period_us("0").is_err());
    }

    #[test]
    fn memory_events_v2() {
        let text = "low 0\nhigh 12\nmax 4\noom 2\noom_kill 1\noom_group_kill 0\n";
        let m = parse_memory_events_v2(text).unwrap();
        assert_eq!(m, MemoryTotals { oom: Some(2), oom_kill: Some(1), high: Some(12), max: Some(4) });
        // Older kernels lack oom_group_kill (5.17) and even oom_kill (4.13).
        let m = parse_memory_events_v2("low 0\nhigh 0\nmax 0\noom 0\n").unwrap();
        assert_eq!(m, MemoryTotals { oom: Some(0), oom_kill: None, high: Some(0), max: Some(0) });
    }

    #[test]
    fn memory_oom_control_v1() {
        let m = parse_memory_oom_control_v1("oom_kill_disable 0\nunder_oom 1\noom_kill 5\n").unwrap();
        assert_eq!(m, MemoryTotals { oom_kill: Some(5), ..MemoryTotals::default() });
        let m = parse_memory_oom_control_v1("oom_kill_disable 0\nunder_oom 0\n").unwrap();
        assert_eq!(m, MemoryTotals::default());
    }

    #[test]
    fn unknown_keys_are_ignored_even_when_odd() {
        let m = parse_memory_events_v2("future_key not-a-number at all\noom 1\n\n").unwrap();
        assert_eq!(m.oom, Some(1));
    }

    #[test]
    fn known_keys_must_be_well_formed() {
        let e = parse_memory_events_v2("low 0\noom x\n").unwrap_err();
        assert_eq!(e, ParseError::NotANumber { line: 2, key: "oom".into(), value: "x".into() });
        let e = parse_cpu_stat_v2("usage_usec -5\n").unwrap_err();
        assert_eq!(e.to_string(), r#"line 1: usage_usec: "-5" is not a non-negative integer"#);
        let e = parse_cpu_stat_v1("nr_periods\n").unwrap_err();
        assert!(matches!(e, ParseError::Malformed { line: 1, .. }), "{e}");
        let e = parse_cpu_stat_v1("nr_periods 1 2\n").unwrap_err();
        assert_eq!(e.to_string(), r#"line 1: expected "<key> <non-negative integer>", got "nr_periods 1 2""#);
        let e = parse_memory_oom_control_v1("oom_kill 1\noom_kill 2\n").unwrap_err();
        assert_eq!(e, ParseError::Duplicate { line: 2, key: "oom_kill".into() });
    }
}
