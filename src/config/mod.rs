//! Configuration: the TOML file (`file`), its validation (`validate`) and the model the proxy runs on
//! (`model`).
//!
//! Loading never panics on user input and never stops at the first mistake: [`ConfigErrors`] carries
//! every problem found, each with the path of the offending key (`routes[2].pool: no pool named
//! "web2"`). That is what `usher check` prints.

mod file;
mod model;
mod validate;

pub use model::*;

use std::fmt;
use std::path::Path;

/// One problem in a configuration, with the path of the key that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration, in file order as far as possible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.path.as_str()).collect()
    }
}

impl Config {
    /// Reads and validates a configuration file; relative paths inside it are relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: path.display().to_string(),
                message: format!("cannot read the configuration: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base)
    }

    /// Validates configuration text; `base_dir` anchors relative paths such as tier tables.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        validate::parse(text, base_dir)
    }
}

#[cfg(test)]
mod tests;
