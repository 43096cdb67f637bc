//! Replies: the gateway's answers, and the errors it gives in Bedrock's shape.

use super::*;

/// A final answer: status, headers and a JSON body, or Bedrock's own bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// JSON body (when `raw` is `None`).
    pub body: Value,
    /// Bedrock's answer, byte for byte: sent instead of `body`.
    pub raw: Option<Bytes>,
}

impl Reply {
    /// A JSON error `{"error": code, "message": message}`, its code also in `x-amzn-ErrorType`
    /// as Bedrock sends it, so every AWS SDK reads it.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("x-amzn-errortype".into(), code.into())],
            body: json!({ "error": code, "message": message.into() }),
            raw: None,
        }
    }

    /// The body as JSON (Bedrock's bytes parsed, `null` if they are not JSON).
    pub fn json(&self) -> Value {
        match &self.raw {
            Some(raw) => serde_json::from_slice(raw).unwrap_or(Value::Null),
            None => self.body.clone(),
        }
    }

    /// The body's bytes.
    pub fn bytes(&self) -> Bytes {
        match &self.raw {
            Some(raw) => raw.clone(),
            None => Bytes::from(self.body.to_string()),
        }
    }

    pub(crate) fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The answer when the ledger could not serve a request: 503, never a fail-open.
pub(super) fn ledger_reply(e: &LedgerError) -> Reply {
    match e {
        LedgerError::Contention(_) => Reply::error(
            503,
            "LedgerBusy",
            "too many concurrent requests on this application's budget; the request was not sent",
        )
        .with_header("retry-after", "1"),
        _ => Reply::error(
            503,
            "LedgerUnavailable",
            "the budget ledger is unavailable; the request was not sent (fail closed)",
        ),
    }
}

/// The largest result message kept on a queued request's record and sent to its results queue:
/// under SQS's 256 KiB message and DynamoDB's 400 KB item, with room for the record's other
/// attributes. A larger answer is replaced by an error naming its size, so settlement never
/// fails on size and the sender always hears back.
pub const MAX_RESULT_BYTES: usize = 240 * 1024;

/// The result message of a queued request, replaced by a `ResultTooLarge` error above
/// [`MAX_RESULT_BYTES`].
pub fn bounded_result(request_id: &str, reply: &Reply) -> String {
    let message = result_message(request_id, reply).to_string();
    if message.len() <= MAX_RESULT_BYTES {
        return message;
    }
    let mut error = Reply::error(
        413,
        "ResultTooLarge",
        format!(
            "the response has {} bytes, more than a results queue message holds ({MAX_RESULT_BYTES}); ask for less output",
            message.len()
        ),
    );
    if let Some(usage) = reply.json().get("usage") {
        error.body["usage"] = usage.clone();
    }
    result_message(request_id, &error).to_string()
}

pub(super) fn duplicate(request_id: &str) -> Reply {
    Reply::error(
        409,
        "DuplicateRequest",
        format!("request `{request_id}` was already seen"),
    )
}

pub(super) fn unknown_model(model_param: &str) -> Reply {
    Reply::error(
        404,
        "UnknownModel",
        format!("`{model_param}` is neither a model alias of this gateway nor a model ID"),
    )
}

pub(super) fn no_budget(application: &str) -> Reply {
    Reply::error(
        403,
        "NoBudget",
        format!("application `{application}` has no budget configured"),
    )
}

pub(super) fn not_allowed(application: &str, model: &str) -> Reply {
    Reply::error(
        403,
        "ModelNotAllowed",
        format!("application `{application}` may not call model `{model}`"),
    )
}

/// A 400 for a body that is not what the operation takes, typed as Bedrock's
/// `ValidationException` so SDKs read it as one.
pub(crate) fn invalid(message: &str) -> Reply {
    Reply {
        status: 400,
        headers: vec![("x-amzn-errortype".into(), "ValidationException".into())],
        body: json!({ "error": "ValidationError", "message": message }),
        raw: None,
    }
}

/// A 400-class answer naming the request field at fault, typed as Bedrock's
/// `ValidationException` so SDKs read it as one.
pub(crate) fn field(status: u16, field: &str, message: &str) -> Reply {
    Reply {
        status,
        headers: vec![("x-amzn-errortype".into(), "ValidationException".into())],
        body: json!({ "error": "ValidationError", "field": field, "message": message }),
        raw: None,
    }
}

pub(super) fn describe(e: &Exceeded) -> String {
    match e.metric {
        LimitMetric::Tokens => format!(
            "`{}` limit of {} tokens ({} used, {} requested)",
            e.window, e.limit, e.used, e.requested
        ),
        LimitMetric::Usd => format!(
            "`{}` limit of {} USD ({} used, {} requested)",
            e.window,
            budget::MicroUsd(e.limit),
            budget::MicroUsd(e.used),
            budget::MicroUsd(e.requested)
        ),
    }
}

pub(super) fn bedrock_reply(err: BedrockError) -> Reply {
    match err {
        BedrockError::Failed(m) => Reply::error(502, "BedrockFailed", m),
        BedrockError::Timeout(m) => Reply::error(504, "BedrockTimeout", m),
        BedrockError::NotSent(m) => Reply::error(503, "NotSent", m),
    }
}

/// The message delivered to an application's results queue.
pub fn result_message(request_id: &str, reply: &Reply) -> Value {
    if reply.status == 200 {
        json!({ "requestId": request_id, "status": reply.status, "response": reply.json() })
    } else {
        json!({ "requestId": request_id, "status": reply.status, "error": reply.json() })
    }
}
