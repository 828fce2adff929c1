//! Why nftables is not usable here: the checked probe transaction, which
//! part failed, and tool versions for `portmap status`.

use crate::exec;
use crate::nfnetlink;
use crate::nftables::{NftError, Nftables};

/// Why nftables is not usable here: what a person fixes differs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftUnusable {
    #[error("nft binary not found in PATH")]
    Missing,
    /// The binary cannot run (missing library, wrong architecture) or
    /// cannot parse our JSON (nft 0.8 has no JSON): the kernel was not asked.
    #[error("nft binary {binary} fails to run or to parse JSON: {detail}")]
    BrokenBinary { binary: String, detail: String },
    #[error("kernel has no nf_tables in this namespace: {detail}")]
    NoKernelSupport { detail: String },
    #[error("kernel refused an nf_tables transaction: {detail}")]
    KernelRefused { detail: String },
}

/// The nftables backend when usable here, else why not.
pub fn probe_nftables() -> Result<Nftables, NftUnusable> {
    let nft = match Nftables::from_path() {
        Ok(n) => n,
        Err(NftError::NotFound) => return Err(NftUnusable::Missing),
        Err(e) => {
            return Err(NftUnusable::BrokenBinary {
                binary: "nft".into(),
                detail: e.to_string(),
            })
        }
    };
    // `nft -c` runs the transaction through the kernel and aborts it: it
    // proves nf_tables works here and leaves nothing behind.
    let probe = r#"{"nftables":[{"add":{"table":{"family":"ip","name":"cni_hostport_probe"}}}]}"#;
    let checked = exec::run(
        nft.binary(),
        &["-c", "-j", "-f", "-"],
        Some(probe.as_bytes()),
        exec::PROBE,
    );
    let (failure, hung) = match checked {
        Ok(out) if out.status.success() => return Ok(nft),
        Ok(out) => (
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
            false,
        ),
        Err(e @ exec::ExecError::Timeout { .. }) => (e.to_string(), true),
        Err(e) => (format!("cannot run it: {e}"), false),
    };
    // Only on failure: ask the kernel directly, then whether nft runs at
    // all (not again after it hung: the answer is in).
    let kernel = nfnetlink::tables().map(|_| ()).map_err(|e| e.to_string());
    let runs = !hung
        && exec::run(nft.binary(), &["--version"], None, exec::PROBE)
            .is_ok_and(|o| o.status.success());
    Err(diagnose(
        &nft.binary().display().to_string(),
        kernel,
        runs,
        failure,
    ))
}

/// Which part failed, from what the kernel's table dump, `nft --version`
/// and the probe transaction said.
fn diagnose(binary: &str, kernel: Result<(), String>, runs: bool, failure: String) -> NftUnusable {
    const KERNEL_WORDS: [&str; 4] = [
        "Could not process rule",
        "Operation not supported",
        "Operation not permitted",
        "Protocol not supported",
    ];
    if let Err(detail) = kernel {
        return NftUnusable::NoKernelSupport { detail };
    }
    if runs && KERNEL_WORDS.iter().any(|w| failure.contains(w)) {
        return NftUnusable::KernelRefused { detail: failure };
    }
    NftUnusable::BrokenBinary {
        binary: binary.to_string(),
        detail: failure,
    }
}

/// What `<tool> --version` prints (first line), for people.
pub fn tool_version(tool: &std::path::Path) -> Option<String> {
    let out = exec::run(tool, &["--version"], None, exec::PROBE).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnosis_names_the_part_that_failed() {
        let refused = "Error: Could not process rule: Operation not supported";
        assert_eq!(
            diagnose(
                "nft",
                Err("netlink socket: EPROTONOSUPPORT".into()),
                true,
                refused.into()
            ),
            NftUnusable::NoKernelSupport {
                detail: "netlink socket: EPROTONOSUPPORT".into()
            }
        );
        assert_eq!(
            diagnose("nft", Ok(()), true, refused.into()),
            NftUnusable::KernelRefused {
                detail: refused.into()
            }
        );
        let missing_lib = "nft: error while loading shared libraries: libnftables.so.1";
        assert!(matches!(
            diagnose("/usr/sbin/nft", Ok(()), false, missing_lib.into()),
            NftUnusable::BrokenBinary { .. }
        ));
        // nft 0.8 runs, but has no JSON: a binary problem, not the kernel's.
        let no_json = "nft: invalid option -- 'j'";
        assert!(matches!(
            diagnose("nft", Ok(()), true, no_json.into()),
            NftUnusable::BrokenBinary { .. }
        ));
        assert_eq!(
            diagnose("nft", Ok(()), false, "x".into()).to_string(),
            "nft binary nft fails to run or to parse JSON: x"
        );
    }
}
