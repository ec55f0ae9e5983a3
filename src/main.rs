//! The `cedard` binary: parses the command line and hands it to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: a decision allocates and
/// frees many small objects on two worker threads, and memos that fill and
/// evict fragment glibc's heap (its `malloc` took a quarter of a profiled
/// daemon's time under a 100,000-user load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log's writer: each event, which the formatter hands over whole, is
/// written as exactly one line. A line break or other control character
/// inside it (a file name, a header value) is written escaped (`\n`,
/// `\u{1b}`), so that no value can start a forged line of its own; the
/// formatter's own colour codes pass only when colour is on.
#[derive(Clone, Copy)]
struct OneLine {
    colour: bool,
}

impl std::io::Write for OneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let mut line = String::with_capacity(body.len() + 1);
        for c in body.chars() {
            match c {
                '\x1b' if self.colour => line.push(c),
                '\t' => line.push(c),
                c if c.is_control() => line.extend(c.escape_default()),
                c => line.push(c),
            }
        }
        line.push('\n');
        std::io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn main() -> anyhow::Result<ExitCode> {
    // Colour codes only for a person at a terminal, never in log files.
    let colour = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(move || OneLine { colour })
        .with_ansi(colour)
        .init();
    cedard::cli::main(cedard::cli::Cli::parse())
}
