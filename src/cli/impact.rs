//! `cedard impact`: what a candidate policy set would change, for people and
//! for CI. Exit status: 0 when nothing flips, 1 when something does, 2 when
//! the comparison cannot be made (a candidate that does not validate or
//! that the stored data does not fit, an unreadable log, a store held by a
//! running daemon). With `--prove`, the proof decides it: 0 when the
//! candidate is equivalent or narrower everywhere, 1 when it is wider
//! somewhere, 2 when something could not be decided (never 0 then).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::{print_errors, print_out};
use crate::config::{PolicyArgs, SolverArgs};
use crate::impact;
use crate::policy::{self, LoadError, PolicySnapshot, Sources};
use crate::store::{OpenError, Store};

/// Options of `cedard impact`.
#[derive(Debug, Args)]
pub struct ImpactArgs {
    /// The live policy set (`--policies`, `--schema`, `--entities`).
    #[command(flatten)]
    pub live: PolicyArgs,
    /// The candidate policy folder.
    #[arg(long)]
    pub candidate: PathBuf,
    /// The candidate's schema (default: the live `--schema`).
    #[arg(long)]
    pub candidate_schema: Option<PathBuf>,
    /// A decision log (`--decision-log` of `cedard serve`) to replay.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// The data file whose users and accounts replayed decisions read (and
    /// that the candidate's schema must fit). Opened read-only; a file a
    /// running daemon holds is refused.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Test files or folders to run against both sets (repeatable).
    #[arg(long)]
    pub suite: Vec<PathBuf>,
    /// `text` or `json`.
    #[arg(long, value_enum, default_value_t = ImpactFormat::Text)]
    pub format: ImpactFormat,
    /// Prove, for every request environment of the schema, whether the
    /// candidate is equivalent to the live set, narrower, wider or both,
    /// with a counterexample for each change (needs cvc5). The exit status
    /// is then the proof's: 0 never wider, 1 wider, 2 undecided.
    #[arg(long)]
    pub prove: bool,
    /// With `--prove`: after the report, add the candidate's hash to its
    /// folder's `acknowledged.sha256`, so that a daemon running
    /// `--reload-guard no-widening` lets this reviewed set go live.
    #[arg(long, requires = "prove")]
    pub acknowledge: bool,
    /// The solver and its time limits, for `--prove`.
    #[command(flatten)]
    pub solver: SolverArgs,
}

/// How `cedard impact` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImpactFormat {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

const CANNOT: u8 = 2;

/// Loads one set, printing its errors as `cedard validate` does.
fn load(sources: &Sources, which: &str) -> Option<std::sync::Arc<PolicySnapshot>> {
    match policy::load(sources, 1) {
        Ok(s) => Some(s),
        Err(e) => {
            print_errors(&sources.policies, &e.0);
            eprintln!("{} error(s): the {which} policy set is invalid", e.0.len());
            None
        }
    }
}

fn cannot(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(CANNOT)
}

/// Runs `cedard impact`.
pub fn run(args: &ImpactArgs) -> ExitCode {
    let live_sources = args.live.sources();
    let candidate_sources = Sources {
        policies: args.candidate.clone(),
        schema: args
            .candidate_schema
            .clone()
            .unwrap_or_else(|| live_sources.schema.clone()),
        ..live_sources.clone()
    };
    let Some(live) = load(&live_sources, "live") else {
        return ExitCode::from(CANNOT);
    };
    let Some(candidate) = load(&candidate_sources, "candidate") else {
        return ExitCode::from(CANNOT);
    };
    let store = match &args.data {
        None => None,
        Some(path) => match Store::open_read_only(path) {
            Ok(s) => Some(s),
            Err(e @ OpenError::Locked(_)) => {
                return cannot(format!(
                    "{e}: a running daemon holds it; stop it, work on a copy taken while it is stopped, or use the console's Impact page, which replays against the running daemon's store"
                ))
            }
            Err(e) => return cannot(e),
        },
    };
    let now = crate::clock::Clock::system().now_secs();
    let compared = impact::compare(
        &live,
        &candidate,
        &impact::Inputs {
            store: store.as_ref(),
            log: args.log.as_deref().map(|path| (path, None)),
            suites: (!args.suite.is_empty()).then_some((
                args.suite.as_slice(),
                &live_sources,
                &candidate_sources,
            )),
            now,
        },
    );
    // A set of another account model has no role matrix: only a proof
    // then compares it.
    if let (Some(e), false) = (&compared.impact.matrix_not_compared, args.prove) {
        return cannot(format!("cannot compute the role matrix: {e}"));
    }
    if let Some(errors) = &compared.unfit {
        print_fit(&candidate_sources.schema, errors);
        eprintln!(
            "{} error(s): the stored data does not fit the candidate's schema; a daemon would refuse this reload",
            errors.len()
        );
        return ExitCode::from(CANNOT);
    }
    if let Some(e) = &compared.log_error {
        return cannot(e);
    }
    let (unreadable, lines) = &compared.unreadable;
    if let (Some(path), true) = (&args.log, *unreadable > 0) {
        let shown: Vec<String> = lines.iter().map(|n| n.to_string()).collect();
        eprintln!(
            "warning: {}: {unreadable} line(s) are not decision or write lines and were skipped (lines {}{})",
            path.display(),
            shown.join(", "),
            if *unreadable > shown.len() { ", …" } else { "" }
        );
    }
    let mut report = compared.impact;
    if args.prove {
        match crate::prove::compare(&args.solver.prover(), &live, &candidate) {
            Ok(proof) => report.proof = Some(proof),
            Err(e) => return cannot(e),
        }
    }
    match args.format {
        ImpactFormat::Text => print_out(&report.to_text()),
        ImpactFormat::Json => print_out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        )),
    }
    if let Some(proof) = &report.proof {
        if args.acknowledge {
            if let Err(e) = acknowledge(&args.candidate, &candidate.revision.sha256, proof) {
                return cannot(e);
            }
        }
        return ExitCode::from(proof.verdict().code());
    }
    if report.flips() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Adds `sha256` to `folder`'s acknowledgement file (unless it is listed
/// already), saying on stderr what was written.
fn acknowledge(folder: &Path, sha256: &str, proof: &crate::prove::Proof) -> Result<(), String> {
    use std::io::Write;
    let path = folder.join(policy::ACKNOWLEDGED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
    };
    if policy::parse_acknowledged(&text).contains(sha256) {
        eprintln!("acknowledged already: {sha256} in {}", path.display());
        return Ok(());
    }
    let widened: Vec<String> = proof.widened().map(|e| e.env.to_string()).collect();
    let when = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let line = format!(
        "{}{sha256}  # {when}: {}\n",
        if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        },
        if widened.is_empty() {
            proof.verdict().as_str().to_owned()
        } else {
            format!("widens {}", widened.join(", "))
        }
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    eprintln!("acknowledged: {sha256} added to {}", path.display());
    Ok(())
}

/// Prints the stored-data errors with the schema path a user can open.
fn print_fit(schema: &Path, errors: &[LoadError]) {
    let base = if schema.is_dir() {
        schema
    } else {
        schema.parent().unwrap_or(Path::new("."))
    };
    print_errors(base, errors);
}
