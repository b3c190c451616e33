//! Reading the YAML folders operators write (segments, campaigns, reply
//! rules): every `*.yaml` / `*.yml` file of a folder, sorted by name, with
//! what could not be read as diagnostics at the file.

use crate::Diagnostic;
use crate::yaml::Pos;
use std::path::{Path, PathBuf};

/// A file's path and text.
pub type Source = (PathBuf, String);

/// What a missing folder means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingDir {
    /// An error (segments are required).
    Error,
    /// No files (campaigns and reply rules are optional).
    Empty,
}

fn io_error(path: &Path, error: &std::io::Error) -> Diagnostic {
    Diagnostic::new(path, Pos::START, format!("cannot read: {error}"))
}

/// A file's text, or a diagnostic at it (unreadable, not UTF-8).
pub fn read_text(path: &Path) -> Result<String, Diagnostic> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, &e))?;
    String::from_utf8(bytes).map_err(|_| Diagnostic::new(path, Pos::START, "not valid UTF-8"))
}

/// Every `*.yaml` / `*.yml` file of `dir` (not recursive), sorted by name,
/// with its text. The diagnostics are files that could not be read; `Err`
/// when the folder itself cannot be (or is missing, with [`MissingDir::Error`]).
pub fn read_yaml_dir(dir: &Path, missing: MissingDir) -> Result<(Vec<Source>, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && missing == MissingDir::Empty => {
            return Ok((Vec::new(), diagnostics));
        }
        Err(error) => return Err(vec![io_error(dir, &error)]),
        Ok(entries) => entries,
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                let is_yaml = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e == "yaml" || e == "yml");
                if is_yaml && path.is_file() {
                    paths.push(path);
                }
            }
            Err(error) => diagnostics.push(io_error(dir, &error)),
        }
    }
    paths.sort();
    let mut sources = Vec::with_capacity(paths.len());
    for path in paths {
        match read_text(&path) {
            Ok(text) => sources.push((path, text)),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    Ok((sources, diagnostics))
}
