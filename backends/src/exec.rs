//! Runs a firewall tool with its input on stdin, capturing its output.

use std::io::{ErrorKind, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `program` with `input` on stdin. Input is written from its own
/// thread while output is read, so a large batch cannot deadlock against
/// a tool that writes before it has read everything; a tool that exits
/// without reading (a failing one) is judged by its status and stderr,
/// not by our broken pipe.
pub fn run_with_stdin(program: &Path, args: &[&str], input: &str) -> std::io::Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take();
    std::thread::scope(|s| {
        let writer = s.spawn(move || match stdin {
            Some(mut pipe) => match pipe.write_all(input.as_bytes()) {
                Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
                other => other,
            },
            None => Ok(()),
        });
        let output = child.wait_with_output();
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked")));
        let output = output?;
        written.map(|()| output)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_exits_without_reading_is_judged_by_its_status() {
        let big = "x".repeat(1 << 20);
        let out = run_with_stdin(
            Path::new("/bin/sh"),
            &["-c", "echo refused >&2; exit 3"],
            &big,
        )
        .expect("ran");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "refused");
    }

    #[test]
    fn large_input_and_output_do_not_deadlock() {
        let big = "y\n".repeat(1 << 19);
        let out = run_with_stdin(Path::new("/bin/cat"), &[], &big).expect("ran");
        assert_eq!(out.stdout.len(), big.len());
    }
}
