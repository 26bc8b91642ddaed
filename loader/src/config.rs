//! Build-time settings: the provisioned signing key and the recovery button
//! (`loader/build.rs` reads them from the environment; docs/recovery.md).

include!(concat!(env!("OUT_DIR"), "/build_config.rs"));
