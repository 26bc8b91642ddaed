//! `zbctl`: zboot's CLI for Linux user space and hosts (slot state, images, devices).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = zboot_tools::zbctl::Cli::parse();
    match zboot_tools::zbctl::run(&cli, &mut std::io::stdout()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `update` ends "up to date", "busy", "pending" with their own codes, not errors.
            if let Some(end) = error.downcast_ref::<zboot_tools::zbctl::update::Finished>() {
                println!("zbctl: {end}");
                return std::process::ExitCode::from(end.code);
            }
            eprintln!("zbctl: error: {error:#}");
            // `image verify` and friends say why with their exit code (docs/image-format.md).
            match error.downcast_ref::<zboot_tools::zbctl::image::ExitError>() {
                Some(refusal) => std::process::ExitCode::from(refusal.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
