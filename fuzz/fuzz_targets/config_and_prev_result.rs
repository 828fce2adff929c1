//! Config and prevResult parsing, and what a parsed config turns into:
//! never a panic, and an iptables-restore batch whose every line is a
//! table, chain declaration, rule or COMMIT (no input can inject lines).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portmap::cni::{result, Env};
use portmap::config;
use portmap_backends::iptables::batch;
use portmap_backends::iptables::saved::SavedTable;
use portmap_backends::nftables::parse_conditions;
use portmap_backends::Plan;

fuzz_target!(|data: &[u8]| {
    let _ = config::peek_version(data);
    if let Ok(cfg) = config::parse(data) {
        let env = Env {
            container_id: "fuzz".into(),
            netns: "/run/netns/fuzz".into(),
            ifname: "eth0".into(),
            path: "/opt/cni/bin".into(),
            args: String::new(),
        };
        let plan = Plan::new(&cfg.request(&env));
        for fam in &plan.families {
            let _ = parse_conditions(&fam.conditions);
            let restore = batch::add(&plan, fam, &SavedTable::default());
            for line in restore.lines() {
                assert!(
                    line.starts_with(['*', ':', '-']) || line == "COMMIT",
                    "injected line {line:?} in\n{restore}"
                );
            }
        }
    }
    if let Ok(prev) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(normal) = result::normalize(&prev) {
            for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
                let _ = result::convert(&normal, version);
            }
        }
    }
});
