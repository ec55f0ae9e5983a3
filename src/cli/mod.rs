//! The command line: `cedard serve`, `cedard validate`, and the commands that
//! read policies for people. Each command is a thin shell over the library:
//! `keys.rs` (`cedard keys`), `store.rs` (`cedard store check|copy`),
//! `impact.rs` (`cedard impact`'s arguments, printing and exit status).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod impact;
mod keys;
mod store;

use crate::config::Options;
pub use crate::config::PolicyArgs;
use crate::policy::{self, LoadError};
use crate::server::{self, Config};

/// cedard: Cedar policies from files, hot-reloaded, answered over HTTP.
#[derive(Debug, Parser)]
#[command(name = "cedard", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve decisions over HTTP, reloading the policies when they change.
    Serve(Box<ServeArgs>),
    /// Check the policy folder against the schema as a load does
    /// (`--prove`: and prove its health).
    Validate(ValidateArgs),
    /// Run policy test files (Cedar's integration-test JSON, or YAML suites).
    Test(TestArgs),
    /// Print the role × action table computed from the policies.
    Matrix(MatrixArgs),
    /// Compare a candidate policy set with the live one: flipped matrix
    /// cells, replayed decision-log flips, suite cases that change. Exits 1
    /// if anything flips, 2 if the candidate is invalid.
    Impact(Box<impact::ImpactArgs>),
    /// Create, list and revoke caller keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Print the OpenAPI 3.1 description of the HTTP API.
    Openapi(OpenapiArgs),
    /// Replay AuthZEN interop suites against a running PDP.
    Interop(InteropArgs),
    /// Operations on a whole directory: check a redb data file, copy one to
    /// PostgreSQL.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

/// Options of `cedard openapi`.
#[derive(Debug, Args)]
pub struct OpenapiArgs {
    /// The base URL the description names as its server: the daemon's
    /// `--public-url` (a running daemon's `/openapi.json` names its own).
    #[arg(long, default_value = "http://127.0.0.1:8180")]
    pub public_url: String,
}

/// Options of `cedard interop`.
#[derive(Debug, Args)]
pub struct InteropArgs {
    /// The PDP's base URL (its `policy_decision_point`), e.g.
    /// `http://127.0.0.1:8180`.
    #[arg(long)]
    pub url: String,
    /// The interop suite files (`decisions.json`, `*-results.json`, …).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Options of `cedard serve`: see [`Options`].
pub type ServeArgs = Options;

/// Prints load errors with paths a user can open: `policies/dev.cedar:3:7: …`.
pub fn print_errors(base: &Path, errors: &[LoadError]) {
    for e in errors {
        let path = base.join(&e.file);
        let shown = LoadError {
            file: if path.exists() {
                path.display().to_string()
            } else {
                e.file.clone()
            },
            ..e.clone()
        };
        eprintln!("error: {shown}");
    }
}

/// Runs the parsed command line.
pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(args) => Ok(validate(&args)),
        Command::Test(args) => Ok(test(&args)),
        Command::Matrix(args) => Ok(matrix(&args)),
        Command::Impact(args) => Ok(impact::run(&args)),
        Command::Serve(args) => serve(*args),
        Command::Keys(command) => Ok(keys::run(command)),
        Command::Interop(args) => interop(&args),
        Command::Store(command) => Ok(store::run(command)),
        Command::Openapi(args) => {
            print_out(&format!(
                "{}\n",
                crate::http::openapi(&args.public_url)
                    .to_pretty_json()
                    .unwrap_or_default()
            ));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Replays the suites; a failed case or an unreachable PDP fails the run.
/// The bearer key, when the PDP needs one, comes from `CEDARD_KEY`.
fn interop(args: &InteropArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = std::env::var("CEDARD_KEY").ok();
    match runtime.block_on(crate::interop::run(&args.url, &args.files, key.as_deref())) {
        Ok(report) => {
            let mut out = String::new();
            for f in &report.failures {
                out.push_str(&format!("FAIL {}: {}\n", f.case, f.detail));
            }
            out.push_str(&report.summary());
            out.push('\n');
            print_out(&out);
            Ok(if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Options of `cedard validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Where the policy set lives.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Also prove the set's health (needs cvc5): policies that can never
    /// match a request the schema admits, policies that can error at
    /// evaluation (each with a request that makes it error), environments
    /// the set always allows or always denies. Exit status: 0 healthy, 1
    /// invalid or a dead or erring policy, 2 something undecided.
    #[arg(long)]
    pub prove: bool,
    /// `text` or `json` (the health report, with `--prove`).
    #[arg(long, value_enum, default_value_t = impact::ImpactFormat::Text)]
    pub format: impact::ImpactFormat,
    /// The solver and its time limits, for `--prove`.
    #[command(flatten)]
    pub solver: crate::config::SolverArgs,
}

fn validate(args: &ValidateArgs) -> ExitCode {
    // A JSON report is alone on stdout.
    let json = args.prove && args.format == impact::ImpactFormat::Json;
    let status = validate_set(&args.policy, json);
    let Some(snapshot) = status else {
        return ExitCode::FAILURE;
    };
    if !args.prove {
        return ExitCode::SUCCESS;
    }
    let health = match crate::prove::health(&args.solver.prover(), &snapshot) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match args.format {
        impact::ImpactFormat::Text => print_out(&health.to_text()),
        impact::ImpactFormat::Json => print_out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&health).unwrap_or_default()
        )),
    }
    if health.findings() {
        ExitCode::FAILURE
    } else if health.undecided() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// Loads and reports the set as `cedard validate` does; the snapshot when
/// it is valid.
fn validate_set(
    args: &PolicyArgs,
    to_stderr: bool,
) -> Option<std::sync::Arc<policy::PolicySnapshot>> {
    let say = |line: String| {
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    match policy::load(&args.sources(), 1) {
        Ok(snapshot) => {
            let base = &args.policies;
            for w in &snapshot.warnings {
                let shown = LoadError {
                    file: base.join(&w.file).display().to_string(),
                    ..w.clone()
                };
                eprintln!("warning: {shown}");
            }
            say(format!(
                "ok: {} policies in {} valid against {}",
                snapshot.meta.len(),
                args.policies.display(),
                args.schema.display()
            ));
            if let Some(entities) = &args.entities {
                say(format!(
                    "ok: {} entities in {} valid against {}",
                    snapshot.data.len(),
                    entities.display(),
                    args.schema.display()
                ));
            }
            if let Some(issuers) = &args.issuers {
                say(format!(
                    "ok: {} trusted issuer(s) in {}, their mappings valid against {}",
                    snapshot.issuers.len(),
                    issuers.display(),
                    args.schema.display()
                ));
            }
            Some(snapshot)
        }
        Err(e) => {
            print_errors(&args.policies, &e.0);
            eprintln!("{} error(s): the policy set is invalid", e.0.len());
            None
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on `{}`: {e}", args.listen))?;
        let config = Config {
            options: args.clone(),
            clock: crate::clock::Clock::system(),
        };
        match server::run(listener, config, shutdown_signal()).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(server::Error::Policy(e)) => {
                print_errors(&args.policy.policies, &e.0);
                eprintln!(
                    "{} error(s): refusing to start on an invalid policy set",
                    e.0.len()
                );
                Ok(ExitCode::FAILURE)
            }
            Err(e @ (server::Error::Store(_) | server::Error::Config(_))) => {
                eprintln!("error: {e}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        }
    })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// Options of `cedard test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files, folders searched recursively for `*.json` Cedar tests and
    /// `*.yaml` suites, or `.tar.gz` archives searched like folders (Cedar's
    /// `corpus-tests.tar.gz`, without unpacking it).
    #[arg(default_value = "tests/policies")]
    pub paths: Vec<PathBuf>,
    /// The folder that paths inside Cedar test files are relative to
    /// (default: the nearest folder above each test file where they resolve).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// `text`: failures, then `N passed, M failed`; `junit`: JUnit XML on
    /// standard output (the summary goes to standard error).
    #[arg(long, value_enum, default_value_t = TestFormat::Text)]
    pub format: TestFormat,
    /// List every known difference, not only how many there are.
    #[arg(long, short)]
    pub verbose: bool,
}

/// How `cedard test` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestFormat {
    /// For people.
    Text,
    /// JUnit XML, for CI systems.
    Junit,
}

/// Options of `cedard matrix`.
#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Where the policy set lives.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// `markdown` or `json`.
    #[arg(long, value_enum, default_value_t = MatrixFormat::Markdown)]
    pub format: MatrixFormat,
}

/// How `cedard matrix` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MatrixFormat {
    /// Markdown tables.
    Markdown,
    /// One JSON object.
    Json,
}

/// Writes to standard output, ignoring a closed pipe (`cedard test | head`).
pub(crate) fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn test(args: &TestArgs) -> ExitCode {
    use crate::suite::{self, report};
    let options = suite::Options {
        root: args.root.clone(),
        policy: None,
    };
    let result = suite::run(&args.paths, &options);
    if result.files.is_empty() {
        let shown: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!("error: no test files found in {}", shown.join(", "));
        return ExitCode::FAILURE;
    }
    match args.format {
        TestFormat::Text => print_out(&report::text(&result, args.verbose)),
        TestFormat::Junit => {
            print_out(&report::junit(&result));
            eprintln!("{}", report::summary(&result));
        }
    }
    if result.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn matrix(args: &MatrixArgs) -> ExitCode {
    match crate::matrix::from_sources(&args.policy.sources()) {
        Ok(m) => {
            match args.format {
                MatrixFormat::Markdown => print_out(&m.to_markdown()),
                MatrixFormat::Json => print_out(&format!("{:#}\n", m.to_json())),
            }
            ExitCode::SUCCESS
        }
        Err(crate::matrix::MatrixError::Policy(e)) => {
            print_errors(&args.policy.policies, &e.0);
            eprintln!("{} error(s): the policy set is invalid", e.0.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
