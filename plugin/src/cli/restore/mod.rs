//! `portmap restore` and `portmap watch`: journaled containers whose
//! rules are missing reinstalled, once or after every removal of ours
//! (signals stop the watch). `pass` is one restore pass (reads without
//! the plugin lock, which it takes only around each write); `watch` the
//! loop over nf_tables notifications, extra triggers and a timer.

mod pass;
mod repair;
mod watch;

use std::process::ExitCode;

pub(super) use watch::watch;
pub use watch::Trigger;

use crate::journal::Journal;

/// This namespace's journal; `None` once `portmap <command>` said why not.
fn open_journal(command: &str) -> Option<Journal> {
    Journal::here()
        .inspect_err(|e| eprintln!("portmap: {command}: {e}"))
        .ok()
}

pub(super) fn restore(dry_run: bool) -> ExitCode {
    let Some(journal) = open_journal("restore") else {
        return ExitCode::FAILURE;
    };
    let pass = pass::run(&journal, dry_run, &|_| true);
    println!(
        "{} {} container(s), {} in place, {} gone, {} could not be restored",
        if dry_run {
            "would reinstall"
        } else {
            "reinstalled"
        },
        pass.reinstalled,
        pass.in_place,
        pass.dropped,
        pass.failed
    );
    if pass.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
