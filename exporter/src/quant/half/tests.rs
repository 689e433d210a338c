use super::to_fp16;

fn bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn float32_bytes_become_float16_rounded_to_nearest_even() {
    // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: even is 1.
    let halves = to_fp16(&bytes(&[1.0, 1.0 + 2f32.powi(-11), -2.5, 65504.0])).unwrap();
    let back: Vec<u16> = halves
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(back, [0x3c00, 0x3c00, 0xc100, 0x7bff]);
}

#[test]
fn a_weight_beyond_float16s_range_is_refused_not_made_infinite() {
    assert_eq!(to_fp16(&bytes(&[1.0, 70000.0])), None);
    assert_eq!(to_fp16(&bytes(&[-70000.0])), None);
}
