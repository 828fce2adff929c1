#!/usr/bin/env python3
"""Checks what one step of .github/workflows/action-selftest.yml left.

Usage: action-selftest-check.py pass|fail|refused, with the action's
outputs in JSON, JUNIT and MARKDOWN and (fail, refused) the step's outcome
in OUTCOME. Each output must name an existing non-empty file, and the
reports must say what the gate decided:
  pass     ours: at least one cell passed, none failed
  fail     the step failed; the JSON has failing cells, JUnit a <failure>
           for each of them, the Markdown names them
  refused  the step failed before any cell; all three give the refusal
Prints one line of figures; exits 1 with the reason otherwise.
"""
import json
import os
import sys
import xml.etree.ElementTree as ET


def fail(why):
    print(f"action-selftest-check: FAILED: {why}", file=sys.stderr)
    sys.exit(1)


def report(name):
    path = os.environ.get(name, "")
    if not path:
        fail(f"the action's {name.lower()} output is empty")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        fail(f"{name.lower()} output {path!r} is not an existing non-empty file")
    with open(path, encoding="utf-8") as f:
        return path, f.read()


def main(mode):
    if mode in ("fail", "refused") and os.environ.get("OUTCOME") != "failure":
        fail(f"the step's outcome is {os.environ.get('OUTCOME')!r}, not 'failure'")
    json_path, json_text = report("JSON")
    junit_path, junit_text = report("JUNIT")
    md_path, md_text = report("MARKDOWN")
    records = json.loads(json_text)
    suite = ET.fromstring(junit_text)
    ours = [r for r in records if r.get("binary") == "ours"]
    by_result = {}
    for r in ours:
        by_result.setdefault(r["result"], []).append(r)
    passed, failed = by_result.get("pass", []), by_result.get("fail", [])

    if mode == "pass":
        if not passed or failed:
            fail(f"{json_path}: {len(passed)} passed, {len(failed)} failed")
        if suite.get("failures") != "0" or int(suite.get("tests", "0")) != len(records):
            fail(f"{junit_path}: {suite.attrib}")
        if "ours failed" in md_text:
            fail(f"{md_path} reports failures")
    elif mode == "fail":
        if not failed:
            fail(f"{json_path}: no failing cell of the plugin")
        failures = {
            tc.get("name")
            for tc in suite.iter("testcase")
            if tc.find("failure") is not None
        }
        named = {r["scenario"] for r in failed}
        if failures != named:
            fail(f"{junit_path}: failures {sorted(failures)}, JSON {sorted(named)}")
        missing = [s for s in named if s not in md_text]
        if "ours failed" not in md_text or missing:
            fail(f"{md_path} does not name the failing cells {missing}")
    elif mode == "refused":
        if len(records) != 1 or records[0].get("result") != "error":
            fail(f"{json_path}: {records}")
        reason = records[0].get("reason") or ""
        if "gave no VERSION answer" not in reason:
            fail(f"{json_path}: reason {reason!r}")
        if suite.get("errors") != "1" or reason not in junit_text:
            fail(f"{junit_path} does not give the refusal")
        if "refused before any cell ran" not in md_text:
            fail(f"{md_path} does not give the refusal")
    else:
        fail(f"unknown mode {mode!r}")
    print(
        f"action-selftest-check: {mode}: ok ({len(passed)} passed, {len(failed)} failed, "
        f"{len(records)} records; {json_path}, {junit_path}, {md_path})"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
