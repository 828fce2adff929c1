//! The matrix: its backend axis, what one cell runs ([`CellSpec`]) and
//! what it came to ([`Cell`], [`Verdict`]). The types the scenarios, the
//! cell runner, the reports and the benchmark share, so none of them
//! reaches into another for them.

use std::path::Path;

use crate::toolpath::{IptablesVariant, Tools};
use crate::topology::Setup;

/// The backend axis of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    Nftables,
    /// nftables with `"nftablesLayout": "maps"` (ours only: upstream
    /// ignores the key).
    NftablesMaps,
    IptablesNft,
    /// iptables-nft with `"iptablesLayout": "tree"` (ours only, as maps).
    IptablesNftTree,
    IptablesLegacy,
    /// No `backend` key: the plugin chooses among this host's own tools.
    Auto,
}

impl Axis {
    pub const ALL: [Axis; 6] = [
        Axis::Nftables,
        Axis::NftablesMaps,
        Axis::IptablesNft,
        Axis::IptablesNftTree,
        Axis::IptablesLegacy,
        Axis::Auto,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Axis::Nftables => "nftables",
            Axis::NftablesMaps => "nftables-maps",
            Axis::IptablesNft => "iptables-nft",
            Axis::IptablesNftTree => "iptables-nft-tree",
            Axis::IptablesLegacy => "iptables-legacy",
            Axis::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<Axis> {
        Axis::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The firewall tools a plugin sees on this axis.
    pub fn tools(self) -> Tools {
        match self {
            Axis::IptablesLegacy => Tools {
                iptables: Some(IptablesVariant::Legacy),
                ..Tools::default()
            },
            // The host as it is: plain `iptables` is what the system's is
            // (legacy on a distribution without nftables), if any.
            Axis::Auto => Tools {
                iptables: IptablesVariant::of_system(),
                ..Tools::default()
            },
            _ => Tools::default(),
        }
    }

    /// The config's `backend` key on this axis (none for auto).
    pub fn backend_key(self) -> Option<&'static str> {
        match self {
            Axis::Nftables | Axis::NftablesMaps => Some("nftables"),
            Axis::IptablesNft | Axis::IptablesNftTree | Axis::IptablesLegacy => Some("iptables"),
            Axis::Auto => None,
        }
    }

    /// `cfg` with this axis's keys: `backend` (none for auto) and, for
    /// nftables-maps and iptables-nft-tree, the layout.
    pub fn keyed(self, mut cfg: serde_json::Value) -> serde_json::Value {
        if let Some(b) = self.backend_key() {
            cfg["backend"] = serde_json::json!(b);
        }
        if self == Axis::NftablesMaps {
            cfg["nftablesLayout"] = serde_json::json!("maps");
        }
        if self == Axis::IptablesNftTree {
            cfg["iptablesLayout"] = serde_json::json!("tree");
        }
        cfg
    }

    /// Whether the axis is an opt-in layout of ours, which upstream's
    /// binary ignores (its cells would repeat the plain axis) and whose
    /// containers its DEL cannot remove.
    pub fn is_our_layout(self) -> bool {
        matches!(self, Axis::NftablesMaps | Axis::IptablesNftTree)
    }
}

/// What one cell runs: which binary (and its partner for interop), which
/// of the two it is in the report, with which container setup.
pub struct CellSpec<'a> {
    pub plugin: &'a Path,
    pub reference: Option<&'a Path>,
    /// [`OURS`] or [`REFERENCE`].
    pub binary: &'a str,
    pub setup: Setup,
    /// The CNI version of every config (see [`crate::cni::negotiate`]).
    pub cni_version: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    NotApplicable(String),
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "FAIL",
            Verdict::NotApplicable(_) => "n/a",
        }
    }

    /// The reason, first line only.
    pub fn reason(&self) -> &str {
        match self {
            Verdict::Pass => "",
            Verdict::Fail(r) | Verdict::NotApplicable(r) => r.lines().next().unwrap_or(""),
        }
    }

    pub(crate) fn failed(&self) -> bool {
        matches!(self, Verdict::Fail(_))
    }
}

pub const OURS: &str = "ours";
pub const REFERENCE: &str = "reference";

#[derive(Debug, Clone)]
pub struct Cell {
    /// [`OURS`] or [`REFERENCE`].
    pub binary: String,
    /// How containers were attached (`veth`, `chain`).
    pub setup: String,
    /// The configs' `cniVersion`.
    pub cni_version: String,
    pub scenario: String,
    pub backend: String,
    pub verdict: Verdict,
    pub seconds: f64,
}

impl Cell {
    /// `ours`, `ours+chain`, `reference+chain`…
    pub fn label(&self) -> String {
        if self.setup == "veth" {
            self.binary.clone()
        } else {
            format!("{}+{}", self.binary, self.setup)
        }
    }

    pub(crate) fn place(&self) -> String {
        format!("{} [{} {}]", self.scenario, self.backend, self.setup)
    }
}
