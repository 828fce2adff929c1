//! A corpus of hostile configs and environments against the real binary
//! in a namespace: each gets a clean CNI error (exit 1, JSON with code and
//! msg, firewall untouched) or a correct result (exit 0, cleaned up by
//! DEL); never a panic, never a half-applied change.

use portmap_conformance::cni::{lock_path, run_with_input, state_dir, Outcome};
use portmap_conformance::netns::Netns;
use portmap_conformance::toolpath::Tools;
use rstest::rstest;
use serde_json::{json, Value};

mod common;
use common::{ours, Rig};

struct Case {
    name: String,
    /// Overrides of the base env (`None` removes the variable).
    env: Vec<(&'static str, Option<String>)>,
    stdin: Vec<u8>,
}

fn base_config(backend: &str) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "hostile", "type": "portmap", "backend": backend,
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.88.0.5/24", "interface": 0}]}
    })
}

/// `base` with `pointer` (a JSON pointer into an existing value) set to `v`.
fn with(base: &Value, pointer: &str, v: Value) -> Vec<u8> {
    let mut c = base.clone();
    if let Some(slot) = c.pointer_mut(pointer) {
        *slot = v;
    }
    c.to_string().into_bytes()
}

fn case(name: impl Into<String>, stdin: Vec<u8>) -> Case {
    Case {
        name: name.into(),
        env: vec![],
        stdin,
    }
}

fn env_case(name: &str, var: &'static str, value: Option<&str>, base: &Value) -> Case {
    Case {
        name: name.into(),
        env: vec![(var, value.map(str::to_string))],
        stdin: base.to_string().into_bytes(),
    }
}

fn corpus(backend: &str) -> Vec<Case> {
    let base = base_config(backend);
    let text = base.to_string();
    let mut cases = Vec::new();
    // Truncated JSON at 25 points.
    for i in 0..25 {
        let cut = text.len() * i / 25;
        cases.push(case(
            format!("truncated at {cut}"),
            text.as_bytes()[..cut].to_vec(),
        ));
    }
    // Huge and malformed input.
    let mb = "x".repeat(1 << 20);
    cases.push(case("1 MB name", with(&base, "/name", json!(mb))));
    cases.push(case(
        "1 MB hostIP",
        with(&base, "/runtimeConfig/portMappings/0/hostIP", json!(mb)),
    ));
    cases.push(case(
        "1 MB condition",
        with(
            &base,
            "/runtimeConfig",
            json!({"portMappings": [], "x": mb}),
        ),
    ));
    cases.push(case("1 MB of garbage", mb.clone().into_bytes()));
    cases.push(case(
        "1 MB of leading whitespace",
        format!("{}{text}", " ".repeat(1 << 20)).into_bytes(),
    ));
    cases.push(case("100k nested arrays", "[".repeat(100_000).into_bytes()));
    cases.push(case("invalid UTF-8", vec![0xff, 0xfe, b'{', 0x80]));
    cases.push(case("empty stdin", vec![]));
    cases.push(case("JSON null", b"null".to_vec()));
    cases.push(case("JSON array", b"[]".to_vec()));
    // Wrong types and out-of-range values, field by field.
    let fields: Vec<(&str, Vec<Value>)> = vec![
        (
            "/cniVersion",
            vec![
                json!(1),
                json!(null),
                json!([]),
                json!("0.0.0"),
                json!("1.0.0.0.0"),
            ],
        ),
        (
            "/name",
            vec![
                json!(5),
                json!(null),
                json!("a\u{0}b"),
                json!("réseau"),
                json!("ñ".repeat(300)),
            ],
        ),
        ("/type", vec![json!(5)]),
        ("/runtimeConfig", vec![json!("x"), json!([]), json!(5)]),
        (
            "/runtimeConfig/portMappings",
            vec![
                json!({}),
                json!("x"),
                json!([1]),
                json!([null]),
                json!([[]]),
            ],
        ),
        (
            "/runtimeConfig/portMappings/0/hostPort",
            vec![
                json!("80"),
                json!(80.5),
                json!(-1),
                json!(0),
                json!(65536),
                json!(1e20),
                json!(null),
                json!(true),
            ],
        ),
        (
            "/runtimeConfig/portMappings/0/containerPort",
            vec![
                json!("80"),
                json!(-1),
                json!(0),
                json!(65536),
                json!(4_294_967_296_u64),
                json!(null),
            ],
        ),
        (
            "/runtimeConfig/portMappings/0/protocol",
            vec![
                json!(6),
                json!(""),
                json!("TCPX"),
                json!(null),
                json!("icmp"),
                json!("UDP"),
            ],
        ),
        (
            "/runtimeConfig/portMappings/0/hostIP",
            vec![
                json!(5),
                json!("300.1.1.1"),
                json!("::g"),
                json!("10.0.0.1/24"),
                json!("\u{0}"),
                json!("fd00::1"),
                json!(""),
            ],
        ),
        (
            "/prevResult",
            vec![
                json!("x"),
                json!([]),
                json!({"ips": "x"}),
                json!({"ips": [{"address": "nope"}]}),
                json!({"ips": [{"address": "10.0.0.1"}]}),
                json!({"ips": [{"address": "10.0.0.1/33"}]}),
                json!({"ips": [{"address": "10.0.0.1/24", "interface": 99}]}),
                json!({"interfaces": 5}),
                json!({"cniVersion": 5}),
                json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::5/64", "version": "4"}]}),
            ],
        ),
        (
            "/backend",
            vec![json!(5), json!("NFTABLES"), json!(""), json!(null)],
        ),
    ];
    for (pointer, values) in fields {
        for v in values {
            let shown: String = v.to_string().chars().take(40).collect();
            cases.push(case(
                format!("{pointer} = {shown}"),
                with(&base, pointer, v),
            ));
        }
    }
    let top_level: Vec<(&str, Vec<Value>)> = vec![
        ("snat", vec![json!("yes"), json!(1), json!(null)]),
        (
            "markMasqBit",
            vec![json!("13"), json!(-1), json!(32), json!(1.5), json!(1e10)],
        ),
        (
            "externalSetMarkChain",
            vec![
                json!(5),
                json!(""),
                json!("a b"),
                json!("x".repeat(100)),
                json!("-j ACCEPT"),
            ],
        ),
        ("masqAll", vec![json!("true")]),
        (
            "conditionsV4",
            vec![
                json!("x"),
                json!([1]),
                json!(["a;b"]),
                json!(["a\nb"]),
                json!(["#x"]),
                json!(["\"q"]),
                json!(["\u{0}"]),
                json!(["ip saddr 1.2.3.4'"]),
            ],
        ),
        ("conditionsV6", vec![json!(["a;b"]), json!({"x": 1})]),
    ];
    for (key, values) in top_level {
        for v in values {
            let mut c = base.clone();
            c[key] = v.clone();
            let shown: String = v.to_string().chars().take(40).collect();
            cases.push(case(format!("{key} = {shown}"), c.to_string().into_bytes()));
        }
    }
    // Semantics that must either work or be refused cleanly.
    let mut dup = base.clone();
    dup["runtimeConfig"]["portMappings"] = json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    cases.push(case("duplicate mappings", dup.to_string().into_bytes()));
    let mut many = base.clone();
    many["runtimeConfig"]["portMappings"] = Value::Array(
        (1..=10_000)
            .map(|p| json!({"hostPort": p, "containerPort": 80, "protocol": "tcp"}))
            .collect(),
    );
    cases.push(case("10,000 mappings", many.to_string().into_bytes()));
    // Environments.
    let envs: Vec<(&str, &'static str, Option<&str>)> = vec![
        ("no CNI_COMMAND", "CNI_COMMAND", None),
        ("empty CNI_COMMAND", "CNI_COMMAND", Some("")),
        ("lowercase add", "CNI_COMMAND", Some("add")),
        ("unknown command", "CNI_COMMAND", Some("FOO")),
        ("command with newline", "CNI_COMMAND", Some("ADD\n")),
        ("no container ID", "CNI_CONTAINERID", None),
        ("empty container ID", "CNI_CONTAINERID", Some("")),
        (
            "container ID with space",
            "CNI_CONTAINERID",
            Some("ctr with space"),
        ),
        ("container ID with ;", "CNI_CONTAINERID", Some("ctr;rm")),
        ("container ID with quote", "CNI_CONTAINERID", Some("ctr\"x")),
        ("unicode container ID", "CNI_CONTAINERID", Some("ctr-ü")),
        ("emoji container ID", "CNI_CONTAINERID", Some("ctr-😀")),
        (
            "container ID with newline",
            "CNI_CONTAINERID",
            Some("ctr\n"),
        ),
        ("container ID leading dash", "CNI_CONTAINERID", Some("-ctr")),
        ("no netns", "CNI_NETNS", None),
        ("relative netns", "CNI_NETNS", Some("relative/path")),
        ("missing netns", "CNI_NETNS", Some("/nonexistent/netns")),
        ("no ifname", "CNI_IFNAME", None),
        ("16-byte ifname", "CNI_IFNAME", Some("abcdefghijklmnop")),
        ("ifname with slash", "CNI_IFNAME", Some("a/b")),
        ("ifname dot", "CNI_IFNAME", Some(".")),
        ("no CNI_PATH", "CNI_PATH", None),
        ("bad CNI_ARGS", "CNI_ARGS", Some("K8S_POD_NAME=x;bad")),
        ("CNI_ARGS a=b=c", "CNI_ARGS", Some("a=b=c")),
    ];
    for (name, var, value) in envs {
        cases.push(env_case(name, var, value, &base));
    }
    let long_id = "c".repeat(100_000);
    cases.push(Case {
        name: "100 kB container ID".into(),
        env: vec![("CNI_CONTAINERID", Some(long_id))],
        stdin: text.into_bytes(),
    });
    cases
}

fn run(rig: &Rig, sandbox: &Netns, case: &Case, command: Option<&str>) -> Outcome {
    let mut env: Vec<(&str, Option<String>)> = vec![
        ("CNI_COMMAND", Some(command.unwrap_or("ADD").to_string())),
        ("CNI_CONTAINERID", Some("hostile-1".into())),
        ("CNI_NETNS", Some(sandbox.path().display().to_string())),
        ("CNI_IFNAME", Some("eth0".into())),
        ("CNI_PATH", Some("/usr/lib/cni".into())),
        ("PATH", Some(rig.tools.path().display().to_string())),
        (
            "PORTMAP_STATE_DIR",
            Some(state_dir(rig.tools.path()).display().to_string()),
        ),
        (
            "PORTMAP_LOCK",
            Some(lock_path(rig.tools.path()).display().to_string()),
        ),
    ];
    for (k, v) in &case.env {
        if command.is_some() && *k == "CNI_COMMAND" {
            continue;
        }
        env.retain(|(name, _)| name != k);
        env.push((k, v.clone()));
    }
    let mut cmd = rig.topo.host.command(ours());
    cmd.env_clear();
    for (k, v) in &env {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    run_with_input(cmd, &case.stdin).expect("run")
}

#[rstest]
fn hostile_input_gets_a_clean_error_or_a_correct_result(
    #[values("nftables", "iptables")] backend: &str,
) {
    let Some(rig) = Rig::new(Tools::default()) else {
        return;
    };
    let sandbox = Netns::new("sandbox").expect("netns");
    let mut baseline = rig.ruleset();
    let cases = corpus(backend);
    assert!(cases.len() >= 100, "corpus has {} cases", cases.len());
    let (mut errors, mut successes) = (0, 0);
    for c in &cases {
        let out = run(&rig, &sandbox, c, None);
        let what = format!(
            "case {:?}: exit {:?}\nstdout {}\nstderr {}",
            c.name,
            out.exit,
            out.stdout.chars().take(400).collect::<String>(),
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{what}");
        match out.exit {
            Some(1) => {
                errors += 1;
                let err: Value = serde_json::from_str(out.stdout.trim())
                    .unwrap_or_else(|e| panic!("{what}\nnot JSON: {e}"));
                assert!(err["code"].as_u64().is_some(), "{what}");
                assert!(err["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
                assert_eq!(
                    rig.ruleset(),
                    baseline,
                    "an error changed the firewall: {what}"
                );
            }
            Some(0) => {
                successes += 1;
                let result: Value = serde_json::from_str(out.stdout.trim())
                    .unwrap_or_else(|e| panic!("{what}\nnot JSON: {e}"));
                assert!(result.get("cniVersion").is_some(), "{what}");
                // Correct means installed exactly as asked: CHECK agrees
                // (where the config's version has CHECK: 0.4.0 and later).
                let version = result["cniVersion"].as_str().unwrap_or_default();
                if !["0.1.0", "0.2.0", "0.3.0", "0.3.1"].contains(&version) {
                    let check = run(&rig, &sandbox, c, Some("CHECK"));
                    assert_eq!(check.exit, Some(0), "CHECK after {what}\n{}", check.stdout);
                }
                let del = run(&rig, &sandbox, c, Some("DEL"));
                assert_eq!(del.exit, Some(0), "DEL after {what}\n{}", del.stdout);
                // iptables-nft leaves the empty nat table it created, and
                // the localnet guard stays: the new baseline, as long as
                // no mapping of ours is in it.
                baseline = rig.ruleset();
                let left = rig.mappings();
                assert!(
                    !left.contains("CNI-") && !left.contains("cni_hostport"),
                    "DEL did not clean up after {what}:\n{left}"
                );
            }
            other => panic!("exit {other:?} is neither success nor a CNI error: {what}"),
        }
    }
    eprintln!(
        "{backend}: {} cases, {errors} clean errors, {successes} correct results",
        cases.len()
    );
    assert!(errors > successes, "the corpus is mostly invalid input");
}
