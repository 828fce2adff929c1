//! Runs a firewall tool with its input on stdin, capturing its output.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub fn run_with_stdin(program: &Path, args: &[&str], input: &str) -> std::io::Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    child.wait_with_output()
}
