//! `portmap migrate --to nftables --layout L`: nftables containers not in
//! layout L re-installed in it. Each container is one transaction (the
//! re-ADD deletes its own rules and elements and writes the new ones),
//! then checked; the map goes with its last element.

use crate::migrate::{
    attachments_of, install_whole, known_of, request_of, MigrateError, Moved, Report,
};
use crate::{Attachment, Backend, BackendKind, Layout, Plan, Request, Verdict};

/// Re-lays out every container `nft` (the nftables backend) lists that is
/// not whole in `layout`. `journaled` and `network` tell attachments apart
/// as for [`crate::migrate::migrate`]; a dry run only reports.
pub fn relayout(
    nft: &dyn Backend,
    journaled: &[Attachment],
    network: Option<&str>,
    layout: Layout,
    dry_run: bool,
) -> Report {
    let mut report = Report::default();
    let containers = match nft.list() {
        Ok(c) => c,
        Err(e) => {
            report.failed.push(MigrateError::List {
                backend: nft.name(),
                source: Box::new(e),
            });
            return report;
        }
    };
    let mut todo = Vec::new();
    for c in containers
        .iter()
        .filter(|c| c.backend == BackendKind::Nftables)
    {
        // Conditions keep a container in rules whatever the layout.
        if c.options.conditions && !c.options.map_elements {
            continue;
        }
        let parts = attachments_of(c, journaled, network);
        for (i, part) in parts.iter().enumerate() {
            match request_of(part, None, nft, crate::host::connected_prefix) {
                Ok(req) => todo.push((Plan::new(&Request { layout, ..req }), known_of(&parts, i))),
                Err(e) => report.failed.push(e),
            }
        }
    }
    // One read for all: those already whole in `layout` stay as they are.
    let plans: Vec<&Plan> = todo.iter().map(|(p, _)| p).collect();
    let verdicts = match nft.check_all(&plans) {
        Ok(v) => v,
        Err(e) => {
            report.failed.push(MigrateError::List {
                backend: nft.name(),
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
            if let Err(e) = install_whole(nft, plan, known, "re-add") {
                report.failed.push(e);
                continue;
            }
        }
        report.moved.push(Moved {
            container_id: plan.key.container_id.clone(),
            network: plan.key.network.clone(),
            from: BackendKind::Nftables,
            to: BackendKind::Nftables,
            mappings: plan.families.iter().map(|f| f.dnats.len()).sum(),
        });
    }
    report
}
