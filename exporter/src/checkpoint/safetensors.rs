//! safetensors files: a JSON header of byte offsets, then the tensors, read in place.

use ::safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::{Contents, DType, ErrorKind, RawTensor};

/// Length of the little-endian u64 that precedes the header.
const HEADER_LEN_BYTES: usize = 8;

pub(super) fn read(map: &[u8]) -> Result<Contents, ErrorKind> {
    let (header_len, metadata) = SafeTensors::read_metadata(map).map_err(classify)?;
    let data_start = HEADER_LEN_BYTES + header_len;
    // Integer tensors are buffers (index tables, counters), never weights.
    let (buffers, weights): (Vec<_>, Vec<_>) =
        metadata.tensors().into_iter().partition(|(_, info)| {
            matches!(
                info.dtype,
                Dtype::BOOL
                    | Dtype::U8
                    | Dtype::I8
                    | Dtype::I16
                    | Dtype::U16
                    | Dtype::I32
                    | Dtype::U32
                    | Dtype::I64
                    | Dtype::U64
            )
        });
    let mut tensors = weights
        .into_iter()
        .map(|(key, info)| {
            let dtype = match info.dtype {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
                other => {
                    return Err(ErrorKind::UnsupportedDtype {
                        key,
                        dtype: other.to_string(),
                    })
                }
            };
            // `read_metadata` has checked the offsets against the shapes and the file length.
            let (start, end) = info.data_offsets;
            Ok(RawTensor {
                key,
                dtype,
                shape: info.shape.clone(),
                bytes: data_start + start..data_start + end,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The header is a hash map: put tensors in file order, as a .pth reader sees them.
    tensors.sort_by(|a, b| (a.bytes.start, &a.key).cmp(&(b.bytes.start, &b.key)));
    Ok(Contents {
        tensors,
        non_tensors: buffers.into_iter().map(|(key, _)| key).collect(),
    })
}

/// A header that does not even parse means the file is not safetensors at all.
fn classify(error: SafeTensorError) -> ErrorKind {
    match error {
        SafeTensorError::HeaderTooSmall
        | SafeTensorError::HeaderTooLarge
        | SafeTensorError::InvalidHeaderLength
        | SafeTensorError::InvalidHeader(_)
        | SafeTensorError::InvalidHeaderDeserialization(_) => ErrorKind::UnknownFormat(error),
        _ => ErrorKind::Safetensors(error),
    }
}
