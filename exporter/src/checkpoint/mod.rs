//! Teacher checkpoint readers: PyTorch `.pth` archives and safetensors files, mapped (never
//! copied) and indexed by canonical tensor name.

mod error;
mod names;
mod pickle;
mod pth;
mod safetensors;
mod tensor;
#[cfg(test)]
mod tests;

use std::collections::btree_map::{BTreeMap, Entry as Slot};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use error::{CheckpointError, ErrorKind};
pub use names::canonical_name;
/// The unpickler alone, for the `pickle` fuzz target (`cargo fuzz` builds with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub use pickle::unpickle;
pub use tensor::{bf16_to_f32, f16_to_f32, DType, TensorRef};

/// The container a checkpoint was found to be, by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A `torch.save` zip archive.
    Pth,
    Safetensors,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Pth => "PyTorch .pth",
            Format::Safetensors => "safetensors",
        })
    }
}

/// A mapped teacher checkpoint whose tensors are found by canonical name.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    map: Mmap,
    tensors: BTreeMap<String, Stored>,
    ignored: Vec<String>,
}

/// Where a tensor's bytes lie in the map; `bytes` spans exactly its elements.
#[derive(Debug)]
struct Stored {
    dtype: DType,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

/// A tensor as a format reader found it, under its original key.
struct RawTensor {
    key: String,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

/// What a format reader found: tensors in file order, and the keys of non-tensor values.
struct Contents {
    tensors: Vec<RawTensor>,
    non_tensors: Vec<String>,
}

impl Checkpoint {
    /// Opens by content (zip magic => PyTorch .pth; otherwise safetensors), not by extension.
    pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let fail = |kind| CheckpointError::new(path, kind);
        let file = File::open(path).map_err(|e| fail(ErrorKind::Io(e)))?;
        let len = file.metadata().map_err(|e| fail(ErrorKind::Io(e)))?.len();
        if len == 0 {
            return Err(fail(ErrorKind::Empty));
        }
        // SAFETY: the map is read-only; like every mmap reader we assume nobody truncates
        // or rewrites the checkpoint while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| fail(ErrorKind::Io(e)))?;
        let (format, contents) = if map.starts_with(b"PK\x03\x04") {
            (Format::Pth, pth::read(&map))
        } else {
            (Format::Safetensors, safetensors::read(&map))
        };
        let (tensors, ignored) = index(contents.map_err(fail)?).map_err(fail)?;
        Ok(Checkpoint {
            path: path.to_owned(),
            format,
            map,
            tensors,
            ignored,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The tensor with this canonical name (see [`canonical_name`]).
    pub fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        let (name, stored) = self.tensors.get_key_value(name)?;
        Some(TensorRef::new(
            name,
            stored.dtype,
            &stored.shape,
            &self.map[stored.bytes.clone()],
        ))
    }

    /// Canonical names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Original keys dropped (training heads, non-tensors), sorted.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }
}

/// Canonicalises names, drops training heads, and refuses two keys with one name.
fn index(contents: Contents) -> Result<(BTreeMap<String, Stored>, Vec<String>), ErrorKind> {
    let mut ignored = contents.non_tensors;
    let mut named: BTreeMap<String, (String, Stored)> = BTreeMap::new();
    for RawTensor {
        key,
        dtype,
        shape,
        bytes,
    } in contents.tensors
    {
        let Some(canonical) = canonical_name(&key) else {
            ignored.push(key);
            continue;
        };
        match named.entry(canonical) {
            Slot::Vacant(slot) => {
                slot.insert((
                    key,
                    Stored {
                        dtype,
                        shape,
                        bytes,
                    },
                ));
            }
            Slot::Occupied(slot) => {
                let first = slot.get().0.clone();
                return Err(ErrorKind::DuplicateName {
                    first,
                    second: key,
                    canonical: slot.key().clone(),
                });
            }
        }
    }
    ignored.sort();
    let tensors = named
        .into_iter()
        .map(|(name, (_, stored))| (name, stored))
        .collect();
    Ok((tensors, ignored))
}
