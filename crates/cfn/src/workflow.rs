//! The Step Functions Express engine (`engine: step-functions-express`).
//!
//! An Express state machine runs each request: a `Reserve` step (the invoke function, in its step
//! role) admits the request against its budgets, a `Converse` state calls Bedrock through the
//! `aws-sdk:bedrockruntime:converse` service integration, and a `Settle` step settles to the actual
//! usage, emits the metrics and builds the answer. The wait for the model is billed as Express
//! duration at 64 MB instead of Lambda time; `synth estimate` says from which latency that pays.
//!
//! Why `aws-sdk:bedrockruntime:converse` and not the optimized `bedrock:invokeModel`: InvokeModel
//! takes each provider's own body and reports usage in each provider's own fields, so clients would
//! lose the Converse contract and the settle step would parse per-provider usage; Converse has one
//! request and answer shape for every model, cache tokens included.
//!
//! The definition uses JSONata, so the Converse parameters the reserve step prepared pass through
//! whole (`"Arguments": "{% $states.input.converse %}"`): JSONPath `Parameters` can only name fixed
//! fields, and a Converse request has optional ones.

use serde_json::{Value, json};
use spec::Spec;
use spec::names::Names;

use crate::platform::{LOG_RETENTION_DAYS, exports, ids};
use crate::template::{Resource, Template, get_att, r, sub};

/// Seconds Bedrock may take before the workflow gives up on it.
pub const CONVERSE_TIMEOUT_SECONDS: u32 = 120;

/// The transient errors of the invoke function itself, retried as AWS advises for Lambda tasks.
const LAMBDA_TRANSIENT: &[&str] = &[
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
];

fn step(next: &str) -> Value {
    json!({
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Arguments": { "FunctionName": "${InvokeFunctionArn}", "Payload": "{% $states.input %}" },
        "Output": "{% $states.result.Payload %}",
        "Retry": [{ "ErrorEquals": LAMBDA_TRANSIENT, "IntervalSeconds": 1, "MaxAttempts": 3, "BackoffRate": 2, "JitterStrategy": "FULL" }],
        "Next": next
    })
}

/// What the settle step is given: the reserve step's ticket and what Converse answered or raised.
fn settle_input(with: &str) -> String {
    format!(
        "{{% {{'action': 'settle', 'front': $states.input.front, 'requestId': $states.input.requestId, 'ticket': $states.input.ticket, 'queue': $states.input.queue, {with}}} %}}"
    )
}

/// The state machine definition, with `${InvokeFunctionArn}` for `Fn::Sub` to fill in.
pub fn definition(spec: &Spec) -> Value {
    json!({
        "Comment": format!("tokenfence `{}`: reserve the worst case in the ledger, call Bedrock Converse, settle to the actual usage", spec.name),
        "QueryLanguage": "JSONata",
        "TimeoutSeconds": CONVERSE_TIMEOUT_SECONDS + 60,
        "StartAt": "Reserve",
        "States": {
            "Reserve": step("Admitted"),
            "Admitted": {
                "Type": "Choice",
                "Choices": [{ "Condition": "{% $states.input.next = 'converse' %}", "Next": "Converse" }],
                "Default": "Answer"
            },
            "Converse": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:bedrockruntime:converse",
                "Arguments": "{% $states.input.converse %}",
                "TimeoutSeconds": CONVERSE_TIMEOUT_SECONDS,
                "Output": settle_input("'output': $states.result"),
                "Retry": [{
                    "ErrorEquals": ["BedrockRuntime.ThrottlingException", "BedrockRuntime.ServiceUnavailableException", "BedrockRuntime.ModelNotReadyException"],
                    "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 2, "JitterStrategy": "FULL"
                }],
                // Every failure is settled: refunded only when Bedrock refused the call, charged at
                // the worst case otherwise (the settle step classifies it). `States.ALL` does not
                // catch `States.DataLimitExceeded`, and a timeout is named too, so both have their
                // own catchers (the answer that was too large is not passed on). What no catcher
                // can reach (the execution's own timeout, a settle step that keeps failing) leaves
                // the reservation held, and the sweeper charges it at its worst case.
                "Catch": [
                    { "ErrorEquals": ["States.DataLimitExceeded"], "Output": settle_input("'error': {'Error': 'States.DataLimitExceeded', 'Cause': 'the answer was larger than Step Functions passes between states'}"), "Next": "Settle" },
                    { "ErrorEquals": ["States.Timeout"], "Output": settle_input("'error': {'Error': 'States.Timeout', 'Cause': 'Bedrock did not answer in time'}"), "Next": "Settle" },
                    { "ErrorEquals": ["States.ALL"], "Output": settle_input("'error': $states.errorOutput"), "Next": "Settle" }
                ],
                "Next": "Settle"
            },
            "Settle": step("Answer"),
            "Answer": {
                "Type": "Choice",
                "Choices": [{ "Condition": "{% $states.input.next = 'reply' %}", "Next": "Reply" }],
                "Default": "Done"
            },
            "Reply": { "Type": "Succeed", "Output": "{% $states.input.reply %}" },
            "Done": { "Type": "Succeed", "Output": "{% {} %}" }
        }
    })
}

/// States an approved request passes through (what Standard workflows bill per transition):
/// Reserve, Admitted, Converse, Settle, Answer, Reply.
pub const HAPPY_PATH_STATES: u64 = 6;

/// A role trust policy for an AWS service acting for this account only (confused-deputy guard).
fn service_trust(service: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Principal": { "Service": service }, "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "aws:SourceAccount": r("AWS::AccountId") } } }]
    })
}

/// Adds the state machine, its role and log group (and the pipes' role with the queue front).
pub fn add_workflow(t: &mut Template, spec: &Spec, model_arns: Vec<Value>) {
    let names = Names::new(&spec.name);
    let prefix = spec.name.as_str();
    let export = |what: &str| Some(exports::name(prefix, what));
    let machine_name = names.function("workflow");
    t.add(
        "WorkflowLogGroup",
        Resource::new(
            "AWS::Logs::LogGroup",
            json!({ "LogGroupName": format!("/aws/vendedlogs/states/{machine_name}"), "RetentionInDays": LOG_RETENTION_DAYS }),
        ),
    );
    t.add(
        "WorkflowRole",
        Resource::new(
            "AWS::IAM::Role",
            json!({
                "AssumeRolePolicyDocument": service_trust("states.amazonaws.com"),
                "Policies": [{
                    "PolicyName": "tokenfence-workflow",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            { "Effect": "Allow", "Action": ["lambda:InvokeFunction"], "Resource": [get_att(ids::INVOKE_FUNCTION, "Arn")] },
                            { "Effect": "Allow", "Action": ["bedrock:InvokeModel"], "Resource": model_arns },
                            crate::platform::own_profiles_statement(&spec.name, &["bedrock:InvokeModel"]),
                            {
                                "Effect": "Allow",
                                // Log delivery for Step Functions is configured on `*`; AWS documents no narrower resource.
                                "Action": ["logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"],
                                "Resource": "*"
                            }
                        ]
                    }
                }]
            }),
        ),
    );
    t.add(
        ids::WORKFLOW,
        Resource::new(
            "AWS::StepFunctions::StateMachine",
            json!({
                "StateMachineName": machine_name,
                "StateMachineType": "EXPRESS",
                "RoleArn": get_att("WorkflowRole", "Arn"),
                "DefinitionString": {
                    "Fn::Sub": [
                        serde_json::to_string_pretty(&definition(spec)).expect("a definition serializes"),
                        { "InvokeFunctionArn": get_att(ids::INVOKE_FUNCTION, "Arn") }
                    ]
                },
                // Errors only, and never execution data: the data holds the prompts.
                "LoggingConfiguration": {
                    "Level": "ERROR",
                    "IncludeExecutionData": false,
                    "Destinations": [{ "CloudWatchLogsLogGroup": { "LogGroupArn": get_att("WorkflowLogGroup", "Arn") } }]
                },
                "Tags": [{ "Key": "tokenfence:stack", "Value": prefix }]
            }),
        ),
    );
    t.output(
        "WorkflowArn",
        "The budget workflow (Step Functions Express)",
        r(ids::WORKFLOW),
        export(exports::WORKFLOW_ARN),
    );
    if spec.access.queue {
        t.add(
            ids::PIPE_ROLE,
            Resource::new(
                "AWS::IAM::Role",
                json!({
                    "AssumeRolePolicyDocument": service_trust("pipes.amazonaws.com"),
                    "Policies": [{
                        "PolicyName": "tokenfence-pipes",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Effect": "Allow",
                                    "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
                                    "Resource": [sub(&format!("arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{prefix}-*-requests"))]
                                },
                                { "Effect": "Allow", "Action": ["states:StartSyncExecution"], "Resource": [r(ids::WORKFLOW)] }
                            ]
                        }
                    }]
                }),
            ),
        );
        t.output(
            "PipeRoleArn",
            "Role of the pipes from the request queues to the workflow",
            get_att(ids::PIPE_ROLE, "Arn"),
            export(exports::PIPE_ROLE_ARN),
        );
    }
}

/// The API Gateway request template: the execution input names the caller by the API key API
/// Gateway authenticated; model and body travel base64-encoded because a template cannot escape
/// arbitrary text into JSON safely.
pub const START_TEMPLATE: &str = r#"{"stateMachineArn": "${Workflow}", "name": "$context.requestId", "input": "{\"action\": \"reserve\", \"apiKeyId\": \"$context.identity.apiKeyId\", \"requestId\": \"$context.requestId\", \"modelBase64\": \"$util.base64Encode($input.params('modelId'))\", \"bodyBase64\": \"$util.base64Encode($input.body)\"}"}"#;

/// The API Gateway response template: the workflow's answer (status, headers, JSON body text), or
/// 502 when the execution itself failed.
pub const ANSWER_TEMPLATE: &str = r#"#set($status = $input.path('$.status'))
#if($status == "SUCCEEDED")
#set($out = $util.parseJson($input.path('$.output')))
#set($context.responseOverride.status = $out.statusCode)
#foreach($name in $out.headers.keySet())
#set($context.responseOverride.header[$name] = $out.headers.get($name))
#end
$out.body
#else
#set($context.responseOverride.status = 502)
{"error": "WorkflowFailed", "message": "the budget workflow ended $status"}
#end"#;

/// Points `POST /model/{modelId}/converse` at the workflow (`StartSyncExecution`), with a role
/// allowed to start it and nothing else.
pub fn route_converse_to_workflow(t: &mut Template) {
    t.add(
        "ApiWorkflowRole",
        Resource::new(
            "AWS::IAM::Role",
            json!({
                "AssumeRolePolicyDocument": service_trust("apigateway.amazonaws.com"),
                "Policies": [{
                    "PolicyName": "tokenfence-api-workflow",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{ "Effect": "Allow", "Action": ["states:StartSyncExecution"], "Resource": [r(ids::WORKFLOW)] }]
                    }
                }]
            }),
        ),
    );
    let method = t
        .resources
        .get_mut("ApiConverseMethod")
        .expect("the REST API has a converse method");
    method.properties["Integration"] = json!({
        "Type": "AWS",
        "IntegrationHttpMethod": "POST",
        "Uri": sub("arn:${AWS::Partition}:apigateway:${AWS::Region}:states:action/StartSyncExecution"),
        "Credentials": get_att("ApiWorkflowRole", "Arn"),
        "PassthroughBehavior": "NEVER",
        "RequestTemplates": { "application/json": sub(START_TEMPLATE) },
        "IntegrationResponses": [{ "StatusCode": "200", "ResponseTemplates": { "application/json": ANSWER_TEMPLATE } }]
    });
    method.properties["MethodResponses"] = json!([{ "StatusCode": "200" }]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        spec::parse(
            "t.yaml",
            "version: 1\nname: t\nengine: step-functions-express\nmodels:\n  lite: amazon.nova-lite-v1:0\napplications:\n  a:\n    limits: [{ window: day, tokens: 100000 }]\n",
        )
        .unwrap()
    }

    /// Walks the definition from `StartAt` along the approved path: the states Standard would bill.
    #[test]
    fn the_happy_path_has_the_counted_states() {
        let d = definition(&spec());
        let states = &d["States"];
        let mut at = d["StartAt"].as_str().unwrap().to_string();
        let mut path = vec![at.clone()];
        loop {
            let state = &states[&at];
            let next = match state["Type"].as_str().unwrap() {
                "Choice" => state["Choices"][0]["Next"].as_str(),
                "Succeed" | "Fail" => None,
                _ => state["Next"].as_str(),
            };
            let Some(next) = next else { break };
            at = next.to_string();
            path.push(at.clone());
        }
        assert_eq!(
            path,
            [
                "Reserve", "Admitted", "Converse", "Settle", "Answer", "Reply"
            ]
        );
        assert_eq!(path.len() as u64, HAPPY_PATH_STATES);
    }

    /// Every failure of the Bedrock call goes to the settle step (a reservation is always
    /// settled or refunded), and execution data (prompts) is never logged.
    #[test]
    fn failures_are_settled_and_prompts_not_logged() {
        let d = definition(&spec());
        let catchers = d["States"]["Converse"]["Catch"].as_array().unwrap();
        let caught: Vec<&Value> = catchers.iter().map(|c| &c["ErrorEquals"][0]).collect();
        assert_eq!(
            caught,
            [
                &json!("States.DataLimitExceeded"),
                &json!("States.Timeout"),
                &json!("States.ALL")
            ],
            "the errors States.ALL misses first, States.ALL last (as Step Functions requires)"
        );
        for catch in catchers {
            assert_eq!(catch["Next"], "Settle");
            assert!(catch["Output"].as_str().unwrap().contains("'error':"));
        }
        assert!(
            catchers[2]["Output"]
                .as_str()
                .unwrap()
                .contains("'error': $states.errorOutput")
        );
        let mut t = Template::default();
        add_workflow(
            &mut t,
            &spec(),
            vec![json!("arn:aws:bedrock:*::foundation-model/x")],
        );
        let logging = &t.resources[ids::WORKFLOW].properties["LoggingConfiguration"];
        assert_eq!(logging["IncludeExecutionData"], false);
        assert_eq!(
            t.resources[ids::WORKFLOW].properties["StateMachineType"],
            "EXPRESS"
        );
    }
}
