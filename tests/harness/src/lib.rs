//! Test infrastructure shared by the workspace's integration tests.
//!
//! Everything here fails loudly: a test that needs moto or cfn-lint and cannot get it panics with
//! the reason; nothing is skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
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

/// Runs cfn-lint on `templates` and panics with its findings unless it reports none.
///
/// W3002 ("may only work with the package command") is the point of the local code paths: the
/// README deploys through `aws cloudformation package`.
pub fn cfn_lint(templates: &[PathBuf]) {
    assert!(!templates.is_empty(), "no templates to lint");
    let lint = venv().join("bin/cfn-lint");
    let out = Command::new(&lint)
        .args(["--ignore-checks", "W3002", "--"])
        .args(templates)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", lint.display()));
    assert!(
        out.status.success(),
        "cfn-lint found problems (exit {:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

    fn launch_with(serial: bool) -> Moto {
        let venv = venv();
        let port = free_port();
        let mut command = Command::new(venv.join("bin/python"));
        command
            .arg(repo().join("tests/tools/moto_launcher.py"))
            .args(["127.0.0.1", &port.to_string()]);
        if serial {
            command.arg("--serial");
        }
        Self::launch(command, port, &venv)
    }

    fn launch(mut command: Command, port: u16, venv: &Path) -> Moto {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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

    /// The endpoint URL, for `AWS_ENDPOINT_URL`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK configuration pointed at this moto with dummy credentials, the same way the
    /// product reads it (the standard endpoint configuration), without touching process env.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.url())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "harness",
            ))
            .load()
            .await
    }

    /// Stops moto (as a crash would), for fault tests.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates a ledger table shaped like the rendered one (`pk`/`sk` strings, on demand).
pub async fn create_ledger_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("sk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("sk")
                .key_type(KeyType::Range)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("CreateTable on moto");
}
