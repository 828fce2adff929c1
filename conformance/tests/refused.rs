//! A run the harness refuses before any cell (here: a "plugin" that gives
//! no VERSION answer) exits non-zero and still writes all three reports,
//! naming the refusal, so the action's `json`/`junit`/`markdown` outputs
//! point at files that say why nothing ran. Needs no root: no cell runs.

use std::path::PathBuf;
use std::process::Command;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_plugin_without_a_version_answer_still_gets_its_reports() {
    let dir = TempDir(std::env::temp_dir().join(format!(
        "portmap-conformance-refused-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let (json, junit, markdown) = (
        dir.0.join("report.json"),
        dir.0.join("junit.xml"),
        dir.0.join("summary.md"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portmap-conformance"))
        .args(["run", "--plugin", "/bin/false", "--setup", "veth"])
        .arg("--json")
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .arg("--markdown")
        .arg(&markdown)
        .output()
        .expect("run the harness");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr: {stderr}");
    assert!(
        stderr.contains("gave no VERSION answer"),
        "stderr: {stderr}"
    );

    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{} not written: {e}", p.display()))
    };
    let doc: serde_json::Value = serde_json::from_str(&read(&json)).expect("report.json is JSON");
    let records = doc.as_array().expect("an array of records");
    assert_eq!(records.len(), 1, "{doc:#}");
    assert_eq!(records[0]["result"], "error", "{doc:#}");
    assert!(records[0]["scenario"].is_null(), "no cell ran: {doc:#}");
    let reason = records[0]["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("bin/false gave no VERSION answer"),
        "{reason}"
    );

    let xml = read(&junit);
    assert!(xml.contains("errors=\"1\""), "{xml}");
    assert!(xml.contains("<error message=\""), "{xml}");
    assert!(xml.contains("bin/false gave no VERSION answer"), "{xml}");
    let md = read(&markdown);
    assert!(md.contains("refused before any cell ran"), "{md}");
    assert!(md.contains("bin/false gave no VERSION answer"), "{md}");
}
