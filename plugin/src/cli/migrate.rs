//! `portmap migrate`: every installed mapping into one backend, the
//! journal following.

use std::process::ExitCode;

use portmap_backends::iptables::{Iptables, Variant};
use portmap_backends::select::{self, cleanup_backends, Choice};
use portmap_backends::{migrate, relayout, LayoutChoice, Request};
use portmap_backends::{nfnetlink, Backend};

use super::Target;
use crate::journal::{Journal, JournalError};
use crate::lock;

fn target_backend(to: Target) -> Result<Box<dyn Backend>, String> {
    Ok(match to {
        Target::Nftables => {
            select::select(Some(Choice::Nftables))
                .map_err(|e| e.to_string())?
                .backend
        }
        Target::Iptables => Box::new(Iptables::from_path().map_err(|e| e.to_string())?),
        Target::IptablesNft => {
            Box::new(Iptables::variant(Variant::Nft).map_err(|e| e.to_string())?)
        }
        Target::IptablesLegacy => {
            Box::new(Iptables::variant(Variant::Legacy).map_err(|e| e.to_string())?)
        }
    })
}

pub(super) fn migrate_to(
    to: Target,
    network: Option<&str>,
    layout: Option<LayoutChoice>,
    dry_run: bool,
) -> ExitCode {
    let target = match target_backend(to) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portmap: migrate: target not usable: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Runtimes' ADD/DEL must not interleave with a move.
    let _lock = match lock::acquire_plugin_lock() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("portmap: migrate: {}", e.msg);
            return ExitCode::FAILURE;
        }
    };
    let journal = Journal::here();
    // Which network each nftables rule is of: the journal knows.
    let journaled = journal
        .as_ref()
        .map(Journal::all_attachments)
        .unwrap_or_default();
    let mut report = migrate::migrate(
        target.as_ref(),
        &cleanup_backends(),
        &journaled,
        network,
        layout,
        dry_run,
    );
    let relaid = layout.map(|l| {
        (
            l,
            relayout::relayout(target.as_ref(), &journaled, network, l, dry_run),
        )
    });
    if !dry_run {
        if let Ok(j) = &journal {
            j.write_ledger(nfnetlink::generation().ok());
        }
        let moved = match &journal {
            Ok(j) => journal_moves(j, &report.moved, layout)
                .and_then(|()| match &relaid {
                    Some((l, r)) => journal_moves(j, &r.moved, Some(*l)),
                    None => Ok(()),
                })
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = moved {
            eprintln!("portmap: migrate: {e}");
            return ExitCode::FAILURE;
        }
    }
    let verb = if dry_run { "would move" } else { "moved" };
    for m in &report.moved {
        println!(
            "{verb} {}: {} -> {} ({} mappings)",
            m.container_id, m.from, m.to, m.mappings
        );
    }
    if let Some((l, r)) = relaid {
        let (name, backend) = (l.name(), target.name());
        for m in &r.moved {
            println!(
                "{verb} {}: {backend} layout -> {name} ({} mappings)",
                m.container_id, m.mappings
            );
        }
        println!(
            "{} {} container(s) to the {backend} {name} layout, {} failed",
            verb,
            r.moved.len(),
            r.failed.len()
        );
        report.failed.extend(r.failed);
    }
    for e in &report.failed {
        eprintln!("portmap: migrate: {e}");
    }
    println!(
        "{} {} container(s) to {}, {} failed",
        if dry_run { "would move" } else { "moved" },
        report.moved.len(),
        target.name(),
        report.failed.len()
    );
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Journal entries follow their containers to the new backend, so a
/// restore reinstalls them where they now are.
/// `layout`, given: the layout their requests now have (a restore
/// reinstalls them so).
fn journal_moves(
    journal: &Journal,
    moved: &[migrate::Moved],
    layout: Option<LayoutChoice>,
) -> Result<(), JournalError> {
    for (_, mut entry) in journal.entries().into_iter().flatten() {
        let id = &entry.request.key.container_id;
        let network = &entry.request.key.network;
        if let Some(m) = moved
            .iter()
            .find(|m| &m.container_id == id && &m.network == network && m.from == entry.backend)
        {
            entry.backend = m.to;
            // As installed: a move without --layout re-creates the
            // container in upstream's layouts.
            entry.request = match layout {
                Some(layout) => layout.apply(entry.request),
                None => Request {
                    layout: Default::default(),
                    iptables_layout: Default::default(),
                    ..entry.request
                },
            };
            journal.write(&entry)?;
            // The old backend's receipt names rules that are gone.
            journal.write_receipt(&entry.request.key, &entry.ifname, None)?;
        }
    }
    Ok(())
}
