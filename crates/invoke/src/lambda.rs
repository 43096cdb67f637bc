//! The Lambda fronts: API Gateway REST proxy events (sync) and SQS events (async), dispatched on
//! the event's shape. Callers are identified by the API key ID API Gateway authenticated, or by
//! the queue a message arrived on; never by anything in the request body.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayProxyRequest, ApiGatewayProxyResponse,
};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use ledger::{Identity, Ledger};
use serde_json::Value;

use crate::Error;
use crate::bedrock::Bedrock;
use crate::gateway::{
    Admission, Caller, Front, Gateway, Outcome, Reply, Request, read_answer, result_message,
};
use crate::ops::Operation;

/// The longest SQS `DelaySeconds`: a deferred request is re-sent with at most this delay and
/// re-checked, until its window resets.
pub const MAX_DELAY_SECONDS: i64 = 900;

/// How often a request over a `queue` budget is deferred before it is answered 429: 96 deferrals
/// of up to 15 minutes wait out a day's window.
pub const MAX_DEFERRALS: u32 = 96;

/// How long the queue front spends on one SQS batch, whatever the function's timeout (sized
/// for 15-minute streams): the request queues' visibility timeout is six times this.
pub const QUEUE_BATCH: Duration = Duration::from_secs(112);

/// Time kept back from a Lambda invocation's deadline to settle and answer after Bedrock: a
/// call still running then is cut off and charged at its worst case, and the handler returns
/// with every reservation settled (a frozen sandbox runs nothing in the background).
pub const SETTLE_MARGIN: Duration = Duration::from_secs(8);

/// The instant Bedrock calls must end by, from a Lambda context's deadline (Unix milliseconds).
pub fn call_deadline(deadline_ms: u64) -> Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    Instant::now() + left.saturating_sub(SETTLE_MARGIN)
}

/// Reads an API Gateway API key's value: the REST API's authorizer hands a seat's call to its
/// application's usage plan with it.
pub trait ApiKeyValues: Send + Sync + 'static {
    /// The value of the API key with ID `key_id`.
    fn value(&self, key_id: &str) -> impl Future<Output = Result<String, Error>> + Send;
}

/// [`ApiKeyValues`] through aws-sdk-apigateway (`GetApiKey` with `includeValue`), each value
/// read once per sandbox: an application's key that is replaced gets a new ID.
pub struct SdkApiKeys {
    client: aws_sdk_apigateway::Client,
    values: Mutex<HashMap<String, String>>,
}

impl SdkApiKeys {
    /// Wraps a client.
    pub fn new(client: aws_sdk_apigateway::Client) -> Self {
        SdkApiKeys {
            client,
            values: Mutex::new(HashMap::new()),
        }
    }
}

impl ApiKeyValues for SdkApiKeys {
    async fn value(&self, key_id: &str) -> Result<String, Error> {
        if let Some(v) = self.values.lock().expect("key cache").get(key_id) {
            return Ok(v.clone());
        }
        let out = self
            .client
            .get_api_key()
            .api_key(key_id)
            .include_value(true)
            .send()
            .await
            .map_err(|e| Error::Aws {
                operation: "GetApiKey",
                target: key_id.to_string(),
                message: aws_sdk_apigateway::error::DisplayErrorContext(&e).to_string(),
            })?;
        let value = out.value.ok_or_else(|| Error::AwsAnswer {
            operation: "GetApiKey",
            target: key_id.to_string(),
            field: "value",
        })?;
        self.values
            .lock()
            .expect("key cache")
            .insert(key_id.to_string(), value.clone());
        Ok(value)
    }
}

/// The SQS operations the queue front needs.
pub trait Queues: Send + Sync + 'static {
    /// Sends `body` to `queue_url` after `delay_seconds`.
    fn send(
        &self,
        queue_url: &str,
        body: String,
        delay_seconds: i32,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// The URL of the queue with ARN `queue_arn`.
    fn url_of(&self, queue_arn: &str) -> impl Future<Output = Result<String, Error>> + Send;
}

/// [`Queues`] through aws-sdk-sqs.
pub struct SdkQueues {
    client: aws_sdk_sqs::Client,
    urls: Mutex<HashMap<String, String>>,
}

impl SdkQueues {
    /// Wraps a client.
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        SdkQueues {
            client,
            urls: Mutex::new(HashMap::new()),
        }
    }
}

impl Queues for SdkQueues {
    async fn send(&self, queue_url: &str, body: String, delay_seconds: i32) -> Result<(), Error> {
        self.client
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .delay_seconds(delay_seconds)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::Aws {
                operation: "SendMessage",
                target: queue_url.to_string(),
                message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
            })
    }

    async fn url_of(&self, queue_arn: &str) -> Result<String, Error> {
        if let Some(url) = self.urls.lock().expect("url cache").get(queue_arn) {
            return Ok(url.clone());
        }
        let parts: Vec<&str> = queue_arn.split(':').collect();
        let (Some(account), Some(name)) = (parts.get(4), parts.get(5)) else {
            return Err(Error::Queue(format!(
                "`{queue_arn}` is not an SQS queue ARN"
            )));
        };
        let out = self
            .client
            .get_queue_url()
            .queue_name(*name)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .map_err(|e| Error::Aws {
                operation: "GetQueueUrl",
                target: name.to_string(),
                message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
            })?;
        let url = out.queue_url.ok_or_else(|| Error::AwsAnswer {
            operation: "GetQueueUrl",
            target: name.to_string(),
            field: "URL",
        })?;
        self.urls
            .lock()
            .expect("url cache")
            .insert(queue_arn.to_string(), url.clone());
        Ok(url)
    }
}

/// The application of the API key API Gateway authenticated (its ID), or the answer to give:
/// 401 without a key, 403 for a key of no application, 503 when the ledger cannot say.
pub async fn application_of_key<L: Ledger, B: Bedrock>(
    gateway: &Gateway<L, B>,
    api_key_id: Option<String>,
) -> Result<String, Reply> {
    let Some(key_id) = api_key_id.filter(|k| !k.is_empty()) else {
        return Err(Reply::error(
            401,
            "MissingApiKey",
            "the request carried no API key",
        ));
    };
    match gateway
        .ledger()
        .application_for(&Identity::ApiKeyId(key_id))
        .await
    {
        Ok(Some(app)) => Ok(app),
        Ok(None) => Err(Reply::error(
            403,
            "InvalidApiKey",
            "the API key belongs to no application",
        )),
        Err(_) => Err(Reply::error(
            503,
            "LedgerUnavailable",
            "the budget ledger is unavailable",
        )),
    }
}

/// The caller of a request API Gateway authenticated: its application's key's application, and
/// the user the authorizer found for a seat's key. The authorizer's context is API Gateway's,
/// never the caller's; that it names the same application is checked all the same.
fn seat_of(request: &ApiGatewayProxyRequest, application: String) -> Result<Caller, Reply> {
    let fields = &request.request_context.authorizer.fields;
    let text = |name: &str| fields.get(name).and_then(Value::as_str);
    match (text("tokenfenceApplication"), text("tokenfenceUser")) {
        (Some(seat_app), _) if seat_app != application => Err(Reply::error(
            403,
            "InvalidApiKey",
            "the key's application is not the one its API key belongs to",
        )),
        (_, Some(user)) => Ok(Caller::user(application, user)),
        _ => Ok(Caller::application(application)),
    }
}

/// Handles one Lambda event: an API Gateway proxy request, an SQS batch, or the sweeper's
/// schedule (`{"tokenfence": "sweep"}`). Bedrock calls end by `deadline` ([`call_deadline`]).
pub async fn handle<L: Ledger, B: Bedrock, Q: Queues, K: ApiKeyValues>(
    gateway: &Gateway<L, B>,
    queues: &Q,
    api_keys: &K,
    event: Value,
    deadline: Instant,
) -> Result<Value, Error> {
    if event.get("tokenfence").and_then(Value::as_str) == Some("sweep") {
        let expired = gateway
            .sweep()
            .await
            .map_err(Error::ledger("sweep expired reservations"))?;
        return Ok(serde_json::json!({ "expired": expired.len() }));
    }
    if is_authorizer_request(&event) {
        let request: ApiGatewayCustomAuthorizerRequestTypeRequest =
            serde_json::from_value(event)
                .map_err(Error::event("an API Gateway REQUEST authorizer event"))?;
        return authorize(gateway, api_keys, &request).await;
    }
    if event.get("Records").is_some() {
        let event: SqsEvent =
            serde_json::from_value(event).map_err(Error::event("an SQS event"))?;
        // The function's timeout is sized for streams; a batch keeps to its own bound, which
        // the queues' visibility timeout is sized for.
        let deadline = deadline.min(Instant::now() + QUEUE_BATCH);
        let response = handle_sqs(gateway, queues, event, deadline).await;
        return Ok(serde_json::to_value(response)?);
    }
    if event.get("requestContext").is_some() && event.get("httpMethod").is_some() {
        let request: ApiGatewayProxyRequest =
            serde_json::from_value(event).map_err(Error::event("an API Gateway proxy event"))?;
        let response = handle_api(gateway, request, deadline).await;
        return Ok(serde_json::to_value(response)?);
    }
    Err(Error::UnsupportedEvent)
}

/// Whether `event` is the REST API's REQUEST authorizer event (`type: REQUEST` with a
/// `methodArn`), which also carries the request's path and headers.
fn is_authorizer_request(event: &Value) -> bool {
    event.get("type").and_then(Value::as_str) == Some("REQUEST") && event.get("methodArn").is_some()
}

/// The REST API's REQUEST authorizer (`ApiKeySourceType: AUTHORIZER`). The caller's key comes
/// as `x-api-key` or as `Authorization: Bearer KEY` (the Bedrock API key convention coding agents
/// and SDKs send). No key: `Unauthorized` (401).
///
/// - An API Gateway key is handed to API Gateway as the usage identifier, for API Gateway to
///   check against its usage plans as it checks `x-api-key` itself: an unknown key is refused by
///   API Gateway (403), and the application comes from the key API Gateway validated.
/// - A key issued by `synth keys` (a seat, [`ledger::ISSUED_KEY_PREFIX`]) is looked up in the
///   ledger by its digest: unknown or revoked, `Unauthorized` (401). Its call goes to its
///   application's usage plan, with the application's own API key as the usage identifier, and
///   its application and user go to the integration in the authorizer's context.
///
/// Keys are never logged. A ledger or API Gateway failure is an error (API Gateway answers 500).
pub async fn authorize<L: Ledger, B: Bedrock, K: ApiKeyValues>(
    gateway: &Gateway<L, B>,
    api_keys: &K,
    request: &ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> Result<Value, Error> {
    let Some(key) = crate::http::presented_key(&request.headers) else {
        return Err(Error::Unauthorized);
    };
    let resource = request.method_arn.clone().unwrap_or_default();
    let policy = |effect: &str| {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{ "Action": "execute-api:Invoke", "Effect": effect, "Resource": resource }]
        })
    };
    if !key.starts_with(ledger::ISSUED_KEY_PREFIX) {
        return Ok(serde_json::json!({
            "principalId": "api-key",
            "policyDocument": policy("Allow"),
            "usageIdentifierKey": key
        }));
    }
    if !gateway.settings().seats {
        tracing::warn!("a seat's key on an engine that does not hold seats' limits; denied");
        return Ok(serde_json::json!({
            "principalId": "seat",
            "policyDocument": policy("Deny")
        }));
    }
    let issued = match gateway.ledger().key(&ledger::key_digest(key)).await {
        Ok(Some(issued)) => issued,
        Ok(None) => return Err(Error::Unauthorized),
        Err(e) => return Err(Error::ledger("check the key")(e)),
    };
    let config = gateway
        .config(&issued.application)
        .await
        .map_err(Error::ledger("read the application"))?;
    let Some(key_id) = config.as_ref().and_then(|c| c.api_key_ids.first()) else {
        tracing::warn!(application = %issued.application, key = %issued.id, "a seat's application has no API key on this API; denied");
        return Ok(serde_json::json!({
            "principalId": format!("seat:{}", issued.id),
            "policyDocument": policy("Deny")
        }));
    };
    let usage_key = api_keys.value(key_id).await?;
    let mut context = serde_json::json!({ "tokenfenceApplication": issued.application });
    if let Some(user) = &issued.user {
        context["tokenfenceUser"] = Value::from(user.as_str());
    }
    Ok(serde_json::json!({
        "principalId": format!("seat:{}", issued.id),
        "policyDocument": policy("Allow"),
        "usageIdentifierKey": usage_key,
        "context": context
    }))
}

fn api_response(reply: Reply) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = i64::from(reply.status);
    response.headers.insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    let body = match &reply.raw {
        Some(raw) => String::from_utf8_lossy(raw).into_owned(),
        None => reply.body.to_string(),
    };
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (
            name.parse::<aws_lambda_events::http::HeaderName>(),
            value.parse(),
        ) {
            response.headers.insert(n, v);
        }
    }
    response.body = Some(Body::Text(body));
    response
}

/// A REST proxy request read: who asks, for what, with which bytes.
struct ApiRequest {
    caller: Caller,
    operation: Operation,
    model: String,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    reservation_id: String,
}

impl ApiRequest {
    /// Admits and calls the request on the synchronous front, within the invocation's deadline.
    async fn call<L: Ledger, B: Bedrock>(
        &self,
        gateway: &Gateway<L, B>,
        deadline: Instant,
    ) -> Outcome {
        let request = Request {
            caller: &self.caller,
            operation: self.operation,
            model: &self.model,
            body: &self.body,
            headers: &self.headers,
            front: Front::Sync,
            request_id: &self.reservation_id,
        };
        gateway.call(&request, Some(deadline)).await
    }
}

/// What a REST proxy request asks for, or the answer to give without calling Bedrock
/// (`Err`): `/usage` is answered here too.
async fn read_api<L: Ledger, B: Bedrock>(
    gateway: &Gateway<L, B>,
    request: ApiGatewayProxyRequest,
) -> Result<ApiRequest, Reply> {
    let application =
        application_of_key(gateway, request.request_context.identity.api_key_id.clone()).await?;
    let caller = seat_of(&request, application)?;
    let method = request.http_method.as_str();
    let path = request.path.clone().unwrap_or_default();
    if method == "GET" && path.ends_with("/usage") {
        return Err(gateway.usage(&caller).await);
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (model, operation) = match parts.as_slice() {
        [.., "model", model, op] => (
            request
                .path_parameters
                .get("modelId")
                .cloned()
                .unwrap_or_else(|| (*model).to_string()),
            Operation::from_path(op),
        ),
        _ => (String::new(), None),
    };
    let Some(operation) = operation.filter(|_| method == "POST") else {
        return Err(Reply::error(
            404,
            "UnknownOperationException",
            "routes: POST /model/{modelId}/converse, /converse-stream, /invoke, /invoke-with-response-stream, /count-tokens; GET /usage",
        ));
    };
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = match (request.body.as_deref(), request.is_base64_encoded) {
        (None, _) => Vec::new(),
        (Some(b), false) => b.as_bytes().to_vec(),
        (Some(b), true) => aws_smithy_types::base64::decode(b)
            .map_err(|_| Reply::error(400, "ValidationError", "the body is not valid base64"))?,
    };
    // Reservation IDs of synchronous requests only need to be unique; API Gateway's request ID
    // goes to the logs.
    let reservation_id = crate::http::new_request_id();
    tracing::info!(
        api_request_id = request.request_context.request_id.as_deref().unwrap_or(""),
        reservation = %reservation_id,
        application = %caller.application,
        operation = operation.path(),
        "request"
    );
    Ok(ApiRequest {
        caller,
        operation,
        model,
        body,
        headers,
        reservation_id,
    })
}

/// Handles an API Gateway REST proxy request with a whole (buffered) answer. A streaming
/// operation is answered 400 here: the Lambda engine serves them through [`handle_stream`]
/// (the REST API's `STREAM` integrations); the Step Functions Express engine cannot stream.
pub async fn handle_api<L: Ledger, B: Bedrock>(
    gateway: &Gateway<L, B>,
    request: ApiGatewayProxyRequest,
    deadline: Instant,
) -> ApiGatewayProxyResponse {
    let asked = match read_api(gateway, request).await {
        Ok(asked) => asked,
        Err(reply) => return api_response(reply),
    };
    if asked.operation.streams() {
        return api_response(Reply::error(
            400,
            "ValidationException",
            format!(
                "`{}` streams, and this API answers whole responses only (the Step Functions Express engine cannot stream); call `converse` or `invoke`, or deploy with the Lambda engine",
                asked.operation.path()
            ),
        ));
    }
    match asked.call(gateway, deadline).await {
        Outcome::Reply(reply) => api_response(reply),
        _ => api_response(Reply::error(
            500,
            "InternalError",
            "unexpected async outcome on the sync front",
        )),
    }
}

/// The bytes of a streamed Lambda answer.
pub type BodyStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>,
>;

/// A Lambda answer: whole (API Gateway `BUFFERED` integrations, SQS, the authorizer, the
/// sweeper) or streamed (`STREAM` integrations).
pub type LambdaResponse = lambda_runtime::FunctionResponse<Value, BodyStream>;

/// Whether `event` is a REST proxy request for a streaming operation, which the REST API sends
/// through a `STREAM` integration (Lambda's InvokeWithResponseStream) and which must be answered
/// in its format ([`handle_stream`]), errors included.
pub fn is_stream_request(event: &Value) -> bool {
    // The REQUEST authorizer's event names the path too, but API Gateway invokes the authorizer
    // with a plain Invoke and reads a JSON policy: it is never answered as a stream.
    !is_authorizer_request(event)
        && event.get("requestContext").is_some()
        && event.get("httpMethod").and_then(Value::as_str) == Some("POST")
        && event
            .get("path")
            .and_then(Value::as_str)
            .and_then(|p| p.trim_end_matches('/').rsplit('/').next())
            .and_then(Operation::from_path)
            .is_some_and(Operation::streams)
}

/// Handles a REST proxy request for a streaming operation in the format of API Gateway's
/// response streaming (Lambda proxy integrations with `ResponseTransferMode: STREAM`): a JSON
/// prelude with the status and headers, eight NUL bytes, then the body as it comes. An error
/// before the stream opens (over budget, bad key) is an ordinary status with a JSON body.
///
/// The stream ends only after its settlement: Lambda freezes the sandbox once the answer is
/// complete, and nothing runs in a frozen sandbox. A caller that hangs up does not end it early
/// ([`Gateway::relay`] reads on to the usage); if the sandbox is frozen or stopped before that,
/// the reservation is held until its hold expires and charged at its worst case by the sweeper.
pub async fn handle_stream<L: Ledger, B: Bedrock>(
    gateway: std::sync::Arc<Gateway<L, B>>,
    event: Value,
    deadline: Instant,
) -> lambda_runtime::StreamResponse<BodyStream> {
    let request: ApiGatewayProxyRequest = match serde_json::from_value(event) {
        Ok(request) => request,
        Err(e) => {
            return whole_stream(Reply::error(
                400,
                "ValidationError",
                format!("not an API Gateway proxy event: {e}"),
            ));
        }
    };
    let asked = match read_api(&gateway, request).await {
        Ok(asked) => asked,
        Err(reply) => return whole_stream(reply),
    };
    let opened = match asked.call(&gateway, deadline).await {
        Outcome::Stream(opened) => opened,
        Outcome::Reply(reply) => return whole_stream(reply),
        _ => {
            return whole_stream(Reply::error(
                500,
                "InternalError",
                "unexpected async outcome on the sync front",
            ));
        }
    };
    let prelude = prelude(opened.reply.status, &opened.reply.headers);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(32);
    tokio::spawn(async move {
        let (relayed_tx, mut relayed_rx) = tokio::sync::mpsc::channel(32);
        // A caller that hung up ends `forward`, which drops `relayed_rx` (moved in): the relay
        // notices and reads on to the usage.
        let frames = &tx;
        let forward = async move {
            while let Some(item) = relayed_rx.recv().await {
                let item: Result<bytes::Bytes, std::io::Error> = item;
                // Lambda's runtime API cannot abort a streamed answer; a stream that broke off
                // ends with an exception event, which every Bedrock SDK raises.
                let chunk = item.unwrap_or_else(|e| exception_frame(&e.to_string()));
                if frames.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
        };
        tokio::join!(gateway.relay(opened, relayed_tx), forward);
        // `tx` is dropped only now, after the settlement: the caller's stream ends after it.
        drop(tx);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    lambda_runtime::StreamResponse {
        metadata_prelude: prelude,
        stream: Box::pin(stream),
    }
}

fn prelude(status: u16, headers: &[(String, String)]) -> lambda_runtime::MetadataPrelude {
    use aws_lambda_events::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            map.insert(n, v);
        }
    }
    lambda_runtime::MetadataPrelude {
        status_code: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        headers: map,
        cookies: Vec::new(),
    }
}

/// A whole answer in the streaming format: the prelude, then the JSON body.
fn whole_stream(reply: Reply) -> lambda_runtime::StreamResponse<BodyStream> {
    let mut headers = reply.headers.clone();
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        headers.push(("content-type".into(), "application/json".into()));
    }
    let body = reply.bytes();
    lambda_runtime::StreamResponse {
        metadata_prelude: prelude(reply.status, &headers),
        stream: Box::pin(futures_util::stream::once(async move { Ok(body) })),
    }
}

/// An event-stream exception message (`modelStreamErrorException`), as Bedrock ends a stream
/// that failed after it started.
fn exception_frame(reason: &str) -> bytes::Bytes {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let payload = serde_json::json!({ "message": reason }).to_string();
    let message = Message::new(payload.into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("exception".into()),
        ))
        .add_header(Header::new(
            ":exception-type",
            HeaderValue::String("modelStreamErrorException".into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out)
        .expect("an event-stream message encodes");
    bytes::Bytes::from(out)
}

/// What an SQS message carries: the request ID (for deduplication), the model and the body.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QueuedRequest {
    request_id: Option<String>,
    model_id: String,
    /// `converse` (the default) or `invoke`, whose `request` is the model family's own body.
    #[serde(default)]
    operation: Option<String>,
    request: Value,
    /// How often the request was deferred over budget; informational.
    #[serde(default)]
    deferrals: u32,
}

/// Handles an SQS batch, reporting failed messages so that only they are retried. The messages
/// run concurrently, each calling Bedrock until `deadline`, so a batch fits the function timeout
/// however long each generation takes.
pub async fn handle_sqs<L: Ledger, B: Bedrock, Q: Queues>(
    gateway: &Gateway<L, B>,
    queues: &Q,
    event: SqsEvent,
    deadline: Instant,
) -> SqsBatchResponse {
    let results = futures_util::future::join_all(event.records.into_iter().map(|message| async {
        let id = message.message_id.clone().unwrap_or_default();
        (id, handle_message(gateway, queues, message, deadline).await)
    }))
    .await;
    let mut response = SqsBatchResponse::default();
    for (id, result) in results {
        if let Err(e) = result {
            tracing::error!(message_id = %id, error = %e, "message will be retried");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}

async fn handle_message<L: Ledger, B: Bedrock, Q: Queues>(
    gateway: &Gateway<L, B>,
    queues: &Q,
    message: SqsMessage,
    deadline: Instant,
) -> Result<(), Error> {
    let arn = message
        .event_source_arn
        .clone()
        .ok_or_else(|| Error::Queue("the message has no eventSourceARN".into()))?;
    let body = message.body.clone().unwrap_or_default();
    let message_id = message.message_id.clone().unwrap_or_default();
    match queued_admit(gateway, queues, &arn, &message_id, &body, deadline).await? {
        QueuedAdmission::Handled => Ok(()),
        QueuedAdmission::Admitted {
            ticket,
            shaped,
            context,
        } => {
            let family = shaped.family;
            let (ticket, sent) = gateway.call_admitted(ticket, shaped, deadline).await;
            let read = match sent {
                Ok(answer) => read_answer(family, answer),
                Err(e) => Err(e.into()),
            };
            let outcome = gateway
                .complete(ticket, read, Front::Queue, &context.request_id)
                .await;
            queued_finish(queues, &context, outcome).await
        }
    }
}

/// Where a queued request's answer goes once Bedrock has answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueContext {
    /// The request ID results are delivered under.
    pub request_id: String,
    /// The application's results queue.
    pub results_queue_url: String,
}

/// What [`queued_admit`] decided for a message.
// One per message, moved and never copied (as `Admission`).
#[allow(clippy::large_enum_variant)]
pub enum QueuedAdmission {
    /// Answered, requeued or recognised as a duplicate already; nothing more to do.
    Handled,
    /// Reserved: call Bedrock, [`Gateway::complete`], then [`queued_finish`].
    Admitted {
        /// What to settle.
        ticket: crate::gateway::Ticket,
        /// The request, checked and ready to send.
        shaped: crate::ops::Shaped,
        /// Where the answer goes.
        context: QueueContext,
    },
}

/// The first half of a queued request: identify the application by the queue (`queue_arn`),
/// parse the message and admit it. Malformed messages are answered on the results queue;
/// requests over a `queue` budget are re-sent with a delay. An `Err` means: retry the message.
pub async fn queued_admit<L: Ledger, B: Bedrock, Q: Queues>(
    gateway: &Gateway<L, B>,
    queues: &Q,
    queue_arn: &str,
    message_id: &str,
    body: &str,
    deadline: Instant,
) -> Result<QueuedAdmission, Error> {
    let arn = queue_arn.to_string();
    let application = gateway
        .ledger()
        .application_for(&Identity::QueueArn(arn.clone()))
        .await
        .map_err(Error::ledger("find the queue's application"))?
        .ok_or_else(|| Error::Queue(format!("queue `{arn}` belongs to no application")))?;
    let config = gateway
        .ledger()
        .budget(&application)
        .await
        .map_err(Error::ledger("read the application's budget"))?
        .ok_or_else(|| Error::Queue(format!("application `{application}` has no budget")))?;
    let results = config
        .results_queue_url
        .clone()
        .ok_or_else(|| Error::Queue(format!("application `{application}` has no results queue")))?;
    let fallback_id = message_id.to_string();
    let queued: QueuedRequest = match serde_json::from_str(body) {
        Ok(q) => q,
        Err(e) => {
            // A malformed message never becomes valid: answer it instead of retrying it forever,
            // under the sender's requestId when it can be read, so the sender can match it.
            let reply = Reply::error(
                400,
                "ValidationError",
                format!("the message is not `{{\"requestId\", \"modelId\", \"request\"}}`: {e}"),
            );
            let id = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v.get("requestId")
                        .and_then(|id| id.as_str())
                        .map(String::from)
                })
                .unwrap_or(fallback_id);
            queues
                .send(&results, result_message(&id, &reply).to_string(), 0)
                .await?;
            return Ok(QueuedAdmission::Handled);
        }
    };
    let request_id = queued.request_id.clone().unwrap_or(fallback_id.clone());
    if let Err(message) = ledger::check_request_id(&request_id) {
        // The caller's mistake, answered under the message ID (the requestId cannot be a key).
        let reply = Reply {
            status: 400,
            body: serde_json::json!({ "error": "ValidationError", "field": "requestId", "message": message }),
            ..Reply::default()
        };
        queues
            .send(
                &results,
                result_message(&fallback_id, &reply).to_string(),
                0,
            )
            .await?;
        return Ok(QueuedAdmission::Handled);
    }
    let context = QueueContext {
        request_id: request_id.clone(),
        results_queue_url: results,
    };
    if queued.deferrals >= MAX_DEFERRALS {
        let reply = Reply::error(
            429,
            "BudgetExceeded",
            format!(
                "request `{request_id}` was deferred {} times over its application's budget and is given up",
                queued.deferrals
            ),
        );
        queued_finish(queues, &context, Outcome::Reply(reply)).await?;
        return Ok(QueuedAdmission::Handled);
    }
    let operation = match queued.operation.as_deref() {
        None | Some("converse") => Operation::Converse,
        Some("invoke") => Operation::Invoke,
        Some(other) => {
            let reply = Reply::error(
                400,
                "ValidationException",
                format!(
                    "`operation` `{other}` is not one the queue serves: `converse` or `invoke`"
                ),
            );
            queued_finish(queues, &context, Outcome::Reply(reply)).await?;
            return Ok(QueuedAdmission::Handled);
        }
    };
    let request_bytes = serde_json::to_vec(&queued.request)?;
    let caller = Caller::application(application.as_str());
    let request = Request {
        caller: &caller,
        operation,
        model: &queued.model_id,
        body: &request_bytes,
        headers: &[],
        front: Front::Queue,
        request_id: &request_id,
    };
    match gateway.admit(&request, deadline).await {
        Admission::Admitted { ticket, shaped } => Ok(QueuedAdmission::Admitted {
            ticket,
            shaped,
            context,
        }),
        Admission::Done(Outcome::Requeue { delay_seconds }) => {
            let url = queues.url_of(&arn).await?;
            let deferred = serde_json::json!({
                "requestId": request_id,
                "modelId": queued.model_id,
                "request": queued.request,
                "deferrals": queued.deferrals.saturating_add(1)
            });
            queues
                .send(
                    &url,
                    deferred.to_string(),
                    delay_seconds.clamp(1, MAX_DELAY_SECONDS) as i32,
                )
                .await?;
            Ok(QueuedAdmission::Handled)
        }
        Admission::Done(outcome) => {
            queued_finish(queues, &context, outcome).await?;
            Ok(QueuedAdmission::Handled)
        }
    }
}

/// Whether an answer is transient: the message goes back to SQS (a batch item failure) to be
/// tried again, never to the results queue as final. Bedrock throttling, the ledger unreachable
/// or contended, a Bedrock server error or timeout (charged at its worst case; a retry is a new
/// generation, reserved anew).
pub fn is_transient(reply: &Reply) -> bool {
    let code = error_code(reply);
    matches!(
        (reply.status, code.as_str()),
        (429, "ThrottlingException" | "ModelNotReadyException")
            | (
                503,
                "LedgerUnavailable"
                    | "LedgerBusy"
                    | "NotSent"
                    | "CountTokensUnavailable"
                    | "ServiceUnavailableException"
            )
            | (
                _,
                "InternalServerException" | "ModelTimeoutException" | "ModelErrorException"
            )
            | (502, _)
            | (504, _)
    )
}

/// A reply's error code: Bedrock's `x-amzn-ErrorType`, or the gateway's own `error`.
fn error_code(reply: &Reply) -> String {
    if let Some(kind) = reply.header("x-amzn-errortype") {
        return kind.split(':').next().unwrap_or(kind).to_string();
    }
    reply.body["error"].as_str().unwrap_or("").to_string()
}

/// The second half: deliver the outcome of a queued request to its results queue. An `Err`
/// means: retry the message (a transient answer, see [`is_transient`], or the results queue
/// is unreachable).
pub async fn queued_finish<Q: Queues>(
    queues: &Q,
    context: &QueueContext,
    outcome: Outcome,
) -> Result<(), Error> {
    let results = &context.results_queue_url;
    match outcome {
        Outcome::Reply(reply) => {
            if is_transient(&reply) {
                return Err(Error::Transient {
                    status: reply.status,
                    code: error_code(&reply),
                });
            }
            queues
                .send(
                    results,
                    crate::gateway::bounded_result(&context.request_id, &reply),
                    0,
                )
                .await
        }
        Outcome::Duplicate {
            result: Some(result),
        } => queues.send(results, result, 0).await,
        Outcome::Duplicate { result: None } => Ok(()),
        // Only admission requeues; it re-sends the message itself.
        Outcome::Requeue { .. } => Err(Error::Unexpected(
            "unexpected requeue after Bedrock answered",
        )),
        Outcome::Stream(_) => Err(Error::Unexpected("unexpected stream on the queue front")),
    }
}
