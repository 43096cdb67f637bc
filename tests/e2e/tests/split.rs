//! A split rendering end to end: a spec over one stack's quotas renders the main stack (the
//! platform and the applications that fit) and a budget stack importing its exports. Both are
//! deployed, used, grown by one application (placed by `<name>.stacks.json`, checked with
//! `synth diff`) and deleted, budget stack first.

use std::fmt::Write as _;
use std::path::Path;

use e2e::{LocalAws, api_event, converse, used_tokens};
use ledger::{DynamoLedger, Ledger};

const NAME: &str = "split-co";
const MODELS: [&str; 8] = [
    "amazon.nova-lite-v1:0",
    "amazon.nova-micro-v1:0",
    "amazon.nova-pro-v1:0",
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "anthropic.claude-3-haiku-20240307-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
    "meta.llama3-1-8b-instruct-v1:0",
    "mistral.mistral-large-2407-v1:0",
];

/// `apps` applications, each with an inference profile per model: 36 of them are over what one
/// stack holds (80% of 500 resources), so the rendering splits.
fn spec(apps: usize) -> String {
    let mut s = format!("version: 1\nname: {NAME}\naccess: [rest]\nmodels:\n");
    for (i, m) in MODELS.iter().enumerate() {
        writeln!(s, "  m{i}: {m}").unwrap();
    }
    let aliases: Vec<String> = (0..MODELS.len()).map(|i| format!("m{i}")).collect();
    s.push_str("applications:\n");
    for a in 0..apps {
        writeln!(
            s,
            "  app-{a:02}:\n    models: [{}]\n    limits:\n      - {{ window: day, tokens: 100000 }}",
            aliases.join(", ")
        )
        .unwrap();
    }
    s
}

fn placement(out: &Path) -> Vec<(String, Vec<String>)> {
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join(format!("{NAME}.stacks.json"))).expect("the placement file"),
    )
    .unwrap();
    file["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stack"].as_str().unwrap().to_string(),
                s["applications"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_rendering_deploys_grows_and_deletes() {
    let artifacts = harness::lambda_artifacts();
    let local = LocalAws::start("split").await;
    let spec_path = local.dir.join("split.yaml");
    std::fs::write(&spec_path, spec(36)).unwrap();
    let out = local.dir.join("out");
    harness::synth_render(&spec_path, &out, &artifacts);
    let placed = placement(&out);
    let budgets_stack = format!("{NAME}-budgets-001");
    assert_eq!(
        placed.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        [NAME, budgets_stack.as_str()],
        "{placed:?}"
    );
    let in_budget_stack = placed[1].1.clone();
    assert!(!in_budget_stack.is_empty());
    let main_template = out.join(format!("{NAME}.yaml"));
    let budgets_template = out.join(format!("{budgets_stack}.yaml"));
    harness::cfn_lint(&[main_template.clone(), budgets_template.clone()]);

    // The main stack first (it exports what the budget stack imports), then the budget stack.
    local.deploy(&main_template, NAME);
    local.deploy(&budgets_template, &budgets_stack);

    let ledger = DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&local.sdk),
        format!("{NAME}-ledger"),
    );
    // An application of each stack calls the one invoke function with its own key.
    for app in [placed[0].1[0].as_str(), in_budget_stack[0].as_str()] {
        let key = local.api_key(&format!("{NAME}-{app}"));
        let ok = local.invoke(
            &format!("{NAME}-invoke"),
            &api_event(&key, "m0", &converse("Hello from a split stack.", 100)),
        );
        assert_eq!(ok["statusCode"], 200, "{app}: {ok}");
        assert_eq!(ok["headers"]["x-tokenfence-application"], app);
        assert!(used_tokens(&ledger, app).await > 0, "{app} was charged");
    }

    // Grow by one application: the placement keeps all 36 where they are, the new one goes to
    // the budget stack (the main stack is full), and `synth diff` sees only additions there.
    let before = local.dir.join("before");
    std::fs::create_dir_all(&before).unwrap();
    for entry in std::fs::read_dir(&out).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), before.join(entry.file_name())).unwrap();
    }
    std::fs::write(&spec_path, spec(37)).unwrap();
    harness::synth_render(&spec_path, &out, &artifacts);
    let grown = placement(&out);
    assert_eq!(grown[0], placed[0], "the main stack's applications stay");
    assert_eq!(grown[1].1[..in_budget_stack.len()], in_budget_stack[..]);
    assert_eq!(grown[1].1.last().map(String::as_str), Some("app-36"));
    let diff = harness::nested_cargo()
        .args(["run", "--quiet", "--locked", "-p", "synth", "--", "diff"])
        .arg(&before)
        .arg(&out)
        .output()
        .expect("synth diff runs");
    let report = String::from_utf8_lossy(&diff.stdout).to_string();
    assert!(
        diff.status.success(),
        "the growth is safe to apply: {report}{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(report.contains("App36Budget"), "{report}");
    local.deploy(&main_template, NAME);
    local.deploy(&budgets_template, &budgets_stack);
    let key = local.api_key(&format!("{NAME}-app-36"));
    let ok = local.invoke(
        &format!("{NAME}-invoke"),
        &api_event(&key, "m1", &converse("Hello from the new one.", 100)),
    );
    assert_eq!(ok["statusCode"], 200, "{ok}");

    // Delete the budget stack, then the main stack: every budget goes with its stack.
    local.delete(&budgets_stack);
    assert!(ledger.budget("app-36").await.unwrap().is_none());
    assert!(ledger.budget(&in_budget_stack[0]).await.unwrap().is_none());
    assert!(ledger.budget(&placed[0].1[0]).await.unwrap().is_some());
    local.delete(NAME);
    assert!(ledger.budget(&placed[0].1[0]).await.unwrap().is_none());

    local
        .moto
        .assert_roles_allowed(&[
            ("bedrock:InvokeModel", ":application-inference-profile/"),
            ("dynamodb:PutItem", ":table/split-co-ledger"),
        ])
        .await;
}
