use super::*;
use portmap_backends::{BackendKind, MasqMark, PortMapping, Protocol};

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
        layout: Default::default(),
        iptables_layout: Default::default(),
    }
}

/// A journal in a state directory of its own, removed with it (also when
/// the test panics).
struct Scratch(Journal);

impl std::ops::Deref for Scratch {
    type Target = Journal;
    fn deref(&self) -> &Journal {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.root());
    }
}

impl Scratch {
    fn root(&self) -> &Path {
        self.0.dir().parent().expect("root")
    }
}

fn scratch(label: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("portmap-journal-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Scratch(Journal::at(dir.join("netns-1-2")))
}

#[test]
fn retired_entries_leave_entries_but_keep_the_id_known_until_removed() {
    let j = scratch("retire");
    assert!(!j.may_hold("a"), "no directory yet");
    let a = Entry::new("eth0", "", BackendKind::Nftables, request("net", "a"));
    let a2 = Entry::new("eth1", "", BackendKind::Nftables, request("other", "a"));
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
}

#[test]
fn receipts_sit_beside_entries_and_go_with_them() {
    let j = scratch("receipt");
    let a = Entry::new("eth0", "", BackendKind::Nftables, request("net", "a"));
    let key = &a.request.key;
    let receipted = Receipted {
        backend: BackendKind::Nftables,
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
    let a = Entry::new("eth0", "", BackendKind::Nftables, request("net", "a"));
    let b = Entry::new("eth0", "", BackendKind::IptablesLegacy, request("net", "b"));
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
    j.write(&Entry::new(
        "eth0",
        "",
        BackendKind::Nftables,
        request("net", "good"),
    ))
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
}

#[test]
fn unusable_names_write_nothing() {
    let j = scratch("names");
    let e = Entry::new("eth0", "", BackendKind::Nftables, request("a/b", "c"));
    assert!(j.write(&e).is_err());
    assert!(
        j.remove(&e.request.key).is_ok(),
        "DEL of such a name has nothing to remove"
    );
}

#[test]
fn names_too_long_for_a_file_are_refused_and_have_nothing_to_delete() {
    let j = scratch("long");
    let long = "c".repeat(NAME_MAX + 1);
    assert!(can_hold(&"c".repeat(NAME_MAX)) && !can_hold(&long));
    let e = Entry::new("eth0", "", BackendKind::Nftables, request("net", &long));
    let err = j.write(&e).expect_err("too long");
    assert_eq!(
        err.to_string(),
        "container ID of 256 bytes is too long for the journal (a file name has at most 255)"
    );
    let network = Entry::new(
        "eth0",
        "",
        BackendKind::Nftables,
        request(&"n".repeat(240), "c"),
    );
    assert!(matches!(
        j.write(&network),
        Err(JournalError::TooLong { .. })
    ));
    assert!(!j.dir().exists(), "nothing made");
    // A DEL (and an ADD's look for rules) of such an ID reads nothing,
    // even where nothing could be read.
    let nowhere = Journal::at(PathBuf::from("/proc/portmap-cannot-exist/netns-1-2"));
    for j in [&*j, &nowhere] {
        assert!(!j.may_hold(&long));
        assert!(j.receipts(&e.request.key).is_empty());
        j.retire(&e.request.key).expect("nothing to retire");
        j.remove(&e.request.key).expect("nothing to remove");
    }
}

#[test]
fn only_a_namespace_that_is_not_found_is_gone() {
    let with = |netns: &str| {
        Entry::new("eth0", netns, BackendKind::Nftables, request("n", "c")).is_stale()
    };
    assert!(with("/run/netns/portmap-no-such-ns").expect("stat"), "gone");
    assert!(!with("/proc/self/ns/net").expect("stat"));
    assert!(!with("").expect("unknown"), "not recorded is not gone");
    // Errors root gets too: they say nothing about the namespace.
    let not_a_dir = with("/etc/passwd/x").expect_err("ENOTDIR");
    assert_eq!(not_a_dir.raw_os_error(), Some(nix::libc::ENOTDIR));
    let j = scratch("stale");
    std::fs::create_dir_all(j.root()).expect("root");
    let lp = j.root().join("loop");
    std::os::unix::fs::symlink(&lp, &lp).expect("loop");
    let looped = with(&lp.display().to_string()).expect_err("ELOOP");
    assert_eq!(looped.raw_os_error(), Some(nix::libc::ELOOP));
}

#[test]
fn an_unwritable_journal_is_an_error() {
    let j = Journal::at(PathBuf::from("/proc/portmap-journal-cannot-exist"));
    let err = j.write(&Entry::new(
        "eth0",
        "",
        BackendKind::Nftables,
        request("n", "c"),
    ));
    assert!(matches!(err, Err(JournalError::Dir { .. })), "{err:?}");
}

/// What is under `dir`: every name, whether it is a symlink, and the
/// contents of files, sorted.
fn snapshot(dir: &Path) -> Vec<(String, bool, Vec<u8>)> {
    let mut all: Vec<(String, bool, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("victim")
        .flatten()
        .map(|e| {
            let link = e.file_type().is_ok_and(|t| t.is_symlink());
            let text = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), link, text)
        })
        .collect();
    all.sort();
    all
}

#[test]
fn symlinks_in_the_journal_are_never_followed() {
    use std::os::unix::fs::symlink;
    let j = scratch("links");
    let victim = j.root().join("victim");
    std::fs::create_dir_all(&victim).expect("victim");
    std::fs::write(victim.join("keep"), b"not the journal's").expect("keep");
    let receipt = br#"{"backend":"nftables","rules":[]}"#;
    assert!(
        serde_json::from_slice::<Receipted>(receipt).is_ok(),
        "would read"
    );
    std::fs::write(victim.join("net:eth0.receipt"), receipt).expect("receipt");
    let before = snapshot(&victim);
    j.write(&Entry::new(
        "eth0",
        "",
        BackendKind::Nftables,
        request("net", "a"),
    ))
    .expect("a real entry");

    // A container directory that is a symlink: not written, read or
    // removed through, and left alone.
    symlink(&victim, j.dir().join("evil")).expect("link");
    let evil = Entry::new("eth0", "", BackendKind::Nftables, request("net", "evil"));
    let err = j.write(&evil).expect_err("refused");
    assert!(
        matches!(&err, JournalError::Unsafe { what: Refusal::Symlink, path } if path.ends_with("evil")),
        "{err:?}"
    );
    assert!(!j.may_hold("evil"), "holds nothing of ours");
    assert!(j.receipts(&evil.request.key).is_empty());
    j.retire(&evil.request.key).expect("DEL retires nothing");
    j.remove(&evil.request.key).expect("DEL removes nothing");
    assert!(j.dir().join("evil").is_symlink(), "left alone");

    // Symlinks where an entry, a receipt and every temp name of this
    // process would go.
    let a = j.dir().join("a");
    symlink(victim.join("keep"), a.join("net:eth1.json")).expect("entry link");
    symlink(victim.join("net:eth0.receipt"), a.join("net:eth0.receipt")).expect("receipt link");
    let pid = std::process::id();
    for n in 0..TEMP_TRIES {
        let tmp = temp_name("other:eth0.json", pid, n);
        symlink(victim.join(format!("made-{n}")), a.join(tmp)).expect("temp link");
    }
    let entries = j.entries();
    assert_eq!(entries.len(), 3, "{entries:?}");
    let errors: Vec<String> = entries
        .iter()
        .filter_map(|e| e.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("evil") && e.contains("symlink"))
            && errors
                .iter()
                .any(|e| e.contains("a/net:eth1.json") && e.contains("symlink")),
        "{errors:?}"
    );
    assert!(j.receipts(&request("net", "a").key).is_empty(), "not read");
    let other = Entry::new("eth0", "", BackendKind::Nftables, request("other", "a"));
    let err = j.write(&other).expect_err("every temp name is taken");
    assert!(err.to_string().contains("temp names"), "{err}");
    std::fs::remove_file(a.join(temp_name("other:eth0.json", pid, TEMP_TRIES - 1))).expect("rm");
    j.write(&other).expect("the last temp name is free");
    j.write_receipt(
        &request("net", "a").key,
        "eth0",
        Some(&Receipted {
            backend: BackendKind::Nftables,
            receipt: Receipt { rules: vec![] },
        }),
    )
    .expect("replaces the symlink, not its target");
    j.retire(&request("net", "a").key).expect("retire");
    assert!(
        a.join("net:eth1.json.retired").is_symlink(),
        "renamed itself"
    );
    j.remove(&request("net", "a").key).expect("remove");
    j.remove(&other.request.key).expect("remove");
    assert_eq!(snapshot(&victim), before, "nothing outside was touched");
}

#[test]
fn a_state_directory_that_is_a_symlink_or_open_to_others_is_refused() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let s = scratch("refused");
    let root = s.root().to_path_buf();
    let real = root.join("real");
    std::fs::create_dir_all(real.join("netns-1-2")).expect("real");
    let e = Entry::new("eth0", "", BackendKind::Nftables, request("net", "a"));
    let refusal = |j: &Journal| match j.write(&e) {
        Err(JournalError::Unsafe { what, path }) => {
            assert_eq!(j.entries().len(), 1, "reported by entries too");
            (what, path)
        }
        other => panic!("{other:?}"),
    };

    symlink(&real, root.join("link")).expect("link");
    let j = Journal::at(root.join("link/netns-1-2"));
    assert_eq!(refusal(&j), (Refusal::Symlink, root.join("link")));
    symlink(real.join("netns-1-2"), real.join("netns-3-4")).expect("link");
    let j = Journal::at(real.join("netns-3-4"));
    assert_eq!(refusal(&j), (Refusal::Symlink, real.join("netns-3-4")));
    assert!(j.retire(&e.request.key).is_err(), "DEL says so too");
    assert!(
        snapshot(&real.join("netns-1-2")).is_empty(),
        "nothing written"
    );

    let j = Journal::at(real.join("netns-1-2"));
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    mode(&real, 0o777);
    assert_eq!(refusal(&j), (Refusal::Writable(0o777), real.clone()));
    mode(&real, 0o700);
    mode(&real.join("netns-1-2"), 0o775);
    let (what, _) = refusal(&j);
    assert_eq!(
        what.to_string(),
        "mode 0775 lets group or others write to it"
    );
    mode(&real.join("netns-1-2"), 0o755);
    j.write(&e).expect("0755 is fine");
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(real.join("netns-1-2"), Some(1234), None).expect("chown");
        let (what, _) = refusal(&j);
        assert_eq!(what, Refusal::Owner { uid: 1234, euid: 0 });
    }
}

#[test]
fn directories_are_made_for_us_alone() {
    use std::os::unix::fs::PermissionsExt;
    let j = scratch("modes");
    j.write(&Entry::new(
        "eth0",
        "",
        BackendKind::Nftables,
        request("net", "a"),
    ))
    .expect("write");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(j.root()), 0o700);
    assert_eq!(mode(j.dir()), 0o700);
    assert_eq!(mode(&j.dir().join("a")), 0o700);
    assert_eq!(mode(&j.dir().join("a/net:eth0.json")), 0o600);
}

/// An entry as this release writes it, frozen: `restore` must read what
/// the previous release wrote, so a renamed field fails here first.
#[test]
fn an_entry_in_todays_format_reads_and_writes_the_same() {
    use portmap_backends::ContainerAddr;
    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/journal-entry-format-1.json"
    ))
    .expect("fixture JSON");
    let expected = Entry::new(
        "net1",
        "/var/run/netns/cni-1234",
        BackendKind::IptablesNft,
        Request {
            key: ContainerKey {
                network: "podman".into(),
                container_id: "ctr-fixture".into(),
            },
            v4: Some(ContainerAddr {
                addr: "10.88.0.5".parse().expect("ip"),
                prefix_len: 16,
            }),
            v6: Some(ContainerAddr {
                addr: "fd00:88::5".parse().expect("ip"),
                prefix_len: 64,
            }),
            mappings: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: None,
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: Protocol::Udp,
                    host_ip: Some("192.0.2.1".parse().expect("ip")),
                },
            ],
            snat: true,
            masq_all: true,
            mark: MasqMark::ExternalChain("KUBE-MARK-MASQ".into()),
            conditions_v4: vec!["-s".into(), "10.0.0.0/8".into()],
            conditions_v6: vec![],
            layout: Default::default(),
            iptables_layout: Default::default(),
        },
    );
    let read: Entry = serde_json::from_value(fixture.clone()).expect("today's entry reads");
    assert_eq!(read, expected);
    assert_eq!(serde_json::to_value(&expected).expect("json"), fixture);
}

/// Enough containers for the read to be spread over threads: every entry
/// once, in name order, the bad ones reported among them.
#[test]
fn many_entries_read_as_one_list_in_name_order() {
    use std::os::unix::fs::symlink;
    let j = scratch("many");
    let ids: Vec<String> = (0..150).map(|i| format!("c{i:03}")).collect();
    for id in &ids {
        j.write(&Entry::new(
            "eth0",
            "",
            BackendKind::Nftables,
            request("net", id),
        ))
        .expect("write");
    }
    std::fs::write(j.dir().join("c077/net:eth1.json"), b"{not json").expect("corrupt");
    symlink(j.root(), j.dir().join("c140-link")).expect("link");
    let entries = j.entries();
    assert_eq!(entries.len(), ids.len() + 2, "{} entries", entries.len());
    let read: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .map(|(_, e)| e.request.key.container_id.as_str())
        .collect();
    assert_eq!(read, ids, "each once, in name order");
    let errors: Vec<String> = entries
        .iter()
        .filter_map(|e| e.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        errors.len() == 2
            && errors.iter().any(|e| e.contains("c077/net:eth1.json"))
            && errors
                .iter()
                .any(|e| e.contains("c140-link") && e.contains("symlink")),
        "{errors:?}"
    );
}
