//! The `densenet` command line: thin glue over the library (see `cli/`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match densenet::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`densenet summary ... | head`) is not an error worth reporting:
            // the reader got what it wanted.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
