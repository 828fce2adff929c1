//! What the iptables backend reports: the tool, what it said, and for a
//! read, the family and why its failure is the command's.

use super::Variant;
use crate::Family;

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("neither iptables nor ip6tables is usable")]
    NotUsable { variant: Option<Variant> },
    #[error("could not run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} ({variant}) failed to read the {table} table")]
    Save {
        tool: String,
        variant: Variant,
        table: String,
        stderr: String,
    },
    /// A read failed where passing over it would hide rules (`why`).
    #[error("cannot read the {family} nat table ({why}): {source}")]
    Unreadable {
        family: Family,
        why: String,
        #[source]
        source: Box<IptablesError>,
    },
    /// The plan has mappings of a family the kernel has, but no tool of
    /// it is here.
    #[error("the container has {family} mappings but iptables ({variant}) has no {family} tools here: {tools} not in PATH")]
    NoTools {
        family: Family,
        variant: Variant,
        tools: String,
    },
    /// The tool hung and was killed (for a restore, what that leaves:
    /// [`Runner::restore`](super::Runner::restore)).
    #[error("{tool} did not finish within {timeout:?} and was killed")]
    Timeout {
        tool: String,
        command: String,
        timeout: std::time::Duration,
    },
    #[error("{tool} ({variant}) rejected the batch")]
    Restore {
        tool: String,
        variant: Variant,
        stderr: String,
        batch: String,
    },
}

impl IptablesError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, IptablesError::Timeout { .. })
    }

    pub fn details(&self) -> String {
        match self {
            IptablesError::NotUsable { variant } => match variant {
                Some(v) => {
                    format!("iptables variant: {v}; no usable save/restore tools or nat table")
                }
                None => "no iptables binary found in PATH".to_string(),
            },
            IptablesError::Spawn { source, .. } => source.to_string(),
            IptablesError::Save { stderr, .. } => stderr.clone(),
            IptablesError::Unreadable { source, .. } => source.details(),
            IptablesError::NoTools { .. } => String::new(),
            IptablesError::Timeout {
                command, timeout, ..
            } => format!("`{command}` killed (with its process group) after {timeout:?}"),
            IptablesError::Restore { stderr, batch, .. } => format!("{stderr}\nbatch:\n{batch}"),
        }
    }
}
