//! `torch.save` zip archives: `<archive>/data.pkl` describes the tensors, whose bytes are the
//! stored (uncompressed) entries `<archive>/data/<key>`, read in place from the map.

use std::io::Cursor;
use std::ops::Range;

use zip::{CompressionMethod, ZipArchive};

use super::pickle::{self, Tensor, Value};
use super::{Contents, DType, ErrorKind, RawTensor};

/// Top-level keys under which training scripts nest the state dict, in order of preference.
const WRAPPERS: [&str; 3] = ["teacher", "model", "state_dict"];

pub(super) fn read(map: &[u8]) -> Result<Contents, ErrorKind> {
    let mut archive = Archive::new(map)?;
    if let Some(order) = archive.entry("byteorder")? {
        if &map[order.clone()] != b"little" {
            return Err(ErrorKind::ByteOrder(
                String::from_utf8_lossy(&map[order]).into_owned(),
            ));
        }
    }
    let pkl = archive.entry("data.pkl")?.ok_or(ErrorKind::NoDataPkl)?;
    let top = pickle::unpickle(&map[pkl]).map_err(|source| ErrorKind::Pickle {
        entry: archive.name("data.pkl"),
        source,
    })?;
    let mut contents = Contents {
        tensors: Vec::new(),
        non_tensors: Vec::new(),
    };
    for (key, value) in state_dict(top)? {
        let Value::Str(key) = key else {
            return Err(ErrorKind::NotStateDict(format!(
                "a dict with a {} key",
                key.kind()
            )));
        };
        match value {
            Value::Tensor(tensor) if !is_integer(tensor.dtype) => {
                contents.tensors.push(archive.locate(key, tensor)?)
            }
            _ => contents.non_tensors.push(key),
        }
    }
    if contents.tensors.is_empty() {
        return Err(ErrorKind::NotStateDict("a dict without tensors".into()));
    }
    Ok(contents)
}

/// The state dict: the dict under a wrapper key such as `teacher`, else the top level itself.
fn state_dict(top: Value) -> Result<Vec<(Value, Value)>, ErrorKind> {
    let Value::Dict(mut top) = top else {
        return Err(ErrorKind::NotStateDict(format!(
            "the pickle holds a {}, not a dict of tensors",
            top.kind()
        )));
    };
    for wrapper in WRAPPERS {
        let nested = top.iter_mut().find_map(|(key, value)| match (key, value) {
            (Value::Str(key), Value::Dict(nested)) if key == wrapper => Some(nested),
            _ => None,
        });
        if let Some(nested) = nested {
            return Ok(std::mem::take(nested));
        }
    }
    Ok(top)
}

/// The zip directory of a mapped archive, used only to find where entries lie.
struct Archive<'a> {
    zip: ZipArchive<Cursor<&'a [u8]>>,
    /// `<archive>/`: torch names the top folder after the file it first saved to.
    prefix: String,
    len: usize,
}

impl<'a> Archive<'a> {
    fn new(map: &'a [u8]) -> Result<Self, ErrorKind> {
        let zip = ZipArchive::new(Cursor::new(map)).map_err(ErrorKind::Zip)?;
        let prefix = zip
            .file_names()
            .find_map(|name| {
                let folder = name.strip_suffix("/data.pkl")?;
                (!folder.contains('/')).then(|| format!("{folder}/"))
            })
            .ok_or(ErrorKind::NoDataPkl)?;
        Ok(Archive {
            zip,
            prefix,
            len: map.len(),
        })
    }

    fn name(&self, entry: &str) -> String {
        format!("{}{entry}", self.prefix)
    }

    /// The bytes of `<archive>/<entry>` within the map, if there is such an entry.
    fn entry(&mut self, entry: &str) -> Result<Option<Range<usize>>, ErrorKind> {
        let name = self.name(entry);
        let Some(index) = self.zip.index_for_name(&name) else {
            return Ok(None);
        };
        let file = self.zip.by_index_raw(index).map_err(ErrorKind::Zip)?;
        if file.compression() != CompressionMethod::Stored {
            return Err(ErrorKind::Compressed {
                entry: name,
                method: file.compression().to_string(),
            });
        }
        let start = usize::try_from(file.data_start()).ok();
        let size = usize::try_from(file.size()).ok();
        match start
            .zip(size)
            .and_then(|(start, size)| Some(start..start.checked_add(size)?))
        {
            Some(range) if range.end <= self.len => Ok(Some(range)),
            _ => Err(ErrorKind::EntryOutOfBounds { entry: name }),
        }
    }

    /// Checks a tensor against its storage entry and finds its bytes.
    fn locate(&mut self, key: String, tensor: Tensor) -> Result<RawTensor, ErrorKind> {
        let Some(dtype) = dtype(tensor.dtype) else {
            return Err(ErrorKind::UnsupportedDtype {
                key,
                dtype: tensor.dtype.into(),
            });
        };
        if !is_contiguous(&tensor.shape, &tensor.stride) {
            return Err(ErrorKind::NonContiguous {
                key,
                shape: tensor.shape,
                stride: tensor.stride,
            });
        }
        let entry = format!("data/{}", tensor.storage_key);
        let Some(storage) = self.entry(&entry)? else {
            return Err(ErrorKind::StorageMissing {
                key,
                entry: self.name(&entry),
            });
        };
        // In u128 so that no shape in a pickle can overflow the arithmetic.
        let size = dtype.size() as u128;
        let offset = tensor.storage_offset as u128 * size;
        let end = tensor
            .shape
            .iter()
            .try_fold(1u128, |numel, &dim| numel.checked_mul(dim as u128))
            .and_then(|numel| numel.checked_mul(size)?.checked_add(offset))
            .unwrap_or(u128::MAX);
        if end > storage.len() as u128 {
            return Err(ErrorKind::StorageTooShort {
                key,
                entry: self.name(&entry),
                needed: end,
                len: storage.len(),
            });
        }
        // Both fit: they are at most the storage's length.
        let bytes = storage.start + offset as usize..storage.start + end as usize;
        Ok(RawTensor {
            key,
            dtype,
            shape: tensor.shape,
            bytes,
        })
    }
}

/// torch dtype names of the element types a teacher may use.
/// Integer tensors are buffers (index tables such as Swin's
/// `relative_position_index`, counters), never weights: they are ignored.
fn is_integer(torch: &str) -> bool {
    torch == "bool" || torch.starts_with("int") || torch.starts_with("uint")
}

fn dtype(torch: &str) -> Option<DType> {
    match torch {
        "float32" => Some(DType::F32),
        "float16" => Some(DType::F16),
        "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}

/// Row-major contiguous as torch defines it: size-1 dimensions may have any stride, and an
/// empty tensor is contiguous.
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut expected = 1usize;
    for (&size, &stride) in shape.iter().zip(stride).rev() {
        if size != 1 && stride != expected {
            return false;
        }
        expected = expected.saturating_mul(size);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::is_contiguous;

    #[test]
    fn contiguity_follows_torch() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[], &[]));
        assert!(!is_contiguous(&[3, 2], &[1, 3]), "a transpose");
        assert!(!is_contiguous(&[2, 2], &[4, 1]), "every other row");
        assert!(
            is_contiguous(&[1, 4], &[99, 1]),
            "size-1 dims may have any stride"
        );
        assert!(is_contiguous(&[0, 4], &[1, 7]), "empty tensors");
    }
}
