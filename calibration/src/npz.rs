//! Reading and writing numpy's `.npz` archives: a zip of `.npy` arrays,
//! stored (`np.savez`) or deflated (`np.savez_compressed`). Datasets read
//! integer arrays, head files float arrays; both little-endian, C order.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

use ndarray::{ArrayD, Dimension, IxDyn};
use tailor_runtime::fs::StagedFile;

/// numpy's own limit on a `.npy` header (`max_header_size`): longer ones are refused unread.
pub const MAX_HEADER: usize = 10_000;

/// An array read from an `.npy` member.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    /// numpy's dtype string, e.g. `<f4`, for error messages.
    pub dtype: String,
    pub data: Elements,
}

/// An array's elements, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    /// `uint8`, kept as bytes (images).
    U8(Vec<u8>),
    /// Any other integer type, widened (labels).
    Int(Vec<i64>),
    /// `float32` or `float64`, widened (head weights, features).
    Float(Vec<f64>),
}

impl Array {
    /// The elements as signed integers, whatever their width; `None` for
    /// floats.
    pub fn to_ints(&self) -> Option<Vec<i64>> {
        match &self.data {
            Elements::U8(v) => Some(v.iter().map(|&b| i64::from(b)).collect()),
            Elements::Int(v) => Some(v.clone()),
            Elements::Float(_) => None,
        }
    }

    /// A float array of `D`'s dimensions; the problem in one sentence
    /// otherwise (another dtype, another number of dimensions).
    pub fn to_floats<D: Dimension>(&self) -> Result<ndarray::Array<f64, D>, String> {
        let Elements::Float(values) = &self.data else {
            return Err(format!("is {}; expected float32 or float64", self.dtype));
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape), values.clone())
            .expect("the parser checked the length")
            .into_dimensionality()
            .map_err(|_| {
                format!(
                    "has shape {:?}; expected {} dimensions",
                    self.shape,
                    D::NDIM.unwrap_or_default()
                )
            })
    }
}

/// A float type stored little-endian, as `.npy` and `.safetensors` hold
/// them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Float {
    F32,
    F64,
}

impl Float {
    /// The values in `bytes` (whole values only), widened to f64.
    pub(crate) fn widen(self, bytes: &[u8]) -> Vec<f64> {
        match self {
            Float::F32 => bytes
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))))
                .collect(),
            Float::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        }
    }
}

/// A member to write: little-endian f32 or i64 in C order.
pub enum Member<'a> {
    F32 { shape: &'a [usize], data: &'a [f32] },
    I64 { shape: &'a [usize], data: &'a [i64] },
}

/// Writes an uncompressed `.npz` that `numpy.load` reads, whole or not at
/// all.
pub fn write(path: &Path, members: &[(&str, Member<'_>)]) -> std::io::Result<()> {
    let mut zip = zip::ZipWriter::new(StagedFile::create(path)?);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, member) in members {
        zip.start_file(format!("{name}.npy"), stored)?;
        let (descr, shape, bytes): (_, _, Vec<u8>) = match member {
            Member::F32 { shape, data } => (
                "<f4",
                shape,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            Member::I64 { shape, data } => (
                "<i8",
                shape,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        };
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // numpy pads the header so the data starts at a multiple of 64.
        let unpadded = 10 + header.len() + 1;
        header.extend(std::iter::repeat_n(
            ' ',
            unpadded.next_multiple_of(64) - unpadded,
        ));
        header.push('\n');
        zip.write_all(b"\x93NUMPY\x01\x00")?;
        zip.write_all(&(header.len() as u16).to_le_bytes())?;
        zip.write_all(header.as_bytes())?;
        zip.write_all(&bytes)?;
    }
    zip.finish()?.commit()
}

/// Reads every member of an archive's bytes (numpy names them `NAME.npy`;
/// the map is keyed by `NAME`). Errors are one sentence naming the member.
pub fn read(bytes: &[u8]) -> Result<HashMap<String, Array>, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not an .npz (zip) archive: {e}"))?;
    let mut arrays = HashMap::new();
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(|e| e.to_string())?;
        let name = member.name().to_owned();
        let fail = |e: String| format!("member {name}: {e}");
        // The zip header's sizes are claims: nothing is reserved from them, and a member is
        // read only as far as its .npy header declares (one byte more shows a longer one),
        // so memory follows the bytes the archive really inflates to, never a deflate bomb.
        let mut bytes = Vec::new();
        let mut read = |bytes: &mut Vec<u8>, len: usize| {
            (&mut member)
                .take(len.saturating_sub(bytes.len()) as u64)
                .read_to_end(bytes)
                .map_err(|e| fail(e.to_string()))
        };
        read(&mut bytes, PREAMBLE + MAX_HEADER)?;
        let len = parse_header(&bytes).map(|h| h.data_start + h.data_len);
        read(&mut bytes, len.map_err(fail)? + 1)?;
        let array = parse_npy(&bytes).map_err(fail)?;
        arrays.insert(name.trim_end_matches(".npy").to_owned(), array);
    }
    Ok(arrays)
}

/// Magic, version and header length of a version 2 or 3 `.npy`.
const PREAMBLE: usize = 12;

/// What a `.npy` header declares.
struct Header<'a> {
    fortran: bool,
    shape: Vec<usize>,
    descr: &'a str,
    /// `i`, `u` or `f`.
    kind: u8,
    /// Bytes per element.
    size: usize,
    data_start: usize,
    /// Bytes the shape and dtype need.
    data_len: usize,
}

/// Parses one `.npy` file (format versions 1 to 3).
fn parse_npy(bytes: &[u8]) -> Result<Array, String> {
    let Header {
        fortran,
        shape,
        descr,
        kind,
        size,
        data_start,
        data_len,
    } = parse_header(bytes)?;
    let data = &bytes[data_start..];
    if data.len() != data_len {
        return Err(format!(
            "shape {shape:?} of {descr} needs {data_len} bytes, the array has {}",
            data.len()
        ));
    }
    let elements = match (kind, size) {
        (b'u', 1) => Elements::U8(data.to_vec()),
        (b'f', 4) => Elements::Float(Float::F32.widen(data)),
        (b'f', _) => Elements::Float(Float::F64.widen(data)),
        _ => Elements::Int(
            data.chunks_exact(size)
                .map(|c| {
                    let mut le = [0u8; 8];
                    le[..size].copy_from_slice(c);
                    let negative = kind == b'i' && c[size - 1] & 0x80 != 0;
                    if negative {
                        le[size..].fill(0xff);
                    }
                    i64::from_le_bytes(le)
                })
                .collect(),
        ),
    };
    let data = match elements {
        _ if !fortran => elements,
        Elements::U8(v) => Elements::U8(c_order(&shape, v)),
        Elements::Int(v) => Elements::Int(c_order(&shape, v)),
        Elements::Float(v) => Elements::Float(c_order(&shape, v)),
    };
    Ok(Array {
        shape,
        dtype: descr.to_owned(),
        data,
    })
}

/// Parses a `.npy` header (format versions 1 to 3); `bytes` may stop anywhere after it.
fn parse_header(bytes: &[u8]) -> Result<Header<'_>, String> {
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or("not a .npy array (no \\x93NUMPY magic)")?;
    let (header_len, rest) = match rest {
        [1, _, a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        [2 | 3, _, a, b, c, d, rest @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]) as usize, rest),
        _ => return Err("unknown .npy format version".into()),
    };
    if header_len > MAX_HEADER {
        return Err(format!(
            "a .npy header of {header_len} bytes is longer than numpy's limit of {MAX_HEADER}"
        ));
    }
    let data_start = bytes.len() - rest.len() + header_len;
    let header = rest
        .get(..header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    let fortran = match field(header, "fortran_order")? {
        "False" => false,
        "True" => true,
        other => return Err(format!("fortran_order is {other}")),
    };
    let shape = parse_shape(field(header, "shape")?)?;
    let descr = field(header, "descr")?.trim_matches(['\'', '"']);
    let (order, kind, size) = match descr.as_bytes() {
        [o @ (b'<' | b'|' | b'='), k @ (b'i' | b'u'), s @ (b'1' | b'2' | b'4' | b'8')]
        | [o @ (b'<' | b'='), k @ b'f', s @ (b'4' | b'8')] => (*o, *k, usize::from(s - b'0')),
        _ => {
            return Err(format!(
                "dtype {descr} is not a little-endian integer, float32 or float64 type"
            ))
        }
    };
    if order == b'=' && cfg!(target_endian = "big") {
        return Err(format!("dtype {descr} is big-endian on this machine"));
    }
    // Checked, and within what ndarray can index: a wrapped product would pass the length
    // check and leave an array whose shape does not fit its elements.
    let data_len = shape
        .iter()
        .try_fold(size, |bytes, &dim| bytes.checked_mul(dim.max(1)))
        .filter(|&bytes| isize::try_from(bytes).is_ok())
        .ok_or_else(|| format!("shape {shape:?} of {descr} is larger than any array"))?;
    Ok(Header {
        fortran,
        data_len: if shape.contains(&0) { 0 } else { data_len },
        shape,
        descr,
        kind,
        size,
        data_start,
    })
}

/// Fortran-ordered `values` of `shape` in C order (numpy saves a
/// transposed array as it lies in memory).
fn c_order<T: Clone>(shape: &[usize], values: Vec<T>) -> Vec<T> {
    let reversed: Vec<usize> = shape.iter().rev().copied().collect();
    ArrayD::from_shape_vec(IxDyn(&reversed), values)
        .expect("the parser checked the length")
        .reversed_axes()
        .iter()
        .cloned()
        .collect()
}

/// The text of `'key': VALUE` in a header dict, up to the next top-level comma.
fn field<'h>(header: &'h str, key: &str) -> Result<&'h str, String> {
    let missing = || format!("the .npy header has no `{key}`");
    let at = header.find(&format!("'{key}'")).ok_or_else(missing)?;
    let value = header[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')
        .ok_or_else(missing)?
        .trim_start();
    let end = if value.starts_with('(') {
        value.find(')').map(|i| i + 1)
    } else {
        value.find([',', '}'])
    };
    Ok(value[..end.ok_or_else(missing)?].trim())
}

/// `(1000, 28, 28)` or `(1000,)`.
fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    text.trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape {text}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        npy_ordered(descr, "False", shape, data)
    }

    fn npy_ordered(descr: &str, fortran: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let header =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n");
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn bytes_and_signed_labels_are_read() {
        let a = parse_npy(&npy("|u1", "(2, 2)", &[1, 2, 3, 4])).unwrap();
        assert_eq!(a.shape, [2, 2]);
        assert_eq!(a.data, Elements::U8(vec![1, 2, 3, 4]));
        let mut data = 7i64.to_le_bytes().to_vec();
        data.extend((-1i64).to_le_bytes());
        let l = parse_npy(&npy("<i8", "(2,)", &data)).unwrap();
        assert_eq!(l.data, Elements::Int(vec![7, -1]));
        let l = parse_npy(&npy("<i2", "(1,)", &(-3i16).to_le_bytes())).unwrap();
        assert_eq!(l.data, Elements::Int(vec![-3]));
    }

    #[test]
    fn floats_are_widened_and_checked_by_shape() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy("<f4", "(1, 2)", &data)).unwrap();
        assert_eq!(a.data, Elements::Float(vec![1.5, -2.0]));
        assert_eq!(a.to_ints(), None);
        assert_eq!(
            a.to_floats::<ndarray::Ix2>().unwrap(),
            ndarray::array![[1.5, -2.0]]
        );
        let err = a.to_floats::<ndarray::Ix1>().unwrap_err();
        assert!(
            err.contains("[1, 2]") && err.contains("1 dimensions"),
            "{err}"
        );
        let d = parse_npy(&npy("<f8", "(1,)", &0.25f64.to_le_bytes())).unwrap();
        assert_eq!(d.data, Elements::Float(vec![0.25]));
        let err = parse_npy(&npy("|u1", "(1,)", &[7]))
            .unwrap()
            .to_floats::<ndarray::Ix1>()
            .unwrap_err();
        assert!(err.contains("|u1"), "{err}");
    }

    #[test]
    fn other_dtypes_and_short_data_are_refused() {
        for descr in ["<f2", ">f8", ">i4", "<c8"] {
            let err = parse_npy(&npy(descr, "(1,)", &[0; 8])).unwrap_err();
            assert!(err.contains(descr), "{err}");
        }
        let err = parse_npy(&npy("|u1", "(3, 2)", &[0; 5])).unwrap_err();
        assert!(err.contains("needs 6 bytes"), "{err}");
    }

    #[test]
    fn fortran_order_is_read_into_c_order() {
        // [[1, 2, 3], [4, 5, 6]] lies column by column in Fortran order.
        let a = parse_npy(&npy_ordered("|u1", "True", "(2, 3)", &[1, 4, 2, 5, 3, 6])).unwrap();
        assert_eq!(
            (a.shape, a.data),
            (vec![2, 3], Elements::U8(vec![1, 2, 3, 4, 5, 6]))
        );
    }

    /// An archive of `members`, deflated or stored.
    fn archive(members: &[(&str, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn stored_and_deflated_archives_read_alike() {
        let members = [
            ("images.npy", npy("|u1", "(4,)", &[9, 8, 7, 6])),
            ("W.npy", npy("<f8", "(1,)", &2.5f64.to_le_bytes())),
        ];
        for method in [
            zip::CompressionMethod::Stored,
            zip::CompressionMethod::Deflated,
        ] {
            let arrays = read(&archive(&members, method)).unwrap();
            assert_eq!(arrays["images"].data, Elements::U8(vec![9, 8, 7, 6]));
            assert_eq!(arrays["W"].data, Elements::Float(vec![2.5]));
        }
        let err = read(&archive(
            &[("bad.npy", b"not numpy".to_vec())],
            zip::CompressionMethod::Deflated,
        ))
        .unwrap_err();
        assert!(err.contains("bad.npy") && err.contains("magic"), "{err}");
        assert!(read(b"PK not a zip").unwrap_err().contains("not an .npz"));
    }
}
