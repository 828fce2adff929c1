use super::*;
use portmap_backends::{MasqMark, PortMapping, Protocol};

fn request(network: &str, id: &str) -> Request {
    Request {
        key: ContainerKey {
            network: network.into(),
            container_id: id.into(),
        },
        v4: None,
        v6: None,
        mappings: vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        }],
        snat: true,
        masq_all: false,
        mark: MasqMark::default(),
        conditions_v4: vec![],
        conditions_v6: vec![],
    }
}

fn scratch(label: &str) -> Journal {
    let dir = std::env::temp_dir().join(format!("portmap-journal-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Journal::at(dir.join("netns-1-2"))
}

#[test]
fn retired_entries_leave_entries_but_keep_the_id_known_until_removed() {
    let j = scratch("retire");
    assert!(!j.may_hold("a"), "no directory yet");
    let a = Entry::new("eth0", "", "nftables", request("net", "a"));
    let a2 = Entry::new("eth1", "", "nftables", request("other", "a"));
    j.write(&a).expect("write a");
    j.write(&a2).expect("write a on another network");
    assert!(j.may_hold("a") && !j.may_hold("b") && !j.may_hold("net"));
    j.retire(&a.request.key).expect("retire");
    let left: Vec<Entry> = j
        .entries()
        .into_iter()
        .map(|e| e.expect("entry").1)
        .collect();
    assert_eq!(left, vec![a2.clone()], "only the other network's entry");
    j.remove(&a2.request.key).expect("remove other");
    assert!(j.may_hold("a"), "the retired entry still counts");
    assert_eq!(j.retired(), vec![a.request.key.clone()]);
    j.retire(&a.request.key).expect("retiring again is fine");
    j.remove(&a.request.key).expect("remove");
    assert!(!j.may_hold("a"));
    // A writer killed before its rename made no rules.
    std::fs::create_dir_all(j.dir().join("a")).expect("dir");
    std::fs::write(j.dir().join("a/.net:eth0.json.9.tmp"), b"{").expect("temp");
    assert!(!j.may_hold("a"));
    let _ = std::fs::remove_dir_all(j.dir().parent().expect("root"));
}

#[test]
fn receipts_sit_beside_entries_and_go_with_them() {
    let j = scratch("receipt");
    let a = Entry::new("eth0", "", "nftables", request("net", "a"));
    let key = &a.request.key;
    let receipted = Receipted {
        backend: "nftables".into(),
        receipt: Receipt {
            rules: vec![portmap_backends::RuleRef {
                family: portmap_backends::Family::V4,
                chain: "hostports".into(),
                handle: 7,
            }],
        },
    };
    j.write(&a).expect("write");
    j.write_receipt(key, "eth0", Some(&receipted))
        .expect("receipt");
    assert_eq!(j.receipts(key), vec![receipted.clone()]);
    assert_eq!(j.entries().len(), 1, "a receipt is not an entry");
    assert!(j.receipts(&request("other", "a").key).is_empty());
    j.write_receipt(key, "eth0", None).expect("dropped");
    assert!(j.receipts(key).is_empty());
    j.write_receipt(key, "eth0", Some(&receipted))
        .expect("again");
    j.retire(key).expect("retire");
    assert_eq!(
        j.receipts(key),
        vec![receipted],
        "DEL reads it after retiring"
    );
    j.remove(key).expect("remove");
    assert!(!j.may_hold("a") && !j.dir().exists(), "nothing left");
}

#[test]
fn entries_round_trip_and_go_with_their_container() {
    let j = scratch("round-trip");
    let a = Entry::new("eth0", "", "nftables", request("net", "a"));
    let b = Entry::new("eth0", "", "iptables-legacy", request("net", "b"));
    j.write(&a).expect("write a");
    j.write(&b).expect("write b");
    j.write(&a).expect("rewrite a");
    let got: Vec<Entry> = j
        .entries()
        .into_iter()
        .map(|e| e.expect("entry").1)
        .collect();
    assert_eq!(got, vec![a.clone(), b]);
    j.remove(&a.request.key).expect("remove a");
    assert_eq!(j.entries().len(), 1);
    j.remove(&a.request.key).expect("removing again is fine");
    // A writer killed before its rename leaves a temp file: not an
    // entry, and removed with the container's entries.
    std::fs::write(j.dir().join("b/.net:eth0.json.123.tmp"), b"{").expect("temp");
    assert_eq!(j.entries().len(), 1);
    j.remove(&request("net", "b").key).expect("remove b");
    assert!(!j.dir().exists(), "the last entry takes the directory");
}

#[test]
fn a_corrupt_entry_is_reported_and_the_others_read() {
    let j = scratch("corrupt");
    j.write(&Entry::new("eth0", "", "nftables", request("net", "good")))
        .expect("write");
    std::fs::create_dir_all(j.dir().join("bad")).expect("dir");
    std::fs::write(j.dir().join("bad/net:eth0.json"), b"{not json").expect("corrupt");
    let entries = j.entries();
    assert_eq!(entries.len(), 2);
    let bad = entries
        .iter()
        .find_map(|e| e.as_ref().err())
        .expect("reported");
    assert!(bad.to_string().contains("bad/net:eth0.json"), "{bad}");
    assert!(entries.iter().any(|e| e
        .as_ref()
        .is_ok_and(|(_, e)| e.request.key.container_id == "good")));
    let _ = std::fs::remove_dir_all(j.dir());
}

#[test]
fn unusable_names_write_nothing() {
    let j = scratch("names");
    let e = Entry::new("eth0", "", "nftables", request("a/b", "c"));
    assert!(j.write(&e).is_err());
    assert!(
        j.remove(&e.request.key).is_ok(),
        "DEL of such a name has nothing to remove"
    );
    let _ = std::fs::remove_dir_all(j.dir());
}

#[test]
fn an_entry_whose_namespace_is_gone_is_stale() {
    let gone = Entry::new(
        "eth0",
        "/run/netns/portmap-no-such-ns",
        "nftables",
        request("n", "c"),
    );
    assert!(gone.is_stale());
    assert!(!Entry::new("eth0", "/proc/self/ns/net", "nftables", request("n", "c")).is_stale());
    assert!(
        !Entry::new("eth0", "", "nftables", request("n", "c")).is_stale(),
        "unknown is not gone"
    );
}

#[test]
fn an_unwritable_journal_is_an_error() {
    let j = Journal::at(PathBuf::from("/proc/portmap-journal-cannot-exist"));
    let err = j.write(&Entry::new("eth0", "", "nftables", request("n", "c")));
    assert!(matches!(err, Err(JournalError::Write { .. })), "{err:?}");
}
