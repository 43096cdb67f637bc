//! The Lambda steps of the Step Functions Express engine.
//!
//! The workflow calls Bedrock itself (the `aws-sdk:bedrockruntime:converse` service integration),
//! so the wait for the model is billed as Express duration at 64 MB rather than as Lambda time.
//! Two short steps run here, because the workflow language cannot do their work: `reserve`
//! (identify the caller, validate the body, estimate its input tokens, price the worst case in
//! integer micro-USD, find the calendar windows and reserve in all of them at once with the
//! ledger's conditional transaction, with fallback, shadow and queue handling) and `settle`
//! (price the actual usage, settle or refund, emit the metrics, build the answer). Both are the
//! gateway's own code ([`Gateway::admit`] and [`Gateway::complete`]), so the two engines have the
//! same budget semantics.
//!
//! Step Functions passes service-integration parameters and results in PascalCase (`Messages`,
//! `InferenceConfig`, `Usage.InputTokens`); [`to_sfn`] and [`from_sfn`] convert between that and
//! Converse JSON, leaving document-typed values (tool inputs and schemas, additional model fields)
//! untouched.

use aws_lambda_events::sqs::SqsMessage;
use ledger::Ledger;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Error;
use crate::bedrock::{BedrockError, SignedBedrock};
use crate::gateway::{
    Admission, Answered, Caller, Failure, Front, Gateway, Outcome, Reply, Request, Ticket,
};
use crate::lambda::{
    QueueContext, QueuedAdmission, Queues, application_of_key, queued_admit, queued_finish,
};
use crate::ops::Operation;

/// Step Functions keeps at most 256 KB of state; the prompt travels in it twice (the request
/// and the Converse parameters), so the engine takes bodies up to 96 KB.
pub const MAX_BODY_BYTES: usize = 96 * 1024;

/// The Bedrock the steps call directly: only when the ledger is down and policy says to fail
/// open (the workflow calls Converse itself otherwise).
pub type StepBedrock = SignedBedrock;

/// Fields whose values are documents (free JSON): their keys are the caller's, never re-cased.
const DOCUMENTS: &[&str] = &[
    "additionalModelRequestFields",
    "additionalModelResponseFields",
    "input",
    "json",
];

fn recase(value: &Value, key_case: fn(&str) -> String) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = lower_first(k);
                    let v = if DOCUMENTS.contains(&lower.as_str()) {
                        v.clone()
                    } else {
                        recase(v, key_case)
                    };
                    (key_case(k), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| recase(v, key_case)).collect()),
        other => other.clone(),
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

/// The parameters of the workflow's Converse call: the validated request in Step Functions'
/// casing, with the model (or inference profile) to call.
pub fn to_sfn(request: &Value, model_id: &str) -> Value {
    let mut params = recase(request, upper_first);
    if let Value::Object(map) = &mut params {
        map.remove("ModelId");
        map.insert("ModelId".into(), json!(model_id));
    }
    params
}

/// Converse's answer as the workflow passes it back, in Converse JSON with its usage (`None`
/// when it carries none, or none of it input: settled at the worst case).
pub fn from_sfn(output: &Value) -> Answered {
    let body = recase(output, lower_first);
    // Read as the gateway reads Converse's own answer, `cacheDetails` included.
    let usage = crate::ops::converse_usage(&body);
    Answered {
        reply: Reply {
            status: 200,
            body,
            ..Reply::default()
        },
        usage,
    }
}

/// A failed Converse call as the workflow's `Catch` records it (`Error`, `Cause`), mapped to the
/// errors the Lambda engine answers with, and so to the same settlement: Bedrock's refusals are
/// refunded; `States.Timeout` (the state's own timeout), `States.DataLimitExceeded` (an answer
/// too large to pass on), task failures and anything unknown are charged at the worst case.
pub fn error_from_sfn(error: &Value) -> Failure {
    let name = error["Error"].as_str().unwrap_or("");
    let cause = error["Cause"].as_str().unwrap_or("").to_string();
    let text = format!("{name} {cause}");
    let message = if cause.is_empty() {
        name.to_string()
    } else {
        cause
    };
    if name.starts_with("States.") {
        return match name {
            "States.Timeout" => BedrockError::Timeout("timed out calling Bedrock".into()),
            _ => BedrockError::Failed(format!("{name}: {message}")),
        }
        .into();
    }
    let refusals = [
        (429, "ThrottlingException"),
        (429, "ModelNotReadyException"),
        (503, "ServiceUnavailableException"),
        (400, "ValidationException"),
        (403, "AccessDeniedException"),
        (404, "ResourceNotFoundException"),
    ];
    if let Some((status, kind)) = refusals.iter().find(|(_, k)| text.contains(k)) {
        return Failure {
            reply: Reply::error(*status, kind, message.clone()),
            refundable: true,
            reason: format!("{kind}: {message}"),
        };
    }
    let (status, kind) = if text.contains("ModelTimeoutException") {
        (408, "ModelTimeoutException")
    } else {
        (502, "BedrockFailed")
    };
    Failure {
        reply: Reply::error(status, kind, format!("{name}: {message}")),
        refundable: false,
        reason: format!("{name}: {message}"),
    }
}

/// An event the workflow sends to a step.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum StepEvent {
    /// Admit a request.
    Reserve(ReserveEvent),
    /// Settle an admitted request with Bedrock's answer.
    Settle(Box<SettleEvent>),
}

/// `reserve`: from API Gateway (`apiKeyId`, `modelBase64`, `bodyBase64`, `requestId`, built by
/// the integration's request template) or from SQS through EventBridge Pipes (`records`, a batch
/// of one message).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReserveEvent {
    /// The API key API Gateway authenticated.
    #[serde(default)]
    pub api_key_id: Option<String>,
    /// The `modelId` path parameter, base64 (templates cannot escape JSON safely).
    #[serde(default)]
    pub model_base64: Option<String>,
    /// The request body, base64.
    #[serde(default)]
    pub body_base64: Option<String>,
    /// API Gateway's request ID.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The SQS messages the pipe delivered.
    #[serde(default)]
    pub records: Option<Vec<SqsMessage>>,
}

/// `settle`: the reserve step's ticket and what the Converse state returned or raised.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleEvent {
    /// What was reserved.
    pub ticket: Ticket,
    /// `sync` or `queue`.
    pub front: String,
    /// The request ID.
    pub request_id: String,
    /// Where a queued request's answer goes.
    #[serde(default)]
    pub queue: Option<QueueContext>,
    /// Converse's answer, in Step Functions' casing.
    #[serde(default)]
    pub output: Option<Value>,
    /// The error the Converse state raised (`Error`, `Cause`).
    #[serde(default)]
    pub error: Option<Value>,
}

/// A reply as the API Gateway response template reads it: the body is JSON text, which the
/// template passes through unchanged.
pub fn api_reply(reply: &Reply) -> Value {
    let headers: Map<String, Value> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "next": "reply",
        "reply": { "statusCode": reply.status, "headers": headers, "body": String::from_utf8_lossy(&reply.bytes()) }
    })
}

fn decode_text(field: &str, value: Option<&str>) -> Result<Vec<u8>, Reply> {
    let text = value.unwrap_or("");
    aws_smithy_types::base64::decode(text).map_err(|_| {
        Reply::error(
            400,
            "ValidationError",
            format!("`{field}` is not valid base64"),
        )
    })
}

/// Runs one step. An `Err` fails the step (and, on the queue front, the execution, so the pipe
/// leaves the message for SQS to redeliver).
pub async fn handle<L: Ledger, Q: Queues>(
    gateway: &Gateway<L, StepBedrock>,
    queues: &Q,
    event: StepEvent,
    deadline: std::time::Instant,
) -> Result<Value, Error> {
    match event {
        StepEvent::Reserve(e) => match e.records {
            Some(records) => reserve_queued(gateway, queues, records, deadline).await,
            None => Ok(reserve_sync(gateway, e, deadline).await),
        },
        StepEvent::Settle(e) => settle(gateway, queues, *e).await,
    }
}

async fn reserve_sync<L: Ledger>(
    gateway: &Gateway<L, StepBedrock>,
    e: ReserveEvent,
    deadline: std::time::Instant,
) -> Value {
    let application = match application_of_key(gateway, e.api_key_id).await {
        Ok(app) => app,
        Err(reply) => return api_reply(&reply),
    };
    let model = match decode_text("modelBase64", e.model_base64.as_deref()) {
        Ok(m) => String::from_utf8_lossy(&m).into_owned(),
        Err(reply) => return api_reply(&reply),
    };
    let body = match decode_text("bodyBase64", e.body_base64.as_deref()) {
        Ok(b) => b,
        Err(reply) => return api_reply(&reply),
    };
    // Reservation IDs of synchronous requests only need to be unique, as on the Lambda engine.
    let reservation_id = crate::http::new_request_id();
    tracing::info!(
        api_request_id = e.request_id.as_deref().unwrap_or(""),
        reservation = %reservation_id,
        application = %application,
        "reserve"
    );
    let caller = Caller::application(application.as_str());
    let request = Request {
        caller: &caller,
        operation: Operation::Converse,
        model: &model,
        body: &body,
        headers: &[],
        front: Front::Sync,
        request_id: &reservation_id,
    };
    match gateway.admit(&request, deadline).await {
        Admission::Admitted { ticket, shaped } => {
            let converse = to_sfn(&shaped.request, &ticket.plan.target);
            json!({
                "next": "converse",
                "front": "sync",
                "requestId": reservation_id,
                "ticket": ticket,
                "converse": converse
            })
        }
        Admission::Done(Outcome::Reply(reply)) => api_reply(&reply),
        Admission::Done(_) => api_reply(&Reply::error(
            500,
            "InternalError",
            "unexpected async outcome on the sync front",
        )),
    }
}

async fn reserve_queued<L: Ledger, Q: Queues>(
    gateway: &Gateway<L, StepBedrock>,
    queues: &Q,
    records: Vec<SqsMessage>,
    deadline: std::time::Instant,
) -> Result<Value, Error> {
    let [message] = <[SqsMessage; 1]>::try_from(records).map_err(|r| {
        Error::Queue(format!(
            "the pipe must deliver one message at a time, got {}",
            r.len()
        ))
    })?;
    let arn = message
        .event_source_arn
        .clone()
        .ok_or_else(|| Error::Queue("the message has no eventSourceARN".into()))?;
    let id = message.message_id.clone().unwrap_or_default();
    let body = message.body.clone().unwrap_or_default();
    match queued_admit(gateway, queues, &arn, &id, &body, deadline).await? {
        QueuedAdmission::Handled => Ok(json!({ "next": "done" })),
        QueuedAdmission::Admitted {
            ticket,
            shaped,
            context,
        } => {
            if shaped.operation != Operation::Converse {
                let reply = Reply::error(
                    400,
                    "ValidationException",
                    "the Step Functions engine serves `converse` only; send InvokeModel bodies to the Lambda engine",
                );
                let refunded = gateway
                    .complete(
                        ticket,
                        Err(Failure {
                            reply: reply.clone(),
                            refundable: true,
                            reason: "not sent".into(),
                        }),
                        Front::Queue,
                        &context.request_id,
                    )
                    .await;
                queued_finish(queues, &context, refunded).await?;
                return Ok(json!({ "next": "done" }));
            }
            let converse = to_sfn(&shaped.request, &ticket.plan.target);
            Ok(json!({
                "next": "converse",
                "front": "queue",
                "requestId": context.request_id,
                "queue": context,
                "ticket": ticket,
                "converse": converse
            }))
        }
    }
}

async fn settle<L: Ledger, Q: Queues>(
    gateway: &Gateway<L, StepBedrock>,
    queues: &Q,
    e: SettleEvent,
) -> Result<Value, Error> {
    let called = match (&e.output, &e.error) {
        (Some(output), None) => Ok(from_sfn(output)),
        (_, Some(error)) => Err(error_from_sfn(error)),
        (None, None) => Err(BedrockError::Failed(
            "the workflow passed neither an output nor an error".into(),
        )
        .into()),
    };
    let front = if e.front == "queue" {
        Front::Queue
    } else {
        Front::Sync
    };
    let outcome = gateway
        .complete(e.ticket, called, front, &e.request_id)
        .await;
    match (front, e.queue) {
        (Front::Queue, Some(context)) => {
            queued_finish(queues, &context, outcome).await?;
            Ok(json!({ "next": "done" }))
        }
        (Front::Queue, None) => Err(Error::Unexpected(
            "a queued request without its queue context",
        )),
        (Front::Sync, _) => Ok(match outcome {
            Outcome::Reply(reply) => api_reply(&reply),
            _ => api_reply(&Reply::error(
                500,
                "InternalError",
                "unexpected async outcome on the sync front",
            )),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_take_step_functions_casing_except_documents() {
        let request = json!({
            "messages": [{ "role": "user", "content": [{ "text": "hi" }, { "toolResult": { "toolUseId": "t1", "content": [{ "json": { "snake_key": 1, "camelKey": 2 } }] } }] }],
            "system": [{ "text": "be brief" }],
            "inferenceConfig": { "maxTokens": 100, "temperature": 0.5 },
            "toolConfig": { "tools": [{ "toolSpec": { "name": "f", "inputSchema": { "json": { "type": "object", "properties": { "q": { "type": "string" } } } } } }] },
            "additionalModelRequestFields": { "top_k": 5 }
        });
        let p = to_sfn(&request, "us.amazon.nova-lite-v1:0");
        assert_eq!(p["ModelId"], "us.amazon.nova-lite-v1:0");
        assert_eq!(p["Messages"][0]["Role"], "user");
        assert_eq!(p["Messages"][0]["Content"][0]["Text"], "hi");
        assert_eq!(p["InferenceConfig"]["MaxTokens"], 100);
        assert_eq!(p["System"][0]["Text"], "be brief");
        // Documents keep the caller's keys.
        assert_eq!(p["AdditionalModelRequestFields"], json!({ "top_k": 5 }));
        assert_eq!(
            p["ToolConfig"]["Tools"][0]["ToolSpec"]["InputSchema"]["Json"]["properties"]["q"]["type"],
            "string"
        );
        assert_eq!(
            p["Messages"][0]["Content"][1]["ToolResult"]["Content"][0]["Json"],
            json!({ "snake_key": 1, "camelKey": 2 })
        );
    }

    #[test]
    fn answers_come_back_as_converse_json_with_usage() {
        let output = json!({
            "Output": { "Message": { "Role": "assistant", "Content": [{ "Text": "hello" }, { "ToolUse": { "ToolUseId": "t", "Name": "f", "Input": { "Query": "x" } } }] } },
            "StopReason": "end_turn",
            "Usage": { "InputTokens": 12, "OutputTokens": 7, "TotalTokens": 27, "CacheReadInputTokens": 3, "CacheWriteInputTokens": 5,
                       "CacheDetails": [{ "Ttl": "1h", "InputTokens": 4 }, { "Ttl": "5m", "InputTokens": 1 }] },
            "Metrics": { "LatencyMs": 40 }
        });
        let out = from_sfn(&output);
        let body = &out.reply.body;
        assert_eq!(body["output"]["message"]["content"][0]["text"], "hello");
        assert_eq!(body["stopReason"], "end_turn");
        assert_eq!(
            body["output"]["message"]["content"][1]["toolUse"]["input"],
            json!({ "Query": "x" })
        );
        assert_eq!(
            out.usage,
            Some(budget::Usage {
                input_tokens: 12,
                output_tokens: 7,
                cache_read_tokens: 3,
                cache_write_tokens: 5,
                cache_write_5m_tokens: 1,
                cache_write_1h_tokens: 4,
            })
        );
        assert_eq!(
            from_sfn(&json!({ "StopReason": "end_turn" })).usage,
            None,
            "no usage: settled at the worst case, never at zero"
        );
    }

    #[test]
    fn workflow_errors_map_to_the_lambda_engines_answers() {
        let e =
            |error: &str, cause: &str| error_from_sfn(&json!({ "Error": error, "Cause": cause }));
        let kind = |f: Failure| f.reply.header("x-amzn-errortype").unwrap_or("").to_string();
        assert_eq!(
            kind(e("BedrockRuntime.ThrottlingException", "slow down")),
            "ThrottlingException"
        );
        // moto names every aws-sdk error after the service; the cause still carries the code.
        assert_eq!(
            kind(e(
                "bedrockruntime.bedrockruntimeException",
                "An error occurred (ValidationException) when calling"
            )),
            "ValidationException"
        );
        assert_eq!(
            e("BedrockRuntime.AccessDeniedException", "").reply.status,
            403
        );
        assert_eq!(e("States.Timeout", "").reply.status, 504);
        assert_eq!(
            e("States.TaskFailed", "boom").reason,
            "States.TaskFailed: boom"
        );
        // A States error is the workflow's, whatever its cause says: never a refusal.
        assert!(
            !e(
                "States.DataLimitExceeded",
                "ThrottlingException in the output"
            )
            .refundable
        );
        assert!(!e("States.Timeout", "").refundable);
        assert!(!e("BedrockRuntime.InternalServerException", "").refundable);
        assert!(!e("BedrockRuntime.ModelTimeoutException", "").refundable);
        for refused in [
            "BedrockRuntime.ThrottlingException",
            "BedrockRuntime.ModelNotReadyException",
            "BedrockRuntime.ServiceUnavailableException",
            "BedrockRuntime.ValidationException",
            "BedrockRuntime.AccessDeniedException",
            "BedrockRuntime.ResourceNotFoundException",
        ] {
            assert!(e(refused, "").refundable, "{refused}");
        }
    }

    #[test]
    fn step_events_parse() {
        let e: StepEvent = serde_json::from_value(json!({
            "action": "reserve", "apiKeyId": "k", "modelBase64": "bGl0ZQ==", "bodyBase64": "e30=", "requestId": "r"
        }))
        .unwrap();
        assert!(matches!(
            e,
            StepEvent::Reserve(ReserveEvent {
                api_key_id: Some(_),
                records: None,
                ..
            })
        ));
        let bad = serde_json::from_value::<StepEvent>(json!({ "action": "explode" }));
        assert!(bad.is_err());
    }
}
