//! The platform: ledger table, Lambdas and their roles, REST API, dead-letter queue, alert topic,
//! dashboard. One per spec.

use serde_json::{Value, json};
use spec::names::Names;
use spec::{Engine, OnLedgerError, Spec};

use crate::RenderOptions;
use crate::template::{Resource, Template, get_att, r, stable_hash, sub};

/// Names of the platform's exports, shared by the platform and the stacks that import from it.
pub mod exports {
    /// The provider Lambda's ARN: the `ServiceToken` of `Custom::TokenBudget` / `Custom::TokenAlarm`.
    pub const SERVICE_TOKEN: &str = "ServiceToken";
    /// The ledger table's name.
    pub const TABLE_NAME: &str = "LedgerTableName";
    /// The REST API's base URL.
    pub const API_URL: &str = "ApiUrl";
    /// The REST API's ID.
    pub const REST_API_ID: &str = "RestApiId";
    /// The REST API's stage name.
    pub const REST_API_STAGE: &str = "RestApiStage";
    /// The invoke Lambda's ARN.
    pub const INVOKE_FUNCTION_ARN: &str = "InvokeFunctionArn";
    /// The alert topic's ARN.
    pub const ALERT_TOPIC_ARN: &str = "AlertTopicArn";
    /// The dead-letter queue's ARN.
    pub const DEAD_LETTER_QUEUE_ARN: &str = "DeadLetterQueueArn";
    /// The Step Functions engine's state machine ARN.
    pub const WORKFLOW_ARN: &str = "WorkflowArn";
    /// The role EventBridge Pipes use to start the workflow from the request queues.
    pub const PIPE_ROLE_ARN: &str = "PipeRoleArn";

    /// The export name of `what` for the spec called `prefix`.
    pub fn name(prefix: &str, what: &str) -> String {
        format!("{prefix}-{what}")
    }
}

/// Logical IDs of platform resources that application resources refer to.
pub mod ids {
    /// The provider Lambda.
    pub const PROVIDER_FUNCTION: &str = "ProviderFunction";
    /// The invoke Lambda.
    pub const INVOKE_FUNCTION: &str = "InvokeFunction";
    /// The REST API.
    pub const REST_API: &str = "RestApi";
    /// The REST API's stage.
    pub const API_STAGE: &str = "ApiStage";
    /// The alert topic.
    pub const ALERT_TOPIC: &str = "AlertTopic";
    /// The dead-letter queue.
    pub const DEAD_LETTER_QUEUE: &str = "DeadLetterQueue";
    /// The ledger table.
    pub const LEDGER_TABLE: &str = "LedgerTable";
    /// The Step Functions engine's state machine.
    pub const WORKFLOW: &str = "Workflow";
    /// The role of the request queues' pipes (Step Functions engine).
    pub const PIPE_ROLE: &str = "PipeRole";
}

/// The REST API's stage.
pub const STAGE_NAME: &str = "v1";
/// The invoke Lambda's timeout: the longest stream API Gateway relays (15 minutes). Whole
/// answers are cut by API Gateway at 29 s regardless, and the queue front bounds its batches
/// to `QUEUE_BATCH_SECONDS`.
pub const INVOKE_TIMEOUT_SECONDS: u32 = 900;
/// How long the queue front spends on one SQS batch (the invoke crate's `QUEUE_BATCH`).
pub const QUEUE_BATCH_SECONDS: u32 = 120;
/// Memory of the invoke Lambda, in MB (it mostly waits on Bedrock; more buys no speed).
pub const INVOKE_MEMORY_MB: u32 = 256;
/// Memory of the Step Functions engine's Lambda steps, in MB.
pub const STEP_MEMORY_MB: u32 = 128;
/// Timeout of the Step Functions engine's Lambda steps (each is a few ledger round trips).
pub const STEP_TIMEOUT_SECONDS: u32 = 30;
/// SQS visibility timeout of the request queues: six times a batch's time, as AWS advises for
/// Lambda event sources, and never under the function timeout, which an event source mapping
/// requires.
pub const QUEUE_VISIBILITY_SECONDS: u32 = if 6 * QUEUE_BATCH_SECONDS > INVOKE_TIMEOUT_SECONDS {
    6 * QUEUE_BATCH_SECONDS
} else {
    INVOKE_TIMEOUT_SECONDS
};
/// Log retention of the Lambdas' log groups.
pub const LOG_RETENTION_DAYS: u32 = 30;
/// The ledger's sparse index of held reservations (`ledger::OPEN_INDEX`).
pub const OPEN_INDEX: &str = "open";
/// How often the sweeper closes reservations held past their hold.
pub const SWEEP_SCHEDULE: &str = "rate(5 minutes)";
/// The ledger's TTL attribute.
pub const TTL_ATTRIBUTE: &str = "expires_at";

fn lambda_trust() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Principal": { "Service": "lambda.amazonaws.com" }, "Action": "sts:AssumeRole" }]
    })
}

fn log_statement(log_group_id: &str) -> Value {
    json!({
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": [get_att(log_group_id, "Arn")]
    })
}

/// IAM resources that let a role call a Bedrock model: the model itself, and for a cross-region
/// inference profile the profile plus the foundation model in every region it routes to.
pub fn model_resource_arns(id: &str) -> Vec<Value> {
    if id.starts_with("arn:") {
        return vec![Value::String(id.to_string())];
    }
    let prefixes = [
        "us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov.", "global.",
    ];
    match prefixes.iter().find_map(|p| id.strip_prefix(p)) {
        Some(base) => vec![
            sub(&format!(
                "arn:${{AWS::Partition}}:bedrock:${{AWS::Region}}:${{AWS::AccountId}}:inference-profile/{id}"
            )),
            sub(&format!(
                "arn:${{AWS::Partition}}:bedrock:*::foundation-model/{base}"
            )),
        ],
        None => vec![sub(&format!(
            "arn:${{AWS::Partition}}:bedrock:${{AWS::Region}}::foundation-model/{id}"
        ))],
    }
}

/// The ARN an application inference profile copies from.
pub fn model_source_arn(id: &str) -> Value {
    model_resource_arns(id)
        .into_iter()
        .next()
        .expect("every model has an ARN")
}

/// Adds the platform resources and their exported outputs to `t`.
/// Bedrock on the application inference profiles this stack created, and no one else's: every
/// profile tokenfence renders carries the tag `tokenfence:stack` = the spec's name.
pub fn own_profiles_statement(prefix: &str, actions: &[&str]) -> Value {
    json!({
        "Effect": "Allow",
        "Action": actions,
        "Resource": [sub("arn:${AWS::Partition}:bedrock:${AWS::Region}:${AWS::AccountId}:application-inference-profile/*")],
        "Condition": { "StringEquals": { "aws:ResourceTag/tokenfence:stack": prefix } }
    })
}

/// A `Fn::GetAtt` value followed by a literal suffix (`Fn::Join`).
fn join_sub(value: &Value, suffix: &str) -> Value {
    json!({ "Fn::Join": ["", [value, suffix]] })
}

pub fn add_platform(t: &mut Template, spec: &Spec, opts: &RenderOptions) {
    let names = Names::new(&spec.name);
    let prefix = spec.name.as_str();
    let export = |what: &str| Some(crate::platform::exports::name(prefix, what));

    t.add(
        ids::LEDGER_TABLE,
        Resource::new(
            "AWS::DynamoDB::Table",
            json!({
                "TableName": names.table(),
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [
                    { "AttributeName": "pk", "AttributeType": "S" },
                    { "AttributeName": "sk", "AttributeType": "S" },
                    { "AttributeName": "open_shard", "AttributeType": "S" },
                    { "AttributeName": "hold_until", "AttributeType": "N" }
                ],
                "KeySchema": [
                    { "AttributeName": "pk", "KeyType": "HASH" },
                    { "AttributeName": "sk", "KeyType": "RANGE" }
                ],
                // Sparse: only held reservations carry `open_shard`, so the sweeper finds those
                // past their hold without scanning the table.
                "GlobalSecondaryIndexes": [{
                    "IndexName": OPEN_INDEX,
                    "KeySchema": [
                        { "AttributeName": "open_shard", "KeyType": "HASH" },
                        { "AttributeName": "hold_until", "KeyType": "RANGE" }
                    ],
                    "Projection": { "ProjectionType": "INCLUDE", "NonKeyAttributes": ["tokens", "micro_usd"] }
                }],
                "TimeToLiveSpecification": { "AttributeName": TTL_ATTRIBUTE, "Enabled": true },
                "PointInTimeRecoverySpecification": { "PointInTimeRecoveryEnabled": true },
                "SSESpecification": { "SSEEnabled": true },
                "Tags": [{ "Key": "tokenfence:stack", "Value": prefix }]
            }),
        )
        .retain(),
    );

    let table_arn = get_att(ids::LEDGER_TABLE, "Arn");
    let alarm_arn = sub(&format!(
        "arn:${{AWS::Partition}}:cloudwatch:${{AWS::Region}}:${{AWS::AccountId}}:alarm:{prefix}-*"
    ));
    let budget_arn = sub(&format!(
        "arn:${{AWS::Partition}}:budgets::${{AWS::AccountId}}:budget/{prefix}-*"
    ));

    // Provider: writes budget configuration, manages alarms and AWS Budgets named after the spec.
    t.add("ProviderLogGroup", log_group(&names.function("provider")));
    t.add(
        "ProviderRole",
        Resource::new(
            "AWS::IAM::Role",
            json!({
                "AssumeRolePolicyDocument": lambda_trust(),
                "Policies": [{
                    "PolicyName": "tokenfence-provider",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            log_statement("ProviderLogGroup"),
                            {
                                "Effect": "Allow",
                                "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"],
                                "Resource": [table_arn.clone()]
                            },
                            {
                                "Effect": "Allow",
                                "Action": ["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms", "cloudwatch:DescribeAlarms"],
                                "Resource": [alarm_arn]
                            },
                            {
                                "Effect": "Allow",
                                "Action": ["budgets:ViewBudget", "budgets:ModifyBudget"],
                                "Resource": [budget_arn]
                            }
                        ]
                    }
                }]
            }),
        ),
    );
    t.add(
        ids::PROVIDER_FUNCTION,
        lambda(
            &names.function("provider"),
            "tokenfence provider: Custom::TokenBudget and Custom::TokenAlarm",
            &format!("{}/provider", opts.code_dir),
            "ProviderRole",
            "ProviderLogGroup",
            128,
            300,
            json!({ "TOKENFENCE_TABLE": r(ids::LEDGER_TABLE), "TOKENFENCE_NAME": prefix, "TOKENFENCE_ALERT_TOPIC": r(ids::ALERT_TOPIC) }),
        ),
    );

    // Invoke: reserves in the ledger, calls the declared models only, serves both fronts.
    let mut model_arns: Vec<Value> = Vec::new();
    for def in spec.models.values() {
        for arn in model_resource_arns(&def.id) {
            if !model_arns.contains(&arn) {
                model_arns.push(arn);
            }
        }
    }
    let mut invoke_statements = vec![
        log_statement("InvokeLogGroup"),
        json!({
            "Effect": "Allow",
            // BatchGetItem: `GET /usage`, the remaining-budget headers and the utilization gauges;
            // Query on the open index: the sweeper.
            "Action": ["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query", "dynamodb:ConditionCheckItem"],
            "Resource": [table_arn.clone(), join_sub(&table_arn, &format!("/index/{OPEN_INDEX}"))]
        }),
        json!({
            "Effect": "Allow",
            "Action": ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream", "bedrock:CountTokens"],
            "Resource": model_arns.clone()
        }),
        own_profiles_statement(
            prefix,
            &[
                "bedrock:InvokeModel",
                "bedrock:InvokeModelWithResponseStream",
                "bedrock:CountTokens",
            ],
        ),
    ];
    if spec.access.rest
        && spec
            .applications
            .values()
            .any(|a| a.per_user.is_some() || !a.users.is_empty())
    {
        // Seats: the authorizer hands a seat's call to its application's usage plan with the
        // application's API key, whose value it reads. API key ARNs hold their random IDs, and an
        // application's key may live in another stack of a split rendering, so the grant is on
        // the region's keys; it is rendered only for specs with seats (README, Seats).
        invoke_statements.push(json!({
            "Effect": "Allow",
            "Action": ["apigateway:GET"],
            "Resource": sub("arn:${AWS::Partition}:apigateway:${AWS::Region}::/apikeys/*")
        }));
    }
    if spec.access.queue {
        // The Lambda engine consumes the request queues; on the Step Functions engine the pipes do.
        let actions: &[&str] = if spec.engine == Engine::Lambda {
            &[
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
                "sqs:SendMessage",
                "sqs:GetQueueUrl",
            ]
        } else {
            &["sqs:SendMessage", "sqs:GetQueueUrl"]
        };
        invoke_statements.push(json!({
            "Effect": "Allow",
            // SendMessage and GetQueueUrl: requests over budget with `queue` are re-sent with a delay.
            "Action": actions,
            "Resource": [sub(&format!("arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{prefix}-*-requests"))]
        }));
        invoke_statements.push(json!({
            "Effect": "Allow",
            "Action": ["sqs:SendMessage"],
            "Resource": [sub(&format!("arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{prefix}-*-results"))]
        }));
    }
    t.add("InvokeLogGroup", log_group(&names.function("invoke")));
    t.add(
        "InvokeRole",
        Resource::new(
            "AWS::IAM::Role",
            json!({
                "AssumeRolePolicyDocument": lambda_trust(),
                "Policies": [{
                    "PolicyName": "tokenfence-invoke",
                    "PolicyDocument": { "Version": "2012-10-17", "Statement": invoke_statements }
                }]
            }),
        ),
    );
    let aliases: serde_json::Map<String, Value> = spec
        .models
        .iter()
        .map(|(alias, def)| (alias.clone(), Value::String(def.id.clone())))
        .collect();
    let mut env = json!({
        "TOKENFENCE_TABLE": r(ids::LEDGER_TABLE),
        "TOKENFENCE_NAME": prefix,
        "TOKENFENCE_MODELS": Value::Object(aliases).to_string(),
        "TOKENFENCE_DEFAULT_MAX_TOKENS": spec.defaults.max_tokens.to_string(),
        "TOKENFENCE_ON_LEDGER_ERROR": match spec.defaults.on_ledger_error { OnLedgerError::Deny => "deny", OnLedgerError::Allow => "allow" },
    });
    let express = spec.engine == Engine::StepFunctionsExpress;
    let (description, memory, timeout) = if express {
        env["TOKENFENCE_ENGINE"] = json!("step-functions-express");
        (
            "tokenfence invoke: the reserve and settle steps of the budget workflow, and GET /usage",
            STEP_MEMORY_MB,
            STEP_TIMEOUT_SECONDS,
        )
    } else {
        (
            "tokenfence invoke: enforces token and USD budgets before calling Bedrock",
            INVOKE_MEMORY_MB,
            INVOKE_TIMEOUT_SECONDS,
        )
    };
    t.add(
        ids::INVOKE_FUNCTION,
        lambda(
            &names.function("invoke"),
            description,
            &format!("{}/invoke", opts.code_dir),
            "InvokeRole",
            "InvokeLogGroup",
            memory,
            timeout,
            env,
        ),
    );
    if express {
        crate::workflow::add_workflow(t, spec, model_arns);
    }

    // The sweeper: reservations held past their hold (a Lambda that died mid-request, a workflow
    // that timed out) are closed at their worst case and counted.
    t.add(
        "SweepSchedule",
        Resource::new(
            "AWS::Events::Rule",
            json!({
                "Description": "tokenfence: close reservations held past their hold at their worst case",
                "ScheduleExpression": SWEEP_SCHEDULE,
                "State": "ENABLED",
                "Targets": [{
                    "Id": "sweep",
                    "Arn": get_att(ids::INVOKE_FUNCTION, "Arn"),
                    "Input": json!({ "tokenfence": "sweep" }).to_string()
                }]
            }),
        ),
    );
    t.add(
        "SweepPermission",
        Resource::new(
            "AWS::Lambda::Permission",
            json!({
                "Action": "lambda:InvokeFunction",
                "FunctionName": r(ids::INVOKE_FUNCTION),
                "Principal": "events.amazonaws.com",
                "SourceArn": get_att("SweepSchedule", "Arn")
            }),
        ),
    );

    if spec.access.rest {
        add_rest_api(t, spec);
        t.output("ApiUrl", "Base URL of the REST API: POST {ApiUrl}/model/{modelId}/converse (or /invoke, /count-tokens) with header x-api-key", sub(&format!("https://${{{}}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{STAGE_NAME}", ids::REST_API)), export(exports::API_URL));
        t.output(
            "RestApiId",
            "ID of the REST API",
            r(ids::REST_API),
            export(exports::REST_API_ID),
        );
        t.output(
            "RestApiStage",
            "Stage of the REST API",
            r(ids::API_STAGE),
            export(exports::REST_API_STAGE),
        );
    }
    if spec.access.queue {
        t.add(
            ids::DEAD_LETTER_QUEUE,
            Resource::new(
                "AWS::SQS::Queue",
                json!({
                    "QueueName": names.dead_letter_queue(),
                    "MessageRetentionPeriod": 1_209_600,
                    "SqsManagedSseEnabled": true,
                    "Tags": [{ "Key": "tokenfence:stack", "Value": prefix }]
                }),
            ),
        );
        t.output(
            "DeadLetterQueueArn",
            "Dead-letter queue of the request queues",
            get_att(ids::DEAD_LETTER_QUEUE, "Arn"),
            export(exports::DEAD_LETTER_QUEUE_ARN),
        );
    }

    add_alerts(t, spec);
    add_dashboard(t, spec);

    t.output(
        "ProviderServiceToken",
        "ServiceToken for Custom::TokenBudget and Custom::TokenAlarm",
        get_att(ids::PROVIDER_FUNCTION, "Arn"),
        export(exports::SERVICE_TOKEN),
    );
    t.output(
        "LedgerTableName",
        "The budget ledger table",
        r(ids::LEDGER_TABLE),
        export(exports::TABLE_NAME),
    );
    t.output(
        "InvokeFunctionArn",
        "The enforcing invoke Lambda",
        get_att(ids::INVOKE_FUNCTION, "Arn"),
        export(exports::INVOKE_FUNCTION_ARN),
    );
    t.output(
        "AlertTopicArn",
        "SNS topic receiving alarms and budget notifications",
        r(ids::ALERT_TOPIC),
        export(exports::ALERT_TOPIC_ARN),
    );
}

fn log_group(function_name: &str) -> Resource {
    Resource::new(
        "AWS::Logs::LogGroup",
        json!({ "LogGroupName": format!("/aws/lambda/{function_name}"), "RetentionInDays": LOG_RETENTION_DAYS }),
    )
}

#[allow(clippy::too_many_arguments)]
fn lambda(
    name: &str,
    description: &str,
    code: &str,
    role: &str,
    log_group: &str,
    memory: u32,
    timeout: u32,
    env: Value,
) -> Resource {
    Resource::new(
        "AWS::Lambda::Function",
        json!({
            "FunctionName": name,
            "Description": description,
            "Runtime": "provided.al2023",
            "Handler": "bootstrap",
            "Architectures": ["x86_64"],
            "Code": code,
            "MemorySize": memory,
            "Timeout": timeout,
            "Role": get_att(role, "Arn"),
            "Environment": { "Variables": env },
            "LoggingConfig": { "LogFormat": "JSON", "LogGroup": r(log_group) }
        }),
    )
}

fn add_rest_api(t: &mut Template, spec: &Spec) {
    let invoke_uri = sub(&format!(
        "arn:${{AWS::Partition}}:apigateway:${{AWS::Region}}:lambda:path/2015-03-31/functions/${{{}.Arn}}/invocations",
        ids::INVOKE_FUNCTION
    ));
    // Lambda's InvokeWithResponseStream, for the integrations that stream.
    let stream_uri = sub(&format!(
        "arn:${{AWS::Partition}}:apigateway:${{AWS::Region}}:lambda:path/2021-11-15/functions/${{{}.Arn}}/response-streaming-invocations",
        ids::INVOKE_FUNCTION
    ));
    t.add(
        ids::REST_API,
        Resource::new(
            "AWS::ApiGateway::RestApi",
            json!({
                "Name": spec.name,
                "Description": "tokenfence: the Bedrock runtime behind token and USD budgets",
                // The key comes from the authorizer, which reads `x-api-key` or `Authorization:
                // Bearer` (Bedrock API keys); usage plans still validate and meter it.
                "ApiKeySourceType": "AUTHORIZER",
                "EndpointConfiguration": { "Types": ["REGIONAL"] },
                "Tags": [{ "Key": "tokenfence:stack", "Value": spec.name }]
            }),
        ),
    );
    t.add(
        "ApiRequestValidator",
        Resource::new(
            "AWS::ApiGateway::RequestValidator",
            json!({ "RestApiId": r(ids::REST_API), "Name": "body-and-parameters", "ValidateRequestBody": true, "ValidateRequestParameters": true }),
        ),
    );
    t.add(
        "ConverseRequestModel",
        Resource::new(
            "AWS::ApiGateway::Model",
            json!({
                "RestApiId": r(ids::REST_API),
                "ContentType": "application/json",
                "Name": "ConverseRequest",
                "Schema": {
                    "$schema": "http://json-schema.org/draft-04/schema#",
                    "type": "object",
                    "required": ["messages"],
                    "properties": {
                        "messages": { "type": "array", "minItems": 1 },
                        "system": { "type": "array" },
                        "inferenceConfig": { "type": "object" }
                    }
                }
            }),
        ),
    );
    t.add(
        "ApiKeyAuthorizer",
        Resource::new(
            "AWS::ApiGateway::Authorizer",
            json!({
                "RestApiId": r(ids::REST_API),
                "Name": "api-key",
                "Type": "REQUEST",
                "AuthorizerUri": invoke_uri.clone(),
                // No caching: the identity source may be either of two headers.
                "AuthorizerResultTtlInSeconds": 0
            }),
        ),
    );
    let resource = |parent: Value, part: &str| {
        Resource::new(
            "AWS::ApiGateway::Resource",
            json!({ "RestApiId": r(ids::REST_API), "ParentId": parent, "PathPart": part }),
        )
    };
    t.add(
        "ApiModelResource",
        resource(get_att(ids::REST_API, "RootResourceId"), "model"),
    );
    t.add(
        "ApiModelIdResource",
        resource(r("ApiModelResource"), "{modelId}"),
    );
    t.add(
        "ApiConverseResource",
        resource(r("ApiModelIdResource"), "converse"),
    );
    t.add(
        "ApiUsageResource",
        resource(get_att(ids::REST_API, "RootResourceId"), "usage"),
    );
    t.add(
        "ApiConverseMethod",
        Resource::new(
            "AWS::ApiGateway::Method",
            json!({
                "RestApiId": r(ids::REST_API),
                "ResourceId": r("ApiConverseResource"),
                "HttpMethod": "POST",
                "AuthorizationType": "CUSTOM",
                "AuthorizerId": r("ApiKeyAuthorizer"),
                "ApiKeyRequired": true,
                "RequestValidatorId": r("ApiRequestValidator"),
                "RequestModels": { "application/json": r("ConverseRequestModel") },
                "RequestParameters": { "method.request.path.modelId": true },
                "Integration": { "Type": "AWS_PROXY", "IntegrationHttpMethod": "POST", "Uri": invoke_uri.clone() }
            }),
        ),
    );
    let mut methods = vec![
        "ApiConverseMethod".to_string(),
        "ApiUsageMethod".to_string(),
    ];
    let proxy = |resource_id: &str, integration: Value| {
        Resource::new(
            "AWS::ApiGateway::Method",
            json!({
                "RestApiId": r(ids::REST_API),
                "ResourceId": r(resource_id),
                "HttpMethod": "POST",
                "AuthorizationType": "CUSTOM",
                "AuthorizerId": r("ApiKeyAuthorizer"),
                "ApiKeyRequired": true,
                "RequestParameters": { "method.request.path.modelId": true },
                "Integration": integration
            }),
        )
    };
    let express = spec.engine == Engine::StepFunctionsExpress;
    let mut routes: Vec<(&str, &str, Value)> = Vec::new();
    if express {
        crate::workflow::route_converse_to_workflow(t);
    } else {
        // InvokeModel (model-native bodies, checked by the gateway's family adapters, not by a
        // request model) and CountTokens, on the same Lambda proxy integration.
        for (id, part) in [("Invoke", "invoke"), ("CountTokens", "count-tokens")] {
            let integration = json!({ "Type": "AWS_PROXY", "IntegrationHttpMethod": "POST", "Uri": invoke_uri.clone() });
            routes.push((id, part, integration));
        }
    }
    // The streaming operations: relayed as they come through Lambda response streaming. The
    // Express engine answers whole responses only; there the function answers these paths 400
    // naming why, rather than API Gateway's bare 403 for a path it does not know.
    for (id, part) in [
        ("ConverseStream", "converse-stream"),
        ("InvokeStream", "invoke-with-response-stream"),
    ] {
        let integration = if express {
            json!({ "Type": "AWS_PROXY", "IntegrationHttpMethod": "POST", "Uri": invoke_uri.clone() })
        } else {
            json!({
                "Type": "AWS_PROXY",
                "IntegrationHttpMethod": "POST",
                "Uri": stream_uri.clone(),
                // Up to 15 minutes per stream (the function's timeout), 5 minutes idle.
                "ResponseTransferMode": "STREAM"
            })
        };
        routes.push((id, part, integration));
    }
    for (id, part, integration) in routes {
        t.add(
            format!("Api{id}Resource"),
            resource(r("ApiModelIdResource"), part),
        );
        t.add(
            format!("Api{id}Method"),
            proxy(&format!("Api{id}Resource"), integration),
        );
        methods.push(format!("Api{id}Method"));
    }
    t.add(
        "ApiUsageMethod",
        Resource::new(
            "AWS::ApiGateway::Method",
            json!({
                "RestApiId": r(ids::REST_API),
                "ResourceId": r("ApiUsageResource"),
                "HttpMethod": "GET",
                "AuthorizationType": "CUSTOM",
                "AuthorizerId": r("ApiKeyAuthorizer"),
                "ApiKeyRequired": true,
                "Integration": { "Type": "AWS_PROXY", "IntegrationHttpMethod": "POST", "Uri": invoke_uri }
            }),
        ),
    );
    let deployment = deployment_id(t);
    t.add(
        deployment.clone(),
        Resource::new(
            "AWS::ApiGateway::Deployment",
            json!({ "RestApiId": r(ids::REST_API), "Description": "tokenfence API" }),
        )
        .depends_on(methods),
    );
    t.add(
        ids::API_STAGE,
        Resource::new(
            "AWS::ApiGateway::Stage",
            json!({
                "RestApiId": r(ids::REST_API),
                "DeploymentId": r(&deployment),
                "StageName": STAGE_NAME,
                "Description": "tokenfence API stage",
                "MethodSettings": [{ "ResourcePath": "/*", "HttpMethod": "*", "ThrottlingBurstLimit": 500, "ThrottlingRateLimit": 1000, "DataTraceEnabled": false }],
                "Tags": [{ "Key": "tokenfence:stack", "Value": spec.name }]
            }),
        ),
    );
    t.add(
        "InvokeApiPermission",
        Resource::new(
            "AWS::Lambda::Permission",
            json!({
                "FunctionName": get_att(ids::INVOKE_FUNCTION, "Arn"),
                "Action": "lambda:InvokeFunction",
                "Principal": "apigateway.amazonaws.com",
                "SourceArn": sub(&format!("arn:${{AWS::Partition}}:execute-api:${{AWS::Region}}:${{AWS::AccountId}}:${{{}}}/*", ids::REST_API))
            }),
        ),
    );
}

/// The logical ID of the API's deployment: `ApiDeployment` and a fingerprint of what a
/// deployment snapshots (the API, its resources, methods, authorizer, models and validators).
/// CloudFormation never redeploys an `AWS::ApiGateway::Deployment` whose properties did not
/// change, so the stage would keep serving the old methods after an update; a new logical ID
/// makes it create a new deployment, point the stage at it and delete the old one. Applications
/// (usage plans, keys) are outside the fingerprint: adding one redeploys nothing.
fn deployment_id(t: &Template) -> String {
    const SNAPSHOT: [&str; 6] = [
        "AWS::ApiGateway::RestApi",
        "AWS::ApiGateway::Resource",
        "AWS::ApiGateway::Method",
        "AWS::ApiGateway::Authorizer",
        "AWS::ApiGateway::Model",
        "AWS::ApiGateway::RequestValidator",
    ];
    // Over the resources' JSON, in logical-ID order: deterministic across renders.
    let mut hash = crate::template::StableHasher::default();
    for (id, resource) in t
        .resources
        .iter()
        .filter(|(_, r)| SNAPSHOT.contains(&r.kind.as_str()))
    {
        let text = serde_json::to_string(&(id, resource)).expect("a resource serializes");
        hash.write(text.as_bytes());
    }
    format!("ApiDeployment{:08X}", hash.finish() >> 32)
}

fn add_alerts(t: &mut Template, spec: &Spec) {
    let names = Names::new(&spec.name);
    // CloudWatch and AWS Budgets can publish to an encrypted topic only with a customer managed
    // key whose policy lets them use it; the AWS managed SNS key does not.
    t.add(
        "AlertKey",
        Resource::new(
            "AWS::KMS::Key",
            json!({
                "Description": format!("{}: encrypts the alert topic", spec.name),
                "EnableKeyRotation": true,
                "KeyPolicy": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "AccountAdministers",
                            "Effect": "Allow",
                            "Principal": { "AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root") },
                            "Action": "kms:*",
                            "Resource": "*"
                        },
                        {
                            "Sid": "AlarmsAndBudgetsPublish",
                            "Effect": "Allow",
                            "Principal": { "Service": ["cloudwatch.amazonaws.com", "budgets.amazonaws.com"] },
                            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                            "Resource": "*",
                            // Only on behalf of this account's alarms and budgets (confused deputy).
                            "Condition": { "StringEquals": { "aws:SourceAccount": r("AWS::AccountId") } }
                        }
                    ]
                }
            }),
        ),
    );
    t.add(
        ids::ALERT_TOPIC,
        Resource::new(
            "AWS::SNS::Topic",
            json!({
                "TopicName": names.topic(),
                "KmsMasterKeyId": r("AlertKey"),
                "Tags": [{ "Key": "tokenfence:stack", "Value": spec.name }]
            }),
        ),
    );
    t.add(
        "AlertTopicPolicy",
        Resource::new(
            "AWS::SNS::TopicPolicy",
            json!({
                "Topics": [r(ids::ALERT_TOPIC)],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Sid": "AlarmsAndBudgetsPublish",
                        "Effect": "Allow",
                        "Principal": { "Service": ["cloudwatch.amazonaws.com", "budgets.amazonaws.com"] },
                        "Action": "sns:Publish",
                        "Resource": r(ids::ALERT_TOPIC),
                        "Condition": { "StringEquals": { "aws:SourceAccount": r("AWS::AccountId") } }
                    }]
                }
            }),
        ),
    );
    for email in &spec.alerts.emails {
        t.add(
            format!("AlertEmail{:016X}", stable_hash(email)),
            Resource::new(
                "AWS::SNS::Subscription",
                json!({ "TopicArn": r(ids::ALERT_TOPIC), "Protocol": "email", "Endpoint": email }),
            ),
        );
    }
}

fn add_dashboard(t: &mut Template, spec: &Spec) {
    // SEARCH expressions rather than one line per application: the body stays the same size for
    // 10 or 10,000 applications and picks up applications added later without a redeploy.
    let search = |dims: &str, metric: &str, stat: &str, id: &str| json!({ "expression": format!("SEARCH('{{TokenFence,{dims}}} MetricName=\"{metric}\"', '{stat}', 60)"), "id": id });
    let widget = |x: u32, y: u32, title: &str, metrics: Vec<Value>, extra: Value| {
        let mut properties = json!({ "title": title, "region": "${AWS::Region}", "view": "timeSeries", "stacked": false, "metrics": metrics });
        if let (Value::Object(p), Value::Object(e)) = (&mut properties, extra) {
            p.extend(e);
        }
        json!({ "type": "metric", "x": x, "y": y, "width": 12, "height": 6, "properties": properties })
    };
    // A SEARCH `{Namespace,D1,D2}` matches only metrics published under exactly that dimension
    // set, so each widget names the set the gateway's EMF records give its metric (a test in the
    // invoke crate ties the two together).
    let per_app =
        |metric: &str, stat: &str| vec![json!([search("Application", metric, stat, "e1")])];
    let gauge = |metric: &str| {
        vec![json!([search(
            "Application,Window,Limit",
            metric,
            "Maximum",
            "e1"
        )])]
    };
    let limit_lines = json!({
        "yAxis": { "left": { "min": 0 } },
        "annotations": { "horizontal": [
            { "label": "limit", "value": 100, "color": "#d62728" },
            { "label": "warning", "value": 80, "color": "#ff7f0e" }
        ] }
    });
    let body = json!({
        "widgets": [
            { "type": "text", "x": 0, "y": 0, "width": 24, "height": 2, "properties": { "markdown": format!(
                "## tokenfence `{}`\nUsage against each limit is `WindowUtilization` (percent of the limit in the current calendar window, per application, window and tokens/usd); `ProjectedUtilization` is where the burn rate ends the window. Per-request figures are sums per minute.", spec.name) } },
            widget(0, 2, "Usage against each limit (% of limit, current window)", gauge("WindowUtilization"), limit_lines.clone()),
            widget(12, 2, "Burn-rate projection at window end (% of limit)", gauge("ProjectedUtilization"), limit_lines),
            widget(0, 8, "Cost per application (USD per minute)", per_app("CostUsd", "Sum"), json!({})),
            widget(12, 8, "Tokens per application (per minute)", per_app("TotalTokens", "Sum"), json!({})),
            widget(0, 14, "Requests denied by budget", per_app("RateLimitDenied", "Sum"), json!({})),
            widget(12, 14, "Invocations failed", per_app("InvocationFailed", "Sum"), json!({})),
            widget(0, 20, "Requests approved", per_app("RateLimitApproved", "Sum"), json!({})),
            widget(12, 20, "Cost per cost center (USD per minute)", vec![json!([search("CostCenter", "CostUsd", "Sum", "e1")])], json!({}))
        ]
    });
    t.add(
        "Dashboard",
        Resource::new(
            "AWS::CloudWatch::Dashboard",
            json!({ "DashboardName": spec.name, "DashboardBody": sub(&body.to_string()) }),
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment_of(yaml: &str) -> (String, Value) {
        let spec = spec::parse("t.yaml", yaml).unwrap();
        let opts = crate::RenderOptions {
            code_dir: "code".into(),
        };
        let rendering = crate::render(&spec, &opts).unwrap();
        let template = &rendering.stacks[0].template;
        let ids: Vec<&String> = template
            .resources
            .iter()
            .filter(|(_, r)| r.kind == "AWS::ApiGateway::Deployment")
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        let stage = template.resources[ids::API_STAGE].properties["DeploymentId"].clone();
        (ids[0].clone(), stage)
    }

    const ONE: &str = "version: 1\nname: t\nmodels:\n  lite: amazon.nova-lite-v1:0\napplications:\n  a:\n    limits: [{ window: day, tokens: 100000 }]\n";

    /// The stage follows a deployment whose logical ID changes exactly when the methods do.
    #[test]
    fn the_deployment_changes_with_the_methods_and_only_then() {
        let (id, stage) = deployment_of(ONE);
        assert!(
            id.starts_with("ApiDeployment") && id.len() == "ApiDeployment".len() + 8,
            "{id}"
        );
        assert_eq!(stage, r(&id), "the stage serves this deployment");
        assert_eq!(deployment_of(ONE).0, id, "re-rendering keeps it");
        let two = format!("{ONE}  b:\n    limits: [{{ window: day, tokens: 5000 }}]\n");
        assert_eq!(
            deployment_of(&two).0,
            id,
            "an application redeploys nothing"
        );
        let express = ONE.replace("name: t\n", "name: t\nengine: step-functions-express\n");
        assert_ne!(
            deployment_of(&express).0,
            id,
            "other methods, another deployment"
        );
    }
}
