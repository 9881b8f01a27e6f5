//! The `densenet` command line: thin glue over the library (see `cli/`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match densenet::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`densenet summary ... | head`) is not an error worth reporting:
            // the reader got what it wanted.
            // (`--json` output fails inside serde_json, which keeps the io::Error's kind)
            let broken =
                |kind: Option<std::io::ErrorKind>| kind == Some(std::io::ErrorKind::BrokenPipe);
            if err.chain().any(|e| {
                broken(e.downcast_ref::<std::io::Error>().map(|io| io.kind()))
                    || broken(
                        e.downcast_ref::<serde_json::Error>()
                            .and_then(|j| j.io_error_kind()),
                    )
            }) {
                return ExitCode::SUCCESS;
            }
            // Ctrl-C during training: what was kept and how to continue, with the exit
            // status a shell gives an interrupted command
            if let Some(i) = err.downcast_ref::<densenet::cli::Interrupted>() {
                // empty on the ranks of a data-parallel run other than 0
                if !i.0.is_empty() {
                    eprintln!("{i}");
                }
                return ExitCode::from(densenet::cli::INTERRUPTED as u8);
            }
            eprintln!("error: {}", densenet::cli::error_text(&err));
            ExitCode::from(2)
        }
    }
}
