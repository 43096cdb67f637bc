//! The end-to-end scenario's moving parts: a local AWS (moto running the deployed Lambdas, the
//! Bedrock stub), and the steps a user takes with the AWS CLI: package, create or update a
//! stack, call the deployed functions, delete the stack.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{AwsCli, Moto};
use serde_json::{Value, json};

/// moto running the deployed Lambdas, the Bedrock stub they call, and clients pointed at both.
pub struct LocalAws {
    /// The Bedrock runtime stub (what the deployed invoke function calls).
    pub stub: bedrock_stub::Stub,
    /// moto, with the launcher's Lambda runtime.
    pub moto: Moto,
    /// The AWS CLI pointed at moto.
    pub aws: AwsCli,
    /// SDK configuration pointed at moto, for assertions.
    pub sdk: aws_config::SdkConfig,
    /// Scratch directory of this test.
    pub dir: PathBuf,
    uploads: std::cell::Cell<u32>,
}

impl LocalAws {
    /// Starts the stub and moto, and creates the artifacts bucket `package` uploads to.
    pub async fn start(name: &str) -> LocalAws {
        let stub = bedrock_stub::start(
            "127.0.0.1:0".parse().unwrap(),
            bedrock_stub::StubConfig::default(),
        )
        .await
        .expect("the Bedrock stub binds loopback");
        let moto = Moto::start_with_lambdas(&stub.url(), &[]);
        let aws = moto.aws();
        let sdk = moto.sdk_config().await;
        let dir = harness::target_dir().join("test-scratch/e2e").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        aws.run(&["s3", "mb", "s3://artifacts"]);
        LocalAws {
            stub,
            moto,
            aws,
            sdk,
            dir,
            uploads: std::cell::Cell::new(0),
        }
    }

    /// The README's deploy: `aws cloudformation package` (local code paths to S3 in moto), then
    /// `aws cloudformation deploy` of the packaged template (a change set, which the launcher
    /// executes as CloudFormation does). Panics unless the stack reached `CREATE_COMPLETE` /
    /// `UPDATE_COMPLETE` (or was unchanged); returns its outputs.
    pub fn deploy(&self, template: &Path, stack: &str) -> BTreeMap<String, String> {
        let (exists, output) = self.submit(template, stack);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let wanted = if stdout.contains("No changes to deploy") {
            // Nothing changed: the stack keeps the status of its last operation.
            self.settled(stack)["StackStatus"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        } else if exists {
            "UPDATE_COMPLETE".to_string()
        } else {
            "CREATE_COMPLETE".to_string()
        };
        let stack_json = self.wait_for(stack, &wanted);
        assert!(
            output.status.success(),
            "aws cloudformation deploy {stack} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        outputs_of(&stack_json)
    }

    /// The README's path for a spec: `synth render` into this test's `out/` with the Lambdas
    /// built by cargo-lambda, cfn-lint of `<stack>.yaml`, then [`LocalAws::deploy`] as `stack`.
    /// Returns the stack's outputs.
    pub fn render_lint_deploy(&self, spec: &Path, stack: &str) -> BTreeMap<String, String> {
        let artifacts = harness::lambda_artifacts();
        let out = self.dir.join("out");
        harness::synth_render(spec, &out, &artifacts);
        let template = out.join(format!("{stack}.yaml"));
        harness::cfn_lint(std::slice::from_ref(&template));
        self.deploy(&template, stack)
    }

    /// Submits a create or update that is expected to fail, waits for the stack to settle and
    /// returns its final status (`ROLLBACK_COMPLETE`, `UPDATE_ROLLBACK_COMPLETE`, ...).
    pub fn deploy_failing(&self, template: &Path, stack: &str) -> String {
        let (_, output) = self.submit(template, stack);
        assert!(
            !output.status.success(),
            "aws cloudformation deploy {stack} succeeded"
        );
        self.settled(stack)["StackStatus"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every request the launcher's CloudFormation sent to custom resources, in order
    /// (RequestType, LogicalResourceId, PhysicalResourceId, ResourceProperties,
    /// OldResourceProperties).
    pub async fn cfn_requests(&self) -> Vec<Value> {
        self.moto.cfn_requests().await
    }

    /// Packages the template and runs `aws cloudformation deploy`; returns whether the stack
    /// existed (an update) and the command's output.
    fn submit(&self, template: &Path, stack: &str) -> (bool, std::process::Output) {
        let n = self.uploads.get() + 1;
        self.uploads.set(n);
        let packaged = self.dir.join(format!("{stack}-{n}.packaged.yaml"));
        self.aws.run(&[
            "cloudformation",
            "package",
            "--template-file",
            path(template),
            "--s3-bucket",
            "artifacts",
            "--output-template-file",
            path(&packaged),
        ]);
        let exists = self
            .aws
            .command(&["cloudformation", "describe-stacks", "--stack-name", stack])
            .output()
            .expect("aws runs")
            .status
            .success();
        // The README's command (a change set, executed and waited for), plus
        // `--no-fail-on-empty-changeset` for the tests that re-deploy an unchanged stack.
        let output = self
            .aws
            .command(&[
                "cloudformation",
                "deploy",
                "--template-file",
                path(&packaged),
                "--s3-bucket",
                "artifacts",
                "--stack-name",
                stack,
                "--capabilities",
                "CAPABILITY_IAM",
                "--no-fail-on-empty-changeset",
            ])
            .output()
            .expect("aws runs");
        (exists, output)
    }

    /// Polls `describe-stacks` until the stack leaves `*_IN_PROGRESS` (180 s at most).
    fn settled(&self, stack: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let described =
                self.aws
                    .json(&["cloudformation", "describe-stacks", "--stack-name", stack]);
            let current = described["Stacks"][0].clone();
            let status = current["StackStatus"].as_str().unwrap_or_default();
            if !status.ends_with("_IN_PROGRESS") || Instant::now() > deadline {
                return current;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls `describe-stacks` until the stack leaves `*_IN_PROGRESS`; panics with its events
    /// unless it reached `wanted`.
    pub fn wait_for(&self, stack: &str, wanted: &str) -> Value {
        let current = self.settled(stack);
        let status = current["StackStatus"].as_str().unwrap_or_default();
        if status != wanted {
            let events = self.aws.run(&[
                "cloudformation",
                "describe-stack-events",
                "--stack-name",
                stack,
            ]);
            panic!(
                "stack {stack} is {status}, not {wanted}; events:\n{events}\nmoto's log: {}",
                Moto::log_path(self.moto.port).display()
            );
        }
        current
    }

    /// `aws cloudformation delete-stack`, then waits until the stack is gone.
    pub fn delete(&self, stack: &str) {
        self.aws
            .run(&["cloudformation", "delete-stack", "--stack-name", stack]);
        let deadline = Instant::now() + Duration::from_secs(120);
        while self
            .aws
            .command(&["cloudformation", "describe-stacks", "--stack-name", stack])
            .output()
            .expect("aws runs")
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "stack {stack} still exists 120 s after delete-stack"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `aws lambda invoke FUNCTION` with `event`; returns the function's response payload.
    pub fn invoke(&self, function: &str, event: &Value) -> Value {
        let n = self.uploads.get() + 1;
        self.uploads.set(n);
        let input = self.dir.join(format!("event-{n}.json"));
        let output = self.dir.join(format!("response-{n}.json"));
        std::fs::write(&input, serde_json::to_vec(event).unwrap()).unwrap();
        let meta = self.aws.json(&[
            "lambda",
            "invoke",
            "--function-name",
            function,
            "--payload",
            &format!("fileb://{}", input.display()),
            path(&output),
        ]);
        let payload = std::fs::read_to_string(&output).expect("lambda invoke wrote the payload");
        assert!(
            meta.get("FunctionError").is_none(),
            "{function} failed: {payload} (moto's log: {})",
            Moto::log_path(self.moto.port).display()
        );
        serde_json::from_str(&payload)
            .unwrap_or_else(|e| panic!("{function} answered no JSON ({e}): {payload}"))
    }

    /// Lambda's InvokeWithResponseStream of `function` with `event` (boto3, as API Gateway's
    /// `STREAM` integrations call it); returns the streamed bytes, with every chunk relayed.
    pub fn invoke_stream(&self, function: &str, event: &Value) -> Vec<u8> {
        let n = self.uploads.get() + 1;
        self.uploads.set(n);
        let input = self.dir.join(format!("event-{n}.json"));
        let output = self.dir.join(format!("stream-{n}.bin"));
        std::fs::write(&input, serde_json::to_vec(event).unwrap()).unwrap();
        let script = harness::repo().join("tests/tools/lambda_stream.py");
        let out = self
            .aws
            .python(&[path(&script), function, path(&input), path(&output)])
            .output()
            .expect("the venv's python runs");
        assert!(
            out.status.success(),
            "InvokeWithResponseStream of {function} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value =
            serde_json::from_slice(&out.stdout).expect("lambda_stream.py prints JSON");
        assert_eq!(meta["StatusCode"], 200, "{meta}");
        assert_eq!(
            meta["InvokeComplete"],
            json!({}),
            "{function} failed mid-stream: {meta} (moto's log: {})",
            Moto::log_path(self.moto.port).display()
        );
        // Relayed as the function wrote it: the prelude, its delimiter and the events arrive as
        // chunks of their own, not as one answer at the end.
        assert!(
            meta["Chunks"].as_u64().unwrap() >= 3,
            "{function} answered in one piece: {meta}"
        );
        std::fs::read(&output).expect("lambda_stream.py wrote the stream")
    }

    /// An application's API key as API Gateway knows it: (id, value).
    pub fn api_key(&self, name: &str) -> (String, String) {
        let keys = self
            .aws
            .json(&["apigateway", "get-api-keys", "--include-values"]);
        let key = keys["items"]
            .as_array()
            .and_then(|items| items.iter().find(|k| k["name"] == name))
            .unwrap_or_else(|| panic!("no API key named {name}: {keys}"));
        (
            key["id"].as_str().unwrap().into(),
            key["value"].as_str().unwrap().into(),
        )
    }

    /// The function's deployed code hash, to show an update did not rebuild it.
    pub fn code_sha(&self, function: &str) -> String {
        self.aws.json(&[
            "lambda",
            "get-function-configuration",
            "--function-name",
            function,
        ])["CodeSha256"]
            .as_str()
            .expect("CodeSha256")
            .to_string()
    }

    /// The function's log lines in moto's CloudWatch Logs.
    pub fn log_lines(&self, function: &str) -> Vec<String> {
        let events = self.aws.json(&[
            "logs",
            "filter-log-events",
            "--log-group-name",
            &format!("/aws/lambda/{function}"),
        ]);
        events["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["message"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Custom resource requests (as [`LocalAws::cfn_requests`] lists them) as
/// `(RequestType, LogicalResourceId, PhysicalResourceId)`, the physical ID empty for a Create.
pub fn request_summary(requests: &[Value]) -> Vec<(String, String, String)> {
    requests
        .iter()
        .map(|r| {
            (
                r["RequestType"].as_str().unwrap().to_string(),
                r["LogicalResourceId"].as_str().unwrap().to_string(),
                r["PhysicalResourceId"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// A stack's outputs, by key.
fn outputs_of(stack: &Value) -> BTreeMap<String, String> {
    stack["Outputs"]
        .as_array()
        .map(|outputs| {
            outputs
                .iter()
                .map(|o| {
                    (
                        o["OutputKey"].as_str().unwrap().to_string(),
                        o["OutputValue"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// API Gateway's proxy event for `POST /model/{model}/converse`, as the REST API's Lambda proxy
/// integration sends it for a request authenticated with an API key (the recorded fixture with
/// this key and body).
pub fn api_event(key: &(String, String), model: &str, body: &Value) -> Value {
    let fixture = harness::repo().join("crates/invoke/tests/fixtures/apigw-converse.json");
    let mut event: Value =
        serde_json::from_slice(&std::fs::read(&fixture).expect("fixture")).expect("fixture JSON");
    event["path"] = json!(format!("/model/{model}/converse"));
    event["requestContext"]["path"] = json!(format!("/v1/model/{model}/converse"));
    event["pathParameters"] = json!({ "modelId": model });
    event["headers"]["x-api-key"] = json!(key.1);
    event["multiValueHeaders"]["x-api-key"] = json!([key.1]);
    event["requestContext"]["identity"]["apiKey"] = json!(key.1);
    event["requestContext"]["identity"]["apiKeyId"] = json!(key.0);
    event["body"] = json!(body.to_string());
    event
}

/// An AWS Budget's notifications as (type, threshold) pairs, as a user lists them.
pub async fn budget_notifications(
    budgets: &aws_sdk_budgets::Client,
    name: &str,
) -> std::collections::BTreeSet<(String, u64)> {
    budgets
        .describe_notifications_for_budget()
        .account_id("123456789012")
        .budget_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("notifications of budget {name}: {e:?}"))
        .notifications()
        .iter()
        .map(|n| {
            (
                n.notification_type().as_str().to_string(),
                n.threshold() as u64,
            )
        })
        .collect()
}

/// A Converse request body with one user message.
pub fn converse(text: &str, max_tokens: u64) -> Value {
    json!({
        "messages": [{ "role": "user", "content": [{ "text": text }] }],
        "inferenceConfig": { "maxTokens": max_tokens }
    })
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The most tokens `app` has used in any of its current windows, as the ledger in moto holds them.
pub async fn used_tokens(ledger: &ledger::DynamoLedger, app: &str) -> u64 {
    use ledger::Ledger;
    let config = ledger.budget(app).await.unwrap().expect("budget");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    ledger
        .usage(app, None, &config.limits, now)
        .await
        .unwrap()
        .iter()
        .map(|u| u.used.tokens)
        .max()
        .unwrap_or(0)
}

/// A streamed answer in API Gateway's response-streaming format, read: the prelude's status and
/// headers (the JSON before eight NUL bytes), and the body after them.
pub fn split_prelude(streamed: &[u8]) -> (Value, Vec<u8>) {
    let at = streamed
        .windows(8)
        .position(|w| w == [0u8; 8])
        .unwrap_or_else(|| {
            panic!(
                "no prelude delimiter in {}",
                String::from_utf8_lossy(streamed)
            )
        });
    let prelude = serde_json::from_slice(&streamed[..at]).expect("a JSON prelude");
    (prelude, streamed[at + 8..].to_vec())
}
