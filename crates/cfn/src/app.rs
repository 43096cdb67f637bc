//! The resources of one application: its budget, alarms, inference profiles, API key and queues.

use serde_json::{Value, json};
use spec::names::{self, Names, logical_id_part};
use spec::{AlarmKind, Application, Engine, OnExceed, Spec};

use crate::custom;
use crate::platform::{QUEUE_VISIBILITY_SECONDS, exports, ids, model_source_arn};
use crate::template::{Output, Resource, get_att, import, r};

/// How an application's resources reach the platform: in the same stack, or through exports.
#[derive(Debug, Clone, Copy)]
pub enum Link<'a> {
    /// Same stack: `Ref` / `Fn::GetAtt`.
    Local,
    /// Another stack: `Fn::ImportValue` of the platform's exports, named after the spec.
    Imported {
        /// The spec's name, prefix of the export names.
        prefix: &'a str,
    },
}

impl Link<'_> {
    fn value(&self, local: Value, export: &str) -> Value {
        match self {
            Link::Local => local,
            Link::Imported { prefix } => import(&exports::name(prefix, export)),
        }
    }
    fn service_token(&self) -> Value {
        self.value(
            get_att(ids::PROVIDER_FUNCTION, "Arn"),
            exports::SERVICE_TOKEN,
        )
    }
    fn alert_topic(&self) -> Value {
        self.value(r(ids::ALERT_TOPIC), exports::ALERT_TOPIC_ARN)
    }
    fn rest_api(&self) -> Value {
        self.value(r(ids::REST_API), exports::REST_API_ID)
    }
    fn stage(&self) -> Value {
        self.value(r(ids::API_STAGE), exports::REST_API_STAGE)
    }
    fn invoke_function(&self) -> Value {
        self.value(
            get_att(ids::INVOKE_FUNCTION, "Arn"),
            exports::INVOKE_FUNCTION_ARN,
        )
    }
    fn workflow(&self) -> Value {
        self.value(r(ids::WORKFLOW), exports::WORKFLOW_ARN)
    }
    fn pipe_role(&self) -> Value {
        self.value(get_att(ids::PIPE_ROLE, "Arn"), exports::PIPE_ROLE_ARN)
    }
    fn dead_letter_queue(&self) -> Value {
        self.value(
            get_att(ids::DEAD_LETTER_QUEUE, "Arn"),
            exports::DEAD_LETTER_QUEUE_ARN,
        )
    }
}

/// Everything rendered for one application.
#[derive(Debug, Clone)]
pub struct AppUnit {
    /// The application's name.
    pub app: String,
    /// Resources by logical ID.
    pub resources: Vec<(String, Resource)>,
    /// Outputs by logical ID.
    pub outputs: Vec<(String, Output)>,
}

impl AppUnit {
    /// A rough size of the rendered unit, for packing stacks under the template size quota: its
    /// values' length as compact JSON, computed without writing them out.
    pub fn approx_bytes(&self) -> usize {
        let resources: usize = self
            .resources
            .iter()
            .map(|(id, r)| id.len() + json_len(&r.properties) + 64)
            .sum();
        let outputs: usize = self
            .outputs
            .iter()
            .map(|(id, o)| id.len() + json_len(&o.value) + o.description.len() + 48)
            .sum();
        resources + outputs
    }
}

/// The length of `value.to_string()` (compact JSON), without allocating it.
pub fn json_len(value: &Value) -> usize {
    fn str_len(s: &str) -> usize {
        2 + s
            .chars()
            .map(|c| match c {
                '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
                c if (c as u32) < 0x20 => 6,
                c => c.len_utf8(),
            })
            .sum::<usize>()
    }
    match value {
        Value::Null => 4,
        Value::Bool(b) => {
            if *b {
                4
            } else {
                5
            }
        }
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => str_len(s),
        Value::Array(items) => {
            2 + items.iter().map(json_len).sum::<usize>() + items.len().saturating_sub(1)
        }
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| str_len(k) + 1 + json_len(v))
                .sum::<usize>()
                + map.len().saturating_sub(1)
        }
    }
}

fn tags(stack: &str, app: &str, application: &Application) -> Vec<Value> {
    // `tokenfence:stack` scopes the invoke role's Bedrock permission to this stack's profiles.
    let mut tags = vec![
        json!({ "Key": "tokenfence:stack", "Value": stack }),
        json!({ "Key": "tokenfence:application", "Value": app }),
    ];
    if let Some(cc) = &application.cost_center {
        tags.push(json!({ "Key": "tokenfence:cost-center", "Value": cc }));
    }
    tags
}

/// How long CloudFormation waits for the provider's answer, in seconds, instead of its default
/// hour: three attempts of the provider's 300-second timeout (Lambda retries an asynchronous
/// invocation twice when one dies without answering).
pub const SERVICE_TIMEOUT: u32 = 900;

/// A custom resource's properties as template JSON.
fn properties<T: serde::Serialize>(props: &T) -> Value {
    serde_json::to_value(props).expect("custom resource properties serialize to JSON")
}

fn limit_properties(limits: &[budget::Limit]) -> Vec<custom::LimitProperties> {
    limits
        .iter()
        .map(|l| custom::LimitProperties {
            window: l.window.into(),
            tokens: l.tokens.map(custom::Count),
            usd: l.usd.map(custom::Usd),
        })
        .collect()
}

fn on_exceed_name(on_exceed: &OnExceed) -> custom::OnExceedName {
    match on_exceed {
        OnExceed::Reject => custom::OnExceedName::Reject,
        OnExceed::Fallback { .. } => custom::OnExceedName::Fallback,
        OnExceed::Queue => custom::OnExceedName::Queue,
    }
}

fn mode_name(mode: spec::Mode) -> custom::ModeName {
    match mode {
        spec::Mode::Enforce => custom::ModeName::Enforce,
        spec::Mode::Shadow => custom::ModeName::Shadow,
    }
}

fn fallback_id(spec: &Spec, on_exceed: &OnExceed) -> Option<String> {
    match on_exceed {
        OnExceed::Fallback { model } => Some(spec.models[model].id.clone()),
        _ => None,
    }
}

fn user_properties(
    spec: &Spec,
    name: Option<&String>,
    user: &spec::UserLimits,
) -> custom::UserProperties {
    custom::UserProperties {
        user: name.cloned(),
        limits: limit_properties(&user.limits),
        on_exceed: Some(on_exceed_name(&user.on_exceed)),
        fallback_model: fallback_id(spec, &user.on_exceed),
        mode: Some(mode_name(user.mode)),
    }
}

/// Renders one application's resources.
pub fn render_app(spec: &Spec, app: &str, application: &Application, link: Link) -> AppUnit {
    let names = Names::new(&spec.name);
    let id = logical_id_part(app);
    let mut resources: Vec<(String, Resource)> = Vec::new();
    let mut outputs: Vec<(String, Output)> = Vec::new();
    let budget_id = format!("{id}Budget");

    // Every model the application can end up calling, fallback included, gets a profile.
    let mut aliases: Vec<&str> = application.models.iter().map(String::as_str).collect();
    if let OnExceed::Fallback { model } = &application.on_exceed
        && !aliases.contains(&model.as_str())
    {
        aliases.push(model);
    }
    let mut profiles = Vec::new();
    for alias in &aliases {
        let def = &spec.models[*alias];
        let profile_id = format!("{id}{}Profile", logical_id_part(alias));
        resources.push((
            profile_id.clone(),
            Resource::new(
                "AWS::Bedrock::ApplicationInferenceProfile",
                json!({
                    "InferenceProfileName": names.profile(app, alias, &def.id),
                    "Description": format!("tokenfence application {app} model {alias}"),
                    "ModelSource": { "CopyFrom": model_source_arn(&def.id) },
                    "Tags": tags(&spec.name, app, application)
                }),
            ),
        ));
        profiles.push(custom::ProfileProperties {
            model: def.id.clone(),
            arn: get_att(&profile_id, "InferenceProfileArn"),
        });
    }

    let mut budget = custom::TokenBudgetProperties::<Value> {
        service_token: Some(link.service_token()),
        service_timeout: Some(custom::Count(SERVICE_TIMEOUT.into())),
        application: app.to_string(),
        cost_center: application.cost_center.clone(),
        models: application
            .models
            .iter()
            .map(|a| spec.models[a].id.clone())
            .collect(),
        limits: limit_properties(&application.limits),
        on_exceed: Some(on_exceed_name(&application.on_exceed)),
        fallback_model: fallback_id(spec, &application.on_exceed),
        mode: Some(mode_name(application.mode)),
        prices: aliases
            .iter()
            .filter_map(|a| {
                let def = &spec.models[*a];
                let p = def.price.filter(|_| def.price_from_spec)?;
                Some(custom::PriceProperties {
                    model: def.id.clone(),
                    input: custom::PerMillion(p.input_usd()),
                    output: custom::PerMillion(p.output_usd()),
                    cache_read: Some(custom::PerMillion(p.cache_read_usd())),
                    cache_write: Some(custom::PerMillion(p.cache_write_usd())),
                    cache_write_1h: p.cache_write_1h_usd().map(custom::PerMillion),
                    tiers: def
                        .tiers
                        .iter()
                        .map(|(tier, p)| custom::TierPriceProperties {
                            tier: tier.as_str().to_string(),
                            input: custom::PerMillion(p.input_usd()),
                            output: custom::PerMillion(p.output_usd()),
                            cache_read: Some(custom::PerMillion(p.cache_read_usd())),
                            cache_write: Some(custom::PerMillion(p.cache_write_usd())),
                            cache_write_1h: p.cache_write_1h_usd().map(custom::PerMillion),
                        })
                        .collect(),
                })
            })
            .collect(),
        cost_budget: application
            .cost_budget
            .as_ref()
            .map(|cb| custom::CostBudgetProperties {
                budget_name: Some(names.budget(app)),
                monthly_usd: custom::Usd(cb.monthly_usd),
                forecast_percent: Some(custom::Count(cb.forecast_percent.into())),
                actual_percents: Some(
                    cb.actual_percents
                        .iter()
                        .map(|p| custom::Count((*p).into()))
                        .collect(),
                ),
                topic_arn: Some(link.alert_topic()),
                emails: Vec::new(),
            }),
        api_key_ids: Vec::new(),
        request_queue_arns: Vec::new(),
        results_queue_url: None,
        inference_profiles: profiles,
        per_user: application
            .per_user
            .as_ref()
            .map(|u| user_properties(spec, None, u)),
        users: application
            .users
            .iter()
            .map(|(name, u)| user_properties(spec, Some(name), u))
            .collect(),
        user_metrics: application.user_metrics.then_some(custom::Flag(true)),
    };

    if spec.access.rest {
        let key_id = format!("{id}ApiKey");
        let plan_id = format!("{id}UsagePlan");
        resources.push((
            key_id.clone(),
            Resource::new(
                "AWS::ApiGateway::ApiKey",
                json!({
                    "Name": names.api_key(app),
                    "Description": format!("tokenfence: identifies application {app}"),
                    "Enabled": true,
                    "Tags": tags(&spec.name, app, application)
                }),
            ),
        ));
        resources.push((
            plan_id.clone(),
            Resource::new(
                "AWS::ApiGateway::UsagePlan",
                json!({
                    "UsagePlanName": names.api_key(app),
                    "Description": format!("tokenfence: API access of application {app}"),
                    "ApiStages": [{ "ApiId": link.rest_api(), "Stage": link.stage() }],
                    "Tags": tags(&spec.name, app, application)
                }),
            ),
        ));
        resources.push((
            format!("{id}UsagePlanKey"),
            Resource::new(
                "AWS::ApiGateway::UsagePlanKey",
                json!({ "KeyId": r(&key_id), "KeyType": "API_KEY", "UsagePlanId": r(&plan_id) }),
            ),
        ));
        budget.api_key_ids = vec![r(&key_id)];
        outputs.push((
            format!("{id}ApiKeyId"),
            Output {
                description: format!("API key ID of {app}; its value: aws apigateway get-api-key --include-value --api-key ID"),
                value: r(&key_id),
                export: None,
            },
        ));
    }

    if spec.access.queue {
        let requests_id = format!("{id}Requests");
        let results_id = format!("{id}Results");
        resources.push((
            requests_id.clone(),
            Resource::new(
                "AWS::SQS::Queue",
                json!({
                    "QueueName": names.requests_queue(app),
                    "VisibilityTimeout": QUEUE_VISIBILITY_SECONDS,
                    "SqsManagedSseEnabled": true,
                    "RedrivePolicy": { "deadLetterTargetArn": link.dead_letter_queue(), "maxReceiveCount": 5 },
                    "Tags": tags(&spec.name, app, application)
                }),
            ),
        ));
        resources.push((
            results_id.clone(),
            Resource::new(
                "AWS::SQS::Queue",
                json!({ "QueueName": names.results_queue(app), "SqsManagedSseEnabled": true, "Tags": tags(&spec.name, app, application) }),
            ),
        ));
        let consumer = match spec.engine {
            Engine::Lambda => (
                format!("{id}RequestsMapping"),
                Resource::new(
                    "AWS::Lambda::EventSourceMapping",
                    json!({
                        "EventSourceArn": get_att(&requests_id, "Arn"),
                        "FunctionName": link.invoke_function(),
                        "BatchSize": 10,
                        "FunctionResponseTypes": ["ReportBatchItemFailures"],
                        "Enabled": true
                    }),
                ),
            ),
            // One message per execution; a failed execution leaves the message to SQS's retries
            // and, after five receives, the dead-letter queue.
            Engine::StepFunctionsExpress => (
                format!("{id}RequestsPipe"),
                Resource::new(
                    "AWS::Pipes::Pipe",
                    json!({
                        "Description": format!("tokenfence: {app}'s queued requests to the budget workflow"),
                        "RoleArn": link.pipe_role(),
                        "Source": get_att(&requests_id, "Arn"),
                        "SourceParameters": { "SqsQueueParameters": { "BatchSize": 1 } },
                        "Target": link.workflow(),
                        "TargetParameters": {
                            "StepFunctionStateMachineParameters": { "InvocationType": "REQUEST_RESPONSE" },
                            "InputTemplate": "{\"action\": \"reserve\", \"records\": [<aws.pipes.event.json>]}"
                        },
                        "Tags": { "tokenfence:application": app }
                    }),
                ),
            ),
        };
        resources.push((
            consumer.0,
            // The budget must be in the ledger before the first message can be charged against it.
            consumer.1.depends_on([budget_id.clone()]),
        ));
        budget.request_queue_arns = vec![get_att(&requests_id, "Arn")];
        budget.results_queue_url = Some(r(&results_id));
        outputs.push((
            format!("{id}RequestsQueueUrl"),
            Output {
                description: format!("Send {app}'s Converse requests here"),
                value: r(&requests_id),
                export: None,
            },
        ));
        outputs.push((
            format!("{id}ResultsQueueUrl"),
            Output {
                description: format!("{app}'s results arrive here, keyed by request id"),
                value: r(&results_id),
                export: None,
            },
        ));
    }

    resources.push((
        budget_id.clone(),
        Resource::new("Custom::TokenBudget", properties(&budget)),
    ));

    for alarm in &application.alarms {
        let props = custom::TokenAlarmProperties::<Value> {
            service_token: Some(link.service_token()),
            service_timeout: Some(custom::Count(SERVICE_TIMEOUT.into())),
            application: app.to_string(),
            alarm_name: Some(names.alarm(app, alarm)),
            window: Some(alarm.window.into()),
            metric: Some(match alarm.metric {
                spec::Metric::Tokens => custom::AlarmMetric::Tokens,
                spec::Metric::Usd => custom::AlarmMetric::Usd,
            }),
            kind: Some(match alarm.kind {
                AlarmKind::Threshold { .. } => custom::AlarmKind::Threshold,
                AlarmKind::Forecast => custom::AlarmKind::Forecast,
                AlarmKind::Anomaly => custom::AlarmKind::Anomaly,
            }),
            percent: match alarm.kind {
                AlarmKind::Threshold { percent } => Some(custom::Count(percent.into())),
                _ => None,
            },
            alarm_actions: vec![link.alert_topic()],
        };
        resources.push((
            format!("{id}{}Alarm", names::alarm_logical_id_part(alarm)),
            Resource::new("Custom::TokenAlarm", properties(&props)).depends_on([budget_id.clone()]),
        ));
    }

    AppUnit {
        app: app.to_string(),
        resources,
        outputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_is_the_compact_length() {
        for v in [
            json!(null),
            json!({ "a": [1, -2.5, true, false, null], "b\"q": "line\nbreak\u{1}\t\\ ü" }),
            json!([]),
            json!({}),
            json!([{ "Fn::Sub": "arn:${AWS::Partition}:x" }, [1e20, 0]]),
        ] {
            assert_eq!(json_len(&v), v.to_string().len(), "{v}");
        }
    }
}
