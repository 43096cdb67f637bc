//! Why a Lambda event, a queued message or the function's settings could not be handled.
//!
//! These are not answers to callers: a caller's mistake, an over-budget request or a Bedrock
//! error is a [`Reply`](crate::Reply) with its status. An [`Error`] fails the invocation, so the
//! platform acts on it: API Gateway answers 401 to an authorizer's `Unauthorized` and 500
//! otherwise, SQS redelivers a failed message, Step Functions fails the execution.

use ledger::LedgerError;

/// What stopped the invoke function.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `TOKENFENCE_*` environment variable is missing or malformed.
    #[error("`{var}` {problem}")]
    Setting {
        /// The variable.
        var: &'static str,
        /// What is wrong with it, e.g. ``is `0`, not a positive integer``.
        problem: String,
    },
    /// The event is not of the kind its shape announced.
    #[error("not {kind}: {source}")]
    Event {
        /// The kind expected, e.g. `an SQS event`.
        kind: &'static str,
        /// Why it does not decode.
        source: serde_json::Error,
    },
    /// An event of no kind the function serves.
    #[error("unsupported event: expected an API Gateway REST proxy event, an SQS event or a sweep")]
    UnsupportedEvent,
    /// The REST API's authorizer refuses the key. The message is API Gateway's word for a
    /// 401: it must stay exactly `Unauthorized`.
    #[error("Unauthorized")]
    Unauthorized,
    /// The ledger failed while the function was `doing` something.
    #[error("the ledger could not {doing}: {source}")]
    Ledger {
        /// What the function was doing, e.g. `check the key`.
        doing: &'static str,
        /// The ledger's error.
        source: LedgerError,
    },
    /// An AWS call failed.
    #[error("{operation} `{target}`: {message}")]
    Aws {
        /// The API operation, e.g. `SendMessage`.
        operation: &'static str,
        /// What it was called on: a queue URL or name, an API key ID.
        target: String,
        /// The SDK's error with its causes.
        message: String,
    },
    /// An AWS call succeeded without the field the function needs.
    #[error("{operation} `{target}` returned no {field}")]
    AwsAnswer {
        /// The API operation.
        operation: &'static str,
        /// What it was called on.
        target: String,
        /// The missing field.
        field: &'static str,
    },
    /// A message or queue the queue front cannot place.
    #[error("{0}")]
    Queue(String),
    /// A transient answer on the queue front: the message is retried instead of answered.
    #[error("transient answer {status} `{code}`: the message is retried")]
    Transient {
        /// The answer's status.
        status: u16,
        /// Its error code.
        code: String,
    },
    /// A state the fronts never reach; failing loudly beats answering wrongly.
    #[error("{0}")]
    Unexpected(&'static str),
    /// A value that does not encode as JSON.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// A setting's error.
    pub(crate) fn setting(var: &'static str, problem: impl Into<String>) -> Self {
        Error::Setting {
            var,
            problem: problem.into(),
        }
    }

    /// A `doing` step's ledger error, as a closure for `map_err`.
    pub(crate) fn ledger(doing: &'static str) -> impl FnOnce(LedgerError) -> Self {
        move |source| Error::Ledger { doing, source }
    }

    /// An event that does not decode as `kind`, as a closure for `map_err`.
    pub fn event(kind: &'static str) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| Error::Event { kind, source }
    }

    /// The error's name, reported as the invocation's `errorType`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Setting { .. } => "InvalidSetting",
            Error::Event { .. } => "InvalidEvent",
            Error::UnsupportedEvent => "UnsupportedEvent",
            Error::Unauthorized => "Unauthorized",
            Error::Ledger { .. } => "LedgerError",
            Error::Aws { .. } | Error::AwsAnswer { .. } => "AwsError",
            Error::Queue(_) => "QueueError",
            Error::Transient { .. } => "TransientAnswer",
            Error::Unexpected(_) => "InternalError",
            Error::Json(_) => "JsonError",
        }
    }
}

/// The invocation's error as the Lambda runtime reports it: `errorType` names the kind (rather
/// than the Rust type), `errorMessage` is the message.
impl From<Error> for lambda_runtime::Diagnostic {
    fn from(error: Error) -> Self {
        lambda_runtime::Diagnostic {
            error_type: error.kind().to_string(),
            error_message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_reports_the_kind_and_the_message() {
        let d = lambda_runtime::Diagnostic::from(Error::Unauthorized);
        assert_eq!(d.error_type, "Unauthorized");
        assert_eq!(d.error_message, "Unauthorized");
        let d = lambda_runtime::Diagnostic::from(Error::Transient {
            status: 429,
            code: "ThrottlingException".into(),
        });
        assert_eq!(d.error_type, "TransientAnswer");
        assert_eq!(
            d.error_message,
            "transient answer 429 `ThrottlingException`: the message is retried"
        );
        let d = lambda_runtime::Diagnostic::from(Error::ledger("check the key")(
            LedgerError::Unavailable("timeout".into()),
        ));
        assert_eq!(d.error_type, "LedgerError");
        assert_eq!(
            d.error_message,
            "the ledger could not check the key: ledger unavailable: timeout"
        );
    }
}
