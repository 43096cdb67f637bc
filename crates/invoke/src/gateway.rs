//! The enforcing core shared by every front: identify, estimate, reserve, call, settle.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use budget::config::{self, BudgetConfig, EnforcementMode, ExceedAction};
use budget::estimate::input_token_bound;
use budget::forecast::{projected_usage, utilization_percent};
use budget::{Charge, Exceeded, Limit, LimitMetric, Usage};
use ledger::{
    Completion, Ledger, LedgerError, Reservation, ReserveOutcome, ReserveRequest, Settlement,
    WindowUsage,
};
use serde_json::{Value, json};

use crate::bedrock::{Bedrock, BedrockError, ConverseOutput};
use crate::metrics::{MetricsSink, RequestMetrics, request_record, window_record};

/// What to do when the ledger cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerFailurePolicy {
    /// Fail closed: 503.
    Deny,
    /// Fail open: call Bedrock unreserved and count it in `UnreservedRequests`.
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
    /// How long a reservation may stay unsettled before it counts as leaked.
    pub hold_seconds: i64,
    /// How long an application's configuration is cached.
    pub config_ttl: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long completed async requests are remembered, to recognise redeliveries.
    pub remember_seconds: i64,
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

/// Refunds an admitted request's reservation that was not settled explicitly: on an early
/// return, a panic, or a request future dropped by a disconnecting client. It holds the ticket
/// itself (moved in, handed back by `disarm`), so arming it copies nothing.
struct RefundGuard<L: Ledger> {
    ledger: Arc<L>,
    ticket: Option<Ticket>,
}

impl<L: Ledger> RefundGuard<L> {
    fn disarm(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }
}

impl<L: Ledger> Drop for RefundGuard<L> {
    fn drop(&mut self) {
        if let Some(Ticket { reservation, .. }) = self.ticket.take() {
            let ledger = Arc::clone(&self.ledger);
            let refund = Settlement {
                actual: Charge::ZERO,
                completion: None,
                now: now_seconds(),
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        if let Err(e) = ledger.settle(&reservation, &refund).await {
                            tracing::error!(reservation = %reservation.id, error = %e, "refund of an abandoned reservation failed; it expires with its hold");
                        }
                    });
                }
                Err(_) => {
                    tracing::error!(reservation = %reservation.id, "no runtime to refund an abandoned reservation")
                }
            }
        }
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
        input_bound: u64,
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
        Ok(Plan {
            model: model.to_string(),
            target,
            price,
            charge: config::worst_case(price, input_bound, max_tokens),
        })
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
            // reservation, which changes nothing if it never applied.
            let refund = Settlement {
                actual: Charge::ZERO,
                completion: None,
                now: request.now,
            };
            self.settle_in_background(reservation, refund, Duration::ZERO);
        }
        outcome
    }

    /// Handles a Converse request of `application` for `model_param` (alias or ID).
    pub async fn converse(
        &self,
        application: &str,
        model_param: &str,
        body: &[u8],
        front: Front,
        request_id: &str,
    ) -> Outcome {
        match self
            .converse_inner(application, model_param, body, front, request_id)
            .await
        {
            Ok(outcome) => outcome,
            Err(reply) => Outcome::Reply(reply),
        }
    }

    /// Admits a Converse request of `application` for `model_param` against its budgets:
    /// validates it, plans the model and reserves the worst case (with fallback, shadow and
    /// queue handling). The caller calls Bedrock and then [`Gateway::complete`].
    pub async fn admit(
        &self,
        application: &str,
        model_param: &str,
        body: &[u8],
        front: Front,
        request_id: &str,
    ) -> Admission<B::Prepared> {
        match self
            .admit_inner(application, model_param, body, front, request_id)
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
    ) -> Result<Admission<B::Prepared>, Reply> {
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

        let config = match self.config(application).await {
            Ok(Some(config)) => config,
            Ok(None) => {
                return Err(Reply::error(
                    403,
                    "NoBudget",
                    format!("application `{application}` has no budget configured"),
                ));
            }
            Err(e) => {
                return self
                    .ledger_down(application, None, &model, prepared, e)
                    .await
                    .map(Admission::Done);
            }
        };
        if !config.allows(&model) {
            return Err(Reply::error(
                403,
                "ModelNotAllowed",
                format!("application `{application}` may not call model `{model}`"),
            ));
        }
        let input_bound = input_token_bound(&request);
        let mut plan = self.plan(&config, &model, input_bound, max_tokens)?;

        let mut fallback_used = false;
        let mut shadow_note: Option<String> = None;
        let reservation = match self
            .reserve(&config, request_id, &config.limits, plan.charge)
            .await
        {
            Err(e) => {
                return self
                    .ledger_down(application, Some(&config), &model, prepared, e)
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
                                .ledger_down(application, Some(&config), &model, prepared, e)
                                .await
                                .map(Admission::Done);
                        }
                    }
                } else {
                    match (&config.on_exceed, front) {
                        (ExceedAction::Fallback { model: fallback }, _)
                            if *fallback != plan.model =>
                        {
                            plan = self.plan(&config, fallback, input_bound, max_tokens)?;
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
                                Err(e) => {
                                    return self
                                        .ledger_down(
                                            application,
                                            Some(&config),
                                            &model,
                                            prepared,
                                            e,
                                        )
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

    async fn converse_inner(
        &self,
        application: &str,
        model_param: &str,
        body: &[u8],
        front: Front,
        request_id: &str,
    ) -> Result<Outcome, Reply> {
        let (ticket, prepared) = match self
            .admit_inner(application, model_param, body, front, request_id)
            .await?
        {
            Admission::Admitted { ticket, prepared } => (ticket, prepared),
            Admission::Done(outcome) => return Ok(outcome),
        };
        let (ticket, called) = self.call_admitted(ticket, prepared).await;
        self.complete_inner(ticket, called, front, request_id).await
    }

    /// Calls Bedrock for an admitted request, refunding its reservation if this future is
    /// dropped before Bedrock answers (a disconnecting client, a timeout). The ticket comes back
    /// with the answer, for [`Gateway::complete`].
    pub async fn call_admitted(
        &self,
        ticket: Ticket,
        prepared: B::Prepared,
    ) -> (Ticket, Result<ConverseOutput, BedrockError>) {
        let mut guard = RefundGuard {
            ledger: Arc::clone(&self.ledger),
            ticket: Some(ticket),
        };
        let target = &guard.ticket.as_ref().expect("armed").plan.target;
        let called = self.bedrock.converse(target, prepared).await;
        let ticket = guard.disarm().expect("armed until Bedrock answered");
        (ticket, called)
    }

    /// Settles an admitted request with what Bedrock answered (refunding it on an error), emits
    /// its metrics and builds the reply.
    pub async fn complete(
        &self,
        ticket: Ticket,
        called: Result<ConverseOutput, BedrockError>,
        front: Front,
        request_id: &str,
    ) -> Outcome {
        match self.complete_inner(ticket, called, front, request_id).await {
            Ok(outcome) => outcome,
            Err(reply) => Outcome::Reply(reply),
        }
    }

    async fn complete_inner(
        &self,
        ticket: Ticket,
        called: Result<ConverseOutput, BedrockError>,
        front: Front,
        request_id: &str,
    ) -> Result<Outcome, Reply> {
        let Ticket {
            config,
            plan,
            reservation,
            fallback_used,
            shadow_note,
        } = ticket;
        match called {
            Ok(output) => {
                let actual = config::actual(plan.price, &output.usage);
                let mut reply = Reply {
                    status: 200,
                    headers: Vec::new(),
                    body: output.body,
                };
                let completion = match front {
                    Front::Queue => Some(Completion {
                        remember_seconds: self.settings.remember_seconds,
                        result: Some(result_message(request_id, &reply).to_string()),
                    }),
                    Front::Sync => Some(Completion {
                        remember_seconds: self.settings.hold_seconds,
                        result: None,
                    }),
                };
                let settlement = Settlement {
                    actual,
                    completion,
                    now: now_seconds(),
                };
                self.settle_or_retry(reservation, settlement).await;
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
                self.emit_request(
                    &config,
                    &plan.model,
                    true,
                    false,
                    shadow_note.is_some(),
                    Some(fallback_used),
                    &output.usage,
                    actual.cost.0,
                );
                reply = self.with_remaining(&config, reply).await;
                Ok(Outcome::Reply(reply))
            }
            Err(err) => {
                let refund = Settlement {
                    actual: Charge::ZERO,
                    completion: None,
                    now: now_seconds(),
                };
                self.settle_or_retry(reservation, refund).await;
                self.emit_failed(&config, &plan.model);
                Err(bedrock_reply(err).with_header("x-tokenfence-application", &config.application))
            }
        }
    }

    /// Settles now, or keeps retrying in the background while the reservation's hold lasts: a
    /// transient ledger error must not leave a reservation counted against the budget.
    async fn settle_or_retry(&self, reservation: Reservation, settlement: Settlement) {
        let Err(first) = self.ledger.settle(&reservation, &settlement).await else {
            return;
        };
        tracing::warn!(reservation = %reservation.id, error = %first, "settlement failed; retrying in the background");
        self.settle_in_background(reservation, settlement, Duration::from_millis(50));
    }

    /// Settles in a background task, retrying with backoff while the reservation's hold lasts.
    fn settle_in_background(
        &self,
        reservation: Reservation,
        settlement: Settlement,
        first_delay: Duration,
    ) {
        let ledger = Arc::clone(&self.ledger);
        let deadline =
            Instant::now() + Duration::from_secs(self.settings.hold_seconds.max(1) as u64);
        tokio::spawn(async move {
            let mut delay = first_delay;
            loop {
                tokio::time::sleep(delay).await;
                match ledger.settle(&reservation, &settlement).await {
                    Ok(()) => return,
                    Err(e) if Instant::now() >= deadline => {
                        tracing::error!(reservation = %reservation.id, error = %e, "settlement abandoned after the hold expired");
                        return;
                    }
                    Err(_) => {
                        delay = (delay * 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
                    }
                }
            }
        });
    }

    async fn ledger_down(
        &self,
        application: &str,
        config: Option<&BudgetConfig>,
        model: &str,
        request: B::Prepared,
        e: LedgerError,
    ) -> Result<Outcome, Reply> {
        tracing::error!(application, error = %e, "ledger unavailable");
        if self.settings.on_ledger_error == LedgerFailurePolicy::Deny {
            return Err(Reply::error(
                503,
                "LedgerUnavailable",
                "the budget ledger is unavailable; the request was not sent (fail closed)",
            ));
        }
        let target = config
            .and_then(|c| c.profile_for(model))
            .unwrap_or(model)
            .to_string();
        let cost_center = config.and_then(|c| c.cost_center.as_deref());
        match self.bedrock.converse(&target, request).await {
            Ok(output) => {
                let price = config.and_then(|c| c.price_of(model));
                let actual = config::actual(price, &output.usage);
                self.metrics.emit(request_record(
                    &RequestMetrics {
                        application,
                        cost_center,
                        model,
                        approved: true,
                        unreserved: true,
                        usage: output.usage,
                        cost_micro_usd: actual.cost.0,
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
                        model,
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

    fn emit_failed(&self, config: &BudgetConfig, model: &str) {
        self.metrics.emit(request_record(
            &RequestMetrics {
                application: &config.application,
                cost_center: config.cost_center.as_deref(),
                model,
                approved: true,
                failed: true,
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
        Reply {
            status: 200,
            headers: vec![("x-tokenfence-application".into(), application.to_string())],
            body: json!({ "application": application, "mode": match config.mode { EnforcementMode::Enforce => "enforce", EnforcementMode::Shadow => "shadow" }, "windows": windows }),
        }
    }
}

fn duplicate(request_id: &str) -> Reply {
    Reply::error(
        409,
        "DuplicateRequest",
        format!("request `{request_id}` was already seen"),
    )
}

/// Checks a Converse body as it arrives (size, JSON object, non-empty `messages`, a positive
/// `inferenceConfig.maxTokens`) and pins `maxTokens` in it: the reservation covers `max_tokens` of
/// output only if Bedrock is held to it. Returns the request and that `max_tokens`, or the 4xx
/// reply naming the field. Pure, so it can be fuzzed.
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
    let max_tokens = requested_max.unwrap_or(u64::from(default_max_tokens));
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
