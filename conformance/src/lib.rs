//! portmap-conformance: runs ADD/CHECK/DEL scenarios with real traffic in
//! network namespaces against any portmap binary, and the namespace,
//! topology and traffic helpers the other crates' tests share.

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
