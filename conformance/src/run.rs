//! Runs one cell (scenario × backend × binary) in its own thread with a
//! time limit; the cell's namespaces go away with its context.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use crate::matrix::CellSpec;
use crate::matrix::{Axis, Cell, Verdict};
use crate::scenarios::{Ctx, Scenario};

pub const CELL_TIME_LIMIT: Duration = Duration::from_secs(90);

pub fn run_cell(spec: &CellSpec<'_>, axis: Axis, scenario: &Scenario) -> Cell {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let (plugin, reference) = (
        spec.plugin.to_path_buf(),
        spec.reference.map(Path::to_path_buf),
    );
    let (binary, setup, cni_version) = (
        spec.binary.to_string(),
        spec.setup,
        spec.cni_version.to_string(),
    );
    let body = scenario.body;
    let not_applicable = scenario.not_applicable;
    let worker = std::thread::spawn(move || {
        let spec = CellSpec {
            plugin: &plugin,
            reference: reference.as_deref(),
            binary: &binary,
            setup,
            cni_version: &cni_version,
        };
        let verdict = match Ctx::new(&spec, axis) {
            Err(e) => Verdict::Fail(format!("setup: {e}")),
            Ok(ctx) => match maps_is_ours(&ctx).or_else(|| not_applicable(&ctx)) {
                Some(reason) => Verdict::NotApplicable(reason),
                None => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&ctx)))
                {
                    Ok(Ok(())) => Verdict::Pass,
                    Ok(Err(reason)) => {
                        Verdict::Fail(format!("{reason}\n--- ruleset ---\n{}", ctx.ruleset()))
                    }
                    Err(panic) => Verdict::Fail(format!("panicked: {}", panic_text(&panic))),
                },
            },
        };
        let _ = tx.send(verdict);
    });
    let verdict = match rx.recv_timeout(CELL_TIME_LIMIT) {
        Ok(v) => {
            let _ = worker.join();
            v
        }
        Err(_) => Verdict::Fail(format!("timed out after {}s", CELL_TIME_LIMIT.as_secs())),
    };
    Cell {
        binary: spec.binary.to_string(),
        setup: spec.setup.name().to_string(),
        cni_version: spec.cni_version.to_string(),
        scenario: scenario.name.to_string(),
        backend: axis.name().to_string(),
        verdict,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// The maps and tree layouts are our options (upstream ignores the
/// keys): the reference binary's own cells there would repeat the plain axis'.
fn maps_is_ours(ctx: &Ctx) -> Option<String> {
    (ctx.axis.is_our_layout() && ctx.binary == crate::matrix::REFERENCE).then(|| {
        format!(
            "the {} layout is ours (upstream ignores it)",
            ctx.axis.name()
        )
    })
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
