//! Test infrastructure shared by the workspace's integration tests.
//!
//! Everything here fails loudly: a test that needs moto or cfn-lint and cannot get it panics with
//! the reason; nothing is skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root: the nearest directory above the running test's package (cargo sets
/// `CARGO_MANIFEST_DIR` when it runs a test) that holds `Cargo.lock`. Read at run time, not
/// baked in with `env!`: a test binary a shared target directory kept from another checkout
/// must still read this checkout's files.
pub fn repo() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .expect("CARGO_MANIFEST_DIR is set: run the tests with cargo test");
    package
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or_else(|| panic!("no workspace root above {}", package.display()))
        .canonicalize()
        .expect("the workspace root exists")
}

/// The test tools' venv (moto, AWS CLI, cfn-lint, cargo-lambda), installed by
/// `tests/tools/ensure-venv.sh` when missing or stale.
pub fn venv() -> PathBuf {
    let script = repo().join("tests/tools/ensure-venv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "cannot install the test tools with {}:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

/// A free TCP port on loopback (bound and released; moto binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .expect("address")
        .port()
}

/// The keys `tests/clients/clients.py` calls with: one per application of the clients' spec
/// (`agents`, `tight`, `priced`, `agent`; the same spec served by `invoke serve` and deployed).
pub struct ClientKeys<'a> {
    /// Key of `agents`: every model, a large token limit.
    pub agents: &'a str,
    /// Key of `tight`: a limit too small for the over-budget requests.
    pub tight: &'a str,
    /// Key of `priced`: a USD limit.
    pub priced: &'a str,
    /// Key of `agent`: the coding-agent session's budget.
    pub agent: &'a str,
}

/// Runs `tests/clients/clients.py CLIENT` (real clients from PyPI, pinned in the venv) against
/// the gateway at `endpoint` (HTTPS: botocore sends bearer keys to HTTPS endpoints only),
/// trusting the certificate `ca`; panics unless every check in it passed, and returns the JSON
/// object of what it saw.
pub fn run_client(client: &str, endpoint: &str, ca: &Path, keys: &ClientKeys) -> serde_json::Value {
    let python = venv().join("bin/python");
    let script = repo().join("tests/clients/clients.py");
    let output = Command::new(&python)
        .arg(&script)
        .args([client, endpoint, keys.agents, keys.tight])
        .env("AWS_CA_BUNDLE", ca)
        .env("SSL_CERT_FILE", ca)
        .env("PRICED_KEY", keys.priced)
        .env("AGENT_KEY", keys.agent)
        .env("NO_PROXY", "127.0.0.1")
        .env("OTEL_SDK_DISABLED", "true")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "{client} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let line = output
        .stdout
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("{client} printed nothing"));
    serde_json::from_slice(line).expect("the script prints JSON")
}

/// Runs cfn-lint, with tokenfence's security rules (`tests/security/rules`) appended, on
/// `templates` and panics with its findings unless it reports none.
///
/// W3002 ("may only work with the package command") is the point of the local code paths: the
/// README deploys through `aws cloudformation package`.
pub fn cfn_lint(templates: &[PathBuf]) {
    let out = cfn_lint_output(templates);
    assert!(
        out.status.success(),
        "cfn-lint found problems (exit {:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// cfn-lint's raw result on `templates`, security rules included.
pub fn cfn_lint_output(templates: &[PathBuf]) -> std::process::Output {
    assert!(!templates.is_empty(), "no templates to lint");
    let lint = venv().join("bin/cfn-lint");
    Command::new(&lint)
        .arg("--append-rules")
        .arg(repo().join("tests/security/rules"))
        .args(["--ignore-checks", "W3002", "--"])
        .args(templates)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", lint.display()))
}

/// A moto server on a free loopback port, stopped when dropped.
pub struct Moto {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Moto {
    /// Starts moto (`tests/tools/moto_launcher.py`: moto plus UpdateBudget) handling requests
    /// concurrently, as `moto_server` does, and waits until it answers.
    pub fn start() -> Moto {
        Self::launch_with(false)
    }

    /// Starts moto answering one request at a time: moto's transactions are not isolated between
    /// concurrent requests, DynamoDB's are. Use it for tests whose subject is concurrency on the
    /// ledger (the launcher's docstring says how that was measured).
    pub fn start_serialized() -> Moto {
        Self::launch_with(true)
    }

    /// Starts moto able to run Lambda functions: each invocation (Invoke API, custom resources,
    /// SQS event source mappings) runs the function's deployed `bootstrap` against a Lambda
    /// Runtime API of its own, with the function's environment plus `lambda_env` (what the
    /// sandbox's network provides), and with credentials of the function's own role: every
    /// call the function makes to moto or to Bedrock is authorized against that role's policies
    /// (`tests/tools/iam_check.py`; see [`Moto::iam_calls`]). Bedrock runtime calls are
    /// forwarded to `bedrock` (the stub) once authorized. The launcher's docstring lists what
    /// else it adds to moto's CloudFormation.
    pub fn start_with_lambdas(bedrock: &str, lambda_env: &[(&str, &str)]) -> Moto {
        let venv = venv();
        let port = free_port();
        let mut command = Self::command(&venv, port);
        command.args(["--bedrock", bedrock]);
        for (key, value) in lambda_env {
            command.args(["--lambda-env", &format!("{key}={value}")]);
        }
        Self::launch(command, port, &venv)
    }

    fn command(venv: &Path, port: u16) -> Command {
        let mut command = Command::new(venv.join("bin/python"));
        command
            .arg(repo().join("tests/tools/moto_launcher.py"))
            .args(["127.0.0.1", &port.to_string()]);
        command
    }

    fn launch_with(serial: bool) -> Moto {
        let venv = venv();
        let port = free_port();
        let mut command = Self::command(&venv, port);
        if serial {
            command.arg("--serial");
        }
        Self::launch(command, port, &venv)
    }

    fn launch(mut command: Command, port: u16, venv: &Path) -> Moto {
        // moto's log and its temporary files (the launcher unpacks deployed Lambda code there) live
        // in a directory of this instance, removed when it stops unless a test failed.
        let dir = Self::dir(port);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp")).expect("moto's directory");
        let log = std::fs::File::create(Self::log_path(port)).expect("moto log file");
        let child = command
            .env("TMPDIR", dir.join("tmp"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server from {}: {e}", venv.display()));
        let mut moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited before it was ready: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn dir(port: u16) -> PathBuf {
        std::env::temp_dir().join(format!("tokenfence-moto-{port}"))
    }

    /// Where this moto's log is written (kept after a failing test).
    pub fn log_path(port: u16) -> PathBuf {
        Self::dir(port).join("moto.log")
    }

    /// The AWS CLI (pinned, from the venv) pointed at this moto.
    pub fn aws(&self) -> AwsCli {
        AwsCli {
            program: venv().join("bin/aws"),
            endpoint: self.url(),
        }
    }

    /// The endpoint URL, for `AWS_ENDPOINT_URL`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK configuration pointed at this moto with dummy credentials, the same way the
    /// product reads it (the standard endpoint configuration), without touching process env.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config_at(&self.url()).await
    }

    /// Every call a deployed function made with its role's credentials so far, as IAM saw it:
    /// the action, the resource ARN and whether the role's policies allowed it (a denied call
    /// was answered AccessDenied).
    pub async fn iam_calls(&self) -> Vec<IamCall> {
        let body: serde_json::Value = reqwest::get(format!("{}/_tokenfence/iam", self.url()))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the launcher lists the calls it authorized")
            .json()
            .await
            .expect("a JSON list of calls");
        serde_json::from_value(body["calls"].clone()).expect("calls of the launcher's shape")
    }

    /// A deployed REST API as the launcher serves it (`tests/tools/apigw.py`): a stack's
    /// `ApiUrl` output (`https://{id}.execute-api.{region}.amazonaws.com/{stage}`) becomes
    /// `https://127.0.0.1:PORT/{id}/{stage}`; returned with the certificate to trust for it.
    pub async fn rest_api(&self, api_url: &str) -> (String, PathBuf) {
        let (id, stage) = api_url
            .strip_prefix("https://")
            .and_then(|rest| rest.split_once(".execute-api."))
            .and_then(|(id, rest)| Some((id, rest.split_once('/')?.1)))
            .unwrap_or_else(|| panic!("not a REST API URL: {api_url}"));
        let body: serde_json::Value = reqwest::get(format!("{}/_tokenfence/apigw", self.url()))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the launcher serves the deployed REST APIs")
            .json()
            .await
            .expect("JSON");
        let root = body["url"].as_str().expect("url");
        let ca = body["ca"].as_str().expect("ca");
        (format!("{root}/{id}/{stage}"), PathBuf::from(ca))
    }

    /// Every request the launcher's CloudFormation sent to custom resources, in order.
    pub async fn cfn_requests(&self) -> Vec<serde_json::Value> {
        let body: serde_json::Value =
            reqwest::get(format!("{}/_tokenfence/cfn-requests", self.url()))
                .await
                .and_then(reqwest::Response::error_for_status)
                .expect("the launcher lists the custom resource requests")
                .json()
                .await
                .expect("JSON");
        body["requests"].as_array().cloned().unwrap_or_default()
    }

    /// Asserts that the deployed functions' roles allowed every call they made, and that among
    /// those calls were all of `expected` (`(action, resource ARN substring)`): a role missing a
    /// permission the code needs fails here, and so does a test that stopped exercising it.
    pub async fn assert_roles_allowed(&self, expected: &[(&str, &str)]) -> Vec<IamCall> {
        let calls = self.iam_calls().await;
        let denied: Vec<_> = calls.iter().filter(|c| !c.allowed).collect();
        assert!(
            denied.is_empty(),
            "the functions' roles denied calls the code makes (fix the rendered roles): {denied:#?}"
        );
        for (action, resource) in expected {
            assert!(
                calls
                    .iter()
                    .any(|c| c.action == *action && c.resource.contains(resource)),
                "no `{action}` call on a resource containing `{resource}` was made; calls: {calls:#?}"
            );
        }
        calls
    }

    /// Stops moto (as a crash would), for fault tests.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call a deployed function made with its role's credentials, as the launcher's IAM saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct IamCall {
    /// The role whose credentials signed the call.
    pub role: String,
    /// The IAM action, e.g. `dynamodb:BatchGetItem`.
    pub action: String,
    /// The resource ARN the action was authorized on.
    pub resource: String,
    /// Whether the role's policies allowed it.
    pub allowed: bool,
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(Self::dir(self.port));
        }
    }
}

/// Creates a ledger table shaped like the rendered one (the ledger's own definition).
pub async fn create_ledger_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    ledger::DynamoLedger::new(client.clone(), name)
        .create_table()
        .await
        .expect("CreateTable on moto");
}

/// The AWS CLI pointed at moto through the standard `AWS_ENDPOINT_URL`, as a user would run it.
pub struct AwsCli {
    program: PathBuf,
    endpoint: String,
}

impl AwsCli {
    /// Runs `aws ARGS` and returns stdout; panics with stderr when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        assert!(
            out.status.success(),
            "`aws {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs `aws ARGS --output json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.run(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`aws {}` printed no JSON ({e}): {out}", args.join(" ")))
    }

    /// The command, for callers that need its exit status.
    pub fn command(&self, args: &[&str]) -> Command {
        self.with_env(Command::new(&self.program), args)
    }

    /// The venv's Python (boto3 and the test tools) with the same endpoint and credentials.
    pub fn python(&self, args: &[&str]) -> Command {
        self.with_env(Command::new(self.program.with_file_name("python")), args)
    }

    fn with_env(&self, mut command: Command, args: &[&str]) -> Command {
        command
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_PAGER", "")
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null());
        command
    }
}

/// Cargo's target directory for this build.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { repo().join(p) })
        .unwrap_or_else(|| repo().join("target"))
}

/// A `cargo` command for nested builds (synth, cargo-lambda). They use a target directory of
/// their own under the build's: the outer `cargo test` may still hold the lock on its own.
pub fn nested_cargo() -> Command {
    let venv = venv();
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![venv.join("bin")];
    paths.extend(std::env::split_paths(&path));
    command
        .current_dir(repo())
        .env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("CARGO_TARGET_DIR", target_dir().join("nested"));
    command
}

/// Builds both Lambdas the way the README says (`cargo lambda build --release --target
/// x86_64-unknown-linux-gnu.2.17`) once per test run, and returns the directory holding
/// `provider/bootstrap` and `invoke/bootstrap` (synth's `--artifacts`).
pub fn lambda_artifacts() -> PathBuf {
    let dir = target_dir().join("nested/lambda");
    std::fs::create_dir_all(target_dir().join("nested")).expect("nested target dir");
    let lock =
        std::fs::File::create(target_dir().join("nested/.lambda-build.lock")).expect("lock file");
    lock.lock().expect("lock the lambda build");
    // Cargo decides whether anything changed; a warm build takes a second.
    let out = nested_cargo()
        .args([
            "lambda",
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu.2.17",
            "-p",
            "provider",
            "-p",
            "invoke",
            "--lambda-dir",
        ])
        .arg(&dir)
        .output()
        .expect("cargo lambda runs");
    assert!(
        out.status.success(),
        "cargo lambda build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for function in ["provider", "invoke"] {
        assert!(
            dir.join(function).join("bootstrap").is_file(),
            "no {function}/bootstrap in {}",
            dir.display()
        );
    }
    dir
}

/// `cargo run -p synth -- render SPEC --out OUT --artifacts ARTIFACTS`, as the README says.
pub fn synth_render(spec: &Path, out: &Path, artifacts: &Path) {
    let status = nested_cargo()
        .args(["run", "--quiet", "--locked", "-p", "synth", "--", "render"])
        .arg(spec)
        .arg("--out")
        .arg(out)
        .arg("--artifacts")
        .arg(artifacts)
        .output()
        .expect("cargo run -p synth");
    assert!(
        status.status.success(),
        "synth render {} failed:\n{}",
        spec.display(),
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A CloudFormation ResponseURL on loopback: records every answer PUT to it, and fails the
/// first `fail_first` PUTs with 500, as a flaky network would. Pre-signed S3 URLs need an empty
/// content type: a PUT with any other is a test failure.
pub struct ResponseUrl {
    /// The URL to put in events.
    pub url: String,
    inbox: std::sync::Arc<std::sync::Mutex<(Vec<serde_json::Value>, u32)>>,
}

impl ResponseUrl {
    /// Serves the URL on the current Tokio runtime.
    pub async fn start(fail_first: u32) -> ResponseUrl {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        use std::sync::{Arc, Mutex};
        type Inbox = Arc<Mutex<(Vec<serde_json::Value>, u32)>>;
        let inbox: Inbox = Arc::new(Mutex::new((Vec::new(), fail_first)));
        let app = axum::Router::new()
            .route(
                "/response",
                axum::routing::put(
                    |State(inbox): State<Inbox>, headers: HeaderMap, body: String| async move {
                        let mut guard = inbox.lock().unwrap();
                        if guard.1 > 0 {
                            guard.1 -= 1;
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        assert_eq!(
                            headers.get("content-type").map(|v| v.as_bytes()),
                            Some(&b""[..]),
                            "pre-signed URLs need an empty content type"
                        );
                        guard.0.push(serde_json::from_str(&body).unwrap());
                        StatusCode::OK
                    },
                ),
            )
            .with_state(Arc::clone(&inbox));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/response", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ResponseUrl { url, inbox }
    }

    /// How many answers were received.
    pub fn count(&self) -> usize {
        self.inbox.lock().unwrap().0.len()
    }

    /// The last answer received.
    pub fn last(&self) -> Option<serde_json::Value> {
        self.inbox.lock().unwrap().0.last().cloned()
    }
}

/// SDK configuration for every service at `url` (moto, or a [`FaultProxy`] in front of it), with
/// the SDK's default retry policy, as the Lambdas run with.
pub async fn sdk_config_at(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "harness",
        ))
        .load()
        .await
}

/// One fault a [`FaultProxy`] injects: requests for `operation` (an `X-Amz-Target` suffix such as
/// `CreateBudget`, or a query-protocol `Action`) are answered with `status` and an AWS error of
/// type `code` instead of reaching the emulator, `times` times (`u32::MAX`: always), after `delay`.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The operation name.
    pub operation: String,
    /// HTTP status of the injected answer.
    pub status: u16,
    /// AWS error code, e.g. `ThrottlingException` or `InternalFailure`.
    pub code: String,
    /// How many matching requests fail.
    pub times: u32,
    /// Extra latency before answering (a slow dependency).
    pub delay: Duration,
    /// Forward the request to the emulator first, then answer with the error: the request
    /// applied and its answer was lost.
    pub forward: bool,
}

impl Fault {
    /// `times` throttling answers (HTTP 400 `ThrottlingException`, which the SDK retries).
    pub fn throttle(operation: &str, times: u32) -> Fault {
        Fault {
            operation: operation.into(),
            status: 400,
            code: "ThrottlingException".into(),
            times,
            delay: Duration::ZERO,
            forward: false,
        }
    }

    /// Server errors on every call (HTTP 500 `InternalFailure`, retried then given up on).
    pub fn always_500(operation: &str) -> Fault {
        Fault {
            operation: operation.into(),
            status: 500,
            code: "InternalFailure".into(),
            times: u32::MAX,
            delay: Duration::ZERO,
            forward: false,
        }
    }

    /// `times` answers lost after the request applied (it reaches the emulator; the client gets a
    /// 500 `InternalFailure`, which the SDK retries).
    pub fn lost_answer(operation: &str, times: u32) -> Fault {
        Fault {
            forward: true,
            ..Fault::always_500(operation)
        }
        .times(times)
    }

    fn times(mut self, times: u32) -> Fault {
        self.times = times;
        self
    }
}

/// An HTTP proxy in front of moto that injects AWS errors and latency per operation, the way a
/// throttled or failing service answers, so fault paths run with the real SDK clients and retry
/// policy. Everything not matched is forwarded unchanged.
pub struct FaultProxy {
    /// The endpoint to give SDK clients.
    pub url: String,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    faults: Vec<Fault>,
    /// Operation -> requests seen (injected or forwarded).
    seen: std::collections::HashMap<String, u32>,
    /// Operation -> the bodies of the requests seen, in order.
    bodies: std::collections::HashMap<String, Vec<axum::body::Bytes>>,
}

impl FaultProxy {
    /// Serves the proxy on the current Tokio runtime, forwarding to `upstream`.
    pub async fn start(upstream: &str) -> FaultProxy {
        use axum::body::Body;
        use axum::extract::{Request, State};
        use axum::response::Response;
        use std::sync::{Arc, Mutex};
        type Shared = (Arc<Mutex<ProxyState>>, reqwest::Client, String);
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared: Shared = (
            Arc::clone(&state),
            reqwest::Client::new(),
            upstream.to_string(),
        );
        let handler = |State((state, client, upstream)): State<Shared>, request: Request| async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let operation = operation_of(&parts.headers, &body);
            let fault = {
                let mut guard = state.lock().unwrap();
                *guard.seen.entry(operation.clone()).or_default() += 1;
                guard
                    .bodies
                    .entry(operation.clone())
                    .or_default()
                    .push(body.clone());
                guard
                    .faults
                    .iter_mut()
                    .find(|f| f.operation == operation && f.times > 0)
                    .map(|f| {
                        if f.times != u32::MAX {
                            f.times -= 1;
                        }
                        f.clone()
                    })
            };
            let forward = |parts: &axum::http::request::Parts, body: axum::body::Bytes| {
                let url = format!(
                    "{upstream}{}",
                    parts.uri.path_and_query().map_or("/", |p| p.as_str())
                );
                let mut request = client.request(parts.method.clone(), url).body(body);
                for (name, value) in &parts.headers {
                    if name != "host" && name != "content-length" {
                        request = request.header(name, value);
                    }
                }
                request.send()
            };
            if let Some(fault) = fault {
                tokio::time::sleep(fault.delay).await;
                if fault.forward {
                    forward(&parts, body.clone())
                        .await
                        .expect("moto answers the proxy");
                }
                let query = parts.headers.get("content-type").is_some_and(|v| {
                    v.as_bytes()
                        .starts_with(b"application/x-www-form-urlencoded")
                });
                let (content_type, text) = if query {
                    (
                        "text/xml",
                        format!(
                            "<ErrorResponse><Error><Type>Receiver</Type><Code>{}</Code><Message>injected by the test</Message></Error><RequestId>fault</RequestId></ErrorResponse>",
                            fault.code
                        ),
                    )
                } else {
                    (
                        "application/x-amz-json-1.1",
                        format!(
                            r#"{{"__type":"{}","message":"injected by the test"}}"#,
                            fault.code
                        ),
                    )
                };
                return Response::builder()
                    .status(fault.status)
                    .header("content-type", content_type)
                    .header("x-amzn-errortype", fault.code.as_str())
                    .body(Body::from(text))
                    .unwrap();
            }
            let answer = forward(&parts, body).await.expect("moto answers the proxy");
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    response = response.header(name, value);
                }
            }
            response
                .body(Body::from(answer.bytes().await.unwrap()))
                .unwrap()
        };
        let app = axum::Router::new().fallback(handler).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FaultProxy { url, state }
    }

    /// Replaces the injected faults.
    pub fn set(&self, faults: Vec<Fault>) {
        self.state.lock().unwrap().faults = faults;
    }

    /// The JSON bodies of the `operation` requests seen so far, in order (JSON protocols).
    pub fn json_bodies(&self, operation: &str) -> Vec<serde_json::Value> {
        self.state
            .lock()
            .unwrap()
            .bodies
            .get(operation)
            .map(|bodies| {
                bodies
                    .iter()
                    .map(|b| serde_json::from_slice(b).expect("a JSON request body"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets the requests seen so far.
    pub fn clear_seen(&self) {
        let mut state = self.state.lock().unwrap();
        state.seen.clear();
        state.bodies.clear();
    }

    /// How many requests for `operation` reached the proxy (failed or forwarded).
    pub fn seen(&self, operation: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .seen
            .get(operation)
            .copied()
            .unwrap_or(0)
    }
}

/// The operation of an AWS request: the `X-Amz-Target` suffix (JSON protocols) or the `Action`
/// form field (query protocol).
fn operation_of(headers: &axum::http::HeaderMap, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or(target).to_string();
    }
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("")
        .to_string()
}

/// The messages of an event-stream body, checking every frame's CRCs: each message's
/// `:event-type` (or `:exception-type`, for an exception) and payload.
pub fn event_stream_messages(mut body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let message = aws_smithy_eventstream::frame::read_message_from(&mut body)
            .expect("whole event-stream frames");
        let kind = message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == ":event-type" || h.name().as_str() == ":exception-type")
            .and_then(|h| h.value().as_string().ok().map(|s| s.as_str().to_string()))
            .expect("a typed message");
        out.push((kind, message.payload().to_vec()));
    }
    out
}
