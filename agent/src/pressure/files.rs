//! Errors and file access shared by the cgroup pressure readers.
//!
//! Every counter the pressure module reports comes from a small kernel text
//! file (`cpu.pressure`, `cpu.stat`, `memory.events`, `cpuacct.usage`, ...).
//! Two rules hold throughout:
//!
//! - a file that does not exist is *absent* (`None`), never zero: a missing
//!   `memory.events` means "this hierarchy does not account memory here", and
//!   reporting 0 OOM kills for it would be a lie;
//! - a file that exists but cannot be understood is an error naming the file
//!   and what was wrong with it, so a kernel format change shows up in the logs
//!   instead of as silently wrong numbers.
//!
//! Parsers work on text only and return [`ParseError`] (which knows the line
//! but not the file); the reader wraps it into a [`ReadError`] that names the
//! full path. Files are read here too, so that "absent" means the same
//! thing (ENOENT, or ENODEV from a cgroup removed mid-read) for every file.

use std::{
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

/// Cgroup and PSI files are a few hundred bytes; the cap only stops a
/// misdirected path from pulling something huge into memory every window.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// kernfs answers ENODEV when a cgroup is removed between open() and read();
/// pods come and go all the time, so this is the same as "absent". Linux-only
/// value, like the files it concerns.
const ENODEV: i32 = 19;

/// Longest excerpt of an offending line quoted in an error, so a garbage file
/// cannot turn one error into a log flood.
const MAX_QUOTE_CHARS: usize = 80;

/// What was wrong with a file's text. Line numbers start at 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: expected {expected}, got {got:?}")]
    Malformed { line: usize, expected: &'static str, got: String },
    #[error("line {line}: {key:?} appears a second time")]
    Duplicate { line: usize, key: String },
    #[error("line {line}: {key}: {value:?} is not a non-negative integer")]
    NotANumber { line: usize, key: String, value: String },
    #[error("no {0:?} line")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(String),
}

impl ParseError {
    pub(crate) fn malformed(line: usize, expected: &'static str, got: &str) -> Self {
        ParseError::Malformed { line, expected, got: quote(got) }
    }

    pub(crate) fn not_a_number(line: usize, key: &str, value: &str) -> Self {
        ParseError::NotANumber { line, key: quote(key), value: quote(value) }
    }
}

/// A file (or cgroup path) that could not be read or understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub message: String,
}

impl ReadError {
    pub fn new(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

/// A counter as the kernel prints it: decimal digits only. Stricter than
/// `str::parse`, which would also take "+5".
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Cuts `s` to at most [`MAX_QUOTE_CHARS`] characters (on a char boundary, so
/// multi-byte text cannot make the cut panic).
pub(crate) fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTE_CHARS) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

/// `rel` as a relative path with only normal components. ".." is refused
/// rather than resolved: a cgroup name containing it is either a bug or an
/// attempt to make the agent read files outside the cgroup mounts.
pub(crate) fn relative(rel: &str) -> Result<PathBuf, ReadError> {
    if rel.contains('\0') {
        return Err(ReadError::new(rel.replace('\0', "\\0"), "cgroup path contains a NUL byte"));
    }
    let mut out = PathBuf::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ReadError::new(rel, "cgroup path has a \"..\" component: refusing to leave the hierarchy"))
            }
            p => out.push(p),
        }
    }
    Ok(out)
}

/// The file's text, or None when it does not exist.
pub(crate) fn read_text(path: &Path) -> Result<Option<String>, ReadError> {
    let absent = |e: &io::Error| e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENODEV);
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => return Err(ReadError::new(path, e.to_string())),
    };
    let mut bytes = Vec::new();
    match file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        Ok(_) if bytes.len() as u64 > MAX_FILE_BYTES => {
            Err(ReadError::new(path, format!("larger than {MAX_FILE_BYTES} bytes: not a cgroup file")))
        }
        // Lossy, so stray bytes surface as a parse error naming the line.
        Ok(_) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if absent(&e) => Ok(None),
        Err(e) => Err(ReadError::new(path, e.to_string())),
    }
}

/// Reads and parses one file: absent is None; a failure is recorded in
/// `errors` (naming the path) and is None too, so the caller moves on.
pub(crate) fn read_parsed<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
    errors: &mut Vec<ReadError>,
) -> Option<T> {
    match read_text(path) {
        Ok(Some(text)) => parse(&text).map_err(|e| errors.push(parse_failure(path, e))).ok(),
        Ok(None) => None,
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

pub(crate) fn parse_failure(path: &Path, e: ParseError) -> ReadError {
    ReadError::new(path, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_error_names_the_path_first() {
        let e = ReadError::new("/sys/fs/cgroup/a/cpu.pressure", "line 2: bad");
        assert_eq!(e.to_string(), "/sys/fs/cgroup/a/cpu.pressure: line 2: bad");
    }

    #[test]
    fn parse_errors_say_what_was_expected() {
        let e = ParseError::malformed(2, "\"full ... total=N\"", "full avg10=x");
        assert_eq!(e.to_string(), r#"line 2: expected "full ... total=N", got "full avg10=x""#);
        let e = ParseError::not_a_number(1, "oom", "-3");
        assert_eq!(e.to_string(), r#"line 1: oom: "-3" is not a non-negative integer"#);
        assert_eq!(ParseError::Missing("some").to_string(), r#"no "some" line"#);
    }

    #[test]
    fn relative_paths_never_leave_the_hierarchy() {
        assert_eq!(relative("/"), Ok(PathBuf::new()));
        assert_eq!(relative(""), Ok(PathBuf::new()));
        assert_eq!(relative("/kubepods.slice//./pod1.slice/"), Ok(PathBuf::from("kubepods.slice/pod1.slice")));
        assert_eq!(Path::new("/root").join(relative("/a/b").unwrap()), Path::new("/root/a/b"));
        for bad in ["/..", "/a/../../etc", "..", "a/..", "/a/b/.."] {
            let e = relative(bad).unwrap_err();
            assert!(e.to_string().starts_with(&format!("{bad}: cgroup path has a \"..\"")), "{e}");
        }
        assert!(relative("/a\0b").is_err());
        // "..." is a legal (if odd) directory name, not a parent reference.
        assert_eq!(relative("/.../x"), Ok(PathBuf::from(".../x")));
    }

    #[test]
    fn absent_files_are_none_and_other_failures_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_text(&dir.path().join("missing")), Ok(None));
        assert_eq!(read_text(&dir.path().join("missing/dir/file")), Ok(None));
        let e = read_text(dir.path()).unwrap_err();
        assert_eq!(e.path, dir.path());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(read_text(&big).unwrap_err().message.starts_with("larger than"));
        let odd = dir.path().join("odd");
        std::fs::write(&odd, b"oom \xff\n").unwrap();
        assert_eq!(read_text(&odd), Ok(Some("oom \u{fffd}\n".to_string())));
    }

    #[test]
    fn numbers_are_plain_decimal() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "+5", "-1", "1.5", "1e3", " 1", "18446744073709551616", "0x10"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn quotes_are_bounded_and_cut_on_char_boundaries() {
        let long = "é".repeat(500);
        let q = quote(&long);
        assert_eq!(q.chars().count(), MAX_QUOTE_CHARS + 3);
        assert!(q.ends_with("..."));
        assert_eq!(quote("short"), "short");
    }
}
