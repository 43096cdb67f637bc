//! The resources of one application: its budget, alarms, inference profiles, API key and queues.

use serde_json::{Value, json};
use spec::names::{self, Names, logical_id_part};
use spec::{AlarmKind, Application, Engine, OnExceed, Spec};

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
        profiles
            .push(json!({ "Model": def.id, "Arn": get_att(&profile_id, "InferenceProfileArn") }));
    }

    let mut budget = serde_json::Map::new();
    budget.insert("ServiceToken".into(), link.service_token());
    budget.insert("ServiceTimeout".into(), json!(SERVICE_TIMEOUT));
    budget.insert("Application".into(), json!(app));
    if let Some(cc) = &application.cost_center {
        budget.insert("CostCenter".into(), json!(cc));
    }
    budget.insert(
        "Models".into(),
        json!(
            application
                .models
                .iter()
                .map(|a| spec.models[a].id.clone())
                .collect::<Vec<_>>()
        ),
    );
    budget.insert(
        "Limits".into(),
        Value::Array(
            application
                .limits
                .iter()
                .map(|l| {
                    let mut m = serde_json::Map::new();
                    m.insert("Window".into(), json!(l.window.as_str()));
                    if let Some(t) = l.tokens {
                        m.insert("Tokens".into(), json!(t.to_string()));
                    }
                    if let Some(u) = l.usd {
                        m.insert("Usd".into(), json!(u.to_string()));
                    }
                    Value::Object(m)
                })
                .collect(),
        ),
    );
    budget.insert("OnExceed".into(), json!(application.on_exceed.as_str()));
    if let OnExceed::Fallback { model } = &application.on_exceed {
        budget.insert("FallbackModel".into(), json!(spec.models[model].id));
    }
    budget.insert("Mode".into(), json!(application.mode.as_str()));
    let prices: Vec<Value> = aliases
        .iter()
        .filter_map(|a| {
            let def = &spec.models[*a];
            let p = def.price.filter(|_| def.price_from_spec)?;
            Some(json!({
                "Model": def.id,
                "Input": p.input_usd(),
                "Output": p.output_usd(),
                "CacheRead": p.cache_read_usd(),
                "CacheWrite": p.cache_write_usd()
            }))
        })
        .collect();
    if !prices.is_empty() {
        budget.insert("Prices".into(), Value::Array(prices));
    }
    if let Some(cb) = &application.cost_budget {
        let mut m = serde_json::Map::new();
        m.insert("BudgetName".into(), json!(names.budget(app)));
        m.insert("MonthlyUsd".into(), json!(cb.monthly_usd.to_string()));
        m.insert(
            "ForecastPercent".into(),
            json!(cb.forecast_percent.to_string()),
        );
        m.insert(
            "ActualPercents".into(),
            json!(
                cb.actual_percents
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
            ),
        );
        m.insert("TopicArn".into(), link.alert_topic());
        budget.insert("CostBudget".into(), Value::Object(m));
    }
    if !profiles.is_empty() {
        budget.insert("InferenceProfiles".into(), Value::Array(profiles));
    }

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
        budget.insert("ApiKeyIds".into(), json!([r(&key_id)]));
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
        budget.insert(
            "RequestQueueArns".into(),
            json!([get_att(&requests_id, "Arn")]),
        );
        budget.insert("ResultsQueueUrl".into(), r(&results_id));
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
        Resource::new("Custom::TokenBudget", Value::Object(budget)),
    ));

    for alarm in &application.alarms {
        let mut props = serde_json::Map::new();
        props.insert("ServiceToken".into(), link.service_token());
        props.insert("ServiceTimeout".into(), json!(SERVICE_TIMEOUT));
        props.insert("Application".into(), json!(app));
        props.insert("AlarmName".into(), json!(names.alarm(app, alarm)));
        props.insert("Window".into(), json!(alarm.window.as_str()));
        props.insert("Metric".into(), json!(alarm.metric.as_str()));
        props.insert("Kind".into(), json!(alarm.kind.as_str()));
        if let AlarmKind::Threshold { percent } = alarm.kind {
            props.insert("Percent".into(), json!(percent.to_string()));
        }
        props.insert("AlarmActions".into(), json!([link.alert_topic()]));
        resources.push((
            format!("{id}{}Alarm", names::alarm_logical_id_part(alarm)),
            Resource::new("Custom::TokenAlarm", Value::Object(props))
                .depends_on([budget_id.clone()]),
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
