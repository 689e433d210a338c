//! Device profiles
