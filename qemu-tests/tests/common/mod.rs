//! Helpers shared by the QEMU scenario tests.

/// Runs zbctl (the library behind the binary, the same code) with `args`;
/// returns what it printed. Panics with zbctl's error otherwise.
pub fn zbctl(args: &[&str]) -> String {
    let cli = <zboot_tools::zbctl::Cli as clap::Parser>::try_parse_from(
        std::iter::once("zbctl").chain(args.iter().copied()),
    )
    .unwrap_or_else(|error| panic!("zbctl {args:?}: {error}"));
    let mut out = Vec::new();
    zboot_tools::zbctl::run(&cli, &mut out)
        .unwrap_or_else(|error| panic!("zbctl {args:?}: {error:#}"));
    String::from_utf8_lossy(&out).into_owned()
}
