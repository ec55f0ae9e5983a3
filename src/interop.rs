//! `cedard interop`: replays the OpenID AuthZEN interop suites against a
//! running PDP over HTTP and reports `N passed, M failed`.
//!
//! A suite file is one of the working group's JSON files: `evaluation`
//! (single checks whose `expected` is a boolean; the answer must be exactly
//! `{"decision": <expected>}`, as harnesses compare it), `evaluations`
//! (boxcarred checks whose `expected` is the list of decisions, compared
//! exactly), and searches under `evaluation` or `search` whose `expected` is
//! `{"results": [...]}`, compared as sets after following every
//! `page.next_token`. The kind of a search follows from the request: no
//! `action` is an action search, a subject without an id a subject search,
//! a resource without an id a resource search. This module is a client of
//! the HTTP API, like any caller: it shares no code with the pipeline.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// One case that did not get its expected answer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `file: evaluation[3]`.
    pub case: String,
    /// What was expected and what came back.
    pub detail: String,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases that got their expected answer.
    pub passed: usize,
    /// Cases that did not.
    pub failures: Vec<Failure>,
}

impl Report {
    /// `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failures.len())
    }
}

/// Why a run could not be made at all (a file unreadable, the PDP
/// unreachable).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A suite file could not be read or is not a suite.
    #[error("{}: {message}", .path.display())]
    Suite {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The PDP could not be reached, or answered something that is not JSON.
    #[error("{0}")]
    Transport(String),
}

/// Replays `files` against the PDP at `base` (its `policy_decision_point`),
/// with `key` as the bearer key if given.
pub async fn run(base: &str, files: &[PathBuf], key: Option<&str>) -> Result<Report, Error> {
    let client = Client {
        http: reqwest::Client::new(),
        base: base.trim_end_matches('/').to_owned(),
        key: key.map(str::to_owned),
    };
    let mut report = Report::default();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Suite {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let suite: Value = serde_json::from_str(&text).map_err(|e| Error::Suite {
            path: path.clone(),
            message: format!("not JSON: {e}"),
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match path.parent().and_then(Path::file_name) {
            Some(dir) => format!("{}/{name}", dir.to_string_lossy()),
            None => name,
        };
        let mut cases = 0;
        for key in ["evaluation", "evaluations", "search"] {
            let Some(items) = suite.get(key).and_then(Value::as_array) else {
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                cases += 1;
                let case = format!("{name}: {key}[{i}]");
                let outcome = client.case(key, item).await?;
                match outcome {
                    Ok(()) => report.passed += 1,
                    Err(detail) => report.failures.push(Failure { case, detail }),
                }
            }
        }
        if cases == 0 {
            return Err(Error::Suite {
                path: path.clone(),
                message: "no `evaluation`, `evaluations` or `search` cases".into(),
            });
        }
    }
    Ok(report)
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), Error> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::Transport(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let value = response
            .json()
            .await
            .map_err(|e| Error::Transport(format!("{path} answered {status} without JSON: {e}")))?;
        Ok((status, value))
    }

    /// Runs one case: `Ok(Ok(()))` when it got its expected answer.
    async fn case(&self, kind: &str, item: &Value) -> Result<Result<(), String>, Error> {
        let request = &item["request"];
        let expected = &item["expected"];
        if let Some(want) = expected.as_bool() {
            let (status, got) = self.post("/access/v1/evaluation", request).await?;
            let want = json!({ "decision": want });
            return Ok(if status == 200 && got == want {
                Ok(())
            } else {
                Err(format!("expected 200 {want}, got {status} {got}"))
            });
        }
        if let Some(want) = expected.as_array() {
            let (status, got) = self.post("/access/v1/evaluations", request).await?;
            let want = json!({ "evaluations": want });
            return Ok(if status == 200 && got == want {
                Ok(())
            } else {
                Err(format!("expected 200 {want}, got {status} {got}"))
            });
        }
        let Some(want) = expected.get("results").and_then(Value::as_array) else {
            return Ok(Err(format!(
                "{kind}: `expected` is neither a decision, a list of decisions nor search results"
            )));
        };
        let path = if request.get("action").is_none() {
            "/access/v1/search/action"
        } else if request["subject"].get("id").is_none() {
            "/access/v1/search/subject"
        } else {
            "/access/v1/search/resource"
        };
        let mut got: Vec<Value> = Vec::new();
        let mut body = request.clone();
        // Follows the pages, with a bound in case a PDP never stops.
        for _ in 0..10_000 {
            let (status, page) = self.post(path, &body).await?;
            if status != 200 {
                return Ok(Err(format!("{path} answered {status} {page}")));
            }
            got.extend(page["results"].as_array().cloned().unwrap_or_default());
            match page["page"]["next_token"].as_str() {
                Some(token) if !token.is_empty() => {
                    body["page"] = json!({ "token": token });
                }
                _ => break,
            }
        }
        let as_set = |v: &[Value]| -> BTreeSet<String> { v.iter().map(Value::to_string).collect() };
        let (want_set, got_set) = (as_set(want), as_set(&got));
        Ok(if want_set == got_set && got.len() == got_set.len() {
            Ok(())
        } else {
            let missing: Vec<_> = want_set.difference(&got_set).collect();
            let extra: Vec<_> = got_set.difference(&want_set).collect();
            Err(format!(
                "{path}: missing {missing:?}, unexpected {extra:?}{}",
                if got.len() != got_set.len() {
                    " (a result repeated)"
                } else {
                    ""
                }
            ))
        })
    }
}
