//! The scenario catalogue (data: name, one-line description, applicability,
//! body) and the context every scenario runs in: its own namespaces, its
//! own tool PATH, the plugin under test as a black box.
//!
//! `ctx` defines a scenario and its context; each other part is a group
//! of scenarios using it. Parts depend on `ctx` (and `lifecycle`,
//! `options` on `reach`'s `with_container`, `ranges` on `lifecycle`'s
//! `needs_reference`), never on this module.

mod client_shapes;
mod ctx;
mod lifecycle;
mod localnet;
mod multinet;
mod options;
mod ranges;
mod reach;
mod unreadable;

pub use self::ctx::{always, ensure, maps, Body, Ctx, Firewall, Scenario, NET, NET_B};
/// The backend axis, at its old path.
pub use crate::matrix::Axis;

pub fn catalogue() -> Vec<Scenario> {
    let mut all = reach::scenarios();
    all.extend(options::scenarios());
    all.extend(lifecycle::scenarios());
    all.extend(ranges::scenarios());
    all.extend(localnet::scenarios());
    all.extend(multinet::scenarios());
    all.extend(unreadable::scenarios());
    all.extend(client_shapes::scenarios());
    all
}
