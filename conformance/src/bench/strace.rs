//! Programs a traced plugin started, from `strace -f -e trace=execve`.

use std::collections::BTreeMap;
use std::path::Path;

use super::BenchError;

/// Programs started by the traced plugin (not the plugin itself):
/// successful execve calls, matching `<unfinished ...>` lines to their
/// `resumed` results by pid.
pub(crate) fn spawned(trace: &Path) -> Result<Vec<String>, BenchError> {
    let text = std::fs::read_to_string(trace)
        .map_err(|e| BenchError::Strace(format!("reading {}: {e}", trace.display())))?;
    Ok(parse_execs(&text).into_iter().skip(1).collect())
}

/// A trace file of this process, removed on drop.
pub(crate) struct TraceFile(pub std::path::PathBuf);

impl TraceFile {
    pub fn new(tag: &str) -> TraceFile {
        TraceFile(
            std::env::temp_dir().join(format!("portmap-bench-{tag}-{}.strace", std::process::id())),
        )
    }
}

impl Drop for TraceFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn parse_execs(text: &str) -> Vec<String> {
    let mut pending: BTreeMap<&str, String> = BTreeMap::new();
    let mut programs = Vec::new();
    let program = |line: &str| {
        line.split_once("execve(\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(path, _)| path.rsplit('/').next().unwrap_or(path).to_string())
    };
    for line in text.lines() {
        let pid = line.split_whitespace().next().unwrap_or("");
        let succeeded = |l: &str| l.trim_end().ends_with("= 0");
        if line.contains("execve(") {
            let Some(name) = program(line) else { continue };
            if line.contains("<unfinished ...>") {
                pending.insert(pid, name);
            } else if succeeded(line) {
                programs.push(name);
            }
        } else if line.contains("<... execve resumed>") {
            if let Some(name) = pending.remove(pid) {
                if succeeded(line) {
                    programs.push(name);
                }
            }
        }
    }
    programs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execs_are_counted_once_each_failed_lookups_are_not() {
        let trace = r#"100 execve("/opt/portmap", ["portmap"], 0x7ffd /* 5 vars */) = 0
101 execve("/tmp/tools/iptables-save", ["iptables-save"], 0x1 /* 5 vars */ <unfinished ...>
102 execve("/usr/local/sbin/nft", ["nft"], 0x1 /* 5 vars */) = -1 ENOENT (No such file or directory)
102 execve("/usr/sbin/nft", ["nft", "-j"], 0x1 /* 5 vars */) = 0
101 <... execve resumed>)                 = 0
"#;
        assert_eq!(parse_execs(trace), ["portmap", "nft", "iptables-save"]);
    }
}
