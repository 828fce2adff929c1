//! `portmap migrate --to B --layout L`: backend B's containers not in
//! layout L re-installed in it (nftables: rules or maps; iptables: rules
//! or tree). Each container is one transaction (the re-ADD deletes its
//! own rules, elements or leaves and writes the new ones), then checked;
//! the map, or a tree chain, goes with its last element or rule.

use crate::migrate::{
    attachments_of, install_whole, known_of, request_of, MigrateError, Moved, Report,
};
use crate::{Attachment, Backend, LayoutChoice, Plan, Verdict};

/// Re-lays out every container of `backend` it lists that is not whole in
/// `layout`. `journaled` and `network` tell attachments apart as for
/// [`crate::migrate::migrate`]; a dry run only reports.
pub fn relayout(
    backend: &dyn Backend,
    journaled: &[Attachment],
    network: Option<&str>,
    layout: LayoutChoice,
    dry_run: bool,
) -> Report {
    let mut report = Report::default();
    let containers = match backend.list() {
        Ok(c) => c,
        Err(e) => {
            report.failed.push(MigrateError::List {
                backend: backend.name(),
                source: Box::new(e),
            });
            return report;
        }
    };
    let mut todo = Vec::new();
    for c in containers.iter().filter(|c| c.backend == backend.kind()) {
        if !layout.movable(&c.options) {
            continue;
        }
        let parts = attachments_of(c, journaled, network);
        for (i, part) in parts.iter().enumerate() {
            match request_of(part, None, backend, crate::host::connected_prefix) {
                Ok(req) => todo.push((Plan::new(&layout.apply(req)), known_of(&parts, i))),
                Err(e) => report.failed.push(e),
            }
        }
    }
    // One read for all: those already whole in `layout` stay as they are.
    let plans: Vec<&Plan> = todo.iter().map(|(p, _)| p).collect();
    let verdicts = match backend.check_all(&plans) {
        Ok(v) => v,
        Err(e) => {
            report.failed.push(MigrateError::List {
                backend: backend.name(),
                source: Box::new(e),
            });
            return report;
        }
    };
    for ((plan, known), verdict) in todo.iter().zip(verdicts) {
        if verdict == Verdict::Whole {
            continue;
        }
        if !dry_run {
            if let Err(e) = install_whole(backend, plan, known, "re-add") {
                report.failed.push(e);
                continue;
            }
        }
        report.moved.push(Moved {
            container_id: plan.key.container_id.clone(),
            network: plan.key.network.clone(),
            from: backend.kind(),
            to: backend.kind(),
            mappings: plan.families.iter().map(|f| f.dnats.len()).sum(),
        });
    }
    report
}
