//! Rendering a [`Report`]: the text a person reads (one line per failure,
//! known differences, then `N passed, M failed`) and JUnit XML for CI
//! systems.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Report, Status};

/// The last line of every text report: `N passed, M failed`.
pub fn summary(report: &Report) -> String {
    format!("{} passed, {} failed", report.passed(), report.failed())
}

/// The text report. Each failure is one line naming the file and case and
/// saying what was expected and what came back. Known differences are
/// counted, grouped by reason (and listed one by one when `verbose`). The
/// last line is the [`summary`].
pub fn text(report: &Report, verbose: bool) -> String {
    let mut out = String::new();
    for file in &report.files {
        for case in file.checks.iter().chain(&file.cases) {
            if let Status::Failed(why) = &case.status {
                let _ = writeln!(out, "FAIL {}: {}: {}", file.file, case.name, one_line(why));
            }
        }
    }
    let known = report.known_differences();
    if verbose {
        for (file, why) in &known {
            let _ = writeln!(out, "known difference: {file}: {why}");
        }
    }
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, why) in &known {
        *by_reason.entry(why).or_default() += 1;
    }
    for (why, count) in by_reason {
        let noun = if count == 1 {
            "known difference"
        } else {
            "known differences"
        };
        let hint = if verbose {
            ""
        } else {
            " (`--verbose` lists the files)"
        };
        let _ = writeln!(out, "{count} {noun}, not failures: {why}{hint}");
    }
    let _ = writeln!(out, "{}", summary(report));
    out
}

/// Keeps a failure on one line: Cedar messages and entity ids may contain
/// newlines.
fn one_line(s: &str) -> String {
    s.replace('\r', "\\r").replace('\n', "\\n")
}

/// The report as JUnit XML: one `<testsuite>` per file, one `<testcase>` per
/// request plus one per file check (`validation`, `load`). A known difference
/// is a `<skipped>` case whose message says why.
pub fn junit(report: &Report) -> String {
    let total_cases: usize = report
        .files
        .iter()
        .map(|f| f.checks.len() + f.cases.len())
        .sum();
    let mut out = String::new();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"cedard test\" tests=\"{total_cases}\" failures=\"{}\" skipped=\"{}\">",
        report.failed(),
        report.known_differences().len()
    );
    for file in &report.files {
        let cases: Vec<_> = file.checks.iter().chain(&file.cases).collect();
        let failures = cases
            .iter()
            .filter(|c| matches!(c.status, Status::Failed(_)))
            .count();
        let skipped = cases
            .iter()
            .filter(|c| matches!(c.status, Status::KnownDifference(_)))
            .count();
        let name = escape(&file.file);
        let _ = writeln!(
            out,
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">",
            cases.len()
        );
        for case in cases {
            let case_name = escape(&case.name);
            match &case.status {
                Status::Passed => {
                    let _ = writeln!(
                        out,
                        "    <testcase classname=\"{name}\" name=\"{case_name}\"/>"
                    );
                }
                Status::Failed(why) => {
                    let why = escape(why);
                    let _ = writeln!(
                        out,
                        "    <testcase classname=\"{name}\" name=\"{case_name}\">\
                         <failure message=\"{why}\">{why}</failure></testcase>"
                    );
                }
                Status::KnownDifference(why) => {
                    let why = escape(&format!("known difference: {why}"));
                    let _ = writeln!(
                        out,
                        "    <testcase classname=\"{name}\" name=\"{case_name}\">\
                         <skipped message=\"{why}\"/></testcase>"
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Escapes text for an XML attribute or element. Characters XML 1.0 cannot
/// carry at all (most control characters, which Cedar entity ids may hold)
/// are written as `\u{..}` instead.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}
