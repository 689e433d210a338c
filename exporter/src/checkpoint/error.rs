//! Why a checkpoint could not be read; every message names the file.

use std::io;
use std::path::{Path, PathBuf};

use super::pickle::PickleError;

/// A checkpoint that could not be opened, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint {}: {kind}", path.display())]
pub struct CheckpointError {
    path: PathBuf,
    kind: ErrorKind,
}

impl CheckpointError {
    pub(super) fn new(path: &Path, kind: ErrorKind) -> Self {
        CheckpointError {
            path: path.to_owned(),
            kind,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

/// What is wrong with the file.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read: {0}")]
    Io(io::Error),
    #[error("file is empty")]
    Empty,
    #[error("neither a PyTorch zip archive nor a safetensors file (as safetensors: {0})")]
    UnknownFormat(safetensors::SafeTensorError),
    #[error("corrupt or truncated safetensors file: {0}")]
    Safetensors(safetensors::SafeTensorError),
    #[error("corrupt or truncated zip archive: {0}")]
    Zip(zip::result::ZipError),
    #[error("zip entry {entry} runs past the end of the file (truncated?)")]
    EntryOutOfBounds { entry: String },
    #[error("zip entry {entry} is compressed ({method}); torch.save stores entries uncompressed")]
    Compressed { entry: String, method: String },
    #[error("no <archive>/data.pkl entry: not written by torch.save")]
    NoDataPkl,
    #[error("byte order {0:?}: only little-endian checkpoints are supported")]
    ByteOrder(String),
    #[error("{entry}: {source}")]
    Pickle { entry: String, source: PickleError },
    #[error("not a state dict: {0}")]
    NotStateDict(String),
    #[error("tensor {key}: storage entry {entry} is missing")]
    StorageMissing { key: String, entry: String },
    #[error("tensor {key}: needs {needed} bytes of storage entry {entry}, which holds {len}")]
    StorageTooShort {
        key: String,
        entry: String,
        needed: u128,
        len: usize,
    },
    #[error("tensor {key}: dtype {dtype} is not supported (f32, f16 and bf16 are)")]
    UnsupportedDtype { key: String, dtype: String },
    #[error("tensor {key}: not row-major contiguous (shape {shape:?}, stride {stride:?}); save it .contiguous()")]
    NonContiguous {
        key: String,
        shape: Vec<usize>,
        stride: Vec<usize>,
    },
    #[error("keys {first} and {second} both canonicalise to {canonical}")]
    DuplicateName {
        first: String,
        second: String,
        canonical: String,
    },
}
