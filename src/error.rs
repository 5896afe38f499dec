//! Configuration errors: every one names the file, the line where there is one, and what was
//! expected. They are raised once, at load time, never per trial.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error in a suite file or in models.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: impl AsRef<Path>, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            file: file.as_ref().to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// An error about the environment rather than a file (an unreadable directory, a bad variable).
    pub fn env(message: impl Into<String>) -> Self {
        Self::new("", None, message)
    }
}

impl From<crate::kinds::EnvError> for ConfigError {
    fn from(e: crate::kinds::EnvError) -> Self {
        ConfigError::env(e.to_string())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display().to_string();
        match (file.is_empty(), self.line) {
            (true, _) => write!(f, "{}", self.message),
            (false, Some(line)) => write!(f, "{file}:{line}: {}", self.message),
            (false, None) => write!(f, "{file}: {}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Several configuration errors, reported together (one per problem, each with its location).
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was pushed.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads a configuration file as UTF-8 text, refusing empty and binary files with a clear message.
pub(crate) fn read_text(path: &Path, expected: &str) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::new(path, None, format!("cannot read file: {e}")))?;
    if bytes.contains(&0) {
        return Err(ConfigError::new(
            path,
            None,
            format!("binary file (expected {expected})"),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        ConfigError::new(
            path,
            Some(line),
            format!("not valid UTF-8 text (expected {expected})"),
        )
    })?;
    if text.trim().is_empty() {
        return Err(ConfigError::new(
            path,
            None,
            format!("file is empty (expected {expected})"),
        ));
    }
    Ok(text)
}

/// 1-based line of a byte offset in `text`.
pub(crate) fn line_of_offset(text: &str, offset: usize) -> usize {
    1 + text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}
