//! Where a graph's stored tensors lie in a width's weight file, and the
//! derived files (`w<W>.int8.bin`, `w<W>.fp16.bin`) built beside it: what
//! the int8 and fp16 rewrites share.

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{StringStringEntryProto, TensorProto};

use super::QuantError;
use crate::onnx::ExternalData;

/// Tensors start at this boundary, as in the fp32 file.
const ALIGN: usize = 64;

/// Where a tensor lies in the fp32 file: its identity across graphs, which
/// may name it differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Extent {
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    /// The extent's bytes in `fp32`, the width's file; `tensor` names it in errors.
    pub fn read<'f>(
        self,
        fp32: &'f [u8],
        location: &str,
        tensor: &str,
    ) -> Result<&'f [u8], QuantError> {
        usize::try_from(self.offset)
            .ok()
            .zip(usize::try_from(self.offset + self.length).ok())
            .and_then(|(start, end)| fp32.get(start..end))
            .ok_or_else(|| QuantError::ExternalData {
                graph: location.to_owned(),
                tensor: tensor.to_owned(),
                problem: format!(
                    "bytes {}..+{} are beyond the fp32 file's {}",
                    self.offset,
                    self.length,
                    fp32.len()
                ),
            })
    }
}

/// A weight file being written: each tensor appended at the next aligned offset.
#[derive(Debug)]
pub(super) struct FileBuilder {
    location: String,
    pub bytes: Vec<u8>,
}

impl FileBuilder {
    pub fn new(location: &str) -> Self {
        FileBuilder {
            location: location.to_owned(),
            bytes: Vec::new(),
        }
    }

    /// Appends `data` and says where it lies.
    pub fn put(&mut self, data: &[u8]) -> ExternalData {
        self.bytes
            .resize(self.bytes.len().next_multiple_of(ALIGN), 0);
        let offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(data);
        ExternalData {
            location: self.location.clone(),
            offset,
            length: data.len() as u64,
        }
    }
}

/// `t`'s shape, negative (symbolic) dimensions read as 0.
pub(super) fn dims(t: &TensorProto) -> Vec<usize> {
    t.dims.iter().map(|&d| d.max(0) as usize).collect()
}

/// Where float tensor `t` of graph `id` lies in the width's fp32 file at `location`.
pub(super) fn extent(id: &str, t: &TensorProto, location: &str) -> Result<Extent, QuantError> {
    let problem = |problem: String| QuantError::ExternalData {
        graph: id.to_owned(),
        tensor: t.name.clone(),
        problem,
    };
    if t.data_type != DataType::FLOAT as i32 {
        return Err(QuantError::NotFloat {
            graph: id.to_owned(),
            tensor: t.name.clone(),
            found: t.data_type,
        });
    }
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let found = entry("location").unwrap_or_default();
    if found != location {
        return Err(QuantError::Location {
            graph: id.to_owned(),
            tensor: t.name.clone(),
            location: found.to_owned(),
            expected: location.to_owned(),
        });
    }
    let number = |key: &str| -> Result<Option<u64>, QuantError> {
        entry(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| problem(format!("{key} `{v}` is not a number")))
            })
            .transpose()
    };
    let elements: usize = dims(t).iter().product();
    let bytes = 4 * elements as u64;
    let length = number("length")?.unwrap_or(bytes);
    if length != bytes {
        return Err(problem(format!("length {length} for {elements} floats")));
    }
    Ok(Extent {
        offset: number("offset")?.unwrap_or(0),
        length,
    })
}

/// `t` renamed `name`, of type `data_type` and shape `dims`, at `place`.
pub(super) fn relocated(
    t: &TensorProto,
    name: &str,
    data_type: DataType,
    dims: &[i64],
    place: &ExternalData,
) -> TensorProto {
    let mut r = t.clone();
    r.name = name.to_owned();
    r.data_type = data_type as i32;
    r.dims = dims.to_vec();
    r.external_data = vec![
        entry("location", place.location.clone()),
        entry("offset", place.offset.to_string()),
        entry("length", place.length.to_string()),
    ];
    r
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.to_owned(),
        value,
        ..StringStringEntryProto::default()
    }
}
