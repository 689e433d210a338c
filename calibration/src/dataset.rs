//! Calibration datasets: an image folder (one sub-folder per class, or
//! `train/` and `val/` each holding them, or just images) or an `.npz` of
//! `images` and `labels`, decoded once into memory with their identity.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tailor_runtime::fs::{sha256, Hasher};
use tailor_runtime::image::{Format, Image};
use tailor_runtime::manifest::Sha256;

use crate::npz::{self, Elements};

/// Share of the images k-NN uses as its memory when the data has no split.
const TRAIN_PERCENT: usize = 80;

/// A decoded dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Every image, in a fixed order (sorted paths, or the array's order).
    pub images: Vec<Image>,
    /// Class per image and the k-NN split; `None` for label-free calibration.
    pub labels: Option<Labels>,
    /// sha256 of the dataset's bytes.
    pub sha256: Sha256,
    /// Bytes read: the `.npz` file, or the sum of the image files.
    pub bytes: u64,
}

/// Classes of a labelled dataset and the split k-NN is evaluated on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// Class index per image.
    pub class: Vec<u32>,
    /// Class names (folder names, or the label values of an `.npz`).
    pub names: Vec<String>,
    /// Indices of the k-NN memory (train) and of the images it classifies (val).
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// How to read a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Read the labels (false: label-free, even when the data has labels).
    pub labels: bool,
    /// Seeds the 80/20 split of data without `train/` and `val/`.
    pub seed: u64,
    /// Keep only the first images (array order, or sorted paths): a quick
    /// look at a large set. The sha256 still covers the whole dataset.
    pub limit: Option<usize>,
}

/// Why a dataset cannot be used. Each names the file or folder at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{0}: no images (PNG or JPEG) found")]
    Empty(PathBuf),
    #[error("{path}: only one class (`{class}`); k-NN accuracy needs two or more (pass --no-labels to score fidelity without labels)")]
    OneClass { path: PathBuf, class: String },
    #[error("{path}: {train} train and {val} val images; k-NN needs at least one of each")]
    Split {
        path: PathBuf,
        train: usize,
        val: usize,
    },
    #[error("{path}: {message}")]
    Npz { path: PathBuf, message: String },
    #[error("{0}: val/ has class `{1}`, which train/ does not")]
    UnknownValClass(PathBuf, String),
}

impl Dataset {
    /// Reads the folder or `.npz` at `path`.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Dataset, DatasetError> {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let mut read = if meta.is_dir() {
            load_folder(path, opts)?
        } else {
            load_npz(path, opts)?
        };
        let n = opts
            .limit
            .map_or(read.images.len(), |n| n.min(read.images.len()));
        read.images.truncate(n);
        if n == 0 {
            return Err(DatasetError::Empty(path.to_owned()));
        }
        let labels = match read.classes {
            Some(Classes { mut class, names }) => {
                if names.len() < 2 {
                    return Err(DatasetError::OneClass {
                        path: path.to_owned(),
                        class: names.first().cloned().unwrap_or_default(),
                    });
                }
                class.truncate(n);
                let (train, val) = match read.train_count {
                    Some(t) => ((0..t.min(n)).collect(), (t.min(n)..n).collect()),
                    None => split(n, opts.seed),
                };
                if train.is_empty() || val.is_empty() {
                    return Err(DatasetError::Split {
                        path: path.to_owned(),
                        train: train.len(),
                        val: val.len(),
                    });
                }
                Some(Labels {
                    class,
                    names,
                    train,
                    val,
                })
            }
            None => None,
        };
        Ok(Dataset {
            images: read.images,
            labels,
            sha256: read.sha256,
            bytes: read.bytes,
        })
    }
}

/// What a loader read, before the limit and the split.
struct Read {
    images: Vec<Image>,
    /// `None`: label-free.
    classes: Option<Classes>,
    /// With the user's split: the first this many images are train/'s.
    train_count: Option<usize>,
    sha256: Sha256,
    bytes: u64,
}

/// A class index per image and the class names.
#[derive(Debug)]
struct Classes {
    class: Vec<u32>,
    names: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A seeded shuffle of `0..n` cut at [`TRAIN_PERCENT`].
pub(crate) fn split(n: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed;
    // Fisher-Yates driven by splitmix64: the same split on every platform.
    for i in (1..n).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        order.swap(i, (z % (i as u64 + 1)) as usize);
    }
    let val = order.split_off((n * TRAIN_PERCENT).div_ceil(100).min(n));
    (order, val)
}

/// Images found in a folder, with the class (sub-folder) of each.
type Found = Vec<(PathBuf, Option<String>)>;

fn load_folder(root: &Path, opts: LoadOptions) -> Result<Read, DatasetError> {
    let (train, val) = (root.join("train"), root.join("val"));
    let has_split = train.is_dir() && val.is_dir();
    let mut found = Found::new();
    let mut train_count = None;
    if has_split {
        collect(&train, &mut found)?;
        train_count = Some(found.len());
        collect(&val, &mut found)?;
    } else {
        collect(root, &mut found)?;
    }
    let mut hasher = Hasher::new();
    let mut bytes = 0;
    let mut images = Vec::with_capacity(found.len());
    for (file, _) in &found {
        let encoded = fs::read(file).map_err(io_err(file))?;
        // The path relative to the root, so a moved folder keeps its hash.
        let relative = file.strip_prefix(root).unwrap_or(file);
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update((encoded.len() as u64).to_le_bytes());
        hasher.update(&encoded);
        bytes += encoded.len() as u64;
        images.push(decode(file, &encoded)?);
    }
    // Labelled when asked for and every image sits in a class folder.
    let classes: Option<Vec<&str>> = found.iter().map(|(_, c)| c.as_deref()).collect();
    let classes = match classes {
        Some(classes) if opts.labels => Some(folder_classes(&classes, train_count, &val)?),
        _ => None,
    };
    Ok(Read {
        images,
        classes,
        train_count,
        sha256: hasher.finish(),
        bytes,
    })
}

/// Class indices from class names; with a `train/`+`val/` split (the first
/// `train_count` images are train/'s) the classes are train/'s.
fn folder_classes(
    classes: &[&str],
    train_count: Option<usize>,
    val_dir: &Path,
) -> Result<Classes, DatasetError> {
    let mut names: Vec<String> = classes[..train_count.unwrap_or(classes.len())]
        .iter()
        .map(|c| c.to_string())
        .collect();
    names.sort();
    names.dedup();
    let class = classes
        .iter()
        .map(|c| {
            names
                .binary_search_by(|n| n.as_str().cmp(c))
                .map(|i| i as u32)
                .map_err(|_| DatasetError::UnknownValClass(val_dir.to_owned(), c.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Classes { class, names })
}

/// Adds the images of `dir`: its own files (no class) and those of each
/// sub-folder (class = the sub-folder's name), sorted.
fn collect(dir: &Path, found: &mut Found) -> Result<(), DatasetError> {
    for entry in sorted_entries(dir)? {
        if entry.is_dir() {
            let class = entry.file_name().map(|n| n.to_string_lossy().into_owned());
            for file in sorted_entries(&entry)? {
                if format_of(&file).is_some() {
                    found.push((file, class.clone()));
                }
            }
        } else if format_of(&entry).is_some() {
            found.push((entry, None));
        }
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut entries = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(dir))?;
    entries.sort();
    Ok(entries)
}

fn format_of(path: &Path) -> Option<Format> {
    let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
    match ext.as_str() {
        "png" => Some(Format::Png),
        "jpg" | "jpeg" => Some(Format::Jpeg),
        _ => None,
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Image, DatasetError> {
    let format = format_of(path).expect("collected by extension");
    Image::decode(bytes, format).map_err(|e| DatasetError::Image {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn load_npz(path: &Path, opts: LoadOptions) -> Result<Read, DatasetError> {
    let fail = |message: String| DatasetError::Npz {
        path: path.to_owned(),
        message,
    };
    let bytes = fs::read(path).map_err(io_err(path))?;
    let arrays = npz::read(&bytes).map_err(fail)?;
    let images = arrays.get("images").ok_or_else(|| {
        fail("no `images` array (expected uint8 [N, H, W] or [N, H, W, 3])".into())
    })?;
    let Elements::U8(pixels) = &images.data else {
        return Err(fail(format!(
            "`images` must be uint8, not {}",
            images.dtype
        )));
    };
    let (n, h, w, channels) = match images.shape[..] {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, c @ (1 | 3)] => (n, h, w, c),
        ref shape => {
            return Err(fail(format!(
                "`images` has shape {shape:?}; expected [N, H, W] (grey) or [N, H, W, 3] (RGB)"
            )))
        }
    };
    let per_image = h * w * channels;
    let images = pixels
        .chunks_exact(per_image.max(1))
        .take(n)
        .map(|p| Image::new(p.to_vec(), w, h, channels))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("`images`: {e}")))?;
    let classes = match arrays.get("labels") {
        Some(labels) if opts.labels => {
            let values = labels
                .to_ints()
                .ok_or_else(|| fail(format!("`labels` must be integers, not {}", labels.dtype)))?;
            if labels.shape != [n] {
                return Err(fail(format!(
                    "`labels` has shape {:?} but `images` holds {n} images: expected [{n}]",
                    labels.shape
                )));
            }
            Some(npz_classes(&values).map_err(fail)?)
        }
        _ => None,
    };
    Ok(Read {
        images,
        classes,
        train_count: None,
        sha256: sha256(&bytes),
        bytes: bytes.len() as u64,
    })
}

/// Labels of an `.npz` as class indices (distinct values, ascending).
fn npz_classes(values: &[i64]) -> Result<Classes, String> {
    if let Some(v) = values.iter().find(|v| **v < 0) {
        return Err(format!("`labels` holds {v}; labels must be non-negative"));
    }
    let mut distinct = values.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let class = values
        .iter()
        .filter_map(|v| distinct.binary_search(v).ok())
        .map(|i| i as u32)
        .collect();
    Ok(Classes {
        class,
        names: distinct.iter().map(i64::to_string).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_seeded_disjoint_and_four_to_one() {
        let (train, val) = split(100, 7);
        assert_eq!((train.len(), val.len()), (80, 20));
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split(100, 7), (train.clone(), val));
        assert_ne!(split(100, 8).0, train, "the seed changes the split");
        assert_ne!(train, (0..80).collect::<Vec<_>>(), "shuffled");
    }

    #[test]
    fn npz_labels_become_dense_classes() {
        let l = npz_classes(&[7, 3, 7, 9]).unwrap();
        assert_eq!(l.class, [1, 0, 1, 2]);
        assert_eq!(l.names, ["3", "7", "9"]);
        assert!(npz_classes(&[1, -2]).unwrap_err().contains("-2"));
    }
}
