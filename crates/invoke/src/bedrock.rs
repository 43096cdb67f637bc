//! Calling Bedrock: the [`Bedrock`] trait the gateway is generic over, and its implementation with
//! aws-sdk-bedrockruntime, mapping Converse JSON to the SDK's types and back.
//!
//! The SDK's types have no serde support, so the mapping is written out for the blocks the gateway
//! passes through (text, image, document, tool use and results, cache points, reasoning). A block
//! or field it does not know is refused with a 400 naming it, never silently dropped.

use std::future::Future;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types as t;
use aws_smithy_types::{Blob, Document, Number};
use budget::Usage;
use serde_json::{Map, Value, json};

/// A request field the gateway cannot pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `messages[0].content[1].image.format`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// A successful Converse call.
#[derive(Debug, Clone)]
pub struct ConverseOutput {
    /// Bedrock's response as Converse JSON.
    pub body: Value,
    /// The usage Bedrock reported; `None` when the response carried none (it is then settled at
    /// the worst case, never at zero).
    pub usage: Option<Usage>,
}

/// Why a Converse call failed.
///
/// Bedrock bills every generation it starts, whether or not the caller receives the answer. Only
/// the errors it returns when it *refused* the request (Bedrock API reference, Converse, Errors;
/// "Troubleshooting Amazon Bedrock API error codes") prove that nothing was generated:
/// `ValidationException` (400, the input fails the constraints), `AccessDeniedException` (403),
/// `ResourceNotFoundException` (404), `ThrottlingException` (429, denied for exceeding quotas),
/// `ModelNotReadyException` (429, the model is not ready to serve) and
/// `ServiceUnavailableException` (503, the service is not available). Those are refunded
/// ([`BedrockError::refundable`]); everything else — `InternalServerException`,
/// `ModelTimeoutException`, `ModelErrorException`, an unknown error, a timeout, a connection cut
/// after the request was sent — may follow a billed generation and is settled at the worst case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BedrockError {
    /// The request is not something the gateway can pass on (never sent).
    Field(FieldError),
    /// Bedrock refused the call before generating: throttled, model not ready, unavailable (429).
    Throttled(String),
    /// Bedrock refused the request as invalid (400).
    Validation(String),
    /// Bedrock denied access or does not know the model (403).
    Denied(String),
    /// Failed after the request was sent: server and model errors, a cut connection (502).
    Failed(String),
    /// No answer before the deadline (504).
    Timeout(String),
    /// Not sent: no time was left before the deadline (503).
    NotSent(String),
}

impl BedrockError {
    /// Whether Bedrock provably started no billed generation, so the reservation may be refunded.
    pub fn refundable(&self) -> bool {
        matches!(
            self,
            BedrockError::Field(_)
                | BedrockError::NotSent(_)
                | BedrockError::Throttled(_)
                | BedrockError::Validation(_)
                | BedrockError::Denied(_)
        )
    }
}

/// Something that answers Converse requests: the real runtime, or a test double.
///
/// A request is prepared (validated and mapped) before anything is reserved, so a request that
/// cannot be sent is answered 400 without touching the budget.
pub trait Bedrock: Send + Sync + 'static {
    /// A request ready to send.
    type Prepared: Send + Sync;

    /// Validates and maps a Converse request body, naming the first field that cannot be sent.
    fn prepare(&self, request: &Value) -> Result<Self::Prepared, FieldError>;

    /// Calls Converse for `model_id` (a model ID, inference profile ID or ARN). The prepared
    /// request is moved, not copied: it holds the whole prompt.
    fn converse(
        &self,
        model_id: &str,
        request: Self::Prepared,
    ) -> impl Future<Output = Result<ConverseOutput, BedrockError>> + Send;

    /// Counts the input tokens of a prepared request with Bedrock's CountTokens (free, no
    /// generation) for the foundation model `model_id`.
    fn count_tokens(
        &self,
        model_id: &str,
        request: &Self::Prepared,
    ) -> impl Future<Output = Result<u64, BedrockError>> + Send;
}

/// Bedrock through aws-sdk-bedrockruntime; the endpoint comes from the standard AWS configuration
/// (e.g. `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`).
#[derive(Debug, Clone)]
pub struct SdkBedrock {
    client: Client,
}

impl SdkBedrock {
    /// A client from the standard AWS configuration, with the SDK's retries turned off: a
    /// retried generation is a second billed generation under one reservation. Refused calls
    /// (throttling) come back to the caller, who may retry under a new reservation.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        let config = aws_sdk_bedrockruntime::config::Builder::from(config)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        SdkBedrock {
            client: Client::from_conf(config),
        }
    }
}

impl Bedrock for SdkBedrock {
    type Prepared = ConverseInput;

    fn prepare(&self, request: &Value) -> Result<ConverseInput, FieldError> {
        ConverseInput::from_json(request)
    }

    async fn converse(
        &self,
        model_id: &str,
        input: ConverseInput,
    ) -> Result<ConverseOutput, BedrockError> {
        let out = self
            .client
            .converse()
            .model_id(model_id)
            .set_messages(Some(input.messages))
            .set_system(input.system)
            .set_inference_config(input.inference_config)
            .set_tool_config(input.tool_config)
            .set_additional_model_request_fields(input.additional_fields)
            .set_additional_model_response_field_paths(input.response_field_paths)
            .send()
            .await
            .map_err(map_error)?;
        // The SDK fills a missing `usage` with zeros; no generation has zero input tokens, so a
        // usage of zero tokens is no usage (settled at the worst case, never at zero).
        let usage = out
            .usage()
            .filter(|u| u.total_tokens() > 0 || u.input_tokens() > 0)
            .map(|u| Usage {
                input_tokens: u.input_tokens().max(0) as u64,
                output_tokens: u.output_tokens().max(0) as u64,
                cache_read_tokens: u.cache_read_input_tokens().unwrap_or(0).max(0) as u64,
                cache_write_tokens: u.cache_write_input_tokens().unwrap_or(0).max(0) as u64,
            });
        let reported = usage.unwrap_or_default();
        let mut body = Map::new();
        if let Some(t::ConverseOutput::Message(message)) = out.output() {
            body.insert(
                "output".into(),
                json!({ "message": message_to_json(message) }),
            );
        }
        body.insert("stopReason".into(), json!(out.stop_reason().as_str()));
        if usage.is_some() {
            let mut usage_json = json!({
                "inputTokens": reported.input_tokens,
                "outputTokens": reported.output_tokens,
                "totalTokens": out.usage().map_or(0, |u| u.total_tokens().max(0))
            });
            if reported.cache_read_tokens > 0 {
                usage_json["cacheReadInputTokens"] = json!(reported.cache_read_tokens);
            }
            if reported.cache_write_tokens > 0 {
                usage_json["cacheWriteInputTokens"] = json!(reported.cache_write_tokens);
            }
            body.insert("usage".into(), usage_json);
        }
        if let Some(metrics) = out.metrics() {
            body.insert(
                "metrics".into(),
                json!({ "latencyMs": metrics.latency_ms() }),
            );
        }
        if let Some(fields) = out.additional_model_response_fields() {
            body.insert(
                "additionalModelResponseFields".into(),
                document_to_json(fields),
            );
        }
        Ok(ConverseOutput {
            body: Value::Object(body),
            usage,
        })
    }

    async fn count_tokens(
        &self,
        model_id: &str,
        input: &ConverseInput,
    ) -> Result<u64, BedrockError> {
        let request = t::ConverseTokensRequest::builder()
            .set_messages(Some(input.messages.clone()))
            .set_system(input.system.clone())
            .set_tool_config(input.tool_config.clone())
            .set_additional_model_request_fields(input.additional_fields.clone())
            .build();
        let out = self
            .client
            .count_tokens()
            .model_id(model_id)
            .input(t::CountTokensInput::Converse(request))
            .send()
            .await
            .map_err(map_error)?;
        Ok(out.input_tokens().max(0) as u64)
    }
}

/// Maps an SDK error by Bedrock's error code: refusals (see [`BedrockError`]) to their classes,
/// anything after the request may have started a generation to `Failed` or `Timeout`.
fn map_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> BedrockError {
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let message = err.message().unwrap_or("no message").to_string();
            match err.code().unwrap_or("") {
                "ThrottlingException"
                | "ServiceUnavailableException"
                | "ModelNotReadyException" => BedrockError::Throttled(message),
                "ValidationException" => BedrockError::Validation(message),
                "AccessDeniedException" | "ResourceNotFoundException" => {
                    BedrockError::Denied(message)
                }
                "ModelTimeoutException" => BedrockError::Timeout(message),
                other => BedrockError::Failed(format!(
                    "{}: {message}",
                    if other.is_empty() { "error" } else { other }
                )),
            }
        }
        SdkError::TimeoutError(_) => BedrockError::Timeout("timed out calling Bedrock".into()),
        // Whether a dispatch failure happened before or after the request left is not knowable
        // from here: a generation may have started.
        other => BedrockError::Failed(format!("calling Bedrock: {other}")),
    }
}

/// A Converse request in the SDK's types.
#[derive(Debug)]
pub struct ConverseInput {
    messages: Vec<t::Message>,
    system: Option<Vec<t::SystemContentBlock>>,
    inference_config: Option<t::InferenceConfiguration>,
    tool_config: Option<t::ToolConfiguration>,
    additional_fields: Option<Document>,
    response_field_paths: Option<Vec<String>>,
}

const TOP_FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "modelId",
];

impl ConverseInput {
    /// Maps Converse JSON to the SDK's types, or names the first field that cannot be mapped.
    pub fn from_json(request: &Value) -> Result<ConverseInput, FieldError> {
        let obj = request
            .as_object()
            .ok_or_else(|| field_err("", "the body must be a JSON object"))?;
        if let Some(unknown) = obj.keys().find(|k| !TOP_FIELDS.contains(&k.as_str())) {
            return Err(field_err(
                unknown.as_str(),
                format!("`{unknown}` is not a Converse field this gateway passes on"),
            ));
        }
        let messages = obj
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| field_err("messages", "`messages` is required and must be a list"))?
            .iter()
            .enumerate()
            .map(|(i, m)| message_from_json(m, &format!("messages[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let system = match obj.get("system") {
            None => None,
            Some(v) => Some(
                v.as_array()
                    .ok_or_else(|| field_err("system", "`system` must be a list"))?
                    .iter()
                    .enumerate()
                    .map(|(i, b)| system_block(b, &format!("system[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let inference_config = match obj.get("inferenceConfig") {
            None => None,
            Some(v) => Some(inference_config(v)?),
        };
        let tool_config = match obj.get("toolConfig") {
            None => None,
            Some(v) => Some(tool_config(v)?),
        };
        let additional_fields = obj
            .get("additionalModelRequestFields")
            .map(json_to_document);
        let response_field_paths = match obj.get("additionalModelResponseFieldPaths") {
            None => None,
            Some(v) => Some(
                v.as_array()
                    .ok_or_else(|| {
                        field_err(
                            "additionalModelResponseFieldPaths",
                            "must be a list of strings",
                        )
                    })?
                    .iter()
                    .map(|p| {
                        p.as_str().map(str::to_string).ok_or_else(|| {
                            field_err(
                                "additionalModelResponseFieldPaths",
                                "must be a list of strings",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(ConverseInput {
            messages,
            system,
            inference_config,
            tool_config,
            additional_fields,
            response_field_paths,
        })
    }
}

fn str_field<'a>(v: &'a Value, key: &str, path: &str) -> Result<&'a str, FieldError> {
    v.get(key).and_then(Value::as_str).ok_or_else(|| {
        field_err(
            format!("{path}.{key}"),
            format!("`{key}` is required and must be a string"),
        )
    })
}

fn single_key<'a>(v: &'a Value, path: &str) -> Result<(&'a str, &'a Value), FieldError> {
    let obj = v
        .as_object()
        .ok_or_else(|| field_err(path, "a content block must be an object"))?;
    let mut iter = obj.iter();
    match (iter.next(), iter.next()) {
        (Some((k, v)), None) => Ok((k.as_str(), v)),
        _ => Err(field_err(path, "a content block must have exactly one key")),
    }
}

fn message_from_json(m: &Value, path: &str) -> Result<t::Message, FieldError> {
    let role = match str_field(m, "role", path)? {
        "user" => t::ConversationRole::User,
        "assistant" => t::ConversationRole::Assistant,
        other => {
            return Err(field_err(
                format!("{path}.role"),
                format!("`{other}` is not `user` or `assistant`"),
            ));
        }
    };
    let content = m
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            field_err(
                format!("{path}.content"),
                "`content` is required and must be a list",
            )
        })?
        .iter()
        .enumerate()
        .map(|(i, b)| content_block(b, &format!("{path}.content[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    t::Message::builder()
        .role(role)
        .set_content(Some(content))
        .build()
        .map_err(|e| field_err(path, e.to_string()))
}

fn cache_point(v: &Value, path: &str) -> Result<t::CachePointBlock, FieldError> {
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("default");
    if kind != "default" {
        return Err(field_err(
            format!("{path}.type"),
            format!("cache point type `{kind}` is not `default`"),
        ));
    }
    t::CachePointBlock::builder()
        .r#type(t::CachePointType::Default)
        .build()
        .map_err(|e| field_err(path, e.to_string()))
}

fn blob(v: &Value, path: &str) -> Result<Blob, FieldError> {
    let text = v
        .pointer("/source/bytes")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            field_err(
                format!("{path}.source.bytes"),
                "`source.bytes` (base64) is required",
            )
        })?;
    aws_smithy_types::base64::decode(text)
        .map(Blob::new)
        .map_err(|_| field_err(format!("{path}.source.bytes"), "not valid base64"))
}

fn image(v: &Value, path: &str) -> Result<t::ImageBlock, FieldError> {
    let format = str_field(v, "format", path)?;
    t::ImageBlock::builder()
        .format(t::ImageFormat::from(format))
        .source(t::ImageSource::Bytes(blob(v, path)?))
        .build()
        .map_err(|e| field_err(path, e.to_string()))
}

fn document(v: &Value, path: &str) -> Result<t::DocumentBlock, FieldError> {
    t::DocumentBlock::builder()
        .format(t::DocumentFormat::from(str_field(v, "format", path)?))
        .name(str_field(v, "name", path)?)
        .source(t::DocumentSource::Bytes(blob(v, path)?))
        .build()
        .map_err(|e| field_err(path, e.to_string()))
}

fn content_block(b: &Value, path: &str) -> Result<t::ContentBlock, FieldError> {
    let (kind, v) = single_key(b, path)?;
    let here = format!("{path}.{kind}");
    Ok(match kind {
        "text" => t::ContentBlock::Text(
            v.as_str()
                .ok_or_else(|| field_err(&here, "must be a string"))?
                .to_string(),
        ),
        "image" => t::ContentBlock::Image(image(v, &here)?),
        "document" => t::ContentBlock::Document(document(v, &here)?),
        "cachePoint" => t::ContentBlock::CachePoint(cache_point(v, &here)?),
        "toolUse" => t::ContentBlock::ToolUse(
            t::ToolUseBlock::builder()
                .tool_use_id(str_field(v, "toolUseId", &here)?)
                .name(str_field(v, "name", &here)?)
                .input(json_to_document(v.get("input").unwrap_or(&Value::Null)))
                .build()
                .map_err(|e| field_err(&here, e.to_string()))?,
        ),
        "toolResult" => {
            let content = v
                .get("content")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    field_err(
                        format!("{here}.content"),
                        "`content` is required and must be a list",
                    )
                })?
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let p = format!("{here}.content[{i}]");
                    let (k, cv) = single_key(c, &p)?;
                    Ok(match k {
                        "text" => t::ToolResultContentBlock::Text(
                            cv.as_str()
                                .ok_or_else(|| field_err(&p, "must be a string"))?
                                .to_string(),
                        ),
                        "json" => t::ToolResultContentBlock::Json(json_to_document(cv)),
                        "image" => {
                            t::ToolResultContentBlock::Image(image(cv, &format!("{p}.image"))?)
                        }
                        "document" => t::ToolResultContentBlock::Document(document(
                            cv,
                            &format!("{p}.document"),
                        )?),
                        other => {
                            return Err(field_err(
                                format!("{p}.{other}"),
                                format!(
                                    "tool result block `{other}` is not supported by this gateway"
                                ),
                            ));
                        }
                    })
                })
                .collect::<Result<Vec<_>, FieldError>>()?;
            let status = v
                .get("status")
                .and_then(Value::as_str)
                .map(t::ToolResultStatus::from);
            t::ContentBlock::ToolResult(
                t::ToolResultBlock::builder()
                    .tool_use_id(str_field(v, "toolUseId", &here)?)
                    .set_content(Some(content))
                    .set_status(status)
                    .build()
                    .map_err(|e| field_err(&here, e.to_string()))?,
            )
        }
        "reasoningContent" => {
            let text = v
                .pointer("/reasoningText/text")
                .and_then(Value::as_str)
                .ok_or_else(|| field_err(format!("{here}.reasoningText.text"), "is required"))?;
            let signature = v
                .pointer("/reasoningText/signature")
                .and_then(Value::as_str)
                .map(str::to_string);
            t::ContentBlock::ReasoningContent(t::ReasoningContentBlock::ReasoningText(
                t::ReasoningTextBlock::builder()
                    .text(text)
                    .set_signature(signature)
                    .build()
                    .map_err(|e| field_err(&here, e.to_string()))?,
            ))
        }
        other => {
            return Err(field_err(
                here,
                format!("content block `{other}` is not supported by this gateway"),
            ));
        }
    })
}

fn system_block(b: &Value, path: &str) -> Result<t::SystemContentBlock, FieldError> {
    let (kind, v) = single_key(b, path)?;
    let here = format!("{path}.{kind}");
    Ok(match kind {
        "text" => t::SystemContentBlock::Text(
            v.as_str()
                .ok_or_else(|| field_err(&here, "must be a string"))?
                .to_string(),
        ),
        "cachePoint" => t::SystemContentBlock::CachePoint(cache_point(v, &here)?),
        other => {
            return Err(field_err(
                here,
                format!("system block `{other}` is not supported by this gateway"),
            ));
        }
    })
}

fn inference_config(v: &Value) -> Result<t::InferenceConfiguration, FieldError> {
    let obj = v
        .as_object()
        .ok_or_else(|| field_err("inferenceConfig", "must be an object"))?;
    let mut b = t::InferenceConfiguration::builder();
    for (k, val) in obj {
        let path = format!("inferenceConfig.{k}");
        b = match k.as_str() {
            "maxTokens" => b.max_tokens(
                val.as_u64()
                    .and_then(|n| i32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| field_err(&path, "must be a positive integer"))?,
            ),
            "temperature" => b.temperature(
                val.as_f64()
                    .ok_or_else(|| field_err(&path, "must be a number"))? as f32,
            ),
            "topP" => b.top_p(
                val.as_f64()
                    .ok_or_else(|| field_err(&path, "must be a number"))? as f32,
            ),
            "stopSequences" => b.set_stop_sequences(Some(
                val.as_array()
                    .ok_or_else(|| field_err(&path, "must be a list of strings"))?
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| field_err(&path, "must be a list of strings"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )),
            other => {
                return Err(field_err(
                    path,
                    format!("`{other}` is not an inference configuration field"),
                ));
            }
        };
    }
    Ok(b.build())
}

fn tool_config(v: &Value) -> Result<t::ToolConfiguration, FieldError> {
    let tools = v
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| field_err("toolConfig.tools", "`tools` is required and must be a list"))?
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let path = format!("toolConfig.tools[{i}]");
            let (kind, tv) = single_key(tool, &path)?;
            match kind {
                "toolSpec" => {
                    let here = format!("{path}.toolSpec");
                    let schema = tv.pointer("/inputSchema/json").ok_or_else(|| {
                        field_err(format!("{here}.inputSchema.json"), "is required")
                    })?;
                    Ok(t::Tool::ToolSpec(
                        t::ToolSpecification::builder()
                            .name(str_field(tv, "name", &here)?)
                            .set_description(
                                tv.get("description")
                                    .and_then(Value::as_str)
                                    .map(str::to_string),
                            )
                            .input_schema(t::ToolInputSchema::Json(json_to_document(schema)))
                            .build()
                            .map_err(|e| field_err(&here, e.to_string()))?,
                    ))
                }
                "cachePoint" => Ok(t::Tool::CachePoint(cache_point(
                    tv,
                    &format!("{path}.cachePoint"),
                )?)),
                other => Err(field_err(
                    format!("{path}.{other}"),
                    format!("tool kind `{other}` is not supported by this gateway"),
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let choice = match v.get("toolChoice") {
        None => None,
        Some(c) => Some(match single_key(c, "toolConfig.toolChoice")? {
            ("auto", _) => t::ToolChoice::Auto(t::AutoToolChoice::builder().build()),
            ("any", _) => t::ToolChoice::Any(t::AnyToolChoice::builder().build()),
            ("tool", tv) => t::ToolChoice::Tool(
                t::SpecificToolChoice::builder()
                    .name(str_field(tv, "name", "toolConfig.toolChoice.tool")?)
                    .build()
                    .map_err(|e| field_err("toolConfig.toolChoice", e.to_string()))?,
            ),
            (other, _) => {
                return Err(field_err(
                    "toolConfig.toolChoice",
                    format!("`{other}` is not `auto`, `any` or `tool`"),
                ));
            }
        }),
    };
    t::ToolConfiguration::builder()
        .set_tools(Some(tools))
        .set_tool_choice(choice)
        .build()
        .map_err(|e| field_err("toolConfig", e.to_string()))
}

/// JSON to a Smithy document.
pub fn json_to_document(v: &Value) -> Document {
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Document::Number(Number::PosInt(u))
            } else if let Some(i) = n.as_i64() {
                Document::Number(Number::NegInt(i))
            } else {
                Document::Number(Number::Float(n.as_f64().unwrap_or(0.0)))
            }
        }
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(json_to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_document(v)))
                .collect(),
        ),
    }
}

/// A Smithy document to JSON.
pub fn document_to_json(d: &Document) -> Value {
    match d {
        Document::Null => Value::Null,
        Document::Bool(b) => json!(b),
        Document::Number(Number::PosInt(u)) => json!(u),
        Document::Number(Number::NegInt(i)) => json!(i),
        Document::Number(Number::Float(f)) => json!(f),
        Document::String(s) => json!(s),
        Document::Array(items) => Value::Array(items.iter().map(document_to_json).collect()),
        Document::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), document_to_json(v)))
                .collect(),
        ),
    }
}

fn message_to_json(m: &t::Message) -> Value {
    let content: Vec<Value> = m
        .content()
        .iter()
        .filter_map(|b| match b {
            t::ContentBlock::Text(text) => Some(json!({ "text": text })),
            t::ContentBlock::ToolUse(u) => Some(json!({ "toolUse": { "toolUseId": u.tool_use_id(), "name": u.name(), "input": document_to_json(u.input()) } })),
            t::ContentBlock::ReasoningContent(t::ReasoningContentBlock::ReasoningText(r)) => {
                Some(json!({ "reasoningContent": { "reasoningText": { "text": r.text(), "signature": r.signature() } } }))
            }
            t::ContentBlock::ReasoningContent(t::ReasoningContentBlock::RedactedContent(blob)) => {
                Some(json!({ "reasoningContent": { "redactedContent": aws_smithy_types::base64::encode(blob.as_ref()) } }))
            }
            _ => None,
        })
        .collect();
    json!({ "role": m.role().as_str(), "content": content })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_supported_block() {
        let req = json!({
            "system": [{ "text": "be brief" }, { "cachePoint": { "type": "default" } }],
            "messages": [
                { "role": "user", "content": [
                    { "text": "hi" },
                    { "image": { "format": "png", "source": { "bytes": "AAAA" } } },
                    { "document": { "format": "txt", "name": "doc", "source": { "bytes": "aGk=" } } }
                ]},
                { "role": "assistant", "content": [{ "toolUse": { "toolUseId": "t1", "name": "f", "input": { "x": 1 } } }] },
                { "role": "user", "content": [{ "toolResult": { "toolUseId": "t1", "content": [{ "json": { "y": -2.5 } }], "status": "success" } }] }
            ],
            "inferenceConfig": { "maxTokens": 10, "temperature": 0.5, "stopSequences": ["x"] },
            "toolConfig": { "tools": [{ "toolSpec": { "name": "f", "inputSchema": { "json": { "type": "object" } } } }], "toolChoice": { "auto": {} } }
        });
        let input = ConverseInput::from_json(&req).expect("maps");
        assert_eq!(input.messages.len(), 3);
        assert_eq!(input.system.unwrap().len(), 2);
        assert_eq!(input.inference_config.unwrap().max_tokens(), Some(10));
    }

    #[test]
    fn names_the_field_it_cannot_pass_on() {
        let cases = [
            (
                json!({ "messages": [{ "role": "user", "content": [{ "video": {} }] }] }),
                "messages[0].content[0].video",
            ),
            (
                json!({ "messages": [{ "role": "robot", "content": [] }] }),
                "messages[0].role",
            ),
            (
                json!({ "messages": [], "guardrailConfig": {} }),
                "guardrailConfig",
            ),
            (
                json!({ "messages": [], "inferenceConfig": { "maxTokens": -1 } }),
                "inferenceConfig.maxTokens",
            ),
            (json!({ "system": "x", "messages": [] }), "system"),
            (
                json!({ "messages": [{ "role": "user", "content": [{ "image": { "format": "png", "source": { "bytes": "!!" } } }] }] }),
                "messages[0].content[0].image.source.bytes",
            ),
        ];
        for (req, field) in cases {
            let err = ConverseInput::from_json(&req)
                .err()
                .unwrap_or_else(|| panic!("{req} was accepted"));
            assert_eq!(err.field, field, "{req}");
        }
    }

    #[test]
    fn documents_round_trip() {
        let v = json!({ "a": [1, -2, 2.5, "s", null, true, { "b": {} }] });
        assert_eq!(document_to_json(&json_to_document(&v)), v);
    }
}
