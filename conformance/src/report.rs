//! Results: a text matrix for people, JSON (one record per cell), JUnit
//! XML (one testcase per cell) and Markdown for a CI step summary.

use std::fmt::Write;

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    NotApplicable(String),
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "FAIL",
            Verdict::NotApplicable(_) => "n/a",
        }
    }

    /// The reason, first line only.
    pub fn reason(&self) -> &str {
        match self {
            Verdict::Pass => "",
            Verdict::Fail(r) | Verdict::NotApplicable(r) => r.lines().next().unwrap_or(""),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub plugin: String,
    pub scenario: String,
    pub backend: String,
    pub verdict: Verdict,
    pub seconds: f64,
}

/// Distinct values in first-seen order.
fn ordered<'a>(cells: &'a [Cell], pick: impl Fn(&'a Cell) -> &'a str) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for c in cells {
        let v = pick(c);
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn find<'a>(cells: &'a [Cell], plugin: &str, scenario: &str, backend: &str) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|c| c.plugin == plugin && c.scenario == scenario && c.backend == backend)
}

/// One table per binary (and setup): scenario rows × backend columns,
/// then the failures with reasons and a closing count.
pub fn matrix(cells: &[Cell]) -> String {
    let scenarios = ordered(cells, |c| &c.scenario);
    let backends = ordered(cells, |c| &c.backend);
    let plugins = ordered(cells, |c| &c.plugin);
    let mut out = String::new();
    for p in &plugins {
        if plugins.len() > 1 {
            let _ = writeln!(out, "== {p} ==");
        }
        let _ = write!(out, "{:<28}", "scenario");
        for b in &backends {
            let _ = write!(out, " {b:<8}");
        }
        out.push('\n');
        for s in &scenarios {
            let _ = write!(out, "{s:<28}");
            for b in &backends {
                let word = find(cells, p, s, b).map_or("-", |c| c.verdict.word());
                let _ = write!(out, " {word:<width$}", width = b.len().max(8));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    let failures: Vec<&Cell> = cells
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Fail(_)))
        .collect();
    if !failures.is_empty() {
        out.push_str("\nfailures:\n");
        for c in failures {
            let _ = writeln!(
                out,
                "  {} {} [{}]: {}",
                c.plugin,
                c.scenario,
                c.backend,
                c.verdict.reason()
            );
        }
    }
    let (pass, fail, na) = counts(cells);
    let _ = writeln!(out, "\n{pass} passed, {fail} failed, {na} not applicable");
    out
}

pub fn counts(cells: &[Cell]) -> (usize, usize, usize) {
    let n = |w| cells.iter().filter(|c| c.verdict.word() == w).count();
    (n("pass"), n("FAIL"), n("n/a"))
}

pub fn json(cells: &[Cell]) -> Value {
    Value::Array(
        cells
            .iter()
            .map(|c| {
                json!({
                    "plugin": c.plugin, "scenario": c.scenario, "backend": c.backend,
                    "result": match c.verdict { Verdict::Pass => "pass", Verdict::Fail(_) => "fail", Verdict::NotApplicable(_) => "not-applicable" },
                    "reason": match &c.verdict { Verdict::Pass => Value::Null, Verdict::Fail(r) | Verdict::NotApplicable(r) => json!(r) },
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
    let (_, fail, na) = counts(cells);
    let total: f64 = cells.iter().map(|c| c.seconds).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuite name=\"portmap-conformance\" tests=\"{}\" failures=\"{fail}\" skipped=\"{na}\" time=\"{total:.3}\">",
        cells.len()
    );
    for c in cells {
        let _ = write!(
            out,
            "  <testcase classname=\"{}.{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&c.plugin),
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

pub fn markdown(cells: &[Cell]) -> String {
    let scenarios = ordered(cells, |c| &c.scenario);
    let backends = ordered(cells, |c| &c.backend);
    let plugins = ordered(cells, |c| &c.plugin);
    let icon = |v: &Verdict| match v {
        Verdict::Pass => "✅",
        Verdict::Fail(_) => "❌",
        Verdict::NotApplicable(_) => "➖",
    };
    let mut out = String::from("## portmap conformance\n\n| scenario |");
    for b in &backends {
        let _ = write!(out, " {b} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(backends.len()));
    out.push('\n');
    for s in &scenarios {
        let _ = write!(out, "| {s} |");
        for b in &backends {
            let cell: Vec<String> = plugins
                .iter()
                .filter_map(|p| find(cells, p, s, b))
                .map(|c| {
                    if plugins.len() > 1 {
                        format!("{} {}", c.plugin, icon(&c.verdict))
                    } else {
                        icon(&c.verdict).to_string()
                    }
                })
                .collect();
            let _ = write!(out, " {} |", cell.join(" "));
        }
        out.push('\n');
    }
    let (pass, fail, na) = counts(cells);
    let _ = writeln!(out, "\n{pass} passed, {fail} failed, {na} not applicable");
    for c in cells
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Fail(_)))
    {
        let _ = writeln!(
            out,
            "- ❌ `{}` {} [{}]: {}",
            c.plugin,
            c.scenario,
            c.backend,
            c.verdict.reason().replace('|', "\\|")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells() -> Vec<Cell> {
        let cell = |p: &str, s: &str, b: &str, v: Verdict| Cell {
            plugin: p.into(),
            scenario: s.into(),
            backend: b.into(),
            verdict: v,
            seconds: 0.5,
        };
        vec![
            cell("ours", "tcp", "nftables", Verdict::Pass),
            cell(
                "ours",
                "tcp",
                "iptables-nft",
                Verdict::Fail("no answer <&>\nruleset".into()),
            ),
            cell(
                "ours",
                "gc",
                "nftables",
                Verdict::NotApplicable("why".into()),
            ),
        ]
    }

    #[test]
    fn matrix_has_a_row_per_scenario_and_a_closing_count() {
        let m = matrix(&cells());
        assert!(
            m.contains("tcp                          pass     FAIL"),
            "{m}"
        );
        assert!(m.contains("ours tcp [iptables-nft]: no answer <&>"), "{m}");
        assert!(
            m.trim_end()
                .ends_with("1 passed, 1 failed, 1 not applicable"),
            "{m}"
        );
    }

    #[test]
    fn junit_is_escaped_with_one_testcase_per_cell() {
        let x = junit(&cells());
        assert_eq!(x.matches("<testcase ").count(), 3);
        assert!(x.contains("failures=\"1\" skipped=\"1\""));
        assert!(x.contains("message=\"no answer &lt;&amp;&gt;\""));
        assert!(!x.contains("<&>"));
    }

    #[test]
    fn json_has_one_record_per_cell() {
        let j = json(&cells());
        assert_eq!(j.as_array().map(Vec::len), Some(3));
        assert_eq!(j[1]["result"], "fail");
        assert_eq!(j[2]["result"], "not-applicable");
    }
}
