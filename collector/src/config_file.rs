//! `--config FILE` for the podlens daemons: a YAML mapping whose keys are the
//! long flag names (`flow-map-entries` or `flow_map_entries`). The command
//! line wins over the environment, which wins over the file, which wins over
//! the defaults. Unknown keys are rejected with the list of known ones, and a
//! bad value is reported with the file and key before clap's own message
//! (which names the allowed values).
//!
//! Values go through the same parsers as the flags: the file is turned into
//! flags placed before the command line's.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, ArgAction, CommandFactory, FromArgMatches};
use serde_yaml::Value;

/// The flag naming the file, and its environment twin.
pub const FLAG: &str = "config";
pub const ENV: &str = "PODLENS_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: not YAML: {source}")]
    Yaml { path: PathBuf, source: serde_yaml::Error },
    #[error("config file {path}: expected a mapping of flag names to values at the top level")]
    NotAMapping { path: PathBuf },
    #[error("config file {path}: unknown field {key:?} (known fields: {known})")]
    Unknown { path: PathBuf, key: String, known: String },
    #[error("config file {path}: field {key:?}: {why}")]
    Value { path: PathBuf, key: String, why: String },
}

/// Parses the process arguments with the config file merged in; exits with
/// clap's usage message on a bad flag, as `P::parse()` does.
pub fn parse<P: CommandFactory + FromArgMatches>() -> anyhow::Result<P> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let env = std::env::var_os(ENV).map(PathBuf::from);
    let argv = merged_args::<P>(argv, env.as_deref())?;
    let matches = P::command().get_matches_from(argv);
    P::from_arg_matches(&matches).map_err(|e| e.exit())
}

/// The config file named by `--config` (or `env`), as flags before `argv`'s
/// own; `argv` unchanged without a file.
pub fn merged_args<P: CommandFactory>(
    argv: Vec<OsString>,
    env: Option<&Path>,
) -> Result<Vec<OsString>, ConfigFileError> {
    let Some(path) = config_path(&argv).or_else(|| env.map(Path::to_path_buf)) else { return Ok(argv) };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read { path: path.clone(), source })?;
    let doc: Value =
        serde_yaml::from_str(&text).map_err(|source| ConfigFileError::Yaml { path: path.clone(), source })?;
    let map = match doc {
        Value::Mapping(m) => m,
        // an empty file sets nothing
        Value::Null => return Ok(argv),
        _ => return Err(ConfigFileError::NotAMapping { path }),
    };
    let command = P::command();
    // which flags the command line or the environment already set
    let given = command.clone().ignore_errors(true).get_matches_from(argv.clone());
    let mut injected: Vec<OsString> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in map {
        let key = match key {
            Value::String(k) => k,
            other => {
                return Err(ConfigFileError::Value {
                    path,
                    key: format!("{other:?}"),
                    why: "keys must be flag names".into(),
                })
            }
        };
        let long = key.replace('_', "-");
        if seen.contains(&long) {
            return Err(ConfigFileError::Value { path, key, why: "given twice (as - and _ spellings)".into() });
        }
        seen.push(long.clone());
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != FLAG && !a.is_hide_set())
            .ok_or_else(|| ConfigFileError::Unknown { path: path.clone(), key: key.clone(), known: known(&command) })?;
        let from_user = matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let flags = as_flags(&long, arg.get_action(), &value).map_err(|why| ConfigFileError::Value {
            path: path.clone(),
            key: key.clone(),
            why,
        })?;
        // the same parsers as the flags, so the message names the allowed values
        let mut alone = vec![argv.first().cloned().unwrap_or_default()];
        alone.extend(flags.iter().cloned());
        if let Err(e) = command.clone().ignore_errors(false).try_get_matches_from(alone) {
            if !matches!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument) {
                let why = e
                    .to_string()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
                    .collect::<Vec<_>>()
                    .join(" ")
                    .trim_start_matches("error: ")
                    .to_owned();
                return Err(ConfigFileError::Value { path, key, why });
            }
        }
        if !from_user {
            injected.extend(flags);
        }
    }
    let mut out = Vec::with_capacity(argv.len() + injected.len());
    let mut rest = argv.into_iter();
    out.extend(rest.next());
    out.extend(injected);
    out.extend(rest);
    Ok(out)
}

fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{FLAG}");
    let prefix = format!("--{FLAG}=");
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == flag {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix(&prefix) {
            return Some(PathBuf::from(p));
        }
    }
    None
}

fn known(command: &clap::Command) -> String {
    let mut names: Vec<&str> = command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|l| *l != FLAG && *l != "help" && *l != "version")
        .collect();
    names.sort_unstable();
    names.join(", ")
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The flags a value stands for: a switch when true, `--key=value` otherwise;
/// a list repeats an appending flag, or is comma-joined.
fn as_flags(long: &str, action: &ArgAction, value: &Value) -> Result<Vec<OsString>, String> {
    match (action, value) {
        (ArgAction::SetTrue, Value::Bool(true)) => Ok(vec![format!("--{long}").into()]),
        (ArgAction::SetTrue, Value::Bool(false)) => Ok(Vec::new()),
        (ArgAction::SetTrue, _) => Err("expected true or false".into()),
        (ArgAction::Append, Value::Sequence(items)) => items
            .iter()
            .map(|i| {
                scalar(i).map(|s| format!("--{long}={s}").into()).ok_or_else(|| "list items must be scalars".into())
            })
            .collect(),
        (_, Value::Sequence(items)) => {
            let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
            let parts = parts.ok_or("list items must be scalars")?;
            Ok(vec![format!("--{long}={}", parts.join(",")).into()])
        }
        (_, Value::Null) => Err("no value".into()),
        (_, v) => {
            scalar(v).map(|s| vec![format!("--{long}={s}").into()]).ok_or_else(|| "expected a scalar or a list".into())
        }
    }
}

/// Flags of `command` missing from the Markdown tables of `doc`, or whose
/// row lacks their default in backticks: the README's tables are where the
/// defaults are documented, and this keeps them true.
pub fn undocumented_flags(command: &clap::Command, doc: &str) -> Vec<String> {
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `--")).collect();
    let mut problems = Vec::new();
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(long) = arg.get_long().filter(|l| *l != "help" && *l != "version") else { continue };
        let flag = format!("`--{long}`");
        let Some(row) = rows.iter().find(|r| r.split('|').nth(1).is_some_and(|cell| cell.contains(&flag))) else {
            problems.push(format!("--{long} is in no table"));
            continue;
        };
        for default in arg.get_default_values() {
            let default = format!("`{}`", default.to_string_lossy());
            if !row.contains(&default) {
                problems.push(format!("--{long}: its row does not show the default {default}: {row}"));
            }
        }
    }
    problems
}

/// The README's collector flag table, and the README without it (the agent's
/// tables): `--listen` and others are flags of both, with other defaults.
pub fn readme_sections(readme: &str) -> (String, String) {
    let (start, end) = ("Collector flags (", "Use separate CAs for agents and consumers");
    match (readme.find(start), readme.find(end)) {
        (Some(a), Some(b)) if a < b => (readme[a..b].to_owned(), format!("{}{}", &readme[..a], &readme[b..])),
        _ => (String::new(), readme.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{Parser, ValueEnum};

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
    enum Mode {
        Auto,
        On,
        Off,
    }

    #[derive(Debug, Parser)]
    struct Args {
        #[arg(long, env = "PODLENS_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "T_INTERVAL", default_value = "5s", value_parser = crate::runtime::parse_duration)]
        interval: Duration,
        #[arg(long, value_enum, default_value = "auto")]
        kube: Mode,
        #[arg(long)]
        standalone: bool,
        #[arg(long, value_delimiter = ',', default_value = "53")]
        ports: Vec<u16>,
        #[arg(long)]
        collector: Option<String>,
        #[arg(long)]
        max_items: Option<u32>,
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podlens.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn parse(argv: &[&str], env_file: Option<&Path>) -> Result<Args, String> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let merged = merged_args::<Args>(argv, env_file).map_err(|e| e.to_string())?;
        Args::try_parse_from(merged).map_err(|e| e.to_string())
    }

    #[test]
    fn the_file_sets_what_the_command_line_does_not() {
        let (_d, path) = file("interval: 2s\nkube: off\nstandalone: true\nports: [53, 5353]\ncollector_x: 1\n");
        let p = path.display().to_string();
        let err = parse(&["t", "--config", &p], None).unwrap_err();
        assert!(err.contains("unknown field \"collector_x\"") && err.contains("known fields: collector,"), "{err}");
        assert!(err.contains(&p), "names the file: {err}");

        let (_d, path) = file("interval: 2s\nkube: off\nstandalone: true\nports: [53, 5353]\n");
        let p = path.display().to_string();
        let a = parse(&["t", "--config", &p], None).unwrap();
        assert_eq!(
            (a.interval, a.kube, a.standalone, a.ports.clone()),
            (Duration::from_secs(2), Mode::Off, true, vec![53, 5353])
        );
        let a = parse(&["t", &format!("--config={p}"), "--interval", "9s", "--ports", "1"], None).unwrap();
        assert_eq!((a.interval, a.ports), (Duration::from_secs(9), vec![1]), "the command line wins");
        let a = parse(&["t"], Some(&path)).unwrap();
        assert_eq!(a.kube, Mode::Off, "PODLENS_CONFIG names the file too");
        assert_eq!(parse(&["t"], None).unwrap().interval, Duration::from_secs(5), "no file: defaults");
    }

    #[test]
    fn bad_values_name_the_file_the_field_and_the_allowed_values() {
        for (text, needles) in [
            ("kube: sometimes\n", vec!["field \"kube\"", "sometimes", "auto", "on", "off"]),
            ("interval: fast\n", vec!["field \"interval\"", "fast"]),
            ("standalone: 3\n", vec!["field \"standalone\"", "true or false"]),
            ("collector: {a: 1}\n", vec!["field \"collector\"", "scalar"]),
            ("- a\n- b\n", vec!["mapping"]),
            ("kube: [unclosed\n", vec!["not YAML"]),
        ] {
            let (_d, path) = file(text);
            let err = parse(&["t", "--config", &path.display().to_string()], None).unwrap_err();
            for n in needles {
                assert!(err.contains(n), "{text:?}: {n:?} in {err}");
            }
            assert!(err.contains("podlens.yaml"), "{err}");
        }
        let err = parse(&["t", "--config", "/nonexistent/podlens.yaml"], None).unwrap_err();
        assert!(err.contains("/nonexistent/podlens.yaml"), "{err}");
        let (_d, path) = file("");
        assert!(parse(&["t", "--config", &path.display().to_string()], None).is_ok(), "an empty file sets nothing");
        let (_d, path) = file("max-items: 1\nmax_items: 2\n");
        let err = parse(&["t", "--config", &path.display().to_string()], None).unwrap_err();
        assert!(err.contains("\"max_items\": given twice"), "{err}");
        let (_d, path) = file("max_items: 2\n");
        assert_eq!(parse(&["t", "--config", &path.display().to_string()], None).unwrap().max_items, Some(2));
    }
}
