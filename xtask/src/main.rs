//! `cargo xtask <task>`: developer tasks that need more than cargo.

mod manifests;
mod protogen;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "podlens developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate agent-ebpf/include/vmlinux.h from the running kernel's BTF (needs bpftool).
    Vmlinux {
        /// BTF source.
        #[arg(long, default_value = "/sys/kernel/btf/vmlinux")]
        btf: PathBuf,
    },
    /// Regenerate proto/src/gen from proto/podlens/v1/*.proto.
    Proto,
    /// Render deploy/manifests/podlens.yaml from the Helm chart in deploy/helm/podlens.
    Manifests {
        /// Only check that the committed file matches the chart.
        #[arg(long)]
        check: bool,
    },
    /// Install the Debian/Ubuntu packages needed to build and test (uses sudo when not root).
    Deps,
    /// Build, then run the agent with its embedded collector next to emulated pods, showing live flows.
    Demo {
        /// How long the demo runs (Ctrl-C stops it earlier).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// `table` or `json`.
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Build and run the privileged tests (kernel test-runs and end-to-end) as root.
    E2e {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Every test: unit tests, the privileged ones (`e2e`), then a bounded fuzz run.
    Test,
    /// Fuzz the parsers of untrusted bytes (agent/fuzz) for a bounded time per target.
    Fuzz {
        /// Only this target (`cargo fuzz list` in agent/fuzz).
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Benchmarks (release build, root): ratios against a baseline measured in the same run.
    Bench {
        /// Which benchmark: `flows`, `stream`, `dns` or `sched`.
        which: String,
        /// Interleaved repetitions.
        #[arg(long, default_value_t = 7)]
        reps: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Vmlinux { btf } => vmlinux(&btf),
        Task::Proto => proto(),
        Task::Manifests { check } => manifests::run(&root(), check),
        Task::Deps => deps(),
        Task::Demo { seconds, output } => demo(seconds, &output),
        Task::E2e { filter } => e2e(filter.as_deref()),
        Task::Bench { which, reps } => bench(&which, reps),
        Task::Fuzz { target, seconds } => fuzz(target.as_deref(), seconds),
        Task::Test => {
            cargo(&["test", "--workspace", "--exclude", "podlens-e2e"], &[])?;
            e2e(None)?;
            fuzz(None, 30)
        }
    }
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs cargo in the workspace root with extra environment.
fn cargo(args: &[&str], env: &[(&str, String)]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs a program as root: directly when we are root, else through `sudo`.
fn as_root(program: &Path, args: &[String]) -> Result<()> {
    let mut cmd = if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=CI,RUST_LOG,RUST_BACKTRACE").arg(program);
        c
    };
    let status = cmd.args(args).status().with_context(|| format!("running {}", program.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", program.display());
    }
    Ok(())
}

/// The packages the README lists. clang-16 is preferred (clang 14 leaves some
/// builtins as calls the loader cannot resolve); `clang` is the fallback.
fn deps() -> Result<()> {
    let clang = if Command::new("apt-cache").args(["show", "clang-16"]).output().is_ok_and(|o| o.status.success()) {
        ["clang-16", "llvm-16"]
    } else {
        ["clang", "llvm"]
    };
    let mut args: Vec<String> = vec!["install".into(), "-y".into(), "--no-install-recommends".into()];
    args.extend(clang.iter().map(|s| s.to_string()));
    args.extend(
        ["libbpf-dev", "iproute2", "util-linux", "iperf3", "dnsmasq-base", "bind9-dnsutils", "ca-certificates"]
            .map(String::from),
    );
    let apt = Path::new("/usr/bin/apt-get");
    if !apt.exists() {
        bail!("apt-get not found: install by hand clang (16 preferred), libbpf-dev, iproute2, util-linux, iperf3");
    }
    as_root(apt, &["update".into(), "-qq".into()])?;
    as_root(apt, &args)?;
    println!("prerequisites installed");
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target")).join("debug")
}

fn demo(seconds: u64, output: &str) -> Result<()> {
    cargo(&["build", "-p", "podlens-agent", "-p", "podlens-collector", "-p", "podlens-e2e", "--bins"], &[])?;
    let bin = target_dir();
    let args = vec![
        "--seconds".to_string(),
        seconds.to_string(),
        "--cli".into(),
        bin.join("podlens").display().to_string(),
        "--output".into(),
        output.to_string(),
    ];
    // the demo finds the agent and podrun next to itself
    as_root(&bin.join("podlens-demo"), &args)
}

fn bench(which: &str, reps: usize) -> Result<()> {
    if !["flows", "stream", "dns", "sched", "memory"].contains(&which) {
        bail!("unknown benchmark {which:?}: available: flows, stream, dns, sched, memory");
    }
    cargo(
        &["build", "--release", "-p", "podlens-agent", "-p", "podlens-collector", "-p", "podlens-e2e", "--bins"],
        &[],
    )?;
    let bin = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("release");
    as_root(&bin.join("podlens-bench"), &[which.to_string(), "--reps".into(), reps.to_string()])
}

fn e2e(filter: Option<&str>) -> Result<()> {
    cargo(&["build", "-p", "podlens-agent", "-p", "podlens-collector", "--bins"], &[])?;
    let agent = target_dir().join("podlens-agent").display().to_string();
    let mut env = vec![("PODLENS_AGENT_BIN", agent)];
    if !is_root() {
        // cargo runs each test binary through sudo, so only the tests run as root
        env.push((
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER",
            "sudo --preserve-env=CI,PODLENS_AGENT_BIN,RUST_BACKTRACE".into(),
        ));
    }
    let mut args = vec!["test", "-p", "podlens-e2e", "--no-fail-fast", "--"];
    if let Some(f) = filter {
        args.push(f);
    }
    // One at a time: each test runs its own agent, and 2 cores are not many.
    args.push("--test-threads=1");
    cargo(&args, &env)
}

/// Runs every fuzz target (or one) for `seconds`. cargo-fuzz passes nightly
/// flags to rustc; RUSTC_BOOTSTRAP lets the stable toolchain accept them, so
/// no second toolchain is needed. Installs cargo-fuzz when it is missing.
fn fuzz(only: Option<&str>, seconds: u64) -> Result<()> {
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_fuzz = Command::new(&cargo_bin).args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has_fuzz {
        cargo(&["install", "cargo-fuzz", "--locked"], &[])?;
    }
    let dir = root().join("agent/fuzz");
    let list = Command::new(&cargo_bin).args(["fuzz", "list"]).current_dir(&dir).output().context("cargo fuzz list")?;
    let targets: Vec<String> = String::from_utf8_lossy(&list.stdout).lines().map(str::to_string).collect();
    if targets.is_empty() {
        bail!("cargo fuzz list found no targets in {}", dir.display());
    }
    if let Some(t) = only.filter(|t| !targets.iter().any(|x| x == t)) {
        bail!("unknown fuzz target {t:?}: available: {}", targets.join(", "));
    }
    for t in targets.iter().filter(|t| only.is_none_or(|o| o == t.as_str())) {
        println!("fuzzing {t} for {seconds} s");
        std::fs::create_dir_all(dir.join("corpus").join(t)).context("creating the corpus directory")?;
        let status = Command::new(&cargo_bin)
            .args(["fuzz", "run", t, "--", &format!("-max_total_time={seconds}")])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&dir)
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {t} failed ({status}); the crashing input is in agent/fuzz/artifacts/{t}");
        }
    }
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn vmlinux(btf: &Path) -> Result<()> {
    let out = root().join("agent-ebpf/include/vmlinux.h");
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(btf)
        .args(["format", "c"])
        .output()
        .context("running bpftool (Debian: apt-get install bpftool)")?;
    if !output.status.success() {
        bail!("bpftool failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    std::fs::write(&out, &output.stdout).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({} bytes)", out.display(), output.stdout.len());
    Ok(())
}

fn proto() -> Result<()> {
    let proto = root().join("proto");
    protogen::generate(&proto, &proto.join("src/gen")).map_err(anyhow::Error::msg)?;
    println!("regenerated {}", proto.join("src/gen").display());
    Ok(())
}
