fn main() {
    eprintln!(
        "portmap-conformance: the scenario runner is not built yet; see the library's helpers"
    );
    std::process::exit(2);
}
