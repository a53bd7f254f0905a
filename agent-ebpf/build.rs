//! Compiles every `src/bpf/*.bpf.c` into `$OUT_DIR/<name>.bpf.o` with clang.
//!
//! The compiler comes from `PODLENS_CLANG` (or `CLANG`), defaulting to the first
//! of clang-16 and clang found on PATH: clang-16 is preferred because clang 14
//! leaves some builtins as calls the loader cannot resolve.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let include = manifest.join("include");
    let bpf_dir = manifest.join("src/bpf");
    let clang = find_clang()?;
    let arch = target_arch_define()?;

    println!("cargo:rerun-if-env-changed=PODLENS_CLANG");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", include.display());
    println!("cargo:rerun-if-changed={}", bpf_dir.display());

    for entry in std::fs::read_dir(&bpf_dir).context("reading src/bpf")? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_file() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        let Some(stem) = name.strip_suffix(".bpf.c") else {
            continue;
        };
        let obj = out_dir.join(format!("{stem}.bpf.o"));
        compile(&clang, &path, &obj, &include, &bpf_dir, arch)?;
        strip_dwarf(&obj);
    }
    Ok(())
}

fn find_clang() -> Result<String> {
    for var in ["PODLENS_CLANG", "CLANG"] {
        if let Ok(c) = env::var(var) {
            if !c.is_empty() {
                return Ok(c);
            }
        }
    }
    for candidate in ["clang-16", "clang"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(candidate.to_string());
        }
    }
    bail!(
        "no clang found to compile the eBPF programs: install clang-16 (Debian: apt-get install \
         clang-16 libbpf-dev) or set PODLENS_CLANG to a clang binary"
    )
}

fn target_arch_define() -> Result<&'static str> {
    // CO-RE programs still need the arch for the PT_REGS accessors in bpf_tracing.h.
    Ok(match env::var("CARGO_CFG_TARGET_ARCH")?.as_str() {
        "x86_64" => "-D__TARGET_ARCH_x86",
        "aarch64" => "-D__TARGET_ARCH_arm64",
        "s390x" => "-D__TARGET_ARCH_s390",
        "powerpc64" => "-D__TARGET_ARCH_powerpc",
        "riscv64" => "-D__TARGET_ARCH_riscv",
        other => bail!("unsupported target architecture for the eBPF programs: {other}"),
    })
}

fn compile(clang: &str, src: &Path, obj: &Path, include: &Path, bpf_dir: &Path, arch: &str) -> Result<()> {
    let output = Command::new(clang)
        .args(["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"])
        .arg(arch)
        .arg("-I")
        .arg(include)
        .arg("-I")
        .arg(bpf_dir)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj)
        .output()
        .with_context(|| format!("running {clang}"))?;
    if !output.status.success() {
        bail!(
            "{clang} failed on {}:\n{}{}\n(libbpf headers come from Debian's libbpf-dev)",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// DWARF is only needed to produce BTF; dropping it keeps the agent binary small.
/// Best effort: without llvm-strip the object is just larger.
fn strip_dwarf(obj: &Path) {
    for strip in ["llvm-strip-16", "llvm-strip"] {
        let ok = Command::new(strip).arg("--strip-debug").arg(obj).status().is_ok_and(|s| s.success());
        if ok {
            return;
        }
    }
    println!("cargo:warning=llvm-strip not found; eBPF object keeps its DWARF sections");
}
