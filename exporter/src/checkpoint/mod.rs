//! Teacher checkpoint readers.
