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

/// No configuration is this large; a larger file (or `/dev/zero`) is a mistake, not a reason to
/// read until memory runs out.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    use crate::files::ReadError;
    crate::files::read_regular(path, MAX_FILE_BYTES).map_err(|e| match e {
        ReadError::Io(e) => e.to_string(),
        ReadError::NotAFile => "it is not a regular file".to_string(),
        ReadError::TooLarge(_) => format!(
            "larger than {} MiB; is this the configuration file?",
            MAX_FILE_BYTES >> 20
        ),
    })
}

impl Config {
    /// Reads and validates a configuration file; relative paths inside it are relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load_with_text(path).map(|(c, _)| c)
    }

    /// As [`Self::load`], also returning the file's bytes (whose hash identifies what was loaded).
    pub fn load_with_text(path: &Path) -> Result<(Config, Vec<u8>), ConfigErrors> {
        let cannot = |e: String| {
            ConfigErrors(vec![ConfigError {
                path: path.display().to_string(),
                message: format!("cannot read the configuration: {e}"),
            }])
        };
        let bytes = read_capped(path).map_err(cannot)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            cannot(format!("line {line} is not UTF-8 text"))
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let config = Self::parse(text, base)?;
        Ok((config, bytes))
    }

    /// Validates configuration text; `base_dir` anchors relative paths such as tier tables.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        validate::parse(text, base_dir, &mut system_resolve)
    }

    /// As [`Self::parse`], looking upstream host names up with `resolve` (tests, tools).
    pub fn parse_with(
        text: &str,
        base_dir: &Path,
        resolve: &mut Resolve<'_>,
    ) -> Result<Config, ConfigErrors> {
        validate::parse(text, base_dir, resolve)
    }
}

#[cfg(test)]
mod tests;
