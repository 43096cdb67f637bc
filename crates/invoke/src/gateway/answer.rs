//! Bedrock's whole answers, read: passed on byte for byte, with their usage or their failure classified.

use super::*;

/// Bedrock's answer to a call, read: the reply to pass on and the usage it reported.
#[derive(Debug)]
pub struct Answered {
    /// The reply (Bedrock's status, headers and bytes).
    pub reply: Reply,
    /// The usage it reported; `None` settles at the worst case.
    pub usage: Option<Usage>,
}

/// A call that brought no answer to pass on as a success.
#[derive(Debug)]
pub struct Failure {
    /// The reply to pass on (Bedrock's own error answer, or the gateway's).
    pub reply: Reply,
    /// Whether Bedrock provably generated nothing ([`is_refusal`]).
    pub refundable: bool,
    /// Why, for the record.
    pub reason: String,
}

impl From<BedrockError> for Failure {
    fn from(e: BedrockError) -> Failure {
        let refundable = matches!(e, BedrockError::NotSent(_));
        let reason = e.message().to_string();
        Failure {
            reply: bedrock_reply(e),
            refundable,
            reason,
        }
    }
}

/// Bedrock's response headers passed on to the caller: its content type, request ID and its own
/// `x-amzn-bedrock-*` (token counts, latency); never hop-by-hop or length headers.
pub(super) fn passed_answer_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            n == "content-type"
                || n == "x-amzn-requestid"
                || n == "x-amzn-errortype"
                || n.starts_with("x-amzn-bedrock-")
        })
        .cloned()
        .collect()
}

/// Reads a whole answer: a success with its usage, or Bedrock's error answer, passed on byte for
/// byte and classified ([`is_refusal`]).
// A failure is taken apart by its one caller at once; boxing its reply would buy nothing.
#[allow(clippy::result_large_err)]
pub fn read_answer(family: Family, answer: Answer) -> Result<Answered, Failure> {
    let body = match answer.body {
        AnswerBody::Full(b) => b,
        AnswerBody::Stream(_) => {
            return Err(Failure {
                reply: Reply::error(
                    502,
                    "InternalServerException",
                    "Bedrock answered a stream where it should not",
                ),
                refundable: false,
                reason: "an unexpected stream".into(),
            });
        }
    };
    let reply = Reply {
        status: answer.status,
        headers: passed_answer_headers(&answer.headers),
        body: Value::Null,
        raw: Some(body.clone()),
    };
    if (200..300).contains(&answer.status) {
        let usage = match family {
            Family::Converse => serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| ops::converse_usage(&b)),
            _ => ops::invoke_usage(family, &answer.headers, &body),
        };
        return Ok(Answered { reply, usage });
    }
    let kind = answer
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amzn-errortype"))
        .map(|(_, v)| v.split(':').next().unwrap_or(v).to_string());
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| {
            b.get("message")
                .or(b.get("Message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    Err(Failure {
        refundable: is_refusal(answer.status, kind.as_deref()),
        reason: format!(
            "Bedrock answered {} {}: {message}",
            answer.status,
            kind.as_deref().unwrap_or("without an error type")
        ),
        reply,
    })
}
