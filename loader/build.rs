//! Links the loader with `linker/zboot.ld` when building for the bare-metal target.

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let script = std::path::Path::new(&manifest_dir).join("../linker/zboot.ld");
    println!("cargo::rerun-if-changed={}", script.display());
    println!("cargo::rerun-if-changed=src/arch/entry.s");
    println!("cargo::rerun-if-changed=src/arch/vectors.s");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo::rustc-link-arg-bins=-T{}", script.display());
        println!("cargo::rustc-link-arg-bins=--no-dynamic-linker");
    }
}
