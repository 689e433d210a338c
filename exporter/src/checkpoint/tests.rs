//! The readers against files written by real `torch.save` / safetensors
//! (tools/make_reader_fixtures.py), and every way a file can be refused.

use std::path::{Path, PathBuf};

use super::pickle::PickleError;
use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoint")
        .join(name)
}

fn open(name: &str) -> Checkpoint {
    Checkpoint::open(&fixture(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// The f32 bit patterns numpy (or torch, for bf16) widened the stored values to.
fn numpy_bits(file: &str, key: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(expected[file][key]["bits"].clone())
        .unwrap_or_else(|e| panic!("{file} {key}: {e}"))
}

fn read_all(ckpt: &Checkpoint, name: &str) -> Vec<f32> {
    let tensor = ckpt.tensor(name).unwrap_or_else(|| panic!("no {name}"));
    let mut out = vec![0.0; tensor.numel()];
    tensor.read_f32(0, 1.0, &mut out);
    out
}

#[test]
fn poa_teacher_gets_plain_names_and_drops_its_head() {
    let ckpt = open("poa_teacher.pth");
    assert_eq!(ckpt.format(), Format::Pth);
    assert_eq!(
        ckpt.names().collect::<Vec<_>>(),
        [
            "blocks.0.attn.qkv.bias",
            "blocks.0.attn.qkv.weight",
            "blocks.0.ls1.gamma",
            "blocks.0.norm1.bias",
            "blocks.0.norm1.weight",
            "cls_token",
            "norm.bias",
            "norm.weight",
        ]
    );
    assert_eq!(ckpt.ignored(), ["dino_head.bias", "dino_head.weight"]);
    let qkv = ckpt.tensor("blocks.0.attn.qkv.weight").unwrap();
    assert_eq!(
        (qkv.dtype, qkv.shape, qkv.numel()),
        (DType::F32, &[12, 4][..], 48)
    );
    let bits: Vec<u32> = read_all(&ckpt, "blocks.0.attn.qkv.weight")
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(
        bits,
        numpy_bits(
            "poa_teacher.pth",
            "backbone.blocks.0.attn.qkv.linear.weight"
        )
    );
}

#[test]
fn f16_converter_matches_numpy_bit_for_bit() {
    // Read raw, without the scale multiply, which may quiet a signalling NaN.
    let ckpt = open("f16.safetensors");
    for key in ["specials", "random"] {
        let tensor = ckpt.tensor(key).unwrap();
        assert_eq!(tensor.dtype, DType::F16);
        let bits: Vec<u32> = (0..tensor.numel())
            .map(|i| {
                let mut one = [0.0];
                tensor.read_f32(i, 1.0, &mut one);
                one[0].to_bits()
            })
            .collect();
        let want = numpy_bits("f16.safetensors", key);
        for (i, (&got, &want)) in bits.iter().zip(&want).enumerate() {
            let nan = f32::from_bits(want).is_nan();
            assert!(
                got == want
                    || (nan
                        && f32::from_bits(got).is_nan()
                        && got & !0x0040_0000 == want & !0x0040_0000),
                "{key}[{i}]: {got:#010x}, numpy {want:#010x}"
            );
        }
    }
    // The specials hold the payload-carrying NaNs: check the converter itself exactly.
    let specials = numpy_bits("f16.safetensors", "specials");
    let halves = [
        0x0000u16, 0x8000, 0x0001, 0x8001, 0x0155, 0x03FF, 0x0400, 0x3C00, 0x3555, 0x7BFF, 0xFBFF,
        0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE01,
    ];
    for (half, want) in halves.into_iter().zip(specials) {
        assert_eq!(f16_to_f32(half).to_bits(), want, "{half:#06x}");
    }
}

#[test]
fn fp16_parameters_under_model_with_a_non_tensor() {
    let ckpt = open("fp16_params.pth");
    assert_eq!(
        ckpt.names().collect::<Vec<_>>(),
        ["blocks.0.attn.qkv.weight", "norm.weight"]
    );
    assert_eq!(ckpt.ignored(), ["step"]);
    let bits: Vec<u32> = read_all(&ckpt, "blocks.0.attn.qkv.weight")
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(
        bits,
        numpy_bits("fp16_params.pth", "blocks.0.attn.qkv.weight")
    );
    // The specials' first infinity (0x7C00) is element 11.
    assert_eq!(
        ckpt.tensor("norm.weight").unwrap().first_non_finite(),
        Some(11)
    );
    assert_eq!(
        ckpt.tensor("blocks.0.attn.qkv.weight")
            .unwrap()
            .first_non_finite(),
        None
    );
}

#[test]
fn bf16_state_dict_in_protocol_4() {
    let ckpt = open("bf16_protocol4.pth");
    let cls = ckpt.tensor("cls_token").unwrap();
    assert_eq!((cls.dtype, cls.shape), (DType::BF16, &[1, 1, 4][..]));
    let bits: Vec<u32> = read_all(&ckpt, "cls_token")
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(bits, numpy_bits("bf16_protocol4.pth", "cls_token"));
    assert_eq!(
        ckpt.tensor("norm.bias").unwrap().first_non_finite(),
        Some(2)
    );
}

#[test]
fn views_of_one_storage_read_their_own_elements() {
    let ckpt = open("shared_storage.pth");
    assert_eq!(ckpt.names().collect::<Vec<_>>(), ["last", "rows", "whole"]);
    let whole = numpy_bits("shared_storage.pth", "whole");
    let bits = |name| -> Vec<u32> { read_all(&ckpt, name).iter().map(|v| v.to_bits()).collect() };
    assert_eq!(bits("whole"), whole);
    assert_eq!(bits("rows"), whole[8..16]);
    assert_eq!(bits("last"), whole[20..24]);
    // A scaled sub-range, as the slicer reads a row of a weight.
    let mut out = [0.0; 3];
    ckpt.tensor("rows").unwrap().read_f32(2, 0.5, &mut out);
    let want: Vec<f32> = whole[10..13]
        .iter()
        .map(|&b| f32::from_bits(b) * 0.5)
        .collect();
    assert_eq!(out[..], want);
}

#[test]
fn dinov2_block_chunks_collapse() {
    let ckpt = open("chunked.safetensors");
    assert_eq!(ckpt.format(), Format::Safetensors);
    assert_eq!(
        ckpt.names().collect::<Vec<_>>(),
        [
            "blocks.0.norm1.weight",
            "blocks.1.attn.qkv.weight",
            "blocks.2.mlp.fc1.bias",
            "cls_token",
            "norm.weight",
        ]
    );
    assert!(ckpt.ignored().is_empty());
    let bits: Vec<u32> = read_all(&ckpt, "blocks.2.mlp.fc1.bias")
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(
        bits,
        numpy_bits("chunked.safetensors", "blocks.1.2.mlp.fc1.bias")
    );
}

#[test]
fn format_comes_from_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("teacher.safetensors");
    std::fs::copy(fixture("poa_teacher.pth"), &pth).unwrap();
    assert_eq!(Checkpoint::open(&pth).unwrap().format(), Format::Pth);
    let st = dir.path().join("teacher.pth");
    std::fs::copy(fixture("chunked.safetensors"), &st).unwrap();
    assert_eq!(Checkpoint::open(&st).unwrap().format(), Format::Safetensors);
}

/// Opens `path`, expecting an error whose message names the file.
fn refuse(path: &Path) -> CheckpointError {
    let err = Checkpoint::open(path).map(|_| ()).unwrap_err();
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(err.to_string().contains(name), "{err}");
    assert_eq!(err.path(), path);
    err
}

#[test]
fn broken_archives_are_refused_with_the_reason() {
    let error = |name| refuse(&fixture(name));
    assert!(matches!(
        error("compressed.pth").kind(),
        ErrorKind::Compressed { .. }
    ));
    assert!(matches!(
        error("no_data_pkl.pth").kind(),
        ErrorKind::NoDataPkl
    ));
    assert!(
        matches!(error("big_endian.pth").kind(), ErrorKind::ByteOrder(order) if order == "big")
    );
    assert!(matches!(
        error("truncated_pickle.pth").kind(),
        ErrorKind::Pickle { entry, source: PickleError::Truncated(_) } if entry == "shared_storage/data.pkl"
    ));
    assert!(matches!(
        error("evil.pth").kind(),
        ErrorKind::Pickle { source: PickleError::DisallowedGlobal(global), .. } if global == "posix.system"
    ));
    assert!(
        matches!(error("list.pth").kind(), ErrorKind::NotStateDict(what) if what.contains("list"))
    );
    assert!(matches!(
        error("missing_storage.pth").kind(),
        ErrorKind::StorageMissing { key, entry } if key == "whole" && entry == "shared_storage/data/0"
    ));
    assert!(matches!(
        error("short_storage.pth").kind(),
        ErrorKind::StorageTooShort { key, needed: 96, len: 92, .. } if key == "whole"
    ));
    assert!(matches!(
        error("non_contiguous.pth").kind(),
        ErrorKind::NonContiguous { key, shape, stride } if key == "wt" && shape[..] == [4, 6] && stride[..] == [1, 4]
    ));
}

#[test]
fn unsupported_dtypes_name_the_key_and_dtype() {
    for (file, want) in [
        ("float64.pth", "float64"),
        ("float8.pth", "float8_e4m3fn"),
        ("float64.safetensors", "F64"),
    ] {
        match refuse(&fixture(file)).kind() {
            ErrorKind::UnsupportedDtype { key, dtype } => {
                assert_eq!((key.as_str(), dtype.as_str()), ("x", want))
            }
            other => panic!("{file}: {other}"),
        }
    }
}

#[test]
fn integer_buffers_are_ignored_not_refused() {
    // POA's Swin checkpoints hold an int64 `relative_position_index` per block.
    let swin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/swin-tiny");
    for file in [
        "output/eval/training_49/teacher_checkpoint.pth",
        "teacher-nobias-fp16.safetensors",
    ] {
        let ckpt = Checkpoint::open(&swin.join(file)).unwrap_or_else(|e| panic!("{e}"));
        let is_index = |k: &str| k.ends_with("relative_position_index");
        let ignored = ckpt.ignored().iter().filter(|k| is_index(k)).count();
        assert_eq!(ignored, 2 + 2 + 5 + 2, "{file}");
        assert_eq!(ckpt.names().filter(|k| is_index(k)).count(), 0, "{file}");
        assert!(ckpt
            .tensor("stages.2.blocks.4.attn.w_msa.qkv.weight")
            .is_some());
    }
}

#[test]
fn two_keys_with_one_canonical_name_are_refused() {
    match refuse(&fixture("duplicate.safetensors")).kind() {
        ErrorKind::DuplicateName {
            first,
            second,
            canonical,
        } => {
            let mut keys = [first, second];
            keys.sort();
            assert_eq!(keys, ["backbone.norm.norm.weight", "norm.weight"]);
            assert_eq!(canonical, "norm.weight");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn missing_empty_truncated_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        refuse(&dir.path().join("absent.pth")).kind(),
        ErrorKind::Io(_)
    ));

    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    assert!(matches!(
        refuse(&write("empty.pth", b"")).kind(),
        ErrorKind::Empty
    ));
    let text = write("notes.pth", b"teacher weights are on the other disk\n");
    assert!(matches!(refuse(&text).kind(), ErrorKind::UnknownFormat(_)));

    let pth = std::fs::read(fixture("poa_teacher.pth")).unwrap();
    for len in [4, 100, pth.len() / 2, pth.len() - 1] {
        let cut = write(&format!("cut{len}.pth"), &pth[..len]);
        assert!(
            matches!(refuse(&cut).kind(), ErrorKind::Zip(_)),
            "cut at {len}"
        );
    }
    let st = std::fs::read(fixture("chunked.safetensors")).unwrap();
    let cut = write("cut.safetensors", &st[..st.len() - 2]);
    assert!(matches!(refuse(&cut).kind(), ErrorKind::Safetensors(_)));
    let cut = write("cut_header.safetensors", &st[..20]);
    assert!(matches!(refuse(&cut).kind(), ErrorKind::UnknownFormat(_)));
}
