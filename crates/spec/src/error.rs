use std::fmt;

use thiserror::Error;

use crate::yaml::Span;

/// One problem in a spec: what, where in the YAML tree, and where in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Dotted YAML path, e.g. `applications.support-bot.limits[1].usd` (empty for the document).
    pub path: String,
    /// Lower-case sentence with values in backticks.
    pub message: String,
    /// A hint on how to fix it, e.g. "did you mean `limits`?".
    pub help: Option<String>,
    /// Where in the file.
    pub span: Span,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// Every problem found in one spec file, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct SpecErrors {
    /// The file name as given by the caller, used in `file:line:col`.
    pub file: String,
    /// The problems, in source order.
    pub errors: Vec<SpecError>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {e}", self.file, e.span.line, e.span.col)?;
        }
        Ok(())
    }
}
