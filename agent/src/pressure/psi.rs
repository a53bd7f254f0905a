//! Pressure stall information: `<cgroup>/{cpu,memory,io}.pressure` and
//! `/proc/pressure/{cpu,memory,io}`.
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=123
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! Only the cumulative `total` (microseconds stalled) is kept: the kernel's
//! running averages use its own fixed windows, while the agent wants stall
//! time over its own reporting window, which it gets from two totals.

use super::files::{parse_u64, ParseError};

const EXPECTED_SOME: &str = "\"some ... total=N\"";
const EXPECTED_FULL: &str = "\"full ... total=N\"";
const EXPECTED_KIND: &str = "a \"some ...\" or \"full ...\" line";

/// Cumulative stall time of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsiTotals {
    /// Time at least one task was stalled on the resource.
    pub some_usec: u64,
    /// Time all non-idle tasks were stalled at once. None when the file has no
    /// "full" line: kernels before 5.13 print none for CPU.
    pub full_usec: Option<u64>,
}

/// Parses a `*.pressure` file. Fields other than `total` are accepted and
/// ignored, so a kernel adding one (as 5.13 added the CPU "full" line) does
/// not break the agent.
pub fn parse_psi(text: &str) -> Result<PsiTotals, ParseError> {
    let mut some = None;
    let mut full = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_ascii_whitespace();
        let kind = words.next().unwrap_or_default();
        let (slot, expected) = match kind {
            "some" => (&mut some, EXPECTED_SOME),
            "full" => (&mut full, EXPECTED_FULL),
            _ => return Err(ParseError::malformed(line_no, EXPECTED_KIND, line)),
        };
        if slot.is_some() {
            return Err(ParseError::Duplicate { line: line_no, key: kind.to_string() });
        }
        let mut total = None;
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(ParseError::malformed(line_no, expected, line));
            };
            if key != "total" {
                continue;
            }
            if total.is_some() {
                return Err(ParseError::Duplicate { line: line_no, key: format!("{kind} total") });
            }
            total = Some(parse_u64(value).ok_or_else(|| ParseError::not_a_number(line_no, "total", value))?);
        }
        *slot = Some(total.ok_or_else(|| ParseError::malformed(line_no, expected, line))?);
    }
    Ok(PsiTotals { some_usec: some.ok_or(ParseError::Missing("some"))?, full_usec: full })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_lines() {
        let text = "some avg10=1.28 avg60=0.31 avg300=2.81 total=643868261\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_psi(text), Ok(PsiTotals { some_usec: 643_868_261, full_usec: Some(0) }));
    }

    #[test]
    fn cpu_before_5_13_has_no_full_line() {
        let text = "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n";
        assert_eq!(parse_psi(text), Ok(PsiTotals { some_usec: 42, full_usec: None }));
        // No trailing newline, full line first: still fine.
        let text = "full avg10=0.00 avg60=0.00 avg300=0.00 total=7\nsome avg10=0.00 total=9";
        assert_eq!(parse_psi(text), Ok(PsiTotals { some_usec: 9, full_usec: Some(7) }));
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let text = "some avg10=0.00 avg60=0.00 avg300=0.00 avg3600=1.5 total=5 peak=x\n\
                    full total=3 avg10=0.00\n";
        assert_eq!(parse_psi(text), Ok(PsiTotals { some_usec: 5, full_usec: Some(3) }));
    }

    #[test]
    fn missing_some_line() {
        assert_eq!(parse_psi(""), Err(ParseError::Missing("some")));
        assert_eq!(parse_psi("full avg10=0.00 total=1\n"), Err(ParseError::Missing("some")));
    }

    #[test]
    fn duplicate_lines() {
        let e = parse_psi("some total=1\nsome total=2\n").unwrap_err();
        assert_eq!(e, ParseError::Duplicate { line: 2, key: "some".into() });
        let e = parse_psi("some total=1\nfull total=2\nfull total=3\n").unwrap_err();
        assert_eq!(e.to_string(), r#"line 3: "full" appears a second time"#);
        let e = parse_psi("some total=1 total=2\n").unwrap_err();
        assert_eq!(e.to_string(), r#"line 1: "some total" appears a second time"#);
    }

    #[test]
    fn non_numeric_totals() {
        for bad in ["abc", "", "-1", "1.5", "+3", "99999999999999999999"] {
            let e = parse_psi(&format!("some avg10=0.00 total={bad}\n")).unwrap_err();
            assert_eq!(e, ParseError::NotANumber { line: 1, key: "total".into(), value: bad.into() });
        }
    }

    #[test]
    fn malformed_lines_name_the_line_and_the_expectation() {
        let e = parse_psi("some avg10=0.00 total=1\nfull avg10=0.00 avg60=0.00\n").unwrap_err();
        assert_eq!(e.to_string(), r#"line 2: expected "full ... total=N", got "full avg10=0.00 avg60=0.00""#);
        let e = parse_psi("some avg10 total=1\n").unwrap_err();
        assert!(e.to_string().starts_with(r#"line 1: expected "some ... total=N""#), "{e}");
        let e = parse_psi("some total=1\npartial total=2\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2: expected a \"some ...\" or \"full ...\" line"), "{e}");
        assert!(parse_psi("\u{0}\u{fffd}é=\n").is_err());
        assert!(parse_psi("some").is_err());
    }
}
