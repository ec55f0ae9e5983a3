//! Where test files are read from: the file system, and `.tar.gz` archives
//! named on the command line (Cedar's corpus ships as one). An archive is read
//! whole into memory once and then addressed as if it were a folder, so
//! `corpus-tests.tar.gz/corpus-tests/0004….json` resolves the paths inside it
//! like any test file on disk.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::SuiteError;

/// The file system plus the archives read so far.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Text files inside archives, by `<archive path>/<path inside>`.
    archived: HashMap<PathBuf, Arc<str>>,
}

impl Tree {
    /// Whether `path` names an archive this runner reads.
    pub fn is_archive(path: &Path) -> bool {
        let name = path.to_string_lossy();
        name.ends_with(".tar.gz") || name.ends_with(".tgz")
    }

    /// Reads a `.tar.gz` archive into memory and returns the paths of the
    /// files in it. Files that are not UTF-8 text are left out (a test can
    /// only refer to text).
    pub fn add_archive(&mut self, archive: &Path) -> Result<Vec<PathBuf>, SuiteError> {
        let shown = archive.display().to_string();
        let broken = |e: std::io::Error| SuiteError::Read {
            path: shown.clone(),
            source: e,
        };
        let file = std::fs::File::open(archive).map_err(broken)?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut found = Vec::new();
        for entry in tar.entries().map_err(broken)? {
            let mut entry = entry.map_err(broken)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let inside = entry.path().map_err(broken)?.into_owned();
            let inside = inside.strip_prefix(".").unwrap_or(&inside).to_path_buf();
            let mut text = String::new();
            if entry.read_to_string(&mut text).is_err() {
                continue;
            }
            let path = archive.join(inside);
            found.push(path.clone());
            self.archived.insert(path, Arc::from(text));
        }
        found.sort();
        Ok(found)
    }

    /// Whether `path` is a file, on disk or in an archive.
    pub fn is_file(&self, path: &Path) -> bool {
        self.archived.contains_key(path) || path.is_file()
    }

    /// Reads a text file, on disk or in an archive.
    pub fn read(&self, path: &Path) -> Result<String, SuiteError> {
        if let Some(text) = self.archived.get(path) {
            return Ok(text.to_string());
        }
        std::fs::read_to_string(path).map_err(|source| SuiteError::Read {
            path: path.display().to_string(),
            source,
        })
    }
}
