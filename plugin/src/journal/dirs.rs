//! The journal's directories, opened without following symlinks. Every
//! file is reached from an open directory (openat, renameat, unlinkat), so
//! a symlink planted under the state directory is never written, renamed
//! or removed through, and a directory swapped after its check is not the
//! one written to.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::dir::{Dir as NixDir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fsync, geteuid, mkdir, unlinkat, UnlinkatFlags};

use super::JournalError;

/// Tries at a temp name, `.<name>.<pid>.<n>.tmp` for `n` below this,
/// before a write gives up (a name taken is never opened, only skipped).
pub const TEMP_TRIES: u32 = 8;

/// The temp file `n` of a write of `name` by process `pid`.
pub fn temp_name(name: &str, pid: u32, n: u32) -> String {
    format!(".{name}.{pid}.{n}.tmp")
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// 0700: only `portmap` itself (root) reads the journal; which containers
/// run where is nobody else's business.
fn dir_mode() -> Mode {
    Mode::S_IRWXU
}

/// Why a directory cannot hold the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Symlink,
    NotADirectory,
    /// Its mode.
    Writable(u32),
    Owner {
        uid: u32,
        euid: u32,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Symlink => write!(f, "it is a symlink (not followed)"),
            Refusal::NotADirectory => write!(f, "it is not a directory"),
            Refusal::Writable(mode) => {
                write!(f, "mode {mode:04o} lets group or others write to it")
            }
            Refusal::Owner { uid, euid } => write!(f, "it is owned by uid {uid}, not {euid}"),
        }
    }
}

/// What a directory holds under a name (the name itself, not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Symlink,
    Other,
}

fn dir_error(doing: &'static str, path: &Path, source: io::Error) -> JournalError {
    JournalError::Dir {
        doing,
        path: path.to_path_buf(),
        source,
    }
}

fn refused(path: &Path, what: Refusal) -> JournalError {
    JournalError::Unsafe {
        path: path.to_path_buf(),
        what,
    }
}

/// Asked once: a restore pass checks every entry's directory.
fn effective_uid() -> u32 {
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| geteuid().as_raw())
}

fn own(fd: RawFd) -> File {
    // SAFETY: `fd` was just returned by openat and nothing else holds it.
    unsafe { File::from_raw_fd(fd) }
}

/// An open directory of the journal.
#[derive(Debug)]
pub struct Dir {
    dir: NixDir,
    path: PathBuf,
}

impl Dir {
    /// The state directory `path`, its last component not followed; made
    /// when missing and `create` (its parents as they come, itself 0700).
    /// `None`: missing. Refused unless [`Dir::trusted`].
    pub fn root(path: &Path, create: bool) -> Result<Option<Dir>, JournalError> {
        let open = || NixDir::open(path, dir_flags(), Mode::empty());
        let opened = match open() {
            Err(Errno::ENOENT) if create => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| dir_error("create", parent, e))?;
                }
                match mkdir(path, dir_mode()) {
                    Ok(()) | Err(Errno::EEXIST) => open(),
                    Err(e) => return Err(dir_error("create", path, e.into())),
                }
            }
            other => other,
        };
        match opened {
            Ok(dir) => Dir {
                dir,
                path: path.to_path_buf(),
            }
            .trusted()
            .map(Some),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
                Err(refused(path, described(link)))
            }
            Err(e) => Err(dir_error("open", path, e.into())),
        }
    }

    /// Directory `name` in this one, never a symlink's target (refused);
    /// made (0700, and its name made durable) when missing and `create`.
    /// `None`: missing. Not checked: see [`Dir::trusted`].
    pub fn sub(&self, name: &str, create: bool) -> Result<Option<Dir>, JournalError> {
        self.at().sub(name, create)
    }

    /// This directory as other threads may open what is in it.
    pub fn at(&self) -> At<'_> {
        At {
            // SAFETY: the descriptor is `self.dir`'s, open while `self`
            // lives, which the borrow outlasts.
            fd: unsafe { BorrowedFd::borrow_raw(self.fd()) },
            path: &self.path,
        }
    }

    /// This directory if only we can change what is in it: ours, and not
    /// writable by group or others.
    pub fn trusted(self) -> Result<Dir, JournalError> {
        let st = fstat(self.fd()).map_err(|e| dir_error("check", &self.path, e.into()))?;
        let euid = effective_uid();
        if st.st_uid != euid {
            return Err(refused(
                &self.path,
                Refusal::Owner {
                    uid: st.st_uid,
                    euid,
                },
            ));
        }
        let mode = st.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(refused(&self.path, Refusal::Writable(mode)));
        }
        Ok(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fd(&self) -> RawFd {
        self.dir.as_raw_fd()
    }

    /// What `name` here is, not following it.
    fn kind(&self, name: &str) -> Kind {
        kind_at(self.fd(), name)
    }

    /// The names here and what each is (not `.`, `..` or names that are
    /// not UTF-8: none of those is ours).
    pub fn list(&mut self) -> Result<Vec<(String, Kind)>, JournalError> {
        let mut names = Vec::new();
        for entry in self.dir.iter() {
            let entry = entry.map_err(|e| dir_error("read", &self.path, e.into()))?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name != "." && name != ".." {
                names.push((name.to_string(), entry.file_type()));
            }
        }
        Ok(names
            .into_iter()
            .map(|(name, t)| {
                let kind = match t {
                    Some(Type::Directory) => Kind::Dir,
                    Some(Type::Symlink) => Kind::Symlink,
                    Some(_) => Kind::Other,
                    None => self.kind(&name),
                };
                (name, kind)
            })
            .collect())
    }

    /// The contents of regular file `name`, never a symlink's target.
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        // O_NONBLOCK: a FIFO planted here must not hang the open.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = openat(Some(self.fd()), name, flags, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP => io::Error::other(Refusal::Symlink.to_string()),
            e => e.into(),
        })?;
        let file = own(fd);
        let st = fstat(fd)?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(io::Error::other("it is not a regular file"));
        }
        // Sized from the one fstat: `File::read_to_end` would stat and
        // seek again (a restore pass reads every entry).
        let size = usize::try_from(st.st_size).unwrap_or(0);
        let mut text = Vec::with_capacity(size + 1);
        file.take(u64::MAX).read_to_end(&mut text)?;
        Ok(text)
    }

    /// Puts `text` in `name` by a rename from a new temp file (`O_EXCL`:
    /// never an existing file or a symlink's target, a taken name is
    /// skipped), so a reader never sees half of it; the temp file goes
    /// when anything fails. `durable`: the data is on disk before the
    /// rename.
    pub fn replace(&self, name: &str, text: &[u8], durable: bool) -> io::Result<()> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        for n in 0..TEMP_TRIES {
            let tmp = temp_name(name, std::process::id(), n);
            let fd = match openat(
                Some(self.fd()),
                tmp.as_str(),
                flags,
                Mode::S_IRUSR | Mode::S_IWUSR,
            ) {
                Err(Errno::EEXIST) => continue,
                opened => opened?,
            };
            let mut file = own(fd);
            let written = file
                .write_all(text)
                .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
                .and_then(|()| self.rename(&tmp, name));
            if written.is_err() {
                let _ = self.remove(&tmp);
            }
            return written;
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("all {TEMP_TRIES} temp names for {name} are taken"),
        ))
    }

    /// Renames `from` to `to` here: either a symlink itself, never its target.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        renameat(Some(self.fd()), from, Some(self.fd()), to).map_err(io::Error::from)
    }

    /// Removes file (or symlink) `name` here, never a symlink's target.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        unlinkat(Some(self.fd()), name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
    }

    /// Removes directory `name` here if it is empty.
    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        unlinkat(Some(self.fd()), name, UnlinkatFlags::RemoveDir).map_err(io::Error::from)
    }

    pub fn sync(&self) -> io::Result<()> {
        fsync(self.fd()).map_err(io::Error::from)
    }
}

/// An open directory's descriptor and path: what [`Dir::sub`] needs,
/// shareable between threads (a `Dir`'s stream is not).
#[derive(Debug, Clone, Copy)]
pub struct At<'d> {
    fd: BorrowedFd<'d>,
    path: &'d Path,
}

impl At<'_> {
    pub fn path(&self) -> &Path {
        self.path
    }

    /// See [`Dir::sub`].
    pub fn sub(&self, name: &str, create: bool) -> Result<Option<Dir>, JournalError> {
        let fd = self.fd.as_raw_fd();
        let path = self.path.join(name);
        let open = || NixDir::openat(Some(fd), name, dir_flags(), Mode::empty());
        let opened = match open() {
            Err(Errno::ENOENT) if create => match mkdirat(Some(fd), name, dir_mode()) {
                Ok(()) => {
                    fsync(fd).map_err(|e| dir_error("create", &path, e.into()))?;
                    open()
                }
                Err(Errno::EEXIST) => open(),
                Err(e) => return Err(dir_error("create", &path, e.into())),
            },
            other => other,
        };
        match opened {
            Ok(dir) => Ok(Some(Dir { dir, path })),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ENOTDIR | Errno::ELOOP) => Err(refused(
                &path,
                described(kind_at(fd, name) == Kind::Symlink),
            )),
            Err(e) => Err(dir_error("open", &path, e.into())),
        }
    }
}

/// What `name` in directory `fd` is, not following it.
fn kind_at(fd: RawFd, name: &str) -> Kind {
    match fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        },
        Err(_) => Kind::Other,
    }
}

fn described(symlink: bool) -> Refusal {
    if symlink {
        Refusal::Symlink
    } else {
        Refusal::NotADirectory
    }
}
