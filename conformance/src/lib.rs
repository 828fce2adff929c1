//! portmap-conformance: runs ADD/CHECK/DEL scenarios with real traffic in
//! network namespaces against any portmap binary, and the namespace,
//! topology and traffic helpers the other crates' tests share.
//!
//! # Module order
//!
//! Dependencies run one way: each module uses only modules listed before
//! it (`main.rs`, the binary, uses any):
//!
//! 1. helpers, using at most `netns`: `netns`, `traffic`, `firewall`,
//!    `forge`, `toolpath`;
//! 2. `cni` (invoking a plugin binary; knows namespaces, not topologies);
//! 3. `topology` (`network` → `veth`, `chain` → `mod.rs`; `Call::new`,
//!    a call about a topology container, is defined there);
//! 4. `clients` (the runtimes' inputs);
//! 5. `matrix` (`Axis`, `CellSpec`, `Cell`, `Verdict`);
//! 6. `scenarios` (`ctx` → the scenario groups → `mod.rs`, the catalogue);
//! 7. `run` (one cell);
//! 8. `report` (uses only `matrix`);
//! 9. `bench` → `bench_report` (use `matrix`, not the scenarios);
//! 10. `main`.
//!
//! Old paths stay as re-exports: `chain` (now `topology::chain`),
//! `scenarios::Axis`, `run::CellSpec`, `report::{Cell, Verdict, OURS,
//! REFERENCE}` (now in `matrix`).

pub mod bench;
pub mod bench_report;
pub mod clients;
pub mod cni;
pub mod firewall;
pub mod forge;
pub mod matrix;
pub mod netns;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod toolpath;
pub mod topology;
pub mod traffic;

/// The chain attachment, at its old path.
pub use topology::chain;
