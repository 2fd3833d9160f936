//! How tsc answers: exit codes, failures with a one-line message, and output for people or
//! for scripts (`--json`).

use crate::error::Error;
use crate::runtime::Node;

/// Exit codes.
pub mod exit {
    /// Something failed (a service, the runtime, a file).
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// An id that is not in the cluster.
    pub const NOT_FOUND: u8 = 3;
    /// No cluster: not initialized, or not bootstrapped.
    pub const NO_CLUSTER: u8 = 4;
    /// `bootstrap` over an existing cluster.
    pub const CLUSTER_EXISTS: u8 = 5;
    /// `status` or `wait` found the cluster unhealthy or not in sync.
    pub const UNHEALTHY: u8 = 6;
    /// Interrupted by ctrl-c (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

/// A failed command: a message for people and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A bad command line that clap could not catch (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure::new(exit::USAGE, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::NotFound(_) => exit::NOT_FOUND,
            _ => exit::FAILURE,
        };
        Failure::new(code, e.to_string())
    }
}

pub type CliResult<T = ()> = Result<T, Failure>;

/// What a command prints: lines for people, or one JSON value (progress lines then go to
/// stderr, so stdout stays one JSON document).
pub struct Out {
    pub json: bool,
    /// Print nothing (the dashboard runs commands and answers with their results).
    pub quiet: bool,
}

impl Out {
    /// Output for people (`json: false`) or scripts.
    pub fn new(json: bool) -> Out {
        Out { json, quiet: false }
    }

    /// Output that goes nowhere.
    pub fn quiet() -> Out {
        Out {
            json: false,
            quiet: true,
        }
    }

    pub fn line(&self, s: &str) {
        if self.quiet {
            return;
        }
        if self.json {
            eprintln!("{s}");
        } else {
            print_line(s);
        }
    }

    pub fn json(&self, v: serde_json::Value) {
        if self.quiet {
            return;
        }
        print_line(&serde_json::to_string_pretty(&v).expect("json"));
    }
}

/// Prints a line to stdout. When the reader has gone (`tsc clients list | head`), tsc stops
/// quietly, as a pipe's writer should, instead of panicking as `println!` does.
pub fn print_line(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{s}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tsc: cannot write to stdout: {e}");
        std::process::exit(exit::FAILURE.into());
    }
}

/// Fails unless `node` runs (`running`) or does not: what `kill` and `start` of a service node
/// (`tsc redis`, `tsc brokers`) check first.
pub fn expect_running(node: &Node, running: bool) -> CliResult<()> {
    match (node.running(), running) {
        (true, false) => Err(Failure::new(
            exit::FAILURE,
            format!("{} is already running", node.id),
        )),
        (false, true) => Err(Failure::new(
            exit::FAILURE,
            format!("{} is not running", node.id),
        )),
        _ => Ok(()),
    }
}

/// Says that `node` (a `kind`: `redis`, `broker`) was `what` (`killed`, `started`).
pub fn done(out: &Out, kind: &str, node: &Node, what: &str) {
    if out.json {
        out.json(serde_json::json!({ kind: node.id, "done": what }));
    } else {
        out.line(&format!("{what} {}", node.id));
    }
}
