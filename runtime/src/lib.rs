//! The on-device half of tailor: read a bundle's manifest, probe the device,
//! measure candidates and select the best sub-network that fits.
//!
//! Without the default `std` feature only the allocation-free core remains
//! ([`manifest`] decoding and the [`policy`] of selection), small enough for
//! a bootloader-stage supervisor.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod interface;
pub mod manifest;
pub mod policy;

#[cfg(feature = "std")]
pub mod bundle;
#[cfg(feature = "std")]
pub mod cache;
#[cfg(feature = "std")]
pub mod engine;
#[cfg(feature = "std")]
pub mod fs;
#[cfg(feature = "std")]
pub mod image;
#[cfg(feature = "std")]
pub mod probe;
#[cfg(feature = "std")]
pub mod profile;
#[cfg(feature = "std")]
pub mod select;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "std")]
pub mod stdout;
#[cfg(feature = "std")]
pub mod trial;

#[cfg(feature = "std")]
pub use select::{Limits, Runtime};
