//! `synth`: validate a tokenfence spec, render it to CloudFormation, print its JSON Schema.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use synth::{estimate, keys, prices, report};

// A large rendering allocates and frees hundreds of MB of JSON values and YAML text; glibc's
// malloc spent over a third of a 10,000-application render in page faults and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use miette::{Diagnostic, NamedSource, SourceSpan};
use thiserror::Error;

/// Token and dollar budgets for Amazon Bedrock, declared as infrastructure.
#[derive(Parser)]
#[command(name = "synth", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a spec and render it to CloudFormation templates.
    Render {
        /// The spec (YAML).
        spec: PathBuf,
        /// Directory to write the templates to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Directory holding the Lambda builds (`provider/bootstrap`, `invoke/bootstrap`), as
        /// `cargo lambda build` leaves them.
        #[arg(long, default_value = "target/lambda")]
        artifacts: PathBuf,
        /// A directory holding an earlier rendering of the spec (default: `--out`). Its
        /// `<name>.stacks.json` says which stack each application is deployed in; every one
        /// stays there. Commit it with the templates.
        #[arg(long)]
        previous: Option<PathBuf>,
    },
    /// What deploying the rendering in NEW over the one in OLD would do, per stack: resources
    /// added, removed, replaced and moved between stacks. Exits 2 when a change cannot be
    /// applied by CloudFormation (replacing a custom-named resource, moving a budget or a named
    /// resource between stacks) unless `--allow-unsafe`.
    Diff {
        /// The deployed rendering's directory.
        old: PathBuf,
        /// The new rendering's directory.
        new: PathBuf,
        /// Exit 0 even when a change cannot be applied as is (you will order the deploys).
        #[arg(long)]
        allow_unsafe: bool,
    },
    /// Validate a spec and report every problem.
    Validate {
        /// The spec (YAML).
        spec: PathBuf,
    },
    /// Print the spec's JSON Schema (for YAML editors) on stdout.
    Schema,
    /// Estimate the guard's own monthly cost on each engine, and the most Bedrock spend the
    /// spec's budgets allow.
    Estimate {
        /// The spec (YAML).
        spec: PathBuf,
        /// Inference requests per month, all applications together.
        #[arg(long, default_value_t = 1_000_000)]
        requests_per_month: u64,
        /// Average input tokens per request.
        #[arg(long, default_value_t = 1_000)]
        avg_input_tokens: u64,
        /// Average output tokens per request.
        #[arg(long, default_value_t = 500)]
        avg_output_tokens: u64,
        /// Average Bedrock latency per request, in milliseconds.
        #[arg(long, default_value_t = 2_000)]
        avg_latency_ms: u64,
        /// Percent of requests sent through the queue instead of the REST API.
        #[arg(long, default_value_t = 0)]
        queued_percent: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the built-in price book (USD per million tokens) with its date and sources, or
    /// one model's price: an ID, inference profile ID or ARN (a geographic profile with its
    /// regional premium).
    Prices {
        /// The model, inference profile or ARN to price.
        #[arg(long)]
        model: Option<String>,
        /// Show this price book (the built-in book's format, as a spec's `price_book`) instead
        /// of the built-in one: to check one's own before a spec uses it.
        #[arg(long)]
        book: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Report a deployed stack's usage, cost and limit utilization per application and cost
    /// center, from its CloudWatch metrics and ledger (uses the standard AWS configuration).
    Report {
        /// The tokenfence stack (the platform stack of a split rendering).
        #[arg(long)]
        stack: String,
        /// How far back to sum usage: `30m`, `12h`, `7d`.
        #[arg(long, default_value = "7d")]
        since: String,
        /// The ledger table, when the stack has no `LedgerTableName` output.
        #[arg(long)]
        table: Option<String>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Issue, list, revoke and rotate callers' keys in a deployed stack's ledger: a key spends
    /// from one application and, with `--user`, is one user's seat. Keys are stored only as
    /// their SHA-256 digest; `create` and `rotate` print the key once, on stdout.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Issue a key to an application, or to one of its users.
    Create {
        #[command(flatten)]
        at: LedgerArgs,
        /// The application the key spends from.
        #[arg(long)]
        app: String,
        /// The user whose seat it is (their own budget: `per_user` or `users` in the spec).
        #[arg(long)]
        user: Option<String>,
    },
    /// List an application's keys: ID, user, when issued (never the keys themselves).
    List {
        #[command(flatten)]
        at: LedgerArgs,
        /// The application.
        #[arg(long)]
        app: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: calls with it are refused with 401 within seconds.
    Revoke {
        #[command(flatten)]
        at: LedgerArgs,
        /// The application.
        #[arg(long)]
        app: String,
        /// The key's ID, as `list` shows it.
        #[arg(long)]
        id: String,
    },
    /// Issue a new key for the same application and user, then revoke the old one.
    Rotate {
        #[command(flatten)]
        at: LedgerArgs,
        /// The application.
        #[arg(long)]
        app: String,
        /// The old key's ID.
        #[arg(long)]
        id: String,
    },
}

/// Which ledger: a stack's (its `LedgerTableName` output) or a table by name.
#[derive(clap::Args)]
struct LedgerArgs {
    /// The tokenfence stack (the platform stack of a split rendering).
    #[arg(long, required_unless_present = "table")]
    stack: Option<String>,
    /// The ledger table, instead of a stack's.
    #[arg(long)]
    table: Option<String>,
}

/// A spec problem, shown with its source snippet.
#[derive(Debug, Error, Diagnostic)]
#[error("{message}")]
struct SpecDiagnostic {
    message: String,
    #[source_code]
    source_code: NamedSource<Arc<String>>,
    #[label("here")]
    span: SourceSpan,
    #[help]
    help: Option<String>,
}

/// Exit code for an invalid spec or an unknown model (1 is for everything else).
const INVALID_SPEC: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> miette::Result<ExitCode> {
    match cli.command {
        Command::Schema => {
            print_json(&spec::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Prices {
            model,
            book: own_book,
            json,
        } => {
            let own;
            let (name, book) = match &own_book {
                None => (
                    "Built-in price book".to_string(),
                    budget::PriceBook::builtin(),
                ),
                Some(path) => {
                    let read = std::fs::read_to_string(path)
                        .map_err(|e| e.to_string())
                        .and_then(|text| budget::price::CustomBook::parse(&text));
                    match read {
                        Ok(b) => {
                            own = b;
                            (format!("Price book `{}`", path.display()), &own)
                        }
                        Err(e) => {
                            eprintln!("error: `{}`: {e}", path.display());
                            return Ok(ExitCode::from(INVALID_SPEC));
                        }
                    }
                }
            };
            let rows = match prices::rows(book, own_book.is_none(), model.as_deref()) {
                Ok(rows) => rows,
                Err(unknown) => {
                    eprintln!("error: {unknown}");
                    return Ok(ExitCode::from(INVALID_SPEC));
                }
            };
            if json {
                print_json(&prices::json(book, rows));
            } else {
                print!("{}", prices::table(&name, book, &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Estimate {
            spec: path,
            requests_per_month,
            avg_input_tokens,
            avg_output_tokens,
            avg_latency_ms,
            queued_percent,
            json,
        } => {
            let Some(spec) = load(&path)? else {
                return Ok(ExitCode::from(INVALID_SPEC));
            };
            let workload = estimate::Workload {
                requests_per_month,
                avg_input_tokens,
                avg_output_tokens,
                avg_latency_ms,
                queued_percent,
            };
            let e = estimate::estimate(
                &spec,
                &estimate::Prices::builtin(),
                &workload,
                &estimate::Assumptions::default(),
            )
            .map_err(|e| miette::miette!("{e}"))?;
            if json {
                print_json(&e);
            } else {
                print!("{}", estimate::table(&e));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            stack,
            since,
            table,
            json,
        } => {
            let secs = report::parse_since(&since).map_err(|e| miette::miette!("{e}"))?;
            let (runtime, now) = aws_runtime()?;
            let r = runtime
                .block_on(async {
                    let config =
                        aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                    report::gather(
                        &aws_sdk_cloudformation::Client::new(&config),
                        aws_sdk_dynamodb::Client::new(&config),
                        &aws_sdk_cloudwatch::Client::new(&config),
                        &stack,
                        table,
                        now,
                        secs,
                    )
                    .await
                })
                .map_err(|e| miette::miette!("{e}"))?;
            if json {
                print_json(&r);
            } else {
                print!("{}", report::table(&r, &since));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { action } => run_keys(action),
        Command::Diff {
            old,
            new,
            allow_unsafe,
        } => {
            let read = |dir: &Path| synth::diff::read_dir(dir).map_err(|e| miette::miette!("{e}"));
            let diff = synth::diff::diff(&read(&old)?, &read(&new)?);
            print!("{}", synth::diff::render(&diff));
            if diff.unsafe_changes.is_empty() || allow_unsafe {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "{} change(s) CloudFormation cannot apply as rendered; pass --allow-unsafe to accept them",
                    diff.unsafe_changes.len()
                );
                Ok(ExitCode::from(INVALID_SPEC))
            }
        }
        Command::Validate { spec: path } => {
            let Some(spec) = load(&path)? else {
                return Ok(ExitCode::from(INVALID_SPEC));
            };
            println!(
                "{}: valid spec `{}`: {} application(s), {} model alias(es)",
                path.display(),
                spec.name,
                spec.applications.len(),
                spec.models.len()
            );
            warn_quotas(&spec, &path);
            Ok(ExitCode::SUCCESS)
        }
        Command::Render {
            spec: path,
            out,
            artifacts,
            previous,
        } => {
            let Some(spec) = load(&path)? else {
                return Ok(ExitCode::from(INVALID_SPEC));
            };
            let code_dir = relative_to(&artifacts, &out)?;
            let placement = read_placement(previous.as_deref().unwrap_or(&out), &spec.name)?;
            let rendering =
                cfn::render_after(&spec, &cfn::RenderOptions { code_dir }, placement.as_ref())
                    .map_err(|e| miette::miette!("{e}"))?;
            write(&spec, &rendering, &out)?;
            print_summary(&spec, &rendering, &out, &path);
            warn_quotas(&spec, &path);
            // The process ends here: freeing hundreds of MB of templates one allocation at a time
            // took a third of a 10,000-application render; the OS reclaims it at once.
            std::mem::forget(rendering);
            std::mem::forget(spec);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints `value` as pretty JSON on stdout (`--json`).
fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data serializes to JSON")
    );
}

/// The runtime of the commands that call AWS, and now in Unix seconds.
fn aws_runtime() -> miette::Result<(tokio::runtime::Runtime, i64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| miette::miette!("cannot start the async runtime: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| miette::miette!("the clock is before 1970: {e}"))?
        .as_secs() as i64;
    Ok((runtime, now))
}

fn run_keys(action: KeysAction) -> miette::Result<ExitCode> {
    let (runtime, now) = aws_runtime()?;
    runtime.block_on(async {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let at = match &action {
            KeysAction::Create { at, .. }
            | KeysAction::List { at, .. }
            | KeysAction::Revoke { at, .. }
            | KeysAction::Rotate { at, .. } => at,
        };
        let table = match (&at.table, &at.stack) {
            (Some(table), _) => table.clone(),
            (None, Some(stack)) => report::ledger_table(
                &aws_sdk_cloudformation::Client::new(&config),
                stack,
            )
            .await
            .map_err(|e| miette::miette!("{e}"))?,
            (None, None) => unreachable!("clap requires `--stack` or `--table`"),
        };
        let ledger = ledger::DynamoLedger::new(aws_sdk_dynamodb::Client::new(&config), &table);
        let failed = |e: keys::KeysError| miette::miette!("{e}");
        let announce = |issued: &keys::Issued, verb: &str| {
            let whose = match &issued.record.user {
                Some(user) => format!("user `{user}` of application `{}`", issued.record.application),
                None => format!("application `{}`", issued.record.application),
            };
            eprintln!(
                "{verb} key `{}` for {whose}. It is printed once, below; the ledger keeps only its SHA-256 digest.",
                issued.record.id
            );
            if issued.unlimited_user {
                eprintln!(
                    "warning: application `{}` sets no budget for this user (no `per_user`, and not in `users`): the key meets only the application's limits",
                    issued.record.application
                );
            }
            println!("{}", issued.key);
        };
        match action {
            KeysAction::Create { app, user, .. } => {
                let issued = keys::create(&ledger, &app, user.as_deref(), now)
                    .await
                    .map_err(failed)?;
                announce(&issued, "issued");
            }
            KeysAction::Rotate { app, id, .. } => {
                let issued = keys::rotate(&ledger, &app, &id, now).await.map_err(failed)?;
                announce(&issued, &format!("revoked `{id}` and issued"));
            }
            KeysAction::Revoke { app, id, .. } => {
                keys::revoke(&ledger, &app, &id).await.map_err(failed)?;
                eprintln!("revoked key `{id}` of application `{app}`");
            }
            KeysAction::List { app, json, .. } => {
                let listed = ledger::Ledger::keys(&ledger, &app)
                    .await
                    .map_err(|e| miette::miette!("{e}"))?;
                if json {
                    print_json(&listed);
                } else {
                    print!("{}", keys::table(&listed));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Reads and validates a spec; prints its problems and returns `None` when it is invalid.
fn load(path: &Path) -> miette::Result<Option<spec::Spec>> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| miette::miette!("cannot read `{}`: {e}", path.display()))?;
    let name = path.display().to_string();
    match spec::parse(&name, &source) {
        Ok(spec) => Ok(Some(spec)),
        Err(errors) => {
            let shared = Arc::new(source);
            for e in &errors.errors {
                let message = format!("{}:{}:{}: {e}", name, e.span.line, e.span.col);
                let message = match &e.help {
                    // The help is shown below the snippet; keep the headline short.
                    Some(help) => message.trim_end_matches(&format!(" ({help})")).to_string(),
                    None => message,
                };
                let diagnostic = SpecDiagnostic {
                    message,
                    source_code: NamedSource::new(&name, Arc::clone(&shared)),
                    span: (e.span.offset, e.span.len).into(),
                    help: e.help.clone(),
                };
                eprintln!("{:?}", miette::Report::new(diagnostic));
            }
            eprintln!(
                "{}: {} problem(s); nothing was rendered",
                name,
                errors.errors.len()
            );
            Ok(None)
        }
    }
}

/// `target` as seen from `base`, both taken relative to the working directory.
fn relative_to(target: &Path, base: &Path) -> miette::Result<String> {
    let cwd = std::env::current_dir()
        .map_err(|e| miette::miette!("cannot read the working directory: {e}"))?;
    let target = normalize(&cwd.join(target));
    let base = normalize(&cwd.join(base));
    let rel = pathdiff::diff_paths(&target, &base).unwrap_or(target);
    let text = rel.to_string_lossy().replace('\\', "/");
    Ok(if text.is_empty() { ".".into() } else { text })
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The placement file of the spec called `name`: which stack holds each application.
fn placement_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.stacks.json"))
}

/// The placement an earlier rendering into `dir` left, if any.
fn read_placement(dir: &Path, name: &str) -> miette::Result<Option<cfn::Placement>> {
    let path = placement_file(dir, name);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(miette::miette!("cannot read `{}`: {e}", path.display())),
    };
    let file: PlacementFile = serde_json::from_str(&text).map_err(|e| {
        miette::miette!(
            "`{}` is not a placement this synth wrote: {e}; restore it from version control",
            path.display()
        )
    })?;
    Ok(Some(
        file.stacks
            .into_iter()
            .map(|s| (s.stack, s.applications))
            .collect(),
    ))
}

/// `<name>.stacks.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct PlacementFile {
    /// What the file is, for whoever opens it.
    #[serde(default)]
    about: String,
    stacks: Vec<PlacedStack>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PlacedStack {
    stack: String,
    applications: Vec<String>,
}

/// Writes the templates, removing templates of this spec left by an earlier, larger rendering.
fn write(spec: &spec::Spec, rendering: &cfn::Rendering, out: &Path) -> miette::Result<()> {
    std::fs::create_dir_all(out)
        .map_err(|e| miette::miette!("cannot create `{}`: {e}", out.display()))?;
    let ours = |file: &str| {
        let Some(stem) = file.strip_suffix(".yaml") else {
            return false;
        };
        let Some(rest) = stem.strip_prefix(spec.name.as_str()) else {
            return false;
        };
        rest.is_empty()
            || rest == "-platform"
            || rest
                .strip_prefix("-budgets-")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let entries = std::fs::read_dir(out)
        .map_err(|e| miette::miette!("cannot list `{}`: {e}", out.display()))?;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        if ours(&file) && !rendering.stacks.iter().any(|s| s.file_name == file) {
            std::fs::remove_file(entry.path())
                .map_err(|e| miette::miette!("cannot remove stale `{file}`: {e}"))?;
        }
    }
    for stack in &rendering.stacks {
        let path = out.join(&stack.file_name);
        std::fs::write(&path, &stack.yaml)
            .map_err(|e| miette::miette!("cannot write `{}`: {e}", path.display()))?;
    }
    let placement = PlacementFile {
        about: "which stack holds each application; synth render keeps every application in its stack. Commit it with the templates.".into(),
        stacks: rendering
            .placement()
            .into_iter()
            .map(|(stack, applications)| PlacedStack { stack, applications })
            .collect(),
    };
    let path = placement_file(out, &spec.name);
    let mut text = serde_json::to_string_pretty(&placement).expect("a placement serializes");
    text.push('\n');
    std::fs::write(&path, text)
        .map_err(|e| miette::miette!("cannot write `{}`: {e}", path.display()))?;
    Ok(())
}

/// Warns on stderr about default account quotas the spec would exceed: a deploy past one fails
/// part-way, and only a quota increase (where there is one) gets it through.
fn warn_quotas(spec: &spec::Spec, path: &Path) {
    for warning in spec::quotas::warnings(spec) {
        eprintln!("{}: warning: {warning}", path.display());
    }
}

fn print_summary(spec: &spec::Spec, rendering: &cfn::Rendering, out: &Path, spec_path: &Path) {
    let total: usize = rendering
        .stacks
        .iter()
        .map(|s| s.template.resources.len())
        .sum();
    println!(
        "rendered `{}` from {}: {} application(s), {} stack(s), {} resources -> {}",
        spec.name,
        spec_path.display(),
        spec.applications.len(),
        rendering.stacks.len(),
        total,
        out.display()
    );
    let shown = 8;
    for stack in rendering.stacks.iter().take(shown) {
        let role = match stack.role {
            cfn::StackRole::Single => "everything".to_string(),
            cfn::StackRole::Platform => format!(
                "platform and {} application(s) (deploy first)",
                stack.applications.len()
            ),
            cfn::StackRole::Budgets => format!("{} application(s)", stack.applications.len()),
        };
        println!(
            "  {:<32} {:>3} resources {:>3} outputs {:>8} bytes  {role}",
            stack.file_name,
            stack.template.resources.len(),
            stack.template.outputs.len(),
            stack.yaml.len()
        );
    }
    if rendering.stacks.len() > shown {
        println!(
            "  ... and {} more budget stack(s)",
            rendering.stacks.len() - shown
        );
    }
    if rendering.is_split() {
        println!(
            "split: over one stack's CloudFormation quotas (500 resources, 200 outputs, 1 MB), so the main stack \
             `{}` (the platform and the applications that fit) exports its ARNs as `{}-*` and each budget stack \
             imports them; deploy the main stack first.",
            spec.name, spec.name
        );
    }
    println!(
        "placement: {}/{}.stacks.json keeps every application in its stack on the next render; commit it",
        out.display(),
        spec.name
    );
    let out = out.display();
    println!("next:");
    println!(
        "  1. cargo lambda build --release --target x86_64-unknown-linux-gnu.2.17 -p provider -p invoke"
    );
    for stack in rendering
        .stacks
        .iter()
        .take(if rendering.is_split() { 2 } else { 1 })
    {
        let packaged = stack.file_name.replace(".yaml", ".packaged.yaml");
        println!(
            "  2. aws cloudformation package --template-file {out}/{} --s3-bucket BUCKET --output-template-file {out}/{packaged}",
            stack.file_name
        );
        println!(
            "  3. aws cloudformation deploy --template-file {out}/{packaged} --s3-bucket BUCKET --stack-name {} --capabilities CAPABILITY_IAM",
            stack.stack_name
        );
    }
    if rendering.stacks.len() > 2 {
        println!("     (repeat 2-3 for every budget stack)");
    }
}
