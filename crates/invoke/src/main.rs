//! `invoke`: the enforcing gateway. Runs as the invoke Lambda when started by the Lambda runtime
//! (`AWS_LAMBDA_RUNTIME_API` set, no arguments), and as `invoke serve` otherwise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use invoke::bedrock::SignedBedrock;
use invoke::gateway::Gateway;
use invoke::lambda::{SdkApiKeys, SdkQueues};
use invoke::metrics::MetricsSink;
use ledger::{DynamoLedger, Ledger, MemoryLedger};

/// The tokenfence gateway: token and USD budgets enforced before Amazon Bedrock is called.
#[derive(Parser)]
#[command(name = "invoke", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway's HTTP API locally: the Bedrock runtime's paths (POST
    /// /model/{modelId}/converse, converse-stream, invoke, invoke-with-response-stream,
    /// count-tokens) and GET /usage.
    Serve {
        /// The spec whose models, defaults and budgets to enforce.
        #[arg(long)]
        spec: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// `memory` (embedded, default) or `dynamodb:TABLE`.
        #[arg(long, default_value = "memory")]
        ledger: String,
        /// `KEY=APPLICATION`, or `KEY=APPLICATION/USER` for a seat; repeatable. With
        /// `--ledger dynamodb:TABLE`, keys issued by `synth keys create` work too.
        #[arg(long = "api-key", value_name = "KEY=APPLICATION[/USER]")]
        api_keys: Vec<String>,
        /// A file of `KEY=APPLICATION[/USER]` lines.
        #[arg(long)]
        api_keys_file: Option<PathBuf>,
        /// Serve HTTPS with this PEM certificate chain (with `--tls-key`). Clients that send
        /// Bedrock API keys as `Authorization: Bearer` (boto3, Strands, LangChain) refuse plain
        /// HTTP endpoints.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

// Every request allocates and frees its body, headers and JSON values; under load glibc's malloc
// took a sixth of the gateway's CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing() {
    // JSON logs on stderr; stdout carries the EMF metric lines. Prompts are never logged.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() && std::env::args().len() == 1 {
        init_tracing();
        return match runtime.block_on(run_lambda()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("invoke: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    init_tracing();
    match runtime.block_on(run_cli(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("invoke: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_lambda() -> Result<(), String> {
    let (mut settings, table) =
        invoke::settings::from_env(|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let ledger = Arc::new(DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&aws),
        table,
    ));
    let bedrock = SignedBedrock::from_config(&aws);
    let queues = Arc::new(SdkQueues::new(aws_sdk_sqs::Client::new(&aws)));
    let api_keys = Arc::new(SdkApiKeys::new(aws_sdk_apigateway::Client::new(&aws)));
    if std::env::var("TOKENFENCE_ENGINE").as_deref() == Ok("step-functions-express") {
        // The steps of the Express workflow; API Gateway still proxies `GET /usage` here.
        settings.max_body_bytes = invoke::step::MAX_BODY_BYTES;
        settings.seats = false;
        let gateway = Arc::new(Gateway::new(ledger, bedrock, settings, MetricsSink::Stdout));
        return lambda_runtime::run(lambda_runtime::service_fn(
            move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
                let gateway = Arc::clone(&gateway);
                let queues = Arc::clone(&queues);
                let api_keys = Arc::clone(&api_keys);
                async move {
                    let deadline = invoke::lambda::call_deadline(event.context.deadline);
                    if event.payload.get("action").is_some() {
                        let step: invoke::step::StepEvent =
                            serde_json::from_value(event.payload)
                                .map_err(invoke::Error::event("a step event"))?;
                        invoke::step::handle(&gateway, queues.as_ref(), step, deadline).await
                    } else {
                        invoke::lambda::handle(
                            &gateway,
                            queues.as_ref(),
                            api_keys.as_ref(),
                            event.payload,
                            deadline,
                        )
                        .await
                    }
                }
            },
        ))
        .await
        .map_err(|e| e.to_string());
    }
    let gateway = Arc::new(Gateway::new(ledger, bedrock, settings, MetricsSink::Stdout));
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let gateway = Arc::clone(&gateway);
            let queues = Arc::clone(&queues);
            let api_keys = Arc::clone(&api_keys);
            async move {
                let deadline = invoke::lambda::call_deadline(event.context.deadline);
                // The REST API's STREAM integrations: answered in Lambda's streaming mode.
                if invoke::lambda::is_stream_request(&event.payload) {
                    let streamed =
                        invoke::lambda::handle_stream(gateway, event.payload, deadline).await;
                    return Ok::<invoke::lambda::LambdaResponse, invoke::Error>(
                        lambda_runtime::FunctionResponse::StreamingResponse(streamed),
                    );
                }
                invoke::lambda::handle(
                    &gateway,
                    queues.as_ref(),
                    api_keys.as_ref(),
                    event.payload,
                    deadline,
                )
                .await
                .map(lambda_runtime::FunctionResponse::BufferedResponse)
            }
        },
    ))
    .await
    .map_err(|e| e.to_string())
}

fn parse_keys(
    pairs: &[String],
    file: Option<&PathBuf>,
) -> Result<HashMap<String, invoke::gateway::Caller>, String> {
    let mut lines: Vec<String> = pairs.to_vec();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
        lines.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    let mut keys = HashMap::new();
    for line in lines {
        let form = "an API key is given as `KEY=APPLICATION` or `KEY=APPLICATION/USER`";
        let (key, caller) = line.split_once('=').ok_or_else(|| form.to_string())?;
        if key.is_empty() {
            return Err(form.into());
        }
        let caller = invoke::gateway::Caller::parse(caller).map_err(|e| format!("{form}: {e}"))?;
        keys.insert(key.to_string(), caller);
    }
    Ok(keys)
}

async fn run_cli(cli: Cli) -> Result<(), String> {
    let Command::Serve {
        spec: spec_path,
        listen,
        ledger,
        api_keys,
        api_keys_file,
        tls_cert,
        tls_key,
    } = cli.command;
    let source = std::fs::read_to_string(&spec_path)
        .map_err(|e| format!("cannot read `{}`: {e}", spec_path.display()))?;
    let spec = spec::parse(&spec_path.display().to_string(), &source).map_err(|e| e.to_string())?;
    let keys = parse_keys(&api_keys, api_keys_file.as_ref())?;
    let tls = match (&tls_cert, &tls_key) {
        (Some(cert), Some(key)) => Some(invoke::http::tls_config(cert, key)?),
        _ => None,
    };
    if keys.is_empty() && ledger == "memory" {
        return Err(
            "give at least one `--api-key KEY=APPLICATION[/USER]` (keys issued by `synth keys` need `--ledger dynamodb:TABLE`)"
                .into(),
        );
    }
    for app in keys.values().map(|c| &c.application) {
        if !spec.applications.contains_key(app) {
            return Err(format!(
                "`--api-key` names application `{app}`, which the spec does not declare"
            ));
        }
    }
    let settings = invoke::settings::from_spec(&spec);
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let bedrock = SignedBedrock::from_config(&aws);
    match ledger.as_str() {
        "memory" => {
            serve(
                Arc::new(MemoryLedger::new()),
                bedrock,
                settings,
                &spec,
                keys,
                listen,
                tls.clone(),
            )
            .await
        }
        other => match other.strip_prefix("dynamodb:") {
            Some(table) if !table.is_empty() => {
                serve(
                    Arc::new(DynamoLedger::new(
                        aws_sdk_dynamodb::Client::new(&aws),
                        table,
                    )),
                    bedrock,
                    settings,
                    &spec,
                    keys,
                    listen,
                    tls.clone(),
                )
                .await
            }
            _ => Err(format!(
                "`--ledger {other}` is not `memory` or `dynamodb:TABLE`"
            )),
        },
    }
}

async fn serve<L: Ledger>(
    ledger: Arc<L>,
    bedrock: SignedBedrock,
    settings: invoke::Settings,
    spec: &spec::Spec,
    keys: HashMap<String, invoke::gateway::Caller>,
    listen: SocketAddr,
    tls: Option<Arc<invoke::http::TlsConfig>>,
) -> Result<(), String> {
    for app in spec.applications.keys() {
        let config = invoke::settings::budget_from_spec(spec, app).expect("the application exists");
        ledger
            .put_budget(&config, &[])
            .await
            .map_err(|e| format!("writing the budget of `{app}`: {e}"))?;
    }
    let gateway = Arc::new(Gateway::new(ledger, bedrock, settings, MetricsSink::Stdout));
    // The sweeper: reservations held past their hold are charged at their worst case.
    let sweeper = Arc::clone(&gateway);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            if let Err(e) = sweeper.sweep().await {
                tracing::error!(error = %e, "sweep failed; retried in a minute");
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "invoke: serving `{}` on {}://{addr} ({} application(s))",
        spec.name,
        if tls.is_some() { "https" } else { "http" },
        spec.applications.len()
    );
    let router = invoke::http::router(gateway, keys);
    match tls {
        Some(tls) => invoke::http::serve_tls(listener, router, tls, shutdown_signal()).await,
        // No Nagle delay: a stream's events are small writes that must leave as they come.
        None => axum::serve(
            axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            router,
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| e.to_string()),
    }
}

/// Ctrl-C or SIGTERM: stop accepting connections and let requests in flight finish and settle.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
