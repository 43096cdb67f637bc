//! The enforcing core shared by every front: identify, estimate, reserve, call, settle.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use budget::config::{self, BudgetConfig, EnforcementMode, ExceedAction};
use budget::estimate::{
    PER_REQUEST_OVERHEAD, additional_output_cap, binary_document, input_token_bound,
    tool_prompt_tokens,
};
use budget::forecast::{projected_usage, utilization_percent};
use budget::{Charge, Exceeded, Limit, LimitMetric, Usage};
use ledger::{
    Completion, Expired, Ledger, LedgerError, Reservation, ReserveOutcome, ReserveRequest,
    Settlement, WindowUsage,
};
use serde_json::{Value, json};

use crate::bedrock::{Bedrock, BedrockError, ConverseOutput, FieldError};
use crate::metrics::{MetricsSink, RequestMetrics, expired_record, request_record, window_record};

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

/// A final answer: status, headers and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Value,
}

impl Reply {
    /// A JSON error `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: json!({ "error": code, "message": message.into() }),
        }
    }

    fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
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
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Answered (success or error).
    Reply(Reply),
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

/// The gateway: generic over its ledger and its Bedrock, so tests run it against the in-memory
/// ledger or DynamoDB on moto, and the Bedrock stub.
pub struct Gateway<L, B> {
    ledger: Arc<L>,
    bedrock: B,
    settings: Settings,
    metrics: MetricsSink,
    configs: Mutex<HashMap<String, (Instant, Option<BudgetConfig>)>>,
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
    pub config: BudgetConfig,
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
pub enum Admission<P> {
    /// Reserved: call Bedrock with `prepared` for `ticket.plan.target`, then [`Gateway::complete`].
    Admitted {
        /// What to settle.
        ticket: Ticket,
        /// The prepared request.
        prepared: P,
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

    async fn config(&self, application: &str) -> Result<Option<BudgetConfig>, LedgerError> {
        if let Some((at, config)) = self.configs.lock().expect("config cache").get(application)
            && at.elapsed() < self.settings.config_ttl
        {
            return Ok(config.clone());
        }
        let config = self.ledger.budget(application).await?;
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

    fn plan(
        &self,
        config: &BudgetConfig,
        model: &str,
        request: &Value,
        content_bound: u64,
        max_tokens: u64,
    ) -> Result<Plan, Reply> {
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
        let input_bound = content_bound.saturating_add(tool_prompt_tokens(model, request));
        Ok(Plan {
            model: model.to_string(),
            target,
            price,
            charge: config::worst_case(price, input_bound, max_tokens),
        })
    }

    /// An upper bound of the request's own input tokens (without the tool prompt, which
    /// [`Gateway::plan`] adds per model). Binary documents (PDF, Word, Excel) expand past their
    /// bytes, so a request holding one is counted exactly with CountTokens on models that support
    /// it (Anthropic's) and refused, naming the document, on others.
    async fn content_bound(
        &self,
        model: &str,
        request: &Value,
        prepared: &B::Prepared,
    ) -> Result<u64, Reply> {
        let Some(document) = binary_document(request) else {
            return Ok(input_token_bound(request));
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
        match self.bedrock.count_tokens(base, prepared).await {
            Ok(n) => Ok(n.saturating_add(PER_REQUEST_OVERHEAD)),
            Err(BedrockError::Validation(m))
            | Err(BedrockError::Field(FieldError { message: m, .. })) => {
                Err(refuse(&format!("Bedrock could not count it: {m}")))
            }
            Err(e) => Err(Reply::error(
                503,
                "CountTokensUnavailable",
                format!(
                    "the request holds a document that must be counted before it can be reserved, and CountTokens failed: {}",
                    error_text(&e)
                ),
            )),
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
    /// call to Bedrock at most [`Settings::call_timeout`] from when it is sent.
    pub async fn converse(
        &self,
        application: &str,
        model_param: &str,
        body: &[u8],
        front: Front,
        request_id: &str,
    ) -> Outcome {
        self.converse_by(application, model_param, body, front, request_id, None)
            .await
    }

    /// [`Gateway::converse`] with an explicit deadline when there is one (a Lambda invocation's,
    /// less the time settlement needs): a call to Bedrock still running then is cut off and
    /// charged at its worst case. Without one, [`Settings::call_timeout`] from the call's start.
    pub async fn converse_by(
        &self,
        application: &str,
        model_param: &str,
        body: &[u8],
        front: Front,
        request_id: &str,
        deadline: Option<Instant>,
    ) -> Outcome {
        let call_deadline =
            || deadline.unwrap_or_else(|| Instant::now() + self.settings.call_timeout);
        let (ticket, prepared) = match self
            .admit(
                application,
                model_param,
                body,
                front,
                request_id,
                call_deadline(),
            )
            .await
        {
            Admission::Admitted { ticket, prepared } => (ticket, prepared),
            Admission::Done(outcome) => return outcome,
        };
        let (ticket, called) = self.call_admitted(ticket, prepared, call_deadline()).await;
        self.complete(ticket, called, front, request_id).await
    }

    /// Admits a Converse request of `application` for `model_param` against its budgets:
    /// validates it, plans the model and reserves the worst case (with fallback, shadow and
    /// queue handling). The caller calls Bedrock and then [`Gateway::complete`]. `deadline`
    /// bounds the only Bedrock call admission makes: the unreserved one when the ledger is down
    /// and policy allows it.
    pub async fn admit(
        &self,
        application: &str,
        model_param: &str,
        body: &[u8],
        front: Front,
        request_id: &str,
        deadline: Instant,
    ) -> Admission<B::Prepared> {
        match self
            .admit_inner(application, model_param, body, front, request_id, deadline)
            .await
        {
            Ok(admission) => admission,
            Err(reply) => Admission::Done(Outcome::Reply(reply)),
        }
    }

    async fn admit_inner(
        &self,
        application: &str,
        model_param: &str,
        body: &[u8],
        front: Front,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Admission<B::Prepared>, Reply> {
        ledger::check_request_id(request_id).map_err(|m| field(400, "requestId", &m))?;
        let (request, max_tokens) = parse_body(
            body,
            self.settings.max_body_bytes,
            self.settings.default_max_tokens,
        )?;

        let prepared = self
            .bedrock
            .prepare(&request)
            .map_err(|f| field(400, &f.field, &f.message))?;
        let Some(model) = self.resolve_model(model_param) else {
            return Err(Reply::error(
                404,
                "UnknownModel",
                format!("`{model_param}` is neither a model alias of this gateway nor a model ID"),
            ));
        };

        // Without the application's configuration there is no allow-list and no limit to
        // enforce: never fail open here.
        let config = match self.config(application).await {
            Ok(Some(config)) => config,
            Ok(None) => {
                return Err(Reply::error(
                    403,
                    "NoBudget",
                    format!("application `{application}` has no budget configured"),
                ));
            }
            Err(e) => return Err(ledger_reply(&e)),
        };
        if !config.allows(&model) {
            return Err(Reply::error(
                403,
                "ModelNotAllowed",
                format!("application `{application}` may not call model `{model}`"),
            ));
        }
        let content_bound = self.content_bound(&model, &request, &prepared).await?;
        let mut plan = self.plan(&config, &model, &request, content_bound, max_tokens)?;

        let mut fallback_used = false;
        let mut shadow_note: Option<String> = None;
        let reservation = match self
            .reserve(&config, request_id, &config.limits, plan.charge)
            .await
        {
            Err(e) => {
                return self
                    .ledger_down(&config, &plan, prepared, e, deadline)
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
                                .ledger_down(&config, &plan, prepared, e, deadline)
                                .await
                                .map(Admission::Done);
                        }
                    }
                } else {
                    match (&config.on_exceed, front) {
                        (ExceedAction::Fallback { model: fallback }, _)
                            if *fallback != plan.model =>
                        {
                            plan =
                                self.plan(&config, fallback, &request, content_bound, max_tokens)?;
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
                                        .ledger_down(&config, &plan, prepared, e, deadline)
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
            prepared,
        })
    }

    /// Calls Bedrock for an admitted request until `deadline`. A call cut off by the deadline,
    /// or abandoned after it was sent (this future dropped), is charged at its worst case: the
    /// generation may have been billed. The ticket comes back with the answer, for
    /// [`Gateway::complete`].
    pub async fn call_admitted(
        &self,
        ticket: Ticket,
        prepared: B::Prepared,
        deadline: Instant,
    ) -> (Ticket, Result<ConverseOutput, BedrockError>) {
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
        let called =
            match tokio::time::timeout_at(deadline.into(), self.bedrock.converse(target, prepared))
                .await
            {
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
        called: Result<ConverseOutput, BedrockError>,
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
                let mut reply = Reply {
                    status: 200,
                    headers: Vec::new(),
                    body: output.body,
                };
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
                self.metrics.emit(request_record(
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
            Err(err) if err.refundable() => {
                self.settle_or_retry(&reservation, refund()).await;
                self.emit_failed(&config, &plan.model, false, Charge::ZERO);
                Outcome::Reply(
                    bedrock_reply(err).with_header("x-tokenfence-application", &config.application),
                )
            }
            Err(err) => {
                let reason = error_text(&err);
                tracing::warn!(reservation = %reservation.id, application = %config.application, reason = %reason, "charged at the worst case: Bedrock may have billed the generation");
                let charge = worst_case_settlement(&reservation, &reason, remember);
                self.settle_or_retry(&reservation, charge).await;
                self.emit_failed(&config, &plan.model, true, reservation.charge);
                Outcome::Reply(
                    bedrock_reply(err)
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
            self.metrics.emit(expired_record(
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
        request: B::Prepared,
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
        let cost_center = config.cost_center.as_deref();
        let called = match tokio::time::timeout_at(
            deadline.into(),
            self.bedrock.converse(&plan.target, request),
        )
        .await
        {
            Ok(called) => called,
            Err(_) => Err(BedrockError::Timeout(
                "Bedrock did not answer before the deadline".into(),
            )),
        };
        match called {
            Ok(output) => {
                let usage = output.usage.unwrap_or_default();
                let actual = config::actual(plan.price, &usage);
                self.metrics.emit(request_record(
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
                    Reply {
                        status: 200,
                        headers: Vec::new(),
                        body: output.body,
                    }
                    .with_header("x-tokenfence-application", application)
                    .with_header("x-tokenfence-model", &plan.model)
                    .with_header(
                        "x-tokenfence-unreserved",
                        "ledger unavailable; allowed by policy",
                    ),
                ))
            }
            Err(err) => {
                self.metrics.emit(request_record(
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
                Err(bedrock_reply(err))
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
        self.metrics.emit(request_record(
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
        self.metrics.emit(request_record(
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
        for w in usage {
            let mut gauges = Vec::new();
            if let Some(limit) = w.limit.tokens {
                gauges.push(("tokens", w.used.tokens, limit));
            }
            if let Some(limit) = w.limit.usd {
                gauges.push(("usd", w.used.cost.0, limit.0));
            }
            for (metric, used, limit) in gauges {
                let projected = projected_usage(used, &w.instance, now);
                self.metrics.emit(window_record(
                    application,
                    w.limit.window.as_str(),
                    metric,
                    utilization_percent(used, limit),
                    utilization_percent(projected, limit),
                    now_millis(),
                ));
            }
        }
    }

    /// The caller's usage and what remains in each window (`GET /usage`).
    pub async fn usage(&self, application: &str) -> Reply {
        let config = match self.config(application).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Reply::error(
                    403,
                    "NoBudget",
                    format!("application `{application}` has no budget configured"),
                );
            }
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

/// The foundation model of a model or system inference profile ID (`us.anthropic.x` →
/// `anthropic.x`), for CountTokens, which takes foundation models.
fn foundation_model(model: &str) -> &str {
    let id = model.rsplit_once('/').map_or(model, |(_, id)| id);
    match id.split_once('.') {
        Some((prefix, rest))
            if ["us", "eu", "apac", "jp", "au", "ca", "us-gov", "global"].contains(&prefix) =>
        {
            rest
        }
        _ => id,
    }
}

fn error_text(e: &BedrockError) -> String {
    match e {
        BedrockError::Field(f) => format!("{}: {}", f.field, f.message),
        BedrockError::Throttled(m)
        | BedrockError::Validation(m)
        | BedrockError::Denied(m)
        | BedrockError::Failed(m)
        | BedrockError::Timeout(m)
        | BedrockError::NotSent(m) => m.clone(),
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
    if let Some(usage) = reply.body.get("usage") {
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

/// Checks a Converse body as it arrives (size, JSON object, non-empty `messages`, a positive
/// `inferenceConfig.maxTokens`, output caps in `additionalModelRequestFields` that are token
/// counts) and pins `maxTokens` in it: the reservation covers `max_tokens` of output only if
/// Bedrock is held to it. `max_tokens` is the largest cap the body sets anywhere. Returns the
/// request and that `max_tokens`, or the 4xx reply naming the field. Pure, so it can be fuzzed.
pub fn parse_body(
    body: &[u8],
    max_body_bytes: usize,
    default_max_tokens: u32,
) -> Result<(Value, u64), Reply> {
    if body.len() > max_body_bytes {
        return Err(Reply::error(
            413,
            "PayloadTooLarge",
            format!(
                "the body has {} bytes; the limit is {}",
                body.len(),
                max_body_bytes
            ),
        ));
    }
    let mut request: Value = serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, "ValidationError", format!("the body is not JSON: {e}")))?;
    let Some(obj) = request.as_object_mut() else {
        return Err(Reply::error(
            400,
            "ValidationError",
            "the body must be a JSON object",
        ));
    };
    match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        Some(_) => {
            return Err(field(
                400,
                "messages",
                "`messages` must be a non-empty list",
            ));
        }
        None => return Err(field(400, "messages", "`messages` is required")),
    }
    let requested_max = match obj.get("inferenceConfig").and_then(|c| c.get("maxTokens")) {
        None => None,
        Some(v) => match v.as_u64().filter(|n| *n > 0 && *n <= i32::MAX as u64) {
            Some(n) => Some(n),
            None => {
                return Err(field(
                    400,
                    "inferenceConfig.maxTokens",
                    "`maxTokens` must be a positive integer",
                ));
            }
        },
    };
    // A cap raised in the model's own fields (`additionalModelRequestFields.max_tokens`, Llama's
    // `max_gen_len`, Nova's `max_new_tokens`, a thinking budget) is what the model will really
    // be allowed to generate: the reservation covers the largest cap the body sets.
    let additional = additional_output_cap(&request).map_err(|e| {
        field(
            400,
            &e.field,
            &format!("`{}` must be a non-negative integer token count", e.field),
        )
    })?;
    let obj = request.as_object_mut().expect("checked above");
    let max_tokens = requested_max
        .unwrap_or(u64::from(default_max_tokens))
        .max(additional.unwrap_or(0));
    if max_tokens > i32::MAX as u64 {
        return Err(field(
            400,
            "additionalModelRequestFields",
            "an output cap in `additionalModelRequestFields` is larger than any model generates",
        ));
    }
    // The reservation covers `max_tokens` of output only if Bedrock is held to it.
    let inference = obj.entry("inferenceConfig").or_insert_with(|| json!({}));
    match inference.as_object_mut() {
        Some(ic) => {
            ic.insert("maxTokens".into(), json!(max_tokens));
        }
        None => {
            return Err(field(
                400,
                "inferenceConfig",
                "`inferenceConfig` must be an object",
            ));
        }
    }
    Ok((request, max_tokens))
}

fn field(status: u16, field: &str, message: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: json!({ "error": "ValidationError", "field": field, "message": message }),
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
        BedrockError::Field(f) => Reply {
            status: 400,
            headers: Vec::new(),
            body: json!({ "error": "ValidationError", "field": f.field, "message": f.message }),
        },
        BedrockError::Throttled(m) => {
            Reply::error(429, "ThrottlingException", m).with_header("retry-after", "1")
        }
        BedrockError::Validation(m) => Reply::error(400, "ValidationException", m),
        BedrockError::Denied(m) => Reply::error(403, "AccessDeniedException", m),
        BedrockError::Failed(m) => Reply::error(502, "BedrockFailed", m),
        BedrockError::Timeout(m) => Reply::error(504, "BedrockTimeout", m),
        BedrockError::NotSent(m) => Reply::error(503, "NotSent", m),
    }
}

/// The message delivered to an application's results queue.
pub fn result_message(request_id: &str, reply: &Reply) -> Value {
    if reply.status == 200 {
        json!({ "requestId": request_id, "status": reply.status, "response": reply.body })
    } else {
        json!({ "requestId": request_id, "status": reply.status, "error": reply.body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_output_caps_raise_the_reservation_and_are_pinned() {
        let body = json!({
            "messages": [{ "role": "user", "content": [{ "text": "x" }] }],
            "inferenceConfig": { "maxTokens": 16 },
            "additionalModelRequestFields": { "max_tokens": 30000, "thinking": { "budget_tokens": 40000 } }
        });
        let (request, max_tokens) = parse_body(body.to_string().as_bytes(), 1 << 20, 100).unwrap();
        assert_eq!(max_tokens, 40_000, "the largest cap anywhere");
        assert_eq!(request["inferenceConfig"]["maxTokens"], 40_000);
        let huge = json!({ "messages": [{ "role": "user", "content": [] }], "additionalModelRequestFields": { "max_new_tokens": 1u64 << 40 } });
        let err = parse_body(huge.to_string().as_bytes(), 1 << 20, 100).unwrap_err();
        assert_eq!(
            (err.status, err.body["field"].as_str()),
            (400, Some("additionalModelRequestFields"))
        );
    }

    #[test]
    fn results_too_large_for_a_queue_message_become_an_error_with_their_usage() {
        let small = Reply {
            status: 200,
            headers: vec![],
            body: json!({ "usage": { "inputTokens": 1 } }),
        };
        assert_eq!(
            bounded_result("r", &small),
            result_message("r", &small).to_string()
        );
        let big = Reply {
            status: 200,
            headers: vec![],
            body: json!({ "output": "x".repeat(MAX_RESULT_BYTES), "usage": { "inputTokens": 9, "outputTokens": 70000 } }),
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
