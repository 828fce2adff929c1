//! `portmap install`: copies this binary into a CNI bin directory so that
//! no reader ever sees a partial file (a Kubernetes DaemonSet's install
//! container: the image is FROM scratch, so there is no shell or cp).
//! Temp file in the destination directory, fsync, mode 0755, rename over
//! the target, fsync of the directory. A rename also replaces a binary
//! that is running (cp would fail with ETXTBSY, or truncate it in place).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot find this binary (/proc/self/exe): {0}")]
    Exe(#[source] std::io::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a directory (mount the node's CNI bin directory there)")]
    NotADirectory(PathBuf),
    #[error("{0:?} is not a plain file name")]
    BadName(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("renaming {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Copies `source` to `dir/name` atomically; returns the target and its size.
pub fn install_file(source: &Path, dir: &Path, name: &str) -> Result<(PathBuf, u64), InstallError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(InstallError::BadName(name.to_string()));
    }
    if !dir.is_dir() {
        return Err(InstallError::NotADirectory(dir.to_path_buf()));
    }
    let read = |source_err| InstallError::Read {
        path: source.to_path_buf(),
        source: source_err,
    };
    let mut from = File::open(source).map_err(read)?;
    let target = dir.join(name);
    let write = |path: &Path, source| InstallError::Write {
        path: path.to_path_buf(),
        source,
    };
    let (temp, mut to) = create_temp(dir, name)?;
    let copied = (|| {
        let size = std::io::copy(&mut from, &mut to).map_err(|e| write(&temp, e))?;
        to.flush().map_err(|e| write(&temp, e))?;
        to.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|e| write(&temp, e))?;
        to.sync_all().map_err(|e| write(&temp, e))?;
        std::fs::rename(&temp, &target).map_err(|source| InstallError::Rename {
            from: temp.clone(),
            to: target.clone(),
            source,
        })?;
        Ok(size)
    })();
    let size = match copied {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    // The rename is durable once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| write(dir, e))?;
    Ok((target, size))
}

/// A new hidden temp file beside the target (a CNI runtime never runs it).
/// In a container every installer is PID 1, so the name also carries the
/// time; create_new never opens another installer's file, a planted one,
/// or a link, and a crashed run's leftover only costs another name.
fn create_temp(dir: &Path, name: &str) -> Result<(PathBuf, File), InstallError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut attempt = 0u32;
    loop {
        let temp = dir.join(format!(
            ".{name}.{}.{nanos}.{attempt}.install.tmp",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(source) => return Err(InstallError::Write { path: temp, source }),
        }
    }
}

/// `portmap install --dest DIR [--name NAME]`.
pub fn install(dest: &Path, name: &str) -> ExitCode {
    let result = std::env::current_exe()
        .map_err(InstallError::Exe)
        .and_then(|exe| install_file(&exe, dest, name));
    match result {
        Ok((target, size)) => {
            println!(
                "portmap install: {} ({size} bytes, portmap {})",
                target.display(),
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portmap install: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(label: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("portmap-install-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("bin")).expect("scratch");
            Scratch(dir)
        }
        fn bin(&self) -> PathBuf {
            self.0.join("bin")
        }
        fn source(&self, content: &[u8]) -> PathBuf {
            let p = self.0.join("source");
            std::fs::write(&p, content).expect("source");
            p
        }
        fn listing(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.bin())
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn installs_executable_and_replaces_by_rename() {
        let s = Scratch::new("replace");
        let (target, size) = install_file(&s.source(b"first"), &s.bin(), "portmap").expect("1st");
        assert_eq!(size, 5);
        let meta = std::fs::metadata(&target).expect("target");
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read(&target).expect("read"), b"first");
        // An open reader keeps the old file whole: it was replaced, not rewritten.
        let mut old = File::open(&target).expect("open old");
        install_file(&s.source(b"second!"), &s.bin(), "portmap").expect("2nd");
        let again = std::fs::metadata(&target).expect("target");
        assert_ne!(meta.ino(), again.ino(), "a new inode");
        assert_eq!(std::fs::read(&target).expect("read"), b"second!");
        let mut was = String::new();
        std::io::Read::read_to_string(&mut old, &mut was).expect("old");
        assert_eq!(was, "first");
        assert_eq!(s.listing(), ["portmap"], "no temp file left");
    }

    #[test]
    fn refuses_a_missing_directory_and_bad_names() {
        let s = Scratch::new("refuse");
        let src = s.source(b"x");
        let missing = s.0.join("nope");
        assert!(matches!(
            install_file(&src, &missing, "portmap"),
            Err(InstallError::NotADirectory(_))
        ));
        for bad in ["", "a/b", "..", "."] {
            assert!(
                matches!(
                    install_file(&src, &s.bin(), bad),
                    Err(InstallError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            install_file(&s.0.join("absent"), &s.bin(), "portmap"),
            Err(InstallError::Read { .. })
        ));
        assert!(s.listing().is_empty());
    }

    #[test]
    fn same_pid_installers_never_share_a_temp_file() {
        // Every installer is PID 1 in its container.
        let s = Scratch::new("pid1");
        let (a, _fa) = create_temp(&s.bin(), "portmap").expect("a");
        let (b, _fb) = create_temp(&s.bin(), "portmap").expect("b");
        assert_ne!(a, b);
        // A leftover of another (crashed or running) installer stays.
        install_file(&s.source(b"x"), &s.bin(), "portmap").expect("install");
        assert!(a.exists() && b.exists());
        assert_eq!(std::fs::read(s.bin().join("portmap")).expect("read"), b"x");
    }

    #[test]
    fn a_failed_rename_leaves_no_temp_file() {
        let s = Scratch::new("fail");
        // A directory in the target's place: rename of a file over it fails.
        std::fs::create_dir(s.bin().join("portmap")).expect("dir");
        let err = install_file(&s.source(b"x"), &s.bin(), "portmap").expect_err("over a dir");
        assert!(matches!(err, InstallError::Rename { .. }), "{err}");
        assert_eq!(s.listing(), ["portmap"]);
        assert!(s.bin().join("portmap").is_dir());
    }
}
