//! The enforcing core shared by every front: identify, estimate, reserve, call, settle.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use budget::config::{self, BudgetConfig, EnforcementMode, ExceedAction};
use budget::estimate::{PER_REQUEST_OVERHEAD, binary_document};
use budget::forecast::{projected_usage, utilization_percent};
use budget::{Charge, Exceeded, Limit, LimitMetric, Usage};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ledger::{
    Completion, Expired, Ledger, LedgerError, Reservation, ReserveOutcome, ReserveRequest,
    Settlement, WindowUsage,
};
use serde_json::{Value, json};

use crate::bedrock::{Answer, AnswerBody, Bedrock, BedrockError, Call, is_refusal};
use crate::metrics::{MetricsSink, RequestMetrics, expired_record, request_record, window_record};
use crate::ops::{self, Family, Operation, Shaped, StreamUsage, foundation_model};

/// What to do when the ledger cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerFailurePolicy {
    /// Fail closed: 503.
    Deny,
    /// Fail open: call Bedrock unreserved and count it in `UnreservedRequests`. Only when the
    /// ledger cannot be reached after the application's configuration was read: contention,
    /// corrupt items and a missing configuration always deny.
    Allow,
}

/// Settings of a gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Model aliases to model IDs.
    pub models: BTreeMap<String, String>,
    /// Output cap for requests that set no `maxTokens`.
    pub default_max_tokens: u32,
    /// Behaviour when the ledger is down.
    pub on_ledger_error: LedgerFailurePolicy,
    /// How long a reservation may stay unsettled before the sweeper charges it its worst case.
    pub hold_seconds: i64,
    /// How long an application's configuration is cached.
    pub config_ttl: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long completed async requests are remembered, to recognise redeliveries.
    pub remember_seconds: i64,
    /// The longest a synchronous call to Bedrock may take (`invoke serve`); the Lambda fronts use
    /// the invocation's own deadline. A call cut off is settled at its worst case.
    pub call_timeout: Duration,
    /// The longest a stream may run on `invoke serve` (long thinking generations stream for many
    /// minutes); a stream still running then is cut off and charged at its worst case.
    pub stream_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            models: BTreeMap::new(),
            default_max_tokens: 1024,
            on_ledger_error: LedgerFailurePolicy::Deny,
            hold_seconds: 900,
            config_ttl: Duration::from_secs(5),
            max_body_bytes: 6 * 1024 * 1024,
            remember_seconds: 86_400,
            call_timeout: Duration::from_secs(300),
            stream_timeout: Duration::from_secs(3600),
        }
    }
}

/// The front a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// Synchronous HTTP (API Gateway or `serve`).
    Sync,
    /// SQS.
    Queue,
}

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

/// What became of a request.
#[derive(Debug)]
pub enum Outcome {
    /// Answered (success or error).
    Reply(Reply),
    /// A stream Bedrock opened: send `reply`'s status and headers, then relay the stream with
    /// [`Gateway::relay`], which settles it.
    Stream(Box<Opened>),
    /// Async only: try again later (over budget with `queue`, or a duplicate still in flight).
    Requeue {
        /// Seconds until it is worth trying again.
        delay_seconds: i64,
    },
    /// Async only: a redelivery of a completed request; its stored result, if any.
    Duplicate {
        /// The result delivered the first time.
        result: Option<String>,
    },
}

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

/// A stream Bedrock opened for an admitted request, to relay and settle with
/// [`Gateway::relay`]. One that is dropped instead stays held, and the sweeper charges it its
/// worst case when its hold ends: never less than Bedrock may have billed.
pub struct Opened {
    /// Status and headers to send before the first event.
    pub reply: Reply,
    ticket: Ticket,
    family: Family,
    upstream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>,
    deadline: Instant,
    request_id: String,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("reply", &self.reply)
            .field("reservation", &self.ticket.reservation.id)
            .finish_non_exhaustive()
    }
}

/// An application's configuration as read at an instant (`None`: the application has none).
type CachedConfig = (Instant, Option<Arc<BudgetConfig>>);

/// The gateway: generic over its ledger and its Bedrock, so tests run it against the in-memory
/// ledger or DynamoDB on moto, and the Bedrock stub.
pub struct Gateway<L, B> {
    ledger: Arc<L>,
    bedrock: B,
    settings: Settings,
    metrics: MetricsSink,
    configs: Mutex<HashMap<String, CachedConfig>>,
}

/// Unix seconds now.
pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long a settlement is retried inline before it is left to the sweeper (which charges the
/// worst case). Inline, because a Lambda sandbox is frozen once the handler returns: background
/// retries would never run.
const SETTLE_RETRY_FOR: Duration = Duration::from_secs(5);

/// Charges an admitted request's whole reservation when its call to Bedrock is abandoned after
/// it was sent (a panic, a dropped future): Bedrock bills a generation whether or not anyone
/// reads the answer. It holds the ticket itself (moved in, handed back by `disarm`), so arming it
/// copies nothing. Without a runtime to settle on, the sweeper closes the reservation at the
/// same worst case.
struct ChargeGuard<L: Ledger> {
    ledger: Arc<L>,
    ticket: Option<Ticket>,
    remember_seconds: i64,
}

impl<L: Ledger> ChargeGuard<L> {
    fn disarm(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }
}

impl<L: Ledger> Drop for ChargeGuard<L> {
    fn drop(&mut self) {
        if let Some(Ticket { reservation, .. }) = self.ticket.take() {
            let ledger = Arc::clone(&self.ledger);
            let charge = worst_case_settlement(
                &reservation,
                "the call to Bedrock was abandoned after it was sent",
                self.remember_seconds,
            );
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        if let Err(e) = ledger.settle(&reservation, &charge).await {
                            tracing::error!(reservation = %reservation.id, error = %e, "charging an abandoned reservation failed; the sweeper charges it at its hold's end");
                        }
                    });
                }
                Err(_) => {
                    tracing::error!(reservation = %reservation.id, "no runtime to charge an abandoned reservation; the sweeper charges it at its hold's end")
                }
            }
        }
    }
}

/// A settlement that charges the whole reservation, recording why.
fn worst_case_settlement(reservation: &Reservation, reason: &str, remember: i64) -> Settlement {
    Settlement {
        actual: reservation.charge,
        completion: Some(Completion {
            remember_seconds: remember,
            result: None,
            worst_case: Some(reason.to_string()),
        }),
        now: now_seconds(),
    }
}

fn refund() -> Settlement {
    Settlement {
        actual: Charge::ZERO,
        completion: None,
        now: now_seconds(),
    }
}

/// A plan for one model: where to call it, its price, and the worst case.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The model asked for (or the fallback), as the application names it.
    pub model: String,
    /// What Bedrock is called with: the model, or its inference profile.
    pub target: String,
    /// Its price, if known.
    pub price: Option<budget::Price>,
    /// The worst case reserved.
    pub charge: Charge,
}

/// A request admitted against its budgets: everything needed to settle it once Bedrock has
/// answered. Serializable, so the Step Functions engine carries it between its states.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ticket {
    /// The application's configuration it was admitted under.
    pub config: Arc<BudgetConfig>,
    /// The model plan.
    pub plan: Plan,
    /// The reservation to settle.
    pub reservation: Reservation,
    /// Served by the fallback model.
    pub fallback_used: bool,
    /// Shadow mode: the limit it would have been refused by.
    pub shadow_note: Option<String>,
}

/// What [`Gateway::admit`] decided.
// One per request, moved and never copied: boxing the ticket would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Admission {
    /// Reserved: call Bedrock with `shaped` for `ticket.plan.target`, then [`Gateway::complete`].
    Admitted {
        /// What to settle.
        ticket: Ticket,
        /// The request, checked and ready to send.
        shaped: Shaped,
    },
    /// Answered without Bedrock (refused, denied, requeued, duplicate, or served unreserved
    /// because the ledger is down and policy allows it).
    Done(Outcome),
}

impl<L: Ledger, B: Bedrock> Gateway<L, B> {
    /// A gateway over `ledger` and `bedrock`.
    pub fn new(ledger: Arc<L>, bedrock: B, settings: Settings, metrics: MetricsSink) -> Self {
        Gateway {
            ledger,
            bedrock,
            settings,
            metrics,
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<L> {
        &self.ledger
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The application's configuration, shared: cloning it on every request cost a dozen
    /// allocations.
    async fn config(&self, application: &str) -> Result<Option<Arc<BudgetConfig>>, LedgerError> {
        if let Some((at, config)) = self.configs.lock().expect("config cache").get(application)
            && at.elapsed() < self.settings.config_ttl
        {
            return Ok(config.clone());
        }
        let config = self.ledger.budget(application).await?.map(Arc::new);
        self.configs
            .lock()
            .expect("config cache")
            .insert(application.to_string(), (Instant::now(), config.clone()));
        Ok(config)
    }

    /// Resolves a path model (alias or ID) to a model ID.
    pub fn resolve_model(&self, model: &str) -> Option<String> {
        if let Some(id) = self.settings.models.get(model) {
            return Some(id.clone());
        }
        let looks_like_id = model.contains('.') || model.starts_with("arn:");
        let valid = !model.is_empty()
            && model.len() <= 2048
            && model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:/_-".contains(c));
        (looks_like_id && valid).then(|| model.to_string())
    }

    fn plan(&self, config: &BudgetConfig, model: &str, shaped: &Shaped) -> Result<Plan, Reply> {
        let price = config.price_of(model);
        if price.is_none() && config.has_usd_limit() {
            return Err(Reply::error(
                403,
                "ModelNotPriced",
                format!(
                    "model `{model}` has no price, so the application's USD limits cannot be enforced on it"
                ),
            ));
        }
        let target = config.profile_for(model).unwrap_or(model).to_string();
        // The provider's hidden tool-use prompt depends on the model, so it is added per plan.
        let input_bound = shaped
            .content_bound
            .saturating_add(shaped.tool_prompt(model));
        Ok(Plan {
            model: model.to_string(),
            target,
            price,
            charge: config::worst_case(price, input_bound, shaped.max_tokens),
        })
    }

    /// Binary documents (PDF, Word, Excel) in a Converse request expand past their bytes, so a
    /// request holding one is counted exactly with CountTokens on models that support it
    /// (Anthropic's) and refused, naming the document, on others. Returns the content bound to
    /// reserve.
    async fn counted_bound(&self, model: &str, shaped: &Shaped) -> Result<u64, Reply> {
        if shaped.family != Family::Converse {
            return Ok(shaped.content_bound);
        }
        let Some(document) = binary_document(&shaped.request) else {
            return Ok(shaped.content_bound);
        };
        let base = foundation_model(model);
        let refuse = |why: &str| {
            field(
                400,
                &document,
                &format!(
                    "a PDF, Word or Excel document's tokens are not bounded by its bytes, and {why}; send its text instead"
                ),
            )
        };
        if !base.starts_with("anthropic.") {
            return Err(refuse(&format!(
                "model `{model}` does not support CountTokens to count it"
            )));
        }
        let mut converse = serde_json::Map::new();
        for key in [
            "messages",
            "system",
            "toolConfig",
            "additionalModelRequestFields",
        ] {
            if let Some(v) = shaped.request.get(key) {
                converse.insert(key.into(), v.clone());
            }
        }
        let call = Call {
            operation: Operation::CountTokens,
            body: Bytes::from(json!({ "input": { "converse": converse } }).to_string()),
            headers: vec![("content-type".into(), "application/json".into())],
        };
        let unavailable = |why: String| {
            Reply::error(
                503,
                "CountTokensUnavailable",
                format!(
                    "the request holds a document that must be counted before it can be reserved, and CountTokens failed: {why}"
                ),
            )
        };
        let answer = self
            .bedrock
            .send(base, call)
            .await
            .map_err(|e| unavailable(e.message().to_string()))?;
        let body = match answer.body {
            AnswerBody::Full(b) => b,
            AnswerBody::Stream(_) => return Err(unavailable("it answered a stream".into())),
        };
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match (answer.status, parsed["inputTokens"].as_u64()) {
            (200, Some(n)) => Ok(n.saturating_add(PER_REQUEST_OVERHEAD)),
            (400, _) => Err(refuse(&format!(
                "Bedrock could not count it: {}",
                parsed["message"].as_str().unwrap_or("no message")
            ))),
            (status, _) => Err(unavailable(format!("status {status}"))),
        }
    }

    async fn reserve(
        &self,
        config: &BudgetConfig,
        id: &str,
        limits: &[Limit],
        charge: Charge,
    ) -> Result<ReserveOutcome, LedgerError> {
        let attempt = ledger::new_attempt();
        let request = ReserveRequest {
            application: &config.application,
            reservation_id: id,
            limits,
            charge,
            now: now_seconds(),
            hold_seconds: self.settings.hold_seconds,
            attempt: &attempt,
        };
        let outcome = self.ledger.reserve(&request).await;
        if outcome.is_err()
            && let Ok(reservation) = Reservation::of(&request)
        {
            // The write may have applied with its answer lost: refund this attempt's
            // reservation (Bedrock was not called), which changes nothing if it never applied.
            // If the refund fails too, the sweeper charges the reservation at its hold's end.
            let _ = tokio::time::timeout(
                SETTLE_RETRY_FOR,
                self.ledger.settle(&reservation, &refund()),
            )
            .await;
        }
        outcome
    }

    /// Handles a Converse request of `application` for `model_param` (alias or ID), giving the
    /// call to Bedrock at most [`Settings::call_timeout`] from when it is sent: [`Gateway::call`]
    /// for its commonest use.
    pub async fn converse(
        &self,
        application: &str,
        model_param: &str,
        body: &[u8],
        front: Front,
        request_id: &str,
    ) -> Outcome {
        self.call(
            application,
            Operation::Converse,
            model_param,
            body,
            &[],
            front,
            request_id,
            None,
        )
        .await
    }

    /// Handles a request of `application` for any operation on `model_param` (alias or ID):
    /// CountTokens is passed through uncharged; the others are admitted, sent and settled. A
    /// stream Bedrock opened comes back as [`Outcome::Stream`], to relay with [`Gateway::relay`].
    /// `headers` are the caller's (`content-type`, `accept` and `x-amzn-bedrock-*` are passed
    /// on). Bedrock gets until `deadline`, or [`Settings::call_timeout`] from the call's start
    /// ([`Settings::stream_timeout`] for a stream).
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        application: &str,
        operation: Operation,
        model_param: &str,
        body: &[u8],
        headers: &[(String, String)],
        front: Front,
        request_id: &str,
        deadline: Option<Instant>,
    ) -> Outcome {
        let timeout = if operation.streams() {
            self.settings.stream_timeout
        } else {
            self.settings.call_timeout
        };
        let call_deadline = || deadline.unwrap_or_else(|| Instant::now() + timeout);
        if operation == Operation::CountTokens {
            return Outcome::Reply(
                self.count_tokens(application, model_param, body, headers, call_deadline())
                    .await,
            );
        }
        let (ticket, shaped) = match self
            .admit(
                application,
                operation,
                model_param,
                body,
                headers,
                front,
                request_id,
                call_deadline(),
            )
            .await
        {
            Admission::Admitted { ticket, shaped } => (ticket, shaped),
            Admission::Done(outcome) => return outcome,
        };
        let family = shaped.family;
        let deadline = call_deadline();
        let (ticket, sent) = self.call_admitted(ticket, shaped, deadline).await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(e) => {
                return self
                    .complete(ticket, Err(e.into()), front, request_id)
                    .await;
            }
        };
        let (status, headers, upstream) = match answer {
            Answer {
                status,
                headers,
                body: AnswerBody::Stream(upstream),
            } => (status, headers, upstream),
            whole => {
                let read = read_answer(family, whole);
                return self.complete(ticket, read, front, request_id).await;
            }
        };
        let mut reply = Reply {
            status,
            headers: passed_answer_headers(&headers),
            ..Reply::default()
        }
        .with_header("x-tokenfence-application", &ticket.config.application)
        .with_header("x-tokenfence-model", &ticket.plan.model);
        if ticket.fallback_used {
            reply = reply.with_header("x-tokenfence-fallback", &ticket.plan.model);
        }
        if let Some(note) = &ticket.shadow_note {
            reply = reply.with_header("x-tokenfence-shadow", format!("would-reject; {note}"));
        }
        Outcome::Stream(Box::new(Opened {
            reply,
            ticket,
            family,
            upstream,
            deadline,
            request_id: request_id.to_string(),
        }))
    }

    /// Relays an opened stream to `to` and settles it from its final usage: a caller that hangs
    /// up does not stop the reading (Bedrock bills the generation anyway), which goes on until
    /// the stream ends or its deadline; a stream that ends without usage, breaks off, or runs
    /// past its deadline is charged at its worst case. The first bytes are passed on as they
    /// come: settlement waits for the end, never the caller.
    /// A stream that breaks off ends the caller's with an error too, never as if complete.
    pub async fn relay(
        &self,
        opened: Box<Opened>,
        to: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) {
        let Opened {
            ticket,
            family,
            mut upstream,
            deadline,
            request_id,
            ..
        } = *opened;
        let mut guard = ChargeGuard {
            ledger: Arc::clone(&self.ledger),
            ticket: Some(ticket),
            remember_seconds: self.settings.hold_seconds,
        };
        let mut reader = StreamUsage::new(family);
        let mut listening = true;
        let mut broke: Option<String> = None;
        loop {
            match tokio::time::timeout_at(deadline.into(), upstream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    reader.feed(&chunk);
                    if listening && to.send(Ok(chunk)).await.is_err() {
                        listening = false;
                        tracing::info!(request = %request_id, "the caller hung up mid-stream; reading on to the usage");
                    }
                }
                Ok(Some(Err(e))) => {
                    broke = Some(e);
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    broke = Some("the stream ran past its deadline".into());
                    break;
                }
            }
        }
        if let Some(reason) = &broke
            && listening
        {
            let _ = to.send(Err(std::io::Error::other(reason.clone()))).await;
        }
        drop(to);
        let (usage, error) = reader.finish();
        let ticket = guard.disarm().expect("armed until the stream ended");
        let read = match broke.or(error) {
            Some(reason) => Err(Failure {
                reply: Reply::error(502, "ModelStreamErrorException", reason.clone()),
                refundable: false,
                reason,
            }),
            None => Ok(Answered {
                reply: Reply {
                    status: 200,
                    ..Reply::default()
                },
                usage,
            }),
        };
        let _ = self.complete(ticket, read, Front::Sync, &request_id).await;
    }

    /// CountTokens, passed through: free, so nothing is reserved, but the caller's key must be
    /// valid and the model one its application may call.
    async fn count_tokens(
        &self,
        application: &str,
        model_param: &str,
        body: &[u8],
        headers: &[(String, String)],
        deadline: Instant,
    ) -> Reply {
        let Some(model) = self.resolve_model(model_param) else {
            return unknown_model(model_param);
        };
        if body.len() > self.settings.max_body_bytes {
            return Reply::error(413, "PayloadTooLarge", "the body is too large");
        }
        let config = match self.config(application).await {
            Ok(Some(config)) => config,
            Ok(None) => return no_budget(application),
            Err(e) => return ledger_reply(&e),
        };
        if !config.allows(&model) {
            return not_allowed(application, &model);
        }
        let call = Call {
            operation: Operation::CountTokens,
            body: Bytes::copy_from_slice(body),
            headers: headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .cloned()
                .collect(),
        };
        let sent = tokio::time::timeout_at(
            deadline.into(),
            self.bedrock.send(foundation_model(&model), call),
        )
        .await;
        match sent {
            Ok(Ok(answer)) => match read_answer(Family::Converse, answer) {
                Ok(a) => a.reply,
                Err(f) => f.reply,
            },
            Ok(Err(e)) => bedrock_reply(e),
            Err(_) => bedrock_reply(BedrockError::Timeout(
                "Bedrock did not answer before the deadline".into(),
            )),
        }
        .with_header("x-tokenfence-application", application)
    }

    /// Admits a Converse request of `application` for `model_param` against its budgets:
    /// validates it, plans the model and reserves the worst case (with fallback, shadow and
    /// queue handling). The caller calls Bedrock and then [`Gateway::complete`]. `deadline`
    /// bounds the only Bedrock call admission makes: the unreserved one when the ledger is down
    /// and policy allows it.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        &self,
        application: &str,
        operation: Operation,
        model_param: &str,
        body: &[u8],
        headers: &[(String, String)],
        front: Front,
        request_id: &str,
        deadline: Instant,
    ) -> Admission {
        match self
            .admit_inner(
                application,
                operation,
                model_param,
                body,
                headers,
                front,
                request_id,
                deadline,
            )
            .await
        {
            Ok(admission) => admission,
            Err(reply) => Admission::Done(Outcome::Reply(reply)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn admit_inner(
        &self,
        application: &str,
        operation: Operation,
        model_param: &str,
        body: &[u8],
        headers: &[(String, String)],
        front: Front,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Admission, Reply> {
        ledger::check_request_id(request_id).map_err(|m| field(400, "requestId", &m))?;
        let Some(model) = self.resolve_model(model_param) else {
            return Err(unknown_model(model_param));
        };
        let mut shaped = ops::shape(
            operation,
            &model,
            body,
            headers,
            self.settings.max_body_bytes,
            self.settings.default_max_tokens,
        )?;

        // Without the application's configuration there is no allow-list and no limit to
        // enforce: never fail open here.
        let config = match self.config(application).await {
            Ok(Some(config)) => config,
            Ok(None) => return Err(no_budget(application)),
            Err(e) => return Err(ledger_reply(&e)),
        };
        if !config.allows(&model) {
            return Err(not_allowed(application, &model));
        }
        // The price book prices the standard tier with five-minute cache writes only: a field that
        // changes the price per token cannot be held to a USD limit.
        if config.has_usd_limit()
            && let Some((path, value)) = shaped.price_fields.first()
        {
            return Err(field(
                400,
                path,
                &format!(
                    "`{path}` `{value}` changes the price per token, and the price book has no price for it, so application `{application}`'s USD limits could not be enforced; leave it out"
                ),
            ));
        }
        shaped.content_bound = self.counted_bound(&model, &shaped).await?;
        let mut plan = self.plan(&config, &model, &shaped)?;

        let mut fallback_used = false;
        let mut shadow_note: Option<String> = None;
        let reservation = match self
            .reserve(&config, request_id, &config.limits, plan.charge)
            .await
        {
            Err(e) => {
                return self
                    .ledger_down(&config, &plan, shaped, e, deadline)
                    .await
                    .map(Admission::Done);
            }
            Ok(ReserveOutcome::Reserved(r)) => r,
            Ok(ReserveOutcome::Duplicate { .. }) if front == Front::Sync => {
                return Err(duplicate(request_id));
            }
            Ok(ReserveOutcome::Duplicate {
                in_flight: true, ..
            }) => return Ok(Admission::Done(Outcome::Requeue { delay_seconds: 30 })),
            Ok(ReserveOutcome::Duplicate {
                in_flight: false,
                result,
            }) => return Ok(Admission::Done(Outcome::Duplicate { result })),
            Ok(ReserveOutcome::Exceeded {
                exceeded,
                retry_after,
            }) => {
                if config.mode == EnforcementMode::Shadow {
                    // Count the request without enforcing, so the shadow usage stays true.
                    shadow_note = Some(describe(&exceeded));
                    let uncapped: Vec<Limit> = config
                        .limits
                        .iter()
                        .map(|l| Limit {
                            window: l.window,
                            tokens: None,
                            usd: None,
                        })
                        .collect();
                    match self
                        .reserve(&config, request_id, &uncapped, plan.charge)
                        .await
                    {
                        Ok(ReserveOutcome::Reserved(r)) => r,
                        Ok(_) => {
                            return Err(duplicate(request_id));
                        }
                        Err(e) => {
                            return self
                                .ledger_down(&config, &plan, shaped, e, deadline)
                                .await
                                .map(Admission::Done);
                        }
                    }
                } else {
                    match (&config.on_exceed, front) {
                        // A model-native body only goes to a model of its own family.
                        (ExceedAction::Fallback { model: fallback }, _)
                            if *fallback != plan.model
                                && Family::of(operation, fallback).ok() == Some(shaped.family) =>
                        {
                            plan = self.plan(&config, fallback, &shaped)?;
                            match self
                                .reserve(&config, request_id, &config.limits, plan.charge)
                                .await
                            {
                                Ok(ReserveOutcome::Reserved(r)) => {
                                    fallback_used = true;
                                    r
                                }
                                Ok(ReserveOutcome::Exceeded {
                                    exceeded,
                                    retry_after,
                                }) => {
                                    return Err(self.denied(
                                        &config,
                                        &plan.model,
                                        &exceeded,
                                        retry_after,
                                    ));
                                }
                                Ok(_) => {
                                    return Err(duplicate(request_id));
                                }
                                // The plan is the fallback now: if policy fails open, it is the
                                // cheaper model that is called, never the refused one.
                                Err(e) => {
                                    return self
                                        .ledger_down(&config, &plan, shaped, e, deadline)
                                        .await
                                        .map(Admission::Done);
                                }
                            }
                        }
                        (ExceedAction::Queue, Front::Queue) => {
                            self.emit_request(
                                &config,
                                &plan.model,
                                false,
                                true,
                                false,
                                None,
                                &Usage::default(),
                                0,
                            );
                            return Ok(Admission::Done(Outcome::Requeue {
                                delay_seconds: retry_after,
                            }));
                        }
                        _ => return Err(self.denied(&config, &plan.model, &exceeded, retry_after)),
                    }
                }
            }
        };

        Ok(Admission::Admitted {
            ticket: Ticket {
                config,
                plan,
                reservation,
                fallback_used,
                shadow_note,
            },
            shaped,
        })
    }

    /// Calls Bedrock for an admitted request until `deadline`. A call cut off by the deadline,
    /// or abandoned after it was sent (this future dropped), is charged at its worst case: the
    /// generation may have been billed. The ticket comes back with the answer, for
    /// [`Gateway::complete`].
    pub async fn call_admitted(
        &self,
        ticket: Ticket,
        shaped: Shaped,
        deadline: Instant,
    ) -> (Ticket, Result<Answer, BedrockError>) {
        if Instant::now() >= deadline {
            return (
                ticket,
                Err(BedrockError::NotSent(
                    "no time was left to call Bedrock before the deadline".into(),
                )),
            );
        }
        let mut guard = ChargeGuard {
            ledger: Arc::clone(&self.ledger),
            ticket: Some(ticket),
            remember_seconds: self.settings.hold_seconds,
        };
        let target = &guard.ticket.as_ref().expect("armed").plan.target;
        let call = Call {
            operation: shaped.operation,
            body: shaped.bytes(),
            headers: shaped.headers,
        };
        let called =
            match tokio::time::timeout_at(deadline.into(), self.bedrock.send(target, call)).await {
                Ok(called) => called,
                Err(_) => Err(BedrockError::Timeout(
                    "Bedrock did not answer before the deadline".into(),
                )),
            };
        let ticket = guard.disarm().expect("armed until Bedrock answered");
        (ticket, called)
    }

    /// Settles an admitted request with what Bedrock answered, emits its metrics and builds the
    /// reply: the actual usage when Bedrock reported it; a refund only for the errors that prove
    /// Bedrock generated nothing ([`BedrockError::refundable`]); the whole reservation for
    /// everything else (server errors, timeouts, cut connections, a response without usage).
    pub async fn complete(
        &self,
        ticket: Ticket,
        called: Result<Answered, Failure>,
        front: Front,
        request_id: &str,
    ) -> Outcome {
        let Ticket {
            config,
            plan,
            reservation,
            fallback_used,
            shadow_note,
        } = ticket;
        let remember = match front {
            Front::Queue => self.settings.remember_seconds,
            Front::Sync => self.settings.hold_seconds,
        };
        match called {
            Ok(output) => {
                let (actual, worst_case) = match &output.usage {
                    Some(usage) => (config::actual(plan.price, usage), None),
                    None => (reservation.charge, Some("the response reported no usage")),
                };
                let usage = output.usage.unwrap_or_default();
                let mut reply = output.reply;
                let completion = Completion {
                    remember_seconds: remember,
                    result: match front {
                        Front::Queue => Some(bounded_result(request_id, &reply)),
                        Front::Sync => None,
                    },
                    worst_case: worst_case.map(str::to_string),
                };
                let settlement = Settlement {
                    actual,
                    completion: Some(completion),
                    now: now_seconds(),
                };
                self.settle_or_retry(&reservation, settlement).await;
                reply = reply
                    .with_header("x-tokenfence-application", &config.application)
                    .with_header("x-tokenfence-model", &plan.model);
                if fallback_used {
                    reply = reply.with_header("x-tokenfence-fallback", &plan.model);
                }
                if let Some(note) = &shadow_note {
                    reply =
                        reply.with_header("x-tokenfence-shadow", format!("would-reject; {note}"));
                }
                if worst_case.is_some() {
                    reply = reply.with_header("x-tokenfence-charged", "worst-case");
                }
                if plan.price.is_none() {
                    reply = reply.with_header("x-tokenfence-cost", "unknown");
                }
                self.metrics.emit(&request_record(
                    &RequestMetrics {
                        application: &config.application,
                        cost_center: config.cost_center.as_deref(),
                        model: &plan.model,
                        approved: true,
                        shadow_denied: shadow_note.is_some(),
                        fallback: fallback_used,
                        usage,
                        cost_micro_usd: actual.cost.0,
                        worst_case: worst_case.is_some(),
                        cost_unknown: plan.price.is_none(),
                        ..Default::default()
                    },
                    now_millis(),
                ));
                reply = self.with_remaining(&config, reply).await;
                Outcome::Reply(reply)
            }
            Err(failure) if failure.refundable => {
                self.settle_or_retry(&reservation, refund()).await;
                self.emit_failed(&config, &plan.model, false, Charge::ZERO);
                Outcome::Reply(
                    failure
                        .reply
                        .with_header("x-tokenfence-application", &config.application),
                )
            }
            Err(failure) => {
                let reason = failure.reason;
                tracing::warn!(reservation = %reservation.id, application = %config.application, reason = %reason, "charged at the worst case: Bedrock may have billed the generation");
                let charge = worst_case_settlement(&reservation, &reason, remember);
                self.settle_or_retry(&reservation, charge).await;
                self.emit_failed(&config, &plan.model, true, reservation.charge);
                Outcome::Reply(
                    failure
                        .reply
                        .with_header("x-tokenfence-application", &config.application)
                        .with_header("x-tokenfence-charged", "worst-case"),
                )
            }
        }
    }

    /// Settles, retrying inline for a few seconds: a transient ledger error must not leave a
    /// reservation unsettled. What still fails is left held; the sweeper charges it at its worst
    /// case when its hold ends, so the budget is never under-counted.
    async fn settle_or_retry(&self, reservation: &Reservation, settlement: Settlement) {
        let give_up = Instant::now() + SETTLE_RETRY_FOR;
        let mut delay = Duration::from_millis(25);
        loop {
            match self.ledger.settle(reservation, &settlement).await {
                Ok(()) => return,
                Err(e) if Instant::now() + delay >= give_up => {
                    tracing::error!(reservation = %reservation.id, error = %e, "settlement failed; the sweeper charges the reservation at its worst case when its hold ends");
                    return;
                }
                Err(e) => {
                    tracing::warn!(reservation = %reservation.id, error = %e, "settlement failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Closes reservations held past their hold at their worst case ([`Ledger::sweep`]) and
    /// emits `ExpiredReservations` per application. Returns what it closed.
    pub async fn sweep(&self) -> Result<Vec<Expired>, LedgerError> {
        let expired = self.ledger.sweep(now_seconds()).await?;
        let mut per_app: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for e in &expired {
            let entry = per_app.entry(e.application.as_str()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.saturating_add(e.charge.tokens);
            entry.2 = entry.2.saturating_add(e.charge.cost.0);
        }
        for (application, (count, tokens, cost)) in per_app {
            tracing::warn!(
                application,
                count,
                "reservations held past their hold were charged at their worst case"
            );
            self.metrics.emit(&expired_record(
                application,
                count,
                tokens,
                cost,
                now_millis(),
            ));
        }
        Ok(expired)
    }

    /// The ledger could not reserve. Fail open (policy `allow`) only when it was unreachable:
    /// the configuration was read, so the allow-list was checked and the model is the one the
    /// plan chose. Contention and corrupt items always deny.
    async fn ledger_down(
        &self,
        config: &BudgetConfig,
        plan: &Plan,
        shaped: Shaped,
        e: LedgerError,
        deadline: Instant,
    ) -> Result<Outcome, Reply> {
        let application = config.application.as_str();
        tracing::error!(application, error = %e, "ledger could not reserve");
        if self.settings.on_ledger_error == LedgerFailurePolicy::Deny
            || !matches!(e, LedgerError::Unavailable(_))
        {
            return Err(ledger_reply(&e));
        }
        // A stream cannot be relayed without a reservation to settle: streams fail closed.
        if shaped.operation.streams() {
            return Err(ledger_reply(&e));
        }
        let cost_center = config.cost_center.as_deref();
        let family = shaped.family;
        let call = Call {
            operation: shaped.operation,
            body: shaped.bytes(),
            headers: shaped.headers,
        };
        let called =
            match tokio::time::timeout_at(deadline.into(), self.bedrock.send(&plan.target, call))
                .await
            {
                Ok(Ok(answer)) => read_answer(family, answer),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(BedrockError::Timeout(
                    "Bedrock did not answer before the deadline".into(),
                )
                .into()),
            };
        match called {
            Ok(output) => {
                let usage = output.usage.unwrap_or_default();
                let actual = config::actual(plan.price, &usage);
                self.metrics.emit(&request_record(
                    &RequestMetrics {
                        application,
                        cost_center,
                        model: &plan.model,
                        approved: true,
                        unreserved: true,
                        usage,
                        cost_micro_usd: actual.cost.0,
                        cost_unknown: plan.price.is_none(),
                        ..Default::default()
                    },
                    now_millis(),
                ));
                Ok(Outcome::Reply(
                    output
                        .reply
                        .with_header("x-tokenfence-application", application)
                        .with_header("x-tokenfence-model", &plan.model)
                        .with_header(
                            "x-tokenfence-unreserved",
                            "ledger unavailable; allowed by policy",
                        ),
                ))
            }
            Err(failure) => {
                self.metrics.emit(&request_record(
                    &RequestMetrics {
                        application,
                        cost_center,
                        model: &plan.model,
                        failed: true,
                        unreserved: true,
                        ..Default::default()
                    },
                    now_millis(),
                ));
                Err(failure.reply)
            }
        }
    }

    fn denied(
        &self,
        config: &BudgetConfig,
        model: &str,
        exceeded: &Exceeded,
        retry_after: i64,
    ) -> Reply {
        self.emit_request(
            config,
            model,
            false,
            true,
            false,
            None,
            &Usage::default(),
            0,
        );
        let unit = match exceeded.metric {
            LimitMetric::Tokens => "tokens",
            LimitMetric::Usd => "micro_usd",
        };
        Reply {
            status: 429,
            headers: vec![
                ("x-amzn-errortype".into(), "BudgetExceeded".into()),
                ("retry-after".into(), retry_after.to_string()),
                (
                    "x-tokenfence-application".into(),
                    config.application.clone(),
                ),
            ],
            body: json!({
                "error": "BudgetExceeded",
                "message": format!("application `{}` would exceed its {}", config.application, describe(exceeded)),
                "window": exceeded.window.as_str(),
                "metric": exceeded.metric.to_string(),
                "unit": unit,
                "limit": exceeded.limit,
                "used": exceeded.used,
                "requested": exceeded.requested,
                "retryAfterSeconds": retry_after
            }),
            raw: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_request(
        &self,
        config: &BudgetConfig,
        model: &str,
        approved: bool,
        denied: bool,
        shadow: bool,
        fallback: Option<bool>,
        usage: &Usage,
        cost: u64,
    ) {
        self.metrics.emit(&request_record(
            &RequestMetrics {
                application: &config.application,
                cost_center: config.cost_center.as_deref(),
                model,
                approved,
                denied,
                shadow_denied: shadow,
                fallback: fallback.unwrap_or(false),
                usage: *usage,
                cost_micro_usd: cost,
                ..Default::default()
            },
            now_millis(),
        ));
    }

    fn emit_failed(&self, config: &BudgetConfig, model: &str, worst_case: bool, charged: Charge) {
        self.metrics.emit(&request_record(
            &RequestMetrics {
                application: &config.application,
                cost_center: config.cost_center.as_deref(),
                model,
                approved: true,
                failed: true,
                worst_case,
                cost_micro_usd: charged.cost.0,
                cost_unknown: config.price_of(model).is_none(),
                ..Default::default()
            },
            now_millis(),
        ));
    }

    async fn with_remaining(&self, config: &BudgetConfig, mut reply: Reply) -> Reply {
        let now = now_seconds();
        let Ok(usage) = self
            .ledger
            .usage(&config.application, &config.limits, now)
            .await
        else {
            return reply;
        };
        for w in &usage {
            let window = w.limit.window.as_str();
            if let Some(limit) = w.limit.tokens {
                reply = reply.with_header(
                    &format!("x-tokenfence-remaining-{window}-tokens"),
                    limit.saturating_sub(w.used.tokens).to_string(),
                );
            }
            if let Some(limit) = w.limit.usd {
                reply = reply.with_header(
                    &format!("x-tokenfence-remaining-{window}-usd"),
                    limit.saturating_sub(w.used.cost).to_string(),
                );
            }
        }
        self.emit_windows(&config.application, &usage, now);
        reply
    }

    fn emit_windows(&self, application: &str, usage: &[WindowUsage], now: i64) {
        let timestamp = now_millis();
        let mut records = Vec::with_capacity(usage.len() * 2);
        for w in usage {
            let window = w.limit.window.as_str();
            let gauges = [
                w.limit.tokens.map(|limit| ("tokens", w.used.tokens, limit)),
                w.limit.usd.map(|limit| ("usd", w.used.cost.0, limit.0)),
            ];
            for (metric, used, limit) in gauges.into_iter().flatten() {
                let projected = projected_usage(used, &w.instance, now);
                records.push(window_record(
                    application,
                    window,
                    metric,
                    utilization_percent(used, limit),
                    utilization_percent(projected, limit),
                    timestamp,
                ));
            }
        }
        self.metrics.emit_all(&records);
    }

    /// The caller's usage and what remains in each window (`GET /usage`).
    pub async fn usage(&self, application: &str) -> Reply {
        let config = match self.config(application).await {
            Ok(Some(c)) => c,
            Ok(None) => return no_budget(application),
            Err(_) => {
                return Reply::error(503, "LedgerUnavailable", "the budget ledger is unavailable");
            }
        };
        let now = now_seconds();
        let usage = match self.ledger.usage(application, &config.limits, now).await {
            Ok(u) => u,
            Err(_) => {
                return Reply::error(503, "LedgerUnavailable", "the budget ledger is unavailable");
            }
        };
        let windows: Vec<Value> = usage
            .iter()
            .map(|w| {
                let projected_tokens = projected_usage(w.used.tokens, &w.instance, now);
                let projected_cost = projected_usage(w.used.cost.0, &w.instance, now);
                json!({
                    "window": w.limit.window.as_str(),
                    "key": w.instance.key(),
                    "resetsInSeconds": w.instance.seconds_until_reset(now),
                    "usedTokens": w.used.tokens,
                    "limitTokens": w.limit.tokens,
                    "remainingTokens": w.limit.tokens.map(|l| l.saturating_sub(w.used.tokens)),
                    "projectedTokens": projected_tokens,
                    "usedMicroUsd": w.used.cost.0,
                    "limitMicroUsd": w.limit.usd.map(|u| u.0),
                    "remainingMicroUsd": w.limit.usd.map(|u| u.0.saturating_sub(w.used.cost.0)),
                    "projectedMicroUsd": projected_cost
                })
            })
            .collect();
        // A token-only application may call models without a price: its spend in USD is then
        // unknown, and it is told so rather than shown $0.
        let callable: Vec<&String> = if config.models.is_empty() {
            self.settings.models.values().collect()
        } else {
            config.models.iter().collect()
        };
        let mut unpriced: Vec<&str> = callable
            .into_iter()
            .filter(|m| config.price_of(m).is_none())
            .map(String::as_str)
            .collect();
        unpriced.sort_unstable();
        unpriced.dedup();
        Reply {
            status: 200,
            headers: vec![("x-tokenfence-application".into(), application.to_string())],
            body: json!({
                "application": application,
                "mode": match config.mode { EnforcementMode::Enforce => "enforce", EnforcementMode::Shadow => "shadow" },
                "costKnown": unpriced.is_empty(),
                "unpricedModels": unpriced,
                "windows": windows
            }),
            raw: None,
        }
    }
}

/// The answer when the ledger could not serve a request: 503, never a fail-open.
fn ledger_reply(e: &LedgerError) -> Reply {
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

fn duplicate(request_id: &str) -> Reply {
    Reply::error(
        409,
        "DuplicateRequest",
        format!("request `{request_id}` was already seen"),
    )
}

fn unknown_model(model_param: &str) -> Reply {
    Reply::error(
        404,
        "UnknownModel",
        format!("`{model_param}` is neither a model alias of this gateway nor a model ID"),
    )
}

fn no_budget(application: &str) -> Reply {
    Reply::error(
        403,
        "NoBudget",
        format!("application `{application}` has no budget configured"),
    )
}

fn not_allowed(application: &str, model: &str) -> Reply {
    Reply::error(
        403,
        "ModelNotAllowed",
        format!("application `{application}` may not call model `{model}`"),
    )
}

/// Bedrock's response headers passed on to the caller: its content type, request ID and its own
/// `x-amzn-bedrock-*` (token counts, latency); never hop-by-hop or length headers.
fn passed_answer_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
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

fn describe(e: &Exceeded) -> String {
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

fn bedrock_reply(err: BedrockError) -> Reply {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_output_caps_raise_the_reservation() {
        let body = json!({
            "messages": [{ "role": "user", "content": [{ "text": "x" }] }],
            "inferenceConfig": { "maxTokens": 16 },
            "additionalModelRequestFields": { "max_tokens": 30000, "thinking": { "budget_tokens": 40000 } }
        });
        let shaped = ops::shape(
            Operation::Converse,
            "anthropic.claude-x",
            body.to_string().as_bytes(),
            &[],
            1 << 20,
            100,
        )
        .unwrap();
        assert_eq!(shaped.max_tokens, 40_000, "the largest cap anywhere");
        assert_eq!(
            &shaped.body[..],
            body.to_string().as_bytes(),
            "sent as it came"
        );
        let huge = json!({ "messages": [{ "role": "user", "content": [] }], "additionalModelRequestFields": { "max_new_tokens": 1u64 << 40 } });
        let err = ops::shape(
            Operation::Converse,
            "anthropic.claude-x",
            huge.to_string().as_bytes(),
            &[],
            1 << 20,
            100,
        )
        .unwrap_err();
        assert_eq!(
            (err.status, err.body["field"].as_str()),
            (400, Some("inferenceConfig.maxTokens"))
        );
    }

    #[test]
    fn results_too_large_for_a_queue_message_become_an_error_with_their_usage() {
        let small = Reply {
            status: 200,
            headers: vec![],
            body: json!({ "usage": { "inputTokens": 1 } }),
            raw: None,
        };
        assert_eq!(
            bounded_result("r", &small),
            result_message("r", &small).to_string()
        );
        let big = Reply {
            status: 200,
            headers: vec![],
            body: json!({ "output": "x".repeat(MAX_RESULT_BYTES), "usage": { "inputTokens": 9, "outputTokens": 70000 } }),
            raw: None,
        };
        let bounded: Value = serde_json::from_str(&bounded_result("r", &big)).unwrap();
        assert!(bounded.to_string().len() <= MAX_RESULT_BYTES);
        assert_eq!(bounded["status"], 413);
        assert_eq!(bounded["error"]["error"], "ResultTooLarge");
        assert_eq!(bounded["error"]["usage"]["outputTokens"], 70000);
    }

    #[test]
    fn count_tokens_is_asked_of_the_foundation_model() {
        assert_eq!(
            foundation_model("us.anthropic.claude-sonnet-4-20250514-v1:0"),
            "anthropic.claude-sonnet-4-20250514-v1:0"
        );
        assert_eq!(
            foundation_model("global.anthropic.claude-haiku-4-5-20251001-v1:0"),
            "anthropic.claude-haiku-4-5-20251001-v1:0"
        );
        assert_eq!(
            foundation_model("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0"),
            "amazon.nova-lite-v1:0"
        );
        assert_eq!(
            foundation_model("anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
    }

    #[test]
    fn only_an_unreachable_ledger_may_fail_open_and_contention_says_retry() {
        let busy = ledger_reply(&LedgerError::Contention("a".into()));
        assert_eq!((busy.status, busy.header("retry-after")), (503, Some("1")));
        assert_eq!(busy.body["error"], "LedgerBusy");
        let corrupt = ledger_reply(&LedgerError::Corrupt {
            key: "k".into(),
            reason: "r".into(),
        });
        assert_eq!(
            (corrupt.status, corrupt.body["error"].as_str()),
            (503, Some("LedgerUnavailable"))
        );
    }
}
