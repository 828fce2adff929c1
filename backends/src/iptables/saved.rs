//! What `iptables-save -t nat` (or `iptables -S` of one chain) printed,
//! grouped by chain.

use std::collections::BTreeMap;

use super::rules::{jump_target, split_rule};

/// Groups saved lines by chain: `:NAME` declarations and `-A` rules.
#[derive(Debug, Default, Clone)]
pub struct SavedTable {
    pub chains: Vec<String>,
    /// Rule specs per chain, in order.
    pub rules: BTreeMap<String, Vec<String>>,
}

impl SavedTable {
    /// Reads one table's section of `iptables-save -t <table>` output, or
    /// `iptables -t <table> -S` (chains as `-P NAME POLICY` and `-N NAME`).
    pub fn parse(text: &str) -> SavedTable {
        let mut t = SavedTable::default();
        for line in text.lines() {
            let decl = line
                .strip_prefix(':')
                .or_else(|| line.strip_prefix("-P "))
                .or_else(|| line.strip_prefix("-N "));
            if let Some(decl) = decl {
                if let Some(name) = decl.split_whitespace().next() {
                    t.chains.push(name.to_string());
                }
            } else if let Some((chain, spec)) = split_rule(line) {
                t.rules
                    .entry(chain.to_string())
                    .or_default()
                    .push(spec.to_string());
            }
        }
        t
    }

    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c == name)
    }

    pub fn rules_of(&self, chain: &str) -> &[String] {
        self.rules.get(chain).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn has_rule(&self, line: &str) -> bool {
        split_rule(line).is_some_and(|(chain, spec)| self.rules_of(chain).iter().any(|r| r == spec))
    }

    /// Every rule (chain, spec) that jumps to `target`.
    pub fn jumps_to<'a>(
        &'a self,
        target: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.rules.iter().flat_map(move |(chain, specs)| {
            specs
                .iter()
                .filter(move |s| jump_target(s) == Some(target))
                .map(move |s| (chain.as_str(), s.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::rules::dnat_jumps;

    #[test]
    fn saved_table_parses_chains_rules_and_jumps() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:CNI-DN-abc - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A CNI-HOSTPORT-DNAT -p tcp -j CNI-DN-abc\nCOMMIT\n";
        let t = SavedTable::parse(text);
        assert!(t.has_chain("CNI-DN-abc"));
        assert!(t.has_rule(&dnat_jumps()[0]));
        assert!(!t.has_rule(&dnat_jumps()[1]));
        assert_eq!(
            t.jumps_to("CNI-DN-abc").collect::<Vec<_>>(),
            vec![("CNI-HOSTPORT-DNAT", "-p tcp -j CNI-DN-abc")]
        );
    }

    #[test]
    fn listed_chains_parse_as_saved_ones() {
        let saved = SavedTable::parse("*mangle\n:PREROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-GUARD - [0:0]\n-A PREROUTING -j CNI-HOSTPORT-GUARD\nCOMMIT\n");
        let listed = SavedTable::parse(
            "-P PREROUTING ACCEPT\n-N CNI-HOSTPORT-GUARD\n-A PREROUTING -j CNI-HOSTPORT-GUARD\n",
        );
        assert_eq!(listed.chains, saved.chains);
        assert_eq!(listed.rules, saved.rules);
    }
}
