//! Calibration of a bundle on the user's data: quality scores per
//! sub-network, head transfer and quantisation ranges.
//!
//! Nothing lives here yet: quality scores arrive with the calibration issue,
//! and the manifest already carries an optional `quality` per sub-network.
