//! Checkpoint readers against files written by real torch.save and the
//! safetensors library (tools/make_reader_fixtures.py), with the values
//! numpy read from them.

use std::path::{Path, PathBuf};

use tailor_exporter::checkpoint::{canonical_name, Checkpoint, DType};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoint")
        .join(name)
}

#[test]
fn values_match_what_numpy_read() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    for (file, tensors) in expected.as_object().unwrap() {
        let ckpt = Checkpoint::open(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (key, want) in tensors.as_object().unwrap() {
            let Some(name) = &canonical_name(key) else {
                // Training heads are dropped by design.
                assert!(
                    ckpt.ignored().contains(key),
                    "{file}: `{key}` neither read nor ignored"
                );
                continue;
            };
            let t = ckpt.tensor(name).unwrap_or_else(|| {
                panic!(
                    "{file}: no `{name}` in {:?}",
                    ckpt.names().collect::<Vec<_>>()
                )
            });
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            assert_eq!(t.shape, shape.as_slice(), "{file} {name}");
            let dtype = match want["dtype"].as_str().unwrap() {
                "float32" => DType::F32,
                "float16" => DType::F16,
                "bfloat16" => DType::BF16,
                other => panic!("{other}"),
            };
            assert_eq!(t.dtype, dtype, "{file} {name}");
            let bits: Vec<u32> = serde_json::from_value(want["bits"].clone()).unwrap();
            let mut out = vec![0f32; t.numel()];
            t.read_f32(0, 1.0, &mut out);
            // Exact bits, except that a NaN may come back quieted (the scale
            // multiply does that on most CPUs): NaN is all that must survive.
            let same =
                |g: f32, w: u32| g.to_bits() == w || (g.is_nan() && f32::from_bits(w).is_nan());
            let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            assert!(
                out.iter().zip(&bits).all(|(&g, &w)| same(g, w)),
                "{file} {name}: {got:?} vs numpy's {bits:?}"
            );
        }
    }
}

#[test]
fn poa_names_are_canonical_and_heads_ignored() {
    let ckpt = Checkpoint::open(&fixture("poa_teacher.pth")).unwrap();
    assert!(
        ckpt.names()
            .all(|n| !n.starts_with("backbone.") && !n.contains(".linear.")),
        "{:?}",
        ckpt.names().collect::<Vec<_>>()
    );
    assert!(
        ckpt.ignored().iter().any(|k| k.starts_with("dino_head.")),
        "{:?}",
        ckpt.ignored()
    );
}

#[test]
fn bad_files_are_named_with_the_problem() {
    let cases = [
        ("big_endian.pth", "endian"),
        ("compressed.pth", "compress"),
        ("duplicate.safetensors", "both"),
        ("evil.pth", "global"),
        ("float64.pth", "dtype"),
        ("float64.safetensors", "dtype"),
        ("float8.pth", "dtype"),
        ("list.pth", "not a state dict"),
        ("missing_storage.pth", "storage"),
        ("no_data_pkl.pth", "data.pkl"),
        ("non_contiguous.pth", "contiguous"),
        ("short_storage.pth", "storage"),
        ("truncated_pickle.pth", "truncated"),
    ];
    for (file, needle) in cases {
        let err = Checkpoint::open(&fixture(file)).map(|_| ()).unwrap_err();
        let msg = format!("{err}").to_lowercase()
            + &std::error::Error::source(&err)
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
                .to_lowercase();
        assert!(
            msg.contains(file) && msg.contains(needle),
            "{file}: `{needle}` not in: {msg}"
        );
    }
}

#[test]
fn truncated_and_empty_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("poa_teacher.pth")).unwrap();
    for len in [0, 3, 100, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.path().join(format!("cut{len}.pth"));
        std::fs::write(&path, &bytes[..len]).unwrap();
        let err = Checkpoint::open(&path).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(&format!("cut{len}.pth")), "{err}");
    }
    let bytes = std::fs::read(fixture("f16.safetensors")).unwrap();
    let path = dir.path().join("cut.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
    assert!(Checkpoint::open(&path).is_err());
}
