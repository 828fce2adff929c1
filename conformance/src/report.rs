//! Results: a text matrix for people, JSON (one record per cell), JUnit
//! XML (one testcase per cell) and Markdown for a CI step summary. Ours
//! comes first and in full (it is what the run gates on); the reference
//! binary's failures are grouped by cause, with what varies between cells
//! (IDs, chain hashes, handles, namespace names) normalised away.

use std::fmt::Write;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{json, Value};

pub use crate::matrix::{Cell, Verdict, OURS, REFERENCE};

/// Distinct values in first-seen order.
fn ordered<'a>(cells: &[&'a Cell], pick: impl Fn(&'a Cell) -> &'a str) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for c in cells {
        let v = pick(c);
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn of<'a>(cells: &'a [Cell], binary: &str) -> Vec<&'a Cell> {
    cells.iter().filter(|c| c.binary == binary).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub not_applicable: usize,
}

pub fn tally(cells: &[&Cell]) -> Tally {
    let n = |w| cells.iter().filter(|c| c.verdict.word() == w).count();
    Tally {
        passed: n("pass"),
        failed: n("FAIL"),
        not_applicable: n("n/a"),
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} n/a",
            self.passed, self.failed, self.not_applicable
        )
    }
}

/// `ours: … · reference <what>: … (reported, not gated)`.
pub fn closing_line(cells: &[Cell], reference: Option<&str>) -> String {
    let mut line = format!("ours: {}", tally(&of(cells, OURS)));
    let theirs = of(cells, REFERENCE);
    if !theirs.is_empty() {
        let _ = write!(
            line,
            " · reference {}: {} (reported, not gated)",
            reference.unwrap_or("binary"),
            tally(&theirs)
        );
    }
    line
}

static VARYING: LazyLock<[(Regex, &'static str); 7]> = LazyLock::new(|| {
    let re = |s: &str| Regex::new(s).unwrap_or_else(|e| panic!("pattern {s}: {e}"));
    [
        (re(r"CNI-(DN|SN)-[0-9a-f]+"), "CNI-$1-<hash>"),
        (re(r"\b[0-9a-f]{12,}\b"), "<id>"),
        (re(r"\bhandle [0-9]+"), "handle <n>"),
        (re(r"\bpmt-[a-z]+-[0-9]+-[0-9]+"), "<netns>"),
        (re(r"/[^ ]*portmap-tools-[0-9]+-[0-9]+"), "<tools>"),
        (re(r"\bctr-[a-z0-9]+\b"), "<container>"),
        (re(r"\s+"), " "),
    ]
});

/// A failure's first line with what varies between cells normalised.
pub fn cause(reason: &str) -> String {
    let mut text = reason.lines().next().unwrap_or("").to_string();
    for (re, with) in VARYING.iter() {
        text = re.replace_all(&text, *with).into_owned();
    }
    text
}

/// Failed cells grouped by [`cause`], most frequent first.
pub fn causes<'a>(cells: &[&'a Cell]) -> Vec<(String, Vec<&'a Cell>)> {
    let mut groups: Vec<(String, Vec<&Cell>)> = Vec::new();
    for c in cells.iter().filter(|c| c.verdict.failed()) {
        let key = cause(c.verdict.reason());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(c),
            None => groups.push((key, vec![c])),
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
    groups
}

/// One binary's results: scenario rows × backend columns, each cell one
/// word per setup (`pass FAIL` = veth passed, chain failed).
fn table(cells: &[&Cell], word: impl Fn(&Verdict) -> &'static str) -> Vec<Vec<String>> {
    let scenarios = ordered(cells, |c| &c.scenario);
    let backends = ordered(cells, |c| &c.backend);
    let setups = ordered(cells, |c| &c.setup);
    let mut rows = vec![std::iter::once("scenario".to_string())
        .chain(backends.iter().map(|b| b.to_string()))
        .collect::<Vec<_>>()];
    for s in &scenarios {
        let mut row = vec![s.to_string()];
        for b in &backends {
            let words: Vec<&str> = setups
                .iter()
                .map(|setup| {
                    cells
                        .iter()
                        .find(|c| c.scenario == *s && c.backend == *b && c.setup == *setup)
                        .map_or("-", |c| word(&c.verdict))
                })
                .collect();
            row.push(words.join(" "));
        }
        rows.push(row);
    }
    rows
}

fn setups_legend(cells: &[&Cell]) -> String {
    ordered(cells, |c| &c.setup).join(" ")
}

/// The terminal report.
pub fn matrix(cells: &[Cell], reference: Option<&str>) -> String {
    let mut out = String::new();
    for binary in [OURS, REFERENCE] {
        let mine = of(cells, binary);
        if mine.is_empty() {
            continue;
        }
        let title = match binary {
            OURS => "ours".to_string(),
            _ => format!("reference {}", reference.unwrap_or("")),
        };
        let _ = writeln!(out, "== {title} (each cell: {}) ==", setups_legend(&mine));
        let rows = table(&mine, Verdict::word);
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(text, w)| format!("{text:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        out.push('\n');
        let failed: Vec<&&Cell> = mine.iter().filter(|c| c.verdict.failed()).collect();
        if binary == OURS && !failed.is_empty() {
            out.push_str("ours failed:\n");
            for c in failed {
                let _ = writeln!(out, "  {}: {}", c.place(), c.verdict.reason());
            }
            out.push('\n');
        } else if binary == REFERENCE && !failed.is_empty() {
            out.push_str("reference failures by cause (count, cause, where):\n");
            for (cause, group) in causes(&mine) {
                let places: Vec<String> = group.iter().take(3).map(|c| c.place()).collect();
                let more = group.len().saturating_sub(3);
                let _ = writeln!(
                    out,
                    "  {:>4}  {cause}\n        {}{}",
                    group.len(),
                    places.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
            }
            out.push('\n');
        }
    }
    let _ = writeln!(out, "{}", closing_line(cells, reference));
    out
}

pub fn json(cells: &[Cell]) -> Value {
    Value::Array(
        cells
            .iter()
            .map(|c| {
                json!({
                    "plugin": c.label(), "binary": c.binary, "setup": c.setup, "cniVersion": c.cni_version,
                    "scenario": c.scenario, "backend": c.backend,
                    "result": match c.verdict { Verdict::Pass => "pass", Verdict::Fail(_) => "fail", Verdict::NotApplicable(_) => "not-applicable" },
                    "reason": match &c.verdict { Verdict::Pass => Value::Null, Verdict::Fail(r) | Verdict::NotApplicable(r) => json!(r) },
                    "cause": match &c.verdict { Verdict::Fail(r) => json!(cause(r)), _ => Value::Null },
                    "seconds": c.seconds,
                })
            })
            .collect(),
    )
}

fn xml_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn junit(cells: &[Cell]) -> String {
    let t = tally(&cells.iter().collect::<Vec<_>>());
    let total: f64 = cells.iter().map(|c| c.seconds).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuite name=\"portmap-conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total:.3}\">",
        cells.len(),
        t.failed,
        t.not_applicable
    );
    for c in cells {
        let _ = write!(
            out,
            "  <testcase classname=\"{}.{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&c.label()),
            xml_escape(&c.backend),
            xml_escape(&c.scenario),
            c.seconds
        );
        match &c.verdict {
            Verdict::Pass => out.push_str("/>\n"),
            Verdict::Fail(r) => {
                let _ = writeln!(
                    out,
                    ">\n    <failure message=\"{}\">{}</failure>\n  </testcase>",
                    xml_escape(c.verdict.reason()),
                    xml_escape(r)
                );
            }
            Verdict::NotApplicable(r) => {
                let _ = writeln!(
                    out,
                    ">\n    <skipped message=\"{}\"/>\n  </testcase>",
                    xml_escape(r)
                );
            }
        }
    }
    out.push_str("</testsuite>\n");
    out
}

fn icon(v: &Verdict) -> &'static str {
    match v {
        Verdict::Pass => "✅",
        Verdict::Fail(_) => "❌",
        Verdict::NotApplicable(_) => "➖",
    }
}

fn markdown_table(out: &mut String, rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", rows[0].join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(rows[0].len()));
    for row in &rows[1..] {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
}

/// Table-safe, and `<id>` shown rather than taken for an HTML tag.
fn md(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn markdown(cells: &[Cell], reference: Option<&str>) -> String {
    let ours = of(cells, OURS);
    let theirs = of(cells, REFERENCE);
    let mut out = String::from("## portmap conformance\n\n");
    let _ = writeln!(out, "**{}**\n", md(&closing_line(cells, reference)));
    let versions: Vec<&Cell> = cells.iter().collect();
    let _ = writeln!(
        out,
        "CNI version: {}\n",
        ordered(&versions, |c| &c.cni_version).join(", ")
    );
    if !ours.is_empty() {
        let failed: Vec<&&Cell> = ours.iter().filter(|c| c.verdict.failed()).collect();
        if !failed.is_empty() {
            out.push_str("### ❌ ours failed\n\n");
            for c in failed {
                let _ = writeln!(out, "- {}: {}", md(&c.place()), md(c.verdict.reason()));
            }
            out.push('\n');
        }
        let _ = writeln!(out, "### ours (each cell: {})\n", setups_legend(&ours));
        markdown_table(&mut out, &table(&ours, icon));
        out.push('\n');
    }
    if !theirs.is_empty() {
        let t = tally(&theirs);
        let _ = writeln!(
            out,
            "<details><summary>reference {}: {t}, failures by cause</summary>\n",
            md(reference.unwrap_or("binary"))
        );
        out.push_str("| cells | cause | for example |\n|---:|---|---|\n");
        for (cause, group) in causes(&theirs) {
            let example = group.first().map(|c| c.place()).unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                group.len(),
                md(&cause),
                md(&example)
            );
        }
        let _ = writeln!(
            out,
            "\n### reference (each cell: {})\n",
            setups_legend(&theirs)
        );
        markdown_table(&mut out, &table(&theirs, icon));
        out.push_str("\n</details>\n");
    }
    out
}

/// The reports of a run the harness refused before any cell (e.g. the
/// plugin gave no VERSION answer): zero cells, and the refusal as the
/// reason, so a gate's artifacts say why nothing ran. JSON keeps the
/// shape of [`json`] (an array of records) with one record whose
/// `result` is `"error"` and whose setup, scenario and backend are null.
pub fn refused_json(plugin: &str, reason: &str) -> Value {
    json!([{
        "plugin": plugin, "binary": OURS, "setup": Value::Null, "cniVersion": Value::Null,
        "scenario": Value::Null, "backend": Value::Null,
        "result": "error", "reason": reason, "cause": cause(reason), "seconds": 0.0,
    }])
}

/// JUnit for a refused run: no cell ran, one `<error>` testcase says why.
pub fn refused_junit(reason: &str) -> String {
    let reason = xml_escape(reason);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuite name=\"portmap-conformance\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\" time=\"0.000\">\n  \
         <testcase classname=\"portmap-conformance\" name=\"refused before any cell\" time=\"0.000\">\n    \
         <error message=\"{reason}\">{reason}</error>\n  </testcase>\n</testsuite>\n"
    )
}

/// Markdown for a refused run: the refusal instead of a matrix.
pub fn refused_markdown(reason: &str) -> String {
    format!(
        "## portmap conformance\n\n**❌ refused before any cell ran**\n\n```\n{}\n```\n",
        reason.replace("```", "'''")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(binary: &str, setup: &str, s: &str, b: &str, v: Verdict) -> Cell {
        Cell {
            binary: binary.into(),
            setup: setup.into(),
            cni_version: "1.0.0".into(),
            scenario: s.into(),
            backend: b.into(),
            verdict: v,
            seconds: 0.5,
        }
    }

    fn cells() -> Vec<Cell> {
        let fail = |r: &str| Verdict::Fail(r.into());
        vec![
            cell(OURS, "veth", "tcp", "nftables", Verdict::Pass),
            cell(OURS, "chain", "tcp", "nftables", Verdict::Pass),
            cell(
                OURS,
                "veth",
                "tcp",
                "iptables-nft",
                fail("no answer <&>\nruleset"),
            ),
            cell(OURS, "chain", "tcp", "iptables-nft", Verdict::Pass),
            cell(
                OURS,
                "veth",
                "gc",
                "nftables",
                Verdict::NotApplicable("why".into()),
            ),
            cell(
                REFERENCE,
                "veth",
                "tcp",
                "nftables",
                fail("CHECK ctr-a failed: chain CNI-DN-5b3cd8c3aa24b836f0fc5 not found"),
            ),
            cell(
                REFERENCE,
                "chain",
                "tcp",
                "nftables",
                fail("CHECK ctr-b failed: chain CNI-DN-734e1f1c3c9c8b2b7b8e7 not found"),
            ),
            cell(
                REFERENCE,
                "veth",
                "gc",
                "nftables",
                fail("GC: missing containerID"),
            ),
        ]
    }

    #[test]
    fn matrix_puts_ours_first_with_one_word_per_setup() {
        let m = matrix(&cells(), Some("/usr/lib/cni/portmap (v1.1.1)"));
        assert!(m.starts_with("== ours (each cell: veth chain) =="), "{m}");
        assert!(m.contains("tcp       pass pass  FAIL pass"), "{m}");
        assert!(
            m.contains("ours failed:\n  tcp [iptables-nft veth]: no answer <&>"),
            "{m}"
        );
        assert!(
            m.trim_end().ends_with(
                "ours: 3 passed, 1 failed, 1 n/a · reference /usr/lib/cni/portmap (v1.1.1): 0 passed, 3 failed, 0 n/a (reported, not gated)"
            ),
            "{m}"
        );
    }

    #[test]
    fn reference_failures_are_grouped_by_normalised_cause() {
        let m = matrix(&cells(), None);
        assert!(
            m.contains("     2  CHECK <container> failed: chain CNI-DN-<hash> not found\n        tcp [nftables veth], tcp [nftables chain]"),
            "{m}"
        );
        assert!(m.contains("     1  GC: missing containerID"), "{m}");
        assert_eq!(
            cause("ADD ctr-pod: {   \"code\": handle 42 in pmt-host-123-4, id 8732e00d5145221dcf3a6f06, running [/tmp/portmap-tools-30973-129/iptables -t nat]"),
            "ADD <container>: { \"code\": handle <n> in <netns>, id <id>, running [<tools>/iptables -t nat]"
        );
    }

    #[test]
    fn markdown_shows_ours_failures_first_and_folds_the_reference() {
        let md = markdown(&cells(), Some("x"));
        let failed = md.find("### ❌ ours failed").expect("ours failures");
        let table = md
            .find("### ours (each cell: veth chain)")
            .expect("ours table");
        assert!(failed < table, "{md}");
        assert!(md.contains("\nCNI version: 1.0.0\n"), "{md}");
        assert!(md.contains("| tcp | ✅ ✅ | ❌ ✅ |"), "{md}");
        assert!(
            md.contains("<details><summary>reference x: 0 passed, 3 failed, 0 n/a"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 2 | CHECK &lt;container&gt; failed: chain CNI-DN-&lt;hash&gt; not found |"
            ),
            "{md}"
        );
    }

    #[test]
    fn junit_is_escaped_with_one_testcase_per_cell() {
        let x = junit(&cells());
        assert_eq!(x.matches("<testcase ").count(), 8);
        assert!(x.contains("failures=\"4\" skipped=\"1\""));
        assert!(x.contains("message=\"no answer &lt;&amp;&gt;\""));
        assert!(x.contains("classname=\"ours+chain.nftables\""));
        assert!(!x.contains("<&>"));
    }

    #[test]
    fn json_has_one_record_per_cell_with_binary_setup_and_cause() {
        let j = json(&cells());
        assert_eq!(j.as_array().map(Vec::len), Some(8));
        assert_eq!(j[2]["result"], "fail");
        assert_eq!(j[4]["result"], "not-applicable");
        assert_eq!(j[6]["plugin"], "reference+chain");
        assert_eq!(j[6]["setup"], "chain");
        assert_eq!(
            j[6]["cause"],
            "CHECK <container> failed: chain CNI-DN-<hash> not found"
        );
    }
}
