//! A command-line report on stdout whose reader may be gone: `runtime ... |
//! head` closes the pipe early, and `println!` would panic on the write
//! that follows. [`outln!`](crate::outln) returns an error marked
//! [`Closed`] instead, which `main` turns into a quiet exit.

use std::fmt;

/// Stdout was closed by its reader: not worth an error message.
#[derive(Debug)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("writing to stdout")
    }
}

impl std::error::Error for Closed {}

/// Whether `e` is a write to a closed stdout (anyhow finds a context type
/// through any later contexts; `chain()` would not).
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Closed>().is_some()
}

/// `println!` (or `print!` with `outln!(@no_newline ...)`) to stdout,
/// returning `anyhow::Result<()>` with [`Closed`] as the context of a
/// failed write.
#[macro_export]
macro_rules! outln {
    (@no_newline $($arg:tt)*) => {{
        use ::std::io::Write as _;
        ::anyhow::Context::context(
            ::std::write!(::std::io::stdout().lock(), $($arg)*),
            $crate::stdout::Closed,
        )
    }};
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        ::anyhow::Context::context(
            ::std::writeln!(::std::io::stdout().lock(), $($arg)*),
            $crate::stdout::Closed,
        )
    }};
}
