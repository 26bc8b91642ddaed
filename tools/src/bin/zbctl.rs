//! `zbctl`: zboot's CLI for Linux user space and hosts (slot state, images, devices).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = zboot_tools::zbctl::Cli::parse();
    match zboot_tools::zbctl::run(&cli, &mut std::io::stdout()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("zbctl: error: {error:#}");
            // `image verify` and friends say why with their exit code (docs/image-format.md).
            match error.downcast_ref::<zboot_tools::zbctl::image::ExitError>() {
                Some(refusal) => std::process::ExitCode::from(refusal.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
