//! The daemon's options: one definition, read by clap from flags and
//! `CEDARD_*` environment variables, with one set of defaults that tests and
//! the binary share.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser};

use crate::model;
use crate::policy::{self, Sources};
use crate::prove;

/// Where the policy set lives.
#[derive(Debug, Args, Clone)]
pub struct PolicyArgs {
    /// Folder of `*.cedar` policy files (searched recursively).
    #[arg(long, env = "CEDARD_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// Schema file, or folder of `*.cedarschema` / `*.cedarschema.json` files.
    #[arg(long, env = "CEDARD_SCHEMA", default_value = "schema")]
    pub schema: PathBuf,
    /// The largest policy or schema file, in bytes; a larger one refuses
    /// the set, naming the file.
    #[arg(long, env = "CEDARD_MAX_POLICY_FILE_BYTES", default_value_t = policy::DEFAULT_MAX_FILE_BYTES)]
    pub max_policy_file_bytes: u64,
    /// The most policies and templates in the set; more refuses the set.
    #[arg(long, env = "CEDARD_MAX_POLICIES", default_value_t = policy::DEFAULT_MAX_POLICIES)]
    pub max_policies: usize,
    /// Follow links that lead out of the policy, schema and entity folders
    /// (a file or folder elsewhere on the server). Off by default: such a
    /// link refuses the set, naming it, and nothing behind it is read.
    #[arg(long, env = "CEDARD_FOLLOW_LINKS_OUT")]
    pub follow_links_out: bool,
    /// A Cedar JSON entity file, or a folder of `*.json` entity files: the
    /// entities the policies need that cedard does not store (documents,
    /// routes, users of another directory). Validated against the schema and
    /// reloaded with the policies, atomically. They may not define `User`,
    /// `Account` or `Role` entities, which come from the store.
    #[arg(long, env = "CEDARD_ENTITIES")]
    pub entities: Option<PathBuf>,
    /// A folder of trusted issuer files (`*.yaml`): the OpenID Connect /
    /// JWT issuers whose tokens identify principals (`principal_token`,
    /// AuthZEN's `subject.properties.token`, the management API's user
    /// tokens). Reloaded with the policies; a broken file keeps the last
    /// good set and is reported with file and line.
    #[arg(long, env = "CEDARD_ISSUERS")]
    pub issuers: Option<PathBuf>,
}

impl PolicyArgs {
    /// The sources these arguments name.
    pub fn sources(&self) -> Sources {
        Sources {
            policies: self.policies.clone(),
            schema: self.schema.clone(),
            limits: policy::Limits {
                max_file_bytes: self.max_policy_file_bytes,
                max_policies: self.max_policies,
                links_out: self.follow_links_out,
            },
            entities: self.entities.clone(),
            reserved_types: [model::USER, model::ACCOUNT, model::ROLE]
                .map(str::to_owned)
                .to_vec(),
            reserved_attributes: model::USER_ATTRIBUTES
                .iter()
                .map(|a| (model::USER.to_owned(), (*a).to_owned()))
                .collect(),
            issuers: self.issuers.clone(),
        }
    }
}

/// How proofs about policy sets are made (`--prove`, the console's proof
/// views, the reload guard).
#[derive(Debug, Args, Clone)]
pub struct SolverArgs {
    /// The SMT solver (cvc5) proofs run; without it, the `CVC5` variable,
    /// then `cvc5` on `PATH`.
    #[arg(long, env = "CEDARD_SOLVER")]
    pub solver: Option<PathBuf>,
    /// Milliseconds one solver query may take before it is given up (and
    /// its environment reported undecided).
    #[arg(long, env = "CEDARD_PROVE_QUERY_MS", default_value_t = prove::DEFAULT_QUERY_LIMIT.as_millis() as u64)]
    pub prove_query_ms: u64,
    /// Milliseconds a whole proof may take; what is left is undecided.
    #[arg(long, env = "CEDARD_PROVE_RUN_MS", default_value_t = prove::DEFAULT_RUN_LIMIT.as_millis() as u64)]
    pub prove_run_ms: u64,
}

impl SolverArgs {
    /// The prover these arguments describe.
    pub fn prover(&self) -> prove::Prover {
        prove::Prover {
            solver: self.solver.clone(),
            query_limit: Duration::from_millis(self.prove_query_ms.max(1)),
            run_limit: Duration::from_millis(self.prove_run_ms.max(1)),
        }
    }
}

/// What a reload must prove before it goes live, beyond validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReloadGuard {
    /// Nothing more.
    Off,
    /// That the new set allows nothing the live set denies (or that its
    /// hash is listed in the policy folder's `acknowledged.sha256`).
    NoWidening,
}

/// What may name the acting user of a management call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ActorMode {
    /// `X-Actor` from a `manage` key, or a verified user token.
    #[default]
    HeaderOrToken,
    /// Only a verified user token.
    TokenOnly,
}

/// Which decisions the decision log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogOnly {
    /// Only denials (management writes are always kept).
    Deny,
}

/// Options of `cedard serve`.
#[derive(Debug, Args, Clone)]
pub struct Options {
    /// Where the policy set lives.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// How proofs are made (the console's proof views, the reload guard).
    #[command(flatten)]
    pub solver: SolverArgs,
    /// `no-widening`: a reload whose set could allow a request the live set
    /// denies is refused like an invalid edit (with the environment and a
    /// counterexample), unless its hash is in the policy folder's
    /// `acknowledged.sha256` (`cedard impact --prove --acknowledge` writes
    /// it). Needs a solver; `off` by default.
    #[arg(long, env = "CEDARD_RELOAD_GUARD", value_enum, default_value_t = ReloadGuard::Off)]
    pub reload_guard: ReloadGuard,
    /// Address to listen on. Without caller keys only a loopback address is
    /// accepted (see `--insecure-no-auth`).
    #[arg(long, env = "CEDARD_LISTEN", default_value = "127.0.0.1:8180")]
    pub listen: String,
    /// The most requests one batch call may hold.
    #[arg(long, env = "CEDARD_BATCH_LIMIT", default_value_t = 1000)]
    pub batch_limit: usize,
    /// Milliseconds to let a burst of file events settle before reloading.
    #[arg(long, env = "CEDARD_DEBOUNCE_MS", default_value_t = 50)]
    pub debounce_ms: u64,
    /// Seconds between content checks that catch missed file events
    /// (fractions allowed, at least 0.05).
    #[arg(long, env = "CEDARD_POLL_SECS", default_value_t = 2.0)]
    pub poll_secs: f64,
    /// Milliseconds every policy and schema file must stay unchanged (size,
    /// modification time and content) before a load takes it, so that a
    /// file written in several steps is never served half-written.
    #[arg(long, env = "CEDARD_SETTLE_MS", default_value_t = 500)]
    pub settle_ms: u64,
    /// Do not watch for file events; rely on the periodic check and SIGHUP.
    #[arg(long, env = "CEDARD_NO_WATCH")]
    pub no_watch: bool,
    /// The redb data file of users, accounts, members, invites and caller
    /// keys (its folder is created if missing).
    #[arg(long, env = "CEDARD_DATA", default_value = "data/cedard.redb")]
    pub data: PathBuf,
    /// A PostgreSQL URL (`postgres://user:password@host/db`): keep the
    /// directory there instead of in `--data`, shared by several replicas.
    #[arg(long, env = "CEDARD_STORE")]
    pub store: Option<String>,
    /// With `--store`: milliseconds between checks of the store revision
    /// when no notification of another replica's write arrived; the most a
    /// replica is stale when a caller asks for no consistency.
    #[arg(long, env = "CEDARD_STORE_POLL_MS", default_value_t = 100)]
    pub store_poll_ms: u64,
    /// With `--store`: the longest a replica answers from what it knows
    /// without having confirmed the store revision with the database. Past
    /// it (the database is unreachable, or this replica is cut off from it),
    /// every decision that needs stored facts and every keyed request is
    /// refused with 503 `store_unavailable`, never answered from memory.
    /// Default: 1000, or twice `--store-poll-ms` when that is more; at least
    /// twice `--store-poll-ms`.
    #[arg(long, env = "CEDARD_STORE_MAX_STALENESS_MS")]
    pub store_max_staleness_ms: Option<u64>,
    /// The base URL callers reach cedard at: the AuthZEN
    /// `policy_decision_point`, and the start of invite links
    /// (`<public-url>/invites/<token>`). Its host is also accepted in `Host`
    /// headers. Default: `http://` (or `https://` with TLS) and the address
    /// cedard listens on.
    #[arg(long, env = "CEDARD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Another host name cedard answers to (repeatable). IP addresses and
    /// `localhost` are always accepted; `*` accepts any (unsafe: DNS
    /// rebinding).
    #[arg(
        long = "allowed-host",
        env = "CEDARD_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// Serve callers off loopback even though no caller key exists. Anyone
    /// who can reach the port can then act as anyone: for a private network
    /// you fully trust, never for production.
    #[arg(long, env = "CEDARD_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Who the acting user of a management call may be named by:
    /// `header-or-token` (default) believes `X-Actor` from a `manage` key
    /// (for backends that authenticate users themselves) or a verified user
    /// token (`X-Actor-Token`, or the token alone on the routes an end user
    /// calls); `token-only` refuses `X-Actor`, so that only a token the
    /// issuer signed names the actor.
    #[arg(long, env = "CEDARD_ACTOR", value_enum, default_value_t = ActorMode::HeaderOrToken)]
    pub actor: ActorMode,
    /// The most bytes of verified tokens remembered (keyed by the whole
    /// token, never past its `exp`); 0 verifies every token afresh.
    #[arg(long, env = "CEDARD_TOKEN_CACHE_BYTES", default_value_t = crate::identity::DEFAULT_TOKEN_CACHE_BYTES)]
    pub token_cache_bytes: usize,
    /// TLS certificate chain (PEM). With `--tls-key`, cedard serves HTTPS.
    #[arg(long, env = "CEDARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CEDARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The largest request body in bytes (413 above it).
    #[arg(long, env = "CEDARD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// The most inline entities one call may send (400 above it).
    #[arg(long, env = "CEDARD_MAX_INLINE_ENTITIES", default_value_t = 2000)]
    pub max_inline_entities: usize,
    /// The most stored users and accounts remembered (built and
    /// schema-checked) between writes; when full, the memo starts over.
    /// Enough for the whole directory is fastest: about 3 KB each.
    #[arg(long, env = "CEDARD_MEMO_ENTITIES", default_value_t = crate::facts::EntityMemo::DEFAULT_CAPACITY)]
    pub memo_entities: usize,
    /// The most requests handled at once; more get an immediate 503 with
    /// `Retry-After`.
    #[arg(long, env = "CEDARD_MAX_CONCURRENT", default_value_t = 256)]
    pub max_concurrent: usize,
    /// Milliseconds a request may take before it is answered with a 503.
    #[arg(long, env = "CEDARD_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Milliseconds a client has to send a request's body, read before the
    /// request takes one of `--max-concurrent`'s places (a 408 after it).
    #[arg(long, env = "CEDARD_BODY_TIMEOUT_MS", default_value_t = 5_000)]
    pub body_timeout_ms: u64,
    /// Milliseconds a client has to send a request's headers (slowloris).
    #[arg(long, env = "CEDARD_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, env = "CEDARD_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// The most open connections; more are closed at once.
    #[arg(long, env = "CEDARD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// The most open connections from one peer address. At either limit,
    /// the oldest connection that has not yet sent a whole request head is
    /// closed to make room before a new one is refused.
    #[arg(long, env = "CEDARD_MAX_CONNECTIONS_PER_PEER", default_value_t = 1024)]
    pub max_connections_per_peer: usize,
    /// Write one JSON line per decision and management write to this file
    /// (`-` for standard output).
    #[arg(long, env = "CEDARD_DECISION_LOG")]
    pub decision_log: Option<PathBuf>,
    /// Keep only these decisions in the decision log.
    #[arg(long, env = "CEDARD_DECISION_LOG_ONLY", value_enum)]
    pub decision_log_only: Option<LogOnly>,
    /// Include each request's context in the decision log.
    #[arg(long, env = "CEDARD_DECISION_LOG_CONTEXT")]
    pub decision_log_context: bool,
    /// The folder under which the console's Impact page may read a
    /// candidate policy folder on the server. Off by default: the page then
    /// takes an edited or uploaded file only, and reveals nothing of the
    /// server's folders.
    #[arg(long, env = "CEDARD_CANDIDATES_ROOT")]
    pub candidates_root: Option<PathBuf>,
    /// Rotate the decision log when it reaches this many MiB (0: never).
    #[arg(long, env = "CEDARD_DECISION_LOG_MAX_MB", default_value_t = 256)]
    pub decision_log_max_mb: u64,
    /// Rotated decision-log files kept (`PATH.1` … `PATH.N`).
    #[arg(long, env = "CEDARD_DECISION_LOG_KEEP", default_value_t = 5)]
    pub decision_log_keep: usize,
    /// Serve `/metrics` without a key on this separate address (for a
    /// private monitoring network), besides `/metrics` with an `admin` key
    /// on the main address.
    #[arg(long, env = "CEDARD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl Options {
    /// The defaults, as `cedard serve` with no flags would have them
    /// (`CEDARD_*` variables apply).
    pub fn defaults() -> Self {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            options: Options,
        }
        let matches = Wrapper::command().get_matches_from(["cedard"]);
        match Wrapper::from_arg_matches(&matches) {
            Ok(w) => w.options,
            // The defaults above are all valid; clap cannot reject them.
            Err(e) => e.exit(),
        }
    }

    /// The debounce interval.
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }

    /// How long files must stay unchanged before a load takes them.
    pub fn settle(&self) -> Duration {
        Duration::from_millis(self.settle_ms)
    }

    /// The content-check interval (at least 50 ms).
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.poll_secs.max(0.05))
    }

    /// How often a replica confirms the store revision (at least 1 ms).
    pub fn store_poll(&self) -> Duration {
        Duration::from_millis(self.store_poll_ms.max(1))
    }

    /// The staleness bound of a replica: `--store-max-staleness-ms`, or
    /// its default. A bound under twice the poll interval is refused: the
    /// replica would refuse between two polls of a healthy database.
    pub fn store_max_staleness(&self) -> Result<Duration, String> {
        let poll = self.store_poll();
        match self.store_max_staleness_ms {
            None => Ok(Duration::from_secs(1).max(poll * 2)),
            Some(ms) if Duration::from_millis(ms) >= poll * 2 => Ok(Duration::from_millis(ms)),
            Some(ms) => Err(format!(
                "--store-max-staleness-ms ({ms}) must be at least twice --store-poll-ms ({})",
                self.store_poll_ms
            )),
        }
    }
}
