//! Calibration of a bundle on the user's data: quality scores per
//! sub-network, head transfer and quantisation ranges.

pub mod head;
pub mod plot;
