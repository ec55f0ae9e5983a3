//! Measures how long loading one policy file takes as it grows: the curve
//! of issue 12 (2,000 / 8,000 / 32,000 policies in one file), read, parsed,
//! located and strictly validated exactly as a reload does it.
//!
//! Usage: `cargo run --release --example load_curve [count…]`

use std::path::PathBuf;
use std::time::Instant;

use cedard::policy::{self, Limits, Sources};

/// One policy of the default pack's shape, with its own id.
fn policy(i: usize) -> String {
    format!(
        "// Policy {i}.\n@id(\"p{i}\")\npermit (\n  principal,\n  action in [Action::\"basic\", Action::\"managePods\"],\n  resource\n)\nwhen {{ principal in resource.account.roles.dev }};\n\n"
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let counts: Vec<usize> = {
        let given: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?;
        if given.is_empty() {
            vec![2_000, 8_000, 32_000]
        } else {
            given
        }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for count in counts {
        let dir = tempfile::tempdir()?;
        let text: String = (0..count).map(policy).collect();
        std::fs::write(dir.path().join("many.cedar"), &text)?;
        let sources = Sources {
            policies: dir.path().to_path_buf(),
            schema: root.join("schema"),
            limits: Limits {
                max_file_bytes: u64::MAX,
                max_policies: usize::MAX,
                ..Limits::default()
            },
            ..Default::default()
        };
        let started = Instant::now();
        let snapshot = policy::load(&sources, 1).map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        assert_eq!(snapshot.meta.len(), count);
        println!(
            "{count:>7} policies, {:>6} KiB: {:>8.3} s",
            text.len() / 1024,
            elapsed.as_secs_f64()
        );
    }
    Ok(())
}
