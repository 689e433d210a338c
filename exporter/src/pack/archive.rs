//! The archive formats a pack is written in: gzipped tar (the pack itself,
//! and a `.deb`'s members) and ar (the `.deb` around them).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

/// A file of an archive.
#[derive(Debug)]
pub(super) struct Entry {
    /// Relative, `/`-separated.
    pub path: String,
    pub mode: u32,
    pub data: Data,
}

/// Where an entry's bytes come from.
#[derive(Debug)]
pub(super) enum Data {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Entry {
    pub fn file(path: impl Into<String>, mode: u32, source: &Path) -> Entry {
        Entry {
            path: path.into(),
            mode,
            data: Data::File(source.to_owned()),
        }
    }

    pub fn bytes(path: impl Into<String>, mode: u32, bytes: impl Into<Vec<u8>>) -> Entry {
        Entry {
            path: path.into(),
            mode,
            data: Data::Bytes(bytes.into()),
        }
    }

    /// Its size in bytes.
    pub fn len(&self) -> Result<u64, ArchiveError> {
        match &self.data {
            Data::File(path) => {
                std::fs::metadata(path)
                    .map(|m| m.len())
                    .map_err(|error| ArchiveError {
                        source_file: Some(path.clone()),
                        error,
                    })
            }
            Data::Bytes(bytes) => Ok(bytes.len() as u64),
        }
    }
}

/// Why writing an archive failed: the file involved, if it was a source.
#[derive(Debug)]
pub(super) struct ArchiveError {
    pub source_file: Option<PathBuf>,
    pub error: io::Error,
}

impl From<io::Error> for ArchiveError {
    fn from(error: io::Error) -> Self {
        ArchiveError {
            source_file: None,
            error,
        }
    }
}

/// Writes groups of entries, each under its prefix (e.g. `tailor-rpi5/`,
/// or empty), as a gzipped tar with a directory entry for every parent, all
/// owned by root. Weights are floats that barely compress, so gzip runs at
/// its fastest.
pub(super) fn tar_gz<W: Write>(
    out: W,
    groups: &[(String, &[Entry])],
    mtime: u64,
) -> Result<W, ArchiveError> {
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::fast()));
    let entries = || {
        groups.iter().flat_map(|(prefix, entries)| {
            entries
                .iter()
                .map(move |e| (format!("{prefix}{}", e.path), e))
        })
    };
    let dirs: BTreeSet<String> = entries()
        .flat_map(|(path, _)| {
            let mut parents = Vec::new();
            let mut rest = path.as_str();
            while let Some((parent, _)) = rest.rsplit_once('/') {
                parents.push(parent.to_owned());
                rest = parent;
            }
            parents
        })
        .collect();
    for dir in &dirs {
        let mut header = header(EntryType::Directory, 0o755, 0, mtime);
        tar.append_data(&mut header, dir, io::empty())?;
    }
    for (path, entry) in entries() {
        let mut header = header(EntryType::Regular, entry.mode, entry.len()?, mtime);
        match &entry.data {
            Data::Bytes(bytes) => tar.append_data(&mut header, &path, bytes.as_slice())?,
            Data::File(source) => {
                let as_source = |error| ArchiveError {
                    source_file: Some(source.clone()),
                    error,
                };
                let mut file = Reading {
                    file: File::open(source).map_err(as_source)?,
                    failed: false,
                };
                // The copy fails on either side: the output's error (a
                // full disk) is not the source's.
                if let Err(error) = tar.append_data(&mut header, &path, &mut file) {
                    return Err(if file.failed {
                        as_source(error)
                    } else {
                        error.into()
                    });
                }
            }
        }
    }
    Ok(tar.into_inner()?.finish()?)
}

/// A source file that remembers whether a read of it failed.
struct Reading {
    file: File,
    failed: bool,
}

impl Read for Reading {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read(buf);
        self.failed |= read.is_err();
        read
    }
}

fn header(kind: EntryType, mode: u32, size: u64, mtime: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    // Names too long for the header fail the append; these are short.
    let _ = header.set_username("root");
    let _ = header.set_groupname("root");
    header
}

/// Writes an ar archive of `members`, each a name, its size and its bytes
/// (a `.deb` is one: `debian-binary`, `control.tar.gz`, `data.tar.gz`).
pub(super) fn ar<W: Write, const N: usize>(
    mut out: W,
    members: [(&str, u64, &mut dyn Read); N],
    mtime: u64,
) -> io::Result<W> {
    out.write_all(b"!<arch>\n")?;
    for (name, len, bytes) in members {
        // name/16, mtime/12, uid/6, gid/6, mode/8 (octal), size/10, then "`\n".
        let header = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8o}{:<10}`\n",
            name, mtime, 0, 0, 0o100644, len
        );
        if header.len() != 60 {
            return Err(io::Error::other(format!(
                "ar member {name} does not fit an ar header"
            )));
        }
        out.write_all(header.as_bytes())?;
        let copied = io::copy(&mut bytes.take(len), &mut out)?;
        if copied != len {
            return Err(io::Error::other(format!(
                "ar member {name} has {copied} bytes, not {len}"
            )));
        }
        // Members start on even offsets.
        if len % 2 == 1 {
            out.write_all(b"\n")?;
        }
    }
    Ok(out)
}
