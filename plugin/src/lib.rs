//! The CNI `portmap` plugin: protocol, config and commands over the
//! backend seam of `portmap-backends`. `main.rs` only wires stdin/env.

pub mod cli;
pub mod cni;
pub mod commands;
pub mod config;
pub mod firewalld;
pub mod gojson;
pub mod journal;
pub mod lock;
