//! `--logging-format` / `logging.format`: kube-proxy's two log formats.
use super::ConfigError;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the event's fields and
    /// `target`.
    Json,
}

impl LogFormat {
    /// Parses a format name as kube-proxy accepts it; empty is the default.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "{other:?}: unsupported log format; supported values: \"json\", \"text\""
            )),
        }
    }

    /// Parses the `logging.format` field.
    pub fn from_field(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text).map_err(|message| ConfigError::InvalidValue {
            field: "logging.format",
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(LogFormat::parse(""), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        let err = LogFormat::from_field("xml").unwrap_err().to_string();
        assert!(
            err.contains("logging.format") && err.contains("json"),
            "{err}"
        );
    }
}
