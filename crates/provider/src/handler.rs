//! The custom resource lifecycle: Create, Update (in place or replacement), Delete, for
//! `Custom::TokenBudget` and `Custom::TokenAlarm`. Pure of I/O except through its traits, so the
//! same code runs against moto in tests and AWS in production.

use std::collections::BTreeMap;
use std::future::Future;

use aws_lambda_events::cloudformation::CloudFormationCustomResourceRequest;
use budget::config::BudgetConfig;
use ledger::{Claim, Held, Identity, Ledger, LedgerError, Released};
use serde_json::Value;

use crate::plan::{AlarmPlan, BudgetPlan, plan_alarm, plan_budget};
use crate::props::{BudgetProps, CostBudgetProps, check_budget_name, parse_alarm, parse_budget};

/// CloudWatch alarm operations.
pub trait AlarmOps: Send + Sync + 'static {
    /// Creates or overwrites an alarm; returns its ARN.
    fn put_alarm(&self, plan: &AlarmPlan) -> impl Future<Output = Result<String, String>> + Send;
    /// Deletes an alarm; a missing alarm is not an error.
    fn delete_alarm(&self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// AWS Budgets operations.
pub trait BudgetOps: Send + Sync + 'static {
    /// Creates the budget, or updates it in place (keeping its history) and reconciles its
    /// notifications and their subscribers with `plan`; `previous` is the plan last applied to
    /// it, if any (its subscribers are what the budget's notifications have now).
    fn upsert(
        &self,
        account_id: &str,
        plan: &BudgetPlan,
        previous: Option<&BudgetPlan>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Deletes a budget; a missing budget is not an error.
    fn delete(
        &self,
        account_id: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `SUCCESS` or `FAILED`.
    pub success: bool,
    /// Why it failed, naming the property where one is at fault.
    pub reason: Option<String>,
    /// The physical ID.
    pub physical_id: String,
    /// `Fn::GetAtt` data.
    pub data: BTreeMap<String, String>,
}

impl Outcome {
    fn ok(physical_id: String, data: BTreeMap<String, String>) -> Self {
        Outcome {
            success: true,
            reason: None,
            physical_id,
            data,
        }
    }
    fn failed(physical_id: String, reason: impl Into<String>) -> Self {
        Outcome {
            success: false,
            reason: Some(reason.into()),
            physical_id,
            data: BTreeMap::new(),
        }
    }
}

/// Physical ID prefix of budgets.
pub const BUDGET_ID_PREFIX: &str = "tokenfence:budget:";
/// Physical ID prefix of resources whose Create failed (never backed by anything).
pub const FAILED_ID_PREFIX: &str = "tokenfence:failed:";

/// Create, Update or Delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Create.
    Create,
    /// Update.
    Update,
    /// Delete.
    Delete,
}

/// The fields of a request, whatever its kind.
pub struct RequestView<'a> {
    /// Create, Update or Delete.
    pub kind: RequestKind,
    /// RequestId.
    pub request_id: &'a str,
    /// StackId.
    pub stack_id: &'a str,
    /// LogicalResourceId.
    pub logical_id: &'a str,
    /// ResourceType.
    pub resource_type: &'a str,
    /// ResponseURL.
    pub response_url: &'a str,
    /// PhysicalResourceId (Update, Delete).
    pub physical_id: Option<&'a str>,
    /// ResourceProperties.
    pub props: &'a Value,
    /// OldResourceProperties (Update).
    pub old_props: Option<&'a Value>,
}

impl<'a> RequestView<'a> {
    /// The view of `request`; `None` for a request kind this version does not know.
    pub fn of(request: &'a CloudFormationCustomResourceRequest<Value, Value>) -> Option<Self> {
        use CloudFormationCustomResourceRequest::*;
        Some(match request {
            Create(r) => RequestView {
                kind: RequestKind::Create,
                request_id: &r.request_id,
                stack_id: &r.stack_id,
                logical_id: &r.logical_resource_id,
                resource_type: &r.resource_type,
                response_url: &r.response_url,
                physical_id: None,
                props: &r.resource_properties,
                old_props: None,
            },
            Update(r) => RequestView {
                kind: RequestKind::Update,
                request_id: &r.request_id,
                stack_id: &r.stack_id,
                logical_id: &r.logical_resource_id,
                resource_type: &r.resource_type,
                response_url: &r.response_url,
                physical_id: Some(&r.physical_resource_id),
                props: &r.resource_properties,
                old_props: Some(&r.old_resource_properties),
            },
            Delete(r) => RequestView {
                kind: RequestKind::Delete,
                request_id: &r.request_id,
                stack_id: &r.stack_id,
                logical_id: &r.logical_resource_id,
                resource_type: &r.resource_type,
                response_url: &r.response_url,
                physical_id: Some(&r.physical_resource_id),
                props: &r.resource_properties,
                old_props: None,
            },
            _ => return None,
        })
    }
}

/// The fields every request carries.
struct Common<'a> {
    request_id: &'a str,
    stack_id: &'a str,
    logical_id: &'a str,
    resource_type: &'a str,
}

impl Common<'_> {
    fn owner(&self) -> String {
        format!("{}/{}", self.stack_id, self.logical_id)
    }
    fn account_id(&self) -> &str {
        self.stack_id.split(':').nth(4).unwrap_or_default()
    }
    fn failed_id(&self) -> String {
        format!("{FAILED_ID_PREFIX}{}", self.request_id)
    }
}

/// The physical ID a Create of `props` produces, when it can be known from the properties alone:
/// `tokenfence:budget:<Application>` for a budget, the `AlarmName` for an alarm that names itself.
/// A Create that fails after it may have written something answers with it, so that
/// CloudFormation's rollback Delete (idempotent, and a no-op for a budget another resource owns)
/// removes whatever exists.
pub fn intended_id(resource_type: &str, props: &Value) -> Option<String> {
    match resource_type {
        "Custom::TokenBudget" => parse_budget(props)
            .ok()
            .map(|p| format!("{BUDGET_ID_PREFIX}{}", p.application)),
        "Custom::TokenAlarm" => parse_alarm(props).ok().and_then(|p| p.alarm_name),
        _ => None,
    }
}

/// The provider, over a ledger, CloudWatch and AWS Budgets.
pub struct Provider<L, A, G> {
    /// The ledger the gateway reads configurations from.
    pub ledger: L,
    /// CloudWatch.
    pub alarms: A,
    /// AWS Budgets.
    pub budgets: G,
    /// The spec's `name` (`TOKENFENCE_NAME`): default alarm and budget names start with it, so
    /// they fall inside the provider role's `<name>-*` alarms and budgets.
    pub name: String,
    /// The stack's alert topic (`TOKENFENCE_ALERT_TOPIC`), notified by AWS Budgets that name no
    /// `TopicArn` or `Emails`.
    pub alert_topic: Option<String>,
}

fn identities(props: &BudgetProps) -> Vec<Identity> {
    let mut ids: Vec<Identity> = props
        .api_key_ids
        .iter()
        .map(|k| Identity::ApiKeyId(k.clone()))
        .collect();
    ids.extend(
        props
            .request_queue_arns
            .iter()
            .map(|q| Identity::QueueArn(q.clone())),
    );
    ids
}

fn config_of(
    props: &BudgetProps,
    version: u64,
    owner: String,
    applied_request: Option<&str>,
) -> BudgetConfig {
    BudgetConfig {
        application: props.application.clone(),
        cost_center: props.cost_center.clone(),
        models: props.models.clone(),
        limits: props.limits.clone(),
        on_exceed: props.on_exceed.clone(),
        mode: props.mode,
        prices: props.prices.clone(),
        inference_profiles: props.inference_profiles.clone(),
        results_queue_url: props.results_queue_url.clone(),
        version,
        owner: Some(owner),
        applied_request: applied_request.map(str::to_string),
        per_user: props.per_user.clone(),
        users: props.users.clone(),
        user_metrics: props.user_metrics,
        api_key_ids: props.api_key_ids.clone(),
    }
}

fn budget_data(config: &BudgetConfig, cost_budget: Option<&str>) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([
        ("Application".to_string(), config.application.clone()),
        ("ConfigVersion".to_string(), config.version.to_string()),
    ]);
    if let Some(name) = cost_budget {
        data.insert("CostBudgetName".into(), name.to_string());
    }
    data
}

/// The reason of a write refused because another resource or application holds what it asked
/// for, naming the property that asked; `None` for other errors.
fn owned_reason(e: &LedgerError) -> Option<String> {
    let LedgerError::Owned { what, .. } = e else {
        return None;
    };
    let property = match what {
        Held::Application(_) => "Application",
        Held::Identity(Identity::ApiKeyId(_)) => "ApiKeyIds",
        Held::Identity(Identity::QueueArn(_)) => "RequestQueueArns",
        Held::Claim(Claim::CostBudget(_)) => "CostBudget.BudgetName",
        Held::Claim(Claim::Alarm(_)) => "AlarmName",
        Held::Key(_) => "Application",
    };
    Some(format!("`{property}`: {e}"))
}

fn unavailable(e: &LedgerError) -> String {
    owned_reason(e).unwrap_or_else(|| format!("the ledger is unavailable: {e}"))
}

impl<L: Ledger, A: AlarmOps, G: BudgetOps> Provider<L, A, G> {
    /// Handles one request and says how it went; never panics on bad input.
    pub async fn handle(
        &self,
        request: &CloudFormationCustomResourceRequest<Value, Value>,
    ) -> Outcome {
        let Some(view) = RequestView::of(request) else {
            return Outcome::failed(String::new(), "unsupported request type");
        };
        let common = Common {
            request_id: view.request_id,
            stack_id: view.stack_id,
            logical_id: view.logical_id,
            resource_type: view.resource_type,
        };
        let (physical, props, old) = (view.physical_id, view.props, view.old_props);
        let is_delete = view.kind == RequestKind::Delete;
        match (common.resource_type, is_delete) {
            ("Custom::TokenBudget", false) => self.put_budget(&common, physical, props, old).await,
            ("Custom::TokenBudget", true) => {
                self.delete_budget(&common, physical.unwrap_or_default(), props)
                    .await
            }
            ("Custom::TokenAlarm", false) => self.put_alarm(&common, physical, props).await,
            ("Custom::TokenAlarm", true) => {
                self.delete_alarm(&common, physical.unwrap_or_default())
                    .await
            }
            // Nothing was ever created for an unknown type, so deleting it succeeds.
            (_, true) => Outcome::ok(physical.unwrap_or_default().to_string(), BTreeMap::new()),
            (other, false) => Outcome::failed(
                physical.map_or_else(|| common.failed_id(), str::to_string),
                format!(
                    "unsupported resource type `{other}`; this provider serves `Custom::TokenBudget` and `Custom::TokenAlarm`"
                ),
            ),
        }
    }

    /// The AWS Budget's name: as given, or `<name>-<application>`.
    fn cost_budget_name(&self, application: &str, cb: &CostBudgetProps) -> String {
        cb.budget_name
            .clone()
            .unwrap_or_else(|| spec::names::Names::new(&self.name).budget(application))
    }

    async fn put_budget(
        &self,
        common: &Common<'_>,
        physical: Option<&str>,
        props: &Value,
        old: Option<&Value>,
    ) -> Outcome {
        let keep_id = || physical.map_or_else(|| common.failed_id(), str::to_string);
        let new = match parse_budget(props) {
            Ok(p) => p,
            Err(e) => return Outcome::failed(keep_id(), e.to_string()),
        };
        let app = new.application.as_str();
        let new_id = format!("{BUDGET_ID_PREFIX}{app}");
        let new_budget = new
            .cost_budget
            .as_ref()
            .map(|cb| (cb, self.cost_budget_name(app, cb)));
        if let Some((_, name)) = &new_budget
            && let Some(why) = check_budget_name(name)
        {
            return Outcome::failed(keep_id(), format!("`CostBudget.BudgetName`: {why}"));
        }
        // Old properties were valid when they were applied; if they cannot be read now, act as if
        // there were none (a replacement), which leaves the old resource to CloudFormation's Delete.
        let old = old
            .and_then(|o| parse_budget(o).ok())
            .filter(|o| physical == Some(new_id.as_str()) && o.application == new.application);
        let old_budget = old
            .as_ref()
            .and_then(|o| o.cost_budget.as_ref())
            .map(|cb| self.cost_budget_name(app, cb));
        let owner = common.owner();
        let existing = match self.ledger.budget(app).await {
            Ok(c) => c,
            Err(e) => return Outcome::failed(keep_id(), unavailable(&e)),
        };
        if let Some(c) = &existing
            && c.owner.as_deref() == Some(owner.as_str())
            && c.applied_request.as_deref() == Some(common.request_id)
        {
            // A retry of a request applied to the end: answer the same again.
            return Outcome::ok(
                new_id,
                budget_data(c, new_budget.as_ref().map(|(_, n)| n.as_str())),
            );
        }
        let version = existing.as_ref().map_or(1, |c| c.version + 1);
        let mut config = config_of(&new, version, owner.clone(), None);
        let new_ids = identities(&new);
        // The write decides ownership (conditionally): another resource's application, or
        // another application's identity, refuses it whole, before anything else is touched.
        if let Err(e) = self.ledger.put_budget(&config, &new_ids).await {
            let id = if matches!(e, LedgerError::Owned { .. }) {
                keep_id()
            } else {
                // A write whose answer was lost may still have applied: a failed Create answers
                // with the budget's ID, so the rollback Delete cleans up.
                physical.map_or_else(|| new_id.clone(), str::to_string)
            };
            return Outcome::failed(id, unavailable(&e));
        }
        let written_id = || physical.map_or_else(|| new_id.clone(), str::to_string);
        let rest = async {
            if let Some(old) = &old {
                let gone: Vec<Identity> = identities(old)
                    .into_iter()
                    .filter(|i| !new_ids.contains(i))
                    .collect();
                self.ledger
                    .delete_identities(app, &gone)
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            let account = common.account_id();
            if let Some((cb, name)) = &new_budget {
                let topic = self.alert_topic.as_deref();
                let plan = plan_budget(app, name, cb, topic);
                if plan.topic_arn.is_none() && plan.emails.is_empty() {
                    return Err("`CostBudget`: give `TopicArn` or `Emails`: the provider has no alert topic (`TOKENFENCE_ALERT_TOPIC`) to notify, and an AWS Budget without subscribers sends no notifications".to_string());
                }
                // What the budget's notifications have now, when this update keeps its name.
                let previous = old
                    .as_ref()
                    .and_then(|o| o.cost_budget.as_ref())
                    .filter(|_| old_budget.as_ref() == Some(name))
                    .map(|ocb| plan_budget(app, name, ocb, topic));
                self.ledger
                    .claim(&Claim::CostBudget(name.clone()), &owner, app)
                    .await
                    .map_err(|e| unavailable(&e))?;
                self.budgets
                    .upsert(account, &plan, previous.as_ref())
                    .await
                    .map_err(|e| format!("`CostBudget`: AWS Budgets refused the budget: {e}"))?;
            }
            if let Some(old_name) = &old_budget
                && new_budget.as_ref().is_none_or(|(_, n)| n != old_name)
            {
                let claim = Claim::CostBudget(old_name.clone());
                let released = self
                    .ledger
                    .release(&claim, &owner, Some(app))
                    .await
                    .map_err(|e| unavailable(&e))?;
                if released == Released::Yes {
                    self.budgets.delete(account, old_name).await.map_err(|e| {
                        format!("`CostBudget`: deleting the AWS Budget `{old_name}` failed: {e}")
                    })?;
                }
            }
            // Recorded last, so that a retry after any failure above applies every step again.
            // The identities were written with the configuration above: only it is rewritten.
            config.applied_request = Some(common.request_id.to_string());
            self.ledger
                .put_budget(&config, &[])
                .await
                .map_err(|e| unavailable(&e))
        }
        .await;
        if let Err(reason) = rest {
            // Leave nothing half-applied: put back what was there before.
            let undo = match &existing {
                Some(previous) => {
                    self.ledger
                        .put_budget(previous, &old.as_ref().map(identities).unwrap_or_default())
                        .await
                }
                None => self
                    .ledger
                    .delete_budget(app, Some(&owner), &new_ids)
                    .await
                    .map(|_| ()),
            };
            if let Err(undo) = undo {
                tracing::error!(error = %undo, "could not undo the configuration after a later step failed");
            }
            if let Some((_, name)) = &new_budget
                && old_budget.as_ref() != Some(name)
                && let Err(e) = self
                    .ledger
                    .release(&Claim::CostBudget(name.clone()), &owner, Some(app))
                    .await
            {
                tracing::error!(error = %e, "could not release the AWS Budget's name");
            }
            return Outcome::failed(written_id(), reason);
        }
        Outcome::ok(
            new_id,
            budget_data(&config, new_budget.as_ref().map(|(_, n)| n.as_str())),
        )
    }

    async fn delete_budget(&self, common: &Common<'_>, physical: &str, props: &Value) -> Outcome {
        let done = || Outcome::ok(physical.to_string(), BTreeMap::new());
        let failed = |reason: String| Outcome::failed(physical.to_string(), reason);
        let Some(application) = physical.strip_prefix(BUDGET_ID_PREFIX) else {
            // Not an ID this provider issued (a failed Create, or something else): nothing to delete.
            return done();
        };
        let props = parse_budget(props)
            .ok()
            .filter(|p| p.application == application);
        let owner = common.owner();
        // Only what is still this resource's: after a replacement, or when another resource
        // declares the application, the delete leaves its configuration and identities alone.
        let ids = props.as_ref().map(identities).unwrap_or_default();
        match self
            .ledger
            .delete_budget(application, Some(&owner), &ids)
            .await
        {
            Ok(true) => {}
            Ok(false) => return done(),
            Err(e) => return failed(unavailable(&e)),
        }
        if let Some(cb) = props.as_ref().and_then(|p| p.cost_budget.as_ref()) {
            let name = self.cost_budget_name(application, cb);
            match self
                .ledger
                .release(&Claim::CostBudget(name.clone()), &owner, Some(application))
                .await
            {
                // A replacement names this AWS Budget too: it is the replacement's now.
                Ok(Released::HeldElsewhere) => {}
                Ok(Released::Yes) => {
                    if let Err(e) = self.budgets.delete(common.account_id(), &name).await {
                        return failed(format!(
                            "`CostBudget`: deleting the AWS Budget `{name}` failed: {e}"
                        ));
                    }
                }
                Err(e) => return failed(unavailable(&e)),
            }
        }
        done()
    }

    async fn put_alarm(
        &self,
        common: &Common<'_>,
        physical: Option<&str>,
        props: &Value,
    ) -> Outcome {
        let keep_id = || physical.map_or_else(|| common.failed_id(), str::to_string);
        let props = match parse_alarm(props) {
            Ok(p) => p,
            Err(e) => return Outcome::failed(keep_id(), e.to_string()),
        };
        let config = match self.ledger.budget(&props.application).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Outcome::failed(
                    keep_id(),
                    format!(
                        "`Application`: no `Custom::TokenBudget` declares application `{}`; declare it first (DependsOn)",
                        props.application
                    ),
                );
            }
            Err(e) => return Outcome::failed(keep_id(), unavailable(&e)),
        };
        let plan = match plan_alarm(&props, &config, &self.name) {
            Ok(p) => p,
            Err(e) => return Outcome::failed(keep_id(), e.to_string()),
        };
        if let Some(why) = spec::names::ALARM.check(&plan.name) {
            return Outcome::failed(keep_id(), format!("`AlarmName`: the name {why}"));
        }
        // PutMetricAlarm overwrites any alarm of that name: hold the name first, conditionally.
        let owner = common.owner();
        let claim = Claim::Alarm(plan.name.clone());
        if let Err(e) = self.ledger.claim(&claim, &owner, &props.application).await {
            return Outcome::failed(keep_id(), unavailable(&e));
        }
        // A new name is a replacement: the old alarm stays until CloudFormation deletes it.
        match self.alarms.put_alarm(&plan).await {
            Ok(arn) => Outcome::ok(
                plan.name.clone(),
                BTreeMap::from([
                    ("AlarmName".into(), plan.name.clone()),
                    ("AlarmArn".into(), arn),
                    ("Threshold".into(), plan.threshold_text.clone()),
                ]),
            ),
            Err(e) => {
                let reason = format!("CloudWatch refused the alarm: {e}");
                match physical {
                    // An Update to a new name: the old alarm stays this resource's, the new name
                    // is let go (its alarm, if the answer was lost, goes with it).
                    Some(old) if old != plan.name => {
                        if let Err(e) = self.alarms.delete_alarm(&plan.name).await {
                            tracing::error!(error = %e, "could not delete the half-made alarm");
                        } else if let Err(e) = self.ledger.release(&claim, &owner, None).await {
                            tracing::error!(error = %e, "could not release the alarm's name");
                        }
                        Outcome::failed(old.to_string(), reason)
                    }
                    // The alarm may exist if only the answer was lost: let the rollback Delete
                    // remove it.
                    _ => Outcome::failed(plan.name.clone(), reason),
                }
            }
        }
    }

    async fn delete_alarm(&self, common: &Common<'_>, physical: &str) -> Outcome {
        let done = || Outcome::ok(physical.to_string(), BTreeMap::new());
        if physical.is_empty() || physical.starts_with(FAILED_ID_PREFIX) {
            return done();
        }
        // An alarm's name is held by one resource whatever application it watches.
        let claim = Claim::Alarm(physical.to_string());
        match self.ledger.release(&claim, &common.owner(), None).await {
            // Another resource holds the name: the alarm is its, not this one's to delete.
            Ok(Released::HeldElsewhere) => return done(),
            Ok(Released::Yes) => {}
            Err(e) => return Outcome::failed(physical.to_string(), unavailable(&e)),
        }
        match self.alarms.delete_alarm(physical).await {
            Ok(()) => done(),
            Err(e) => Outcome::failed(
                physical.to_string(),
                format!("CloudWatch refused to delete the alarm: {e}"),
            ),
        }
    }
}
