//! Library side of zboot's host tools: the `zbctl` commands (the binaries are thin mains).
#![forbid(unsafe_code)]

pub mod deb;
pub mod zbctl;
