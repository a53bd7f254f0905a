//! A plain HTTP/1.0 GET (the admin endpoints need nothing more) and a
//! strict reader of the Prometheus/OpenMetrics text format.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// (status, body), or None when nothing answers.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// One sample: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses an exposition; every sample must belong to a family declared by a
/// `# TYPE` line (counters as `<family>_total`), labels must be well formed
/// and values numbers, and the text must end with `# EOF`.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if eof {
            return Err(at("text after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').ok_or_else(|| at("TYPE without a type"))?;
            if !["counter", "gauge", "histogram", "summary", "info", "stateset", "unknown"].contains(&kind) {
                return Err(at("unknown type"));
            }
            types.insert(family.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        let sample = parse_sample(line).map_err(|e| at(&e))?;
        let declared = types.get(&sample.name).map(String::as_str).or_else(|| {
            let family = sample.name.strip_suffix("_total")?;
            types.get(family).filter(|t| *t == "counter").map(String::as_str)
        });
        if declared.is_none() {
            return Err(at("sample of an undeclared family"));
        }
        samples.push(sample);
    }
    if !eof {
        return Err("no # EOF at the end".to_owned());
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let (series, value) = line.rsplit_once(' ').ok_or("no value")?;
    let value: f64 = value.parse().map_err(|_| "value is not a number")?;
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').ok_or("unclosed labels")?)?),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return Err("bad metric name".to_owned());
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

fn parse_labels(mut s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").ok_or("label without =\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("dangling escape".to_owned()),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".to_owned()),
            }
        };
        out.insert(key.to_owned(), value);
        s = rest[end + 1..].strip_prefix(',').unwrap_or(&rest[end + 1..]);
    }
    Ok(out)
}

/// The value of the sample `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_checked_strictly() {
        let ok = "# HELP a_losses x\n# TYPE a_losses counter\na_losses_total{source=\"k\",reason=\"q\\\"x\"} 3\n\
                  # TYPE a_up gauge\na_up 1\n# EOF\n";
        let s = parse_exposition(ok).unwrap();
        assert_eq!(value(&s, "a_losses_total", &[("reason", "q\"x")]), Some(3.0));
        assert_eq!(value(&s, "a_up", &[]), Some(1.0));
        for bad in [
            "a_up 1\n# EOF\n",
            "# TYPE a_up gauge\na_up one\n# EOF\n",
            "# TYPE a_up gauge\na_up{x=\"1} 1\n# EOF\n",
            "# TYPE a_up gauge\na_up 1\n",
            "# TYPE a_up gauge\n# EOF\na_up 1\n",
        ] {
            assert!(parse_exposition(bad).is_err(), "{bad:?}");
        }
    }
}
