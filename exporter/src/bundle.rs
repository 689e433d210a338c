//! Writing a bundle: one external-data file per width (the full depth,
//! shared by every depth variant; for SDR every path's pieces), one ONNX
//! graph per sub-network, and the
//! manifest, all in a staged directory swapped into place at the end.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use protobuf::Message;
use tailor_runtime::bundle::{MANIFEST_JSON, MANIFEST_POSTCARD};
use tailor_runtime::fs::{sha256_file, Hasher, StagedDir};
use tailor_runtime::manifest::{self, BundleFile, Manifest, Sha256, Subnet, Teacher};

use crate::checkpoint::TensorRef;
use crate::family::slice::{Computed, TensorCut};
use crate::family::FamilyError;
use crate::onnx::ExternalData;
use crate::plan::{Plan, PlannedSubnet};

/// Graphs live here, relative to the bundle.
pub const GRAPHS_DIR: &str = "graphs";
/// External data lives here, relative to the graphs (ONNX refuses data
/// outside the graph's directory).
pub const WEIGHTS_DIR: &str = "weights";
/// Tensors start at multiples of this, so engines can map them in place.
const ALIGN: u64 = 64;

/// How to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Replace an existing bundle directory.
    pub force: bool,
    /// Widths written at once.
    pub jobs: usize,
}

/// Hears the bytes of each weight tensor as it is written, from every
/// writer thread; the calls add up to [`planned_bytes`].
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub subnets: usize,
    pub files: usize,
    pub bytes: u64,
}

/// Why a bundle could not be written. Nothing is left at the destination.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(PathBuf),
    #[error("writing {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("slicing the teacher")]
    Slice(#[from] FamilyError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The bytes needed to write `plan`, for progress bars and disk checks.
pub fn planned_bytes(plan: &Plan) -> u64 {
    plan.widths()
        .into_iter()
        .map(|w| 4 * plan.family.costs(&plan.family.full_depth(w)).params)
        .sum()
}

/// Writes the bundle for `plan` at `out`, atomically; `progress` hears the
/// weight bytes written.
pub fn write(
    plan: &Plan,
    out: &Path,
    opts: &WriteOptions,
    progress: Progress<'_>,
) -> Result<Summary, BundleError> {
    if out.exists() && !opts.force {
        return Err(BundleError::Exists(out.to_owned()));
    }
    let staging = StagedDir::create(out).map_err(io_err(out))?;
    let graphs = staging.path().join(GRAPHS_DIR);
    fs::create_dir_all(graphs.join(WEIGHTS_DIR)).map_err(io_err(&graphs))?;

    let mut widths = plan.widths();
    // Widest first: the last width a worker takes is then a short one.
    widths.reverse();
    let next = AtomicUsize::new(0);
    let (teacher_sha256, written) = std::thread::scope(|scope| {
        let teacher = scope.spawn(|| sha256_file(plan.teacher()));
        let workers: Vec<_> = (0..opts.jobs.clamp(1, widths.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while let Some(&w) = widths.get(next.fetch_add(1, Ordering::Relaxed)) {
                        done.extend(write_width(plan, w, &graphs, progress)?);
                    }
                    Ok::<_, BundleError>(done)
                })
            })
            .collect();
        let mut written = Vec::new();
        for worker in workers {
            written.extend(worker.join().expect("writer thread panicked")?);
        }
        let hash = teacher
            .join()
            .expect("hash thread panicked")
            .map_err(io_err(plan.teacher()))?;
        Ok::<_, BundleError>((hash, written))
    })?;
    let mut written = written;
    written.sort_by_key(|s: &WrittenSubnet| s.planned.spec);
    write_manifest(plan, teacher_sha256, &written, staging.path())?;
    let files = fs::read_dir(&graphs).map_err(io_err(&graphs))?.count()
        + fs::read_dir(graphs.join(WEIGHTS_DIR))
            .map_err(io_err(&graphs))?
            .count()
        + 1;
    let bytes = dir_bytes(staging.path()).map_err(io_err(staging.path()))?;
    let committed = if opts.force {
        staging.commit()
    } else {
        staging.commit_new()
    };
    committed.map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => BundleError::Exists(out.to_owned()),
        _ => io_err(out)(source),
    })?;
    Ok(Summary {
        subnets: written.len(),
        files,
        bytes,
    })
}

/// A sub-network whose graph is on disk.
struct WrittenSubnet {
    planned: PlannedSubnet,
    onnx_sha256: Sha256,
    weights: WeightRecord,
}

#[derive(Clone)]
struct WeightRecord {
    path: String,
    bytes: u64,
    sha256: Sha256,
}

/// Writes width `w`'s weight file and the graphs of all its depths.
fn write_width(
    plan: &Plan,
    w: u32,
    graphs: &Path,
    progress: Progress<'_>,
) -> Result<Vec<WrittenSubnet>, BundleError> {
    let file_name = format!("w{w}.bin");
    let path = graphs.join(WEIGHTS_DIR).join(&file_name);
    let mut sink = TensorWriter::create(&path).map_err(io_err(&path))?;
    let mut index: HashMap<String, (u64, u64)> = HashMap::new();
    for TensorCut { name, cut } in plan.family.width_slice(w) {
        let tensor = plan
            .checkpoint
            .tensor(&name)
            .ok_or_else(|| FamilyError::Missing {
                name: name.clone(),
                family: plan.family.name(),
            })?;
        sink.align().map_err(io_err(&path))?;
        let offset = sink.written();
        for run in cut.runs() {
            sink.put(&tensor, run, cut.scale()).map_err(io_err(&path))?;
        }
        let length = 4 * cut.elements() as u64;
        progress(length);
        index.insert(name, (offset, length));
    }
    for Computed { name, data, .. } in plan.family.computed(&plan.checkpoint, w)? {
        sink.align().map_err(io_err(&path))?;
        let offset = sink.written();
        sink.put_floats(&data).map_err(io_err(&path))?;
        let length = 4 * data.len() as u64;
        progress(length);
        index.insert(name, (offset, length));
    }
    let (bytes, sha256) = sink.finish().map_err(io_err(&path))?;
    let weights = WeightRecord {
        path: format!("{GRAPHS_DIR}/{WEIGHTS_DIR}/{file_name}"),
        bytes,
        sha256,
    };
    let location = format!("{WEIGHTS_DIR}/{file_name}");
    let locate = |name: &str| {
        let (offset, length) = index[name];
        ExternalData {
            location: location.clone(),
            offset,
            length,
        }
    };
    plan.subnets
        .iter()
        .filter(|s| s.spec.width == w)
        .map(|&planned| {
            let model = plan.family.graph(&planned.spec, &locate);
            let path = graphs.join(format!("{}.onnx", planned.spec.id()));
            let mut sink = HashingWriter::create(&path).map_err(io_err(&path))?;
            model
                .write_to_writer(&mut sink)
                .map_err(|e| BundleError::Io {
                    path: path.clone(),
                    source: io::Error::other(e),
                })?;
            let (_, onnx_sha256) = sink.finish().map_err(io_err(&path))?;
            Ok(WrittenSubnet {
                planned,
                onnx_sha256,
                weights: weights.clone(),
            })
        })
        .collect()
}

fn write_manifest(
    plan: &Plan,
    teacher_sha256: Sha256,
    written: &[WrittenSubnet],
    dir: &Path,
) -> Result<(), BundleError> {
    let ids: Vec<(String, String)> = written
        .iter()
        .map(|s| {
            let id = s.planned.spec.id();
            let onnx = format!("{GRAPHS_DIR}/{id}.onnx");
            (id, onnx)
        })
        .collect();
    let file_name = plan
        .teacher()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Devices decode the manifest into a bounded list.
    if written.len() > manifest::MAX_SUBNETS {
        return Err(too_many(dir, "sub-networks"));
    }
    let mut subnets = Vec::new();
    for (s, (id, onnx)) in written.iter().zip(&ids) {
        let spec = s.planned.spec;
        let mut weights = heapless::Vec::new();
        let _ = weights.push(BundleFile {
            path: &s.weights.path,
            bytes: s.weights.bytes,
            sha256: s.weights.sha256,
        });
        let layout = plan.family.layout(&spec);
        let per_stage = |v: Option<Vec<u32>>| {
            v.map(|v| heapless::Vec::from_slice(&v).map_err(|_| too_many(dir, "stages")))
                .transpose()
        };
        let subnet = Subnet {
            id,
            width: spec.width,
            depth: spec.depths.total(),
            depths: per_stage(layout.depths)?,
            mid_widths: per_stage(layout.mid_widths)?,
            block_idx: heapless::Vec::from_slice(&layout.block_idx)
                .map_err(|_| too_many(dir, "blocks"))?,
            route: layout
                .route
                .map(|r| heapless::Vec::from_slice(&r).map_err(|_| too_many(dir, "SDR blocks")))
                .transpose()?,
            onnx,
            onnx_sha256: s.onnx_sha256,
            weights,
            params: s.planned.costs.params,
            macs: s.planned.costs.macs,
            weight_bytes: 4 * s.planned.costs.params,
            activation_bytes: s.planned.costs.activation_bytes,
            quality: None,
            fidelity: None,
            precision: manifest::Precision::Fp32,
        };
        subnets.push(subnet);
    }
    let m = Manifest {
        format_version: manifest::FORMAT_VERSION,
        teacher: Teacher {
            file: &file_name,
            sha256: teacher_sha256,
            family: plan.family.name(),
            config: plan.family.config(),
        },
        subnets,
        calibration: None,
    };
    let json_path = dir.join(MANIFEST_JSON);
    fs::write(&json_path, m.to_json()).map_err(io_err(&json_path))?;
    let postcard_path = dir.join(MANIFEST_POSTCARD);
    fs::write(&postcard_path, m.to_postcard()).map_err(io_err(&postcard_path))
}

fn too_many(dir: &Path, what: &str) -> BundleError {
    BundleError::Io {
        path: dir.join("manifest.json"),
        source: io::Error::other(format!("too many {what} for one manifest")),
    }
}

/// Floats staged between conversion and the file: small enough that
/// converting, hashing and writing a stage all hit the cache.
const STAGE_FLOATS: usize = 64 * 1024;

/// Writes converted tensors as little-endian f32, hashing as it goes.
struct TensorWriter {
    file: HashingWriter,
    stage: Vec<f32>,
}

impl TensorWriter {
    fn create(path: &Path) -> io::Result<Self> {
        Ok(TensorWriter {
            file: HashingWriter::create(path)?,
            stage: Vec::with_capacity(STAGE_FLOATS),
        })
    }

    /// Bytes written so far, staged ones included.
    fn written(&self) -> u64 {
        self.file.written + 4 * self.stage.len() as u64
    }

    /// Zero-pads to the next multiple of [`ALIGN`].
    fn align(&mut self) -> io::Result<()> {
        let pad = (self.written().next_multiple_of(ALIGN) - self.written()) / 4;
        for _ in 0..pad {
            self.push_zero()?;
        }
        Ok(())
    }

    fn push_zero(&mut self) -> io::Result<()> {
        if self.stage.len() == STAGE_FLOATS {
            self.flush_stage()?;
        }
        self.stage.push(0.0);
        Ok(())
    }

    /// Appends `tensor`'s elements `run`, times `scale`.
    fn put(
        &mut self,
        tensor: &TensorRef<'_>,
        run: std::ops::Range<usize>,
        scale: f32,
    ) -> io::Result<()> {
        let mut start = run.start;
        while start < run.end {
            if self.stage.len() == STAGE_FLOATS {
                self.flush_stage()?;
            }
            let at = self.stage.len();
            let n = (run.end - start).min(STAGE_FLOATS - at);
            self.stage.resize(at + n, 0.0);
            tensor.read_f32(start, scale, &mut self.stage[at..]);
            start += n;
        }
        Ok(())
    }

    /// Appends `data` as is.
    fn put_floats(&mut self, data: &[f32]) -> io::Result<()> {
        for chunk in data.chunks(STAGE_FLOATS) {
            if self.stage.len() + chunk.len() > STAGE_FLOATS {
                self.flush_stage()?;
            }
            self.stage.extend_from_slice(chunk);
        }
        Ok(())
    }

    fn flush_stage(&mut self) -> io::Result<()> {
        let floats = &self.stage[..];
        if cfg!(target_endian = "little") {
            // SAFETY: f32 has no padding and any byte pattern is a valid u8.
            let bytes = unsafe {
                std::slice::from_raw_parts(floats.as_ptr().cast::<u8>(), 4 * floats.len())
            };
            self.file.write_all(bytes)?;
        } else {
            let bytes: Vec<u8> = floats.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.file.write_all(&bytes)?;
        }
        self.stage.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<(u64, Sha256)> {
        self.flush_stage()?;
        self.file.finish()
    }
}

/// A file writer that hashes what it writes.
struct HashingWriter {
    file: BufWriter<File>,
    hasher: Hasher,
    written: u64,
}

impl HashingWriter {
    fn create(path: &Path) -> io::Result<Self> {
        Ok(HashingWriter {
            file: BufWriter::with_capacity(1 << 18, File::create(path)?),
            hasher: Hasher::new(),
            written: 0,
        })
    }

    /// Flushes; [`StagedDir::commit`] syncs the files.
    fn finish(mut self) -> io::Result<(u64, Sha256)> {
        self.file.flush()?;
        Ok((self.written, self.hasher.finish()))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // Hash first, while `data` is still in the cache the writer filled.
        self.hasher.update(data);
        self.file.write_all(data)?;
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
