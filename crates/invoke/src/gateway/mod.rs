//! The enforcing core shared by every front: identify, estimate, reserve, call, settle.
//!
//! [`Gateway::call`] routes one request through the parts, each in its own module: `lookup`
//! (the application's cached configuration, model aliases), [`crate::ops`] (one adapter per
//! body family: bound the input, read or insert the output cap, read the usage), `admission`
//! (the one place the budget decision is made: plan, reserve, fallback, shadow, queue,
//! fail-open), `answer` (Bedrock's answer read and classified), `settle` (settled or refunded on
//! every path), `stream` (relayed, read to its usage, settled), `report` (metrics,
//! remaining-budget headers, `GET /usage`) and `reply` (answers in Bedrock's error shape).

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

mod admission;
mod answer;
mod lookup;
mod reply;
mod report;
mod settle;
mod stream;

pub use answer::*;
pub use reply::*;
use settle::*;

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
    /// Whether this engine holds seats' limits: the Step Functions Express engine does not, so
    /// its authorizer refuses seats' keys rather than let them spend past their users' limits.
    pub seats: bool,
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
            seats: true,
        }
    }
}

/// Who is calling, as the caller's key says: the application it spends from and, for a seat, the
/// application's user. Never taken from the request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The application.
    pub application: String,
    /// The user, if the key is a seat's.
    pub user: Option<String>,
}

impl Caller {
    /// A caller of `application` with no user.
    pub fn application(application: impl Into<String>) -> Self {
        Caller {
            application: application.into(),
            user: None,
        }
    }

    /// A seat: `user` of `application`.
    pub fn user(application: impl Into<String>, user: impl Into<String>) -> Self {
        Caller {
            application: application.into(),
            user: Some(user.into()),
        }
    }

    /// Parses `APP` or `APP/USER`, as `invoke serve --api-key KEY=APP/USER` takes it.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            None if !text.is_empty() => Ok(Caller::application(text)),
            Some((app, user)) if !app.is_empty() => {
                ledger::check_user(user)?;
                Ok(Caller::user(app, user))
            }
            _ => Err(format!(
                "`{text}` is not `APPLICATION` or `APPLICATION/USER`"
            )),
        }
    }
}

/// One request as a front hands it to the gateway: who asks, for which operation on which
/// model, with what, and where the answer goes.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Who is calling, from the caller's authenticated key.
    pub caller: &'a Caller,
    /// The operation.
    pub operation: Operation,
    /// The model as the caller named it: an alias of the spec or a model ID.
    pub model: &'a str,
    /// The body, exactly as the caller sent it.
    pub body: &'a [u8],
    /// The caller's headers; `content-type`, `accept` and `x-amzn-bedrock-*` are passed on.
    pub headers: &'a [(String, String)],
    /// The front it came through.
    pub front: Front,
    /// Its reservation ID: unique per request on the synchronous front, the caller's request ID
    /// (for deduplication) on the queue.
    pub request_id: &'a str,
}

/// The front a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// Synchronous HTTP (API Gateway or `serve`).
    Sync,
    /// SQS.
    Queue,
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
    /// The caller's user, if its key is a seat's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
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

    /// Handles a Converse request of `application` for `model_param` (alias or ID), giving the
    /// call to Bedrock at most [`Settings::call_timeout`] from when it is sent: [`Gateway::call`]
    /// for its commonest use.
    pub async fn converse(
        &self,
        caller: &Caller,
        model_param: &str,
        body: &[u8],
        front: Front,
        request_id: &str,
    ) -> Outcome {
        let request = Request {
            caller,
            operation: Operation::Converse,
            model: model_param,
            body,
            headers: &[],
            front,
            request_id,
        };
        self.call(&request, None).await
    }

    /// Handles a request for any operation: CountTokens is passed through uncharged; the others
    /// are admitted, sent and settled. A stream Bedrock opened comes back as
    /// [`Outcome::Stream`], to relay with [`Gateway::relay`]. Bedrock gets until `deadline`, or
    /// [`Settings::call_timeout`] from the call's start ([`Settings::stream_timeout`] for a
    /// stream).
    pub async fn call(&self, request: &Request<'_>, deadline: Option<Instant>) -> Outcome {
        let (front, request_id) = (request.front, request.request_id);
        let timeout = if request.operation.streams() {
            self.settings.stream_timeout
        } else {
            self.settings.call_timeout
        };
        let call_deadline = || deadline.unwrap_or_else(|| Instant::now() + timeout);
        if request.operation == Operation::CountTokens {
            return Outcome::Reply(self.count_tokens(request, call_deadline()).await);
        }
        let (ticket, shaped) = match self.admit(request, call_deadline()).await {
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
        if let Some(user) = &ticket.user {
            reply = reply.with_header("x-tokenfence-user", user);
        }
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

    /// CountTokens, passed through: free, so nothing is reserved, but the caller's key must be
    /// valid and the model one its application may call.
    async fn count_tokens(&self, request: &Request<'_>, deadline: Instant) -> Reply {
        let (application, model_param) = (request.caller.application.as_str(), request.model);
        let (body, headers) = (request.body, request.headers);
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
    fn callers_are_an_application_or_one_of_its_users() {
        assert_eq!(Caller::parse("web").unwrap(), Caller::application("web"));
        assert_eq!(
            Caller::parse("team/alice@example.com").unwrap(),
            Caller::user("team", "alice@example.com")
        );
        for bad in ["", "/alice", "team/", "team/a b", "team/a/b"] {
            assert!(Caller::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            Caller::parse("team/a b")
                .unwrap_err()
                .contains("may hold only letters")
        );
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
