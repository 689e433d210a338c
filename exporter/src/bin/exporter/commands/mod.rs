//! One module per subcommand, as `--help` lists them: its arguments with
//! their help, and `run`, its handler.

pub mod calibrate;
pub mod export;
pub mod inspect;
pub mod pack;
pub mod quantize;
pub mod route;
