//! synth end to end: golden templates, cfn-lint on every example, splitting at scale, stable
//! logical IDs, determinism, and diagnostics of invalid specs.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use cfn::template::quotas;
use common::{cfn_lint, large_spec, repo, scratch, synth};

fn render_in_process(name: &str, source: &str) -> cfn::Rendering {
    let spec = spec::parse(name, source).unwrap_or_else(|e| panic!("{e}"));
    cfn::render(
        &spec,
        &cfn::RenderOptions {
            code_dir: "../lambda".into(),
        },
    )
    .expect("renders")
}

/// The templates (`.yaml`) in `dir`; the placement file is read on its own.
fn rendered_files(dir: &std::path::Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("rendered directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        files.insert(
            path.file_name().unwrap().to_string_lossy().to_string(),
            std::fs::read_to_string(&path).expect("template"),
        );
    }
    files
}

fn golden(example: &str) {
    let dir = scratch(&format!("golden-{example}"));
    let rel = dir
        .strip_prefix(repo())
        .unwrap()
        .to_string_lossy()
        .to_string();
    let out = synth(&[
        "render",
        &format!("examples/{example}.yaml"),
        "--out",
        &rel,
        "--artifacts",
        "target/lambda",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8(out.stdout).unwrap();
    insta::assert_snapshot!(format!("{example}-summary"), summary);
    let files = rendered_files(&dir);
    assert_eq!(files.len(), 1, "{example} fits in one stack");
    for (file, yaml) in files {
        assert!(
            yaml.contains("Code: ../../lambda/provider"),
            "code paths are relative to the template"
        );
        insta::assert_snapshot!(format!("{example}-{file}"), yaml);
    }
}

#[test]
fn golden_quickstart() {
    golden("quickstart");
}

#[test]
fn golden_multi_team() {
    golden("multi-team");
}

#[test]
fn every_example_renders_and_passes_cfn_lint() {
    let mut templates: Vec<PathBuf> = Vec::new();
    let mut examples = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        examples += 1;
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let dir = scratch(&format!("lint-{stem}"));
        let out = synth(&[
            "render",
            path.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{stem}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        templates.extend(rendered_files(&dir).keys().map(|f| dir.join(f)));
    }
    assert!(
        examples >= 3,
        "quickstart, multi-team and the large generated example at least"
    );
    cfn_lint(&templates);
}

#[test]
fn large_example_is_current_and_splits() {
    let path = repo().join("examples/large-generated.yaml");
    let expected = large_spec("initech-ai", 300);
    if std::env::var_os("UPDATE_EXAMPLES").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "examples/large-generated.yaml is stale; regenerate it with UPDATE_EXAMPLES=1"
    );
    let rendering = render_in_process("large-generated.yaml", &actual);
    assert!(rendering.is_split());
    assert_eq!(rendering.stacks[0].role, cfn::StackRole::Platform);
    assert!(
        rendering.stacks.len() >= 3,
        "300 applications need several budget stacks"
    );
}

#[test]
fn ten_thousand_applications_render_within_quotas() {
    let rendering = render_in_process("huge.yaml", &large_spec("huge", 10_000));
    let mut seen = HashSet::new();
    for stack in &rendering.stacks {
        assert!(
            stack.template.resources.len() <= quotas::MAX_RESOURCES,
            "{} has too many resources",
            stack.stack_name
        );
        assert!(
            stack.template.outputs.len() <= quotas::MAX_OUTPUTS,
            "{} has too many outputs",
            stack.stack_name
        );
        assert!(
            stack.yaml.len() <= quotas::MAX_TEMPLATE_BYTES,
            "{} is too large",
            stack.stack_name
        );
        for app in &stack.applications {
            assert!(seen.insert(app.clone()), "{app} rendered twice");
        }
    }
    assert_eq!(seen.len(), 10_000);
    // Budget stacks import the platform's exports rather than referencing resources they lack.
    let budget = &rendering.stacks[1];
    assert_eq!(budget.role, cfn::StackRole::Budgets);
    assert!(budget.yaml.contains("Fn::ImportValue: huge-ServiceToken"));
    for id in budget.template.resources.keys() {
        assert!(
            !rendering.stacks[0].template.resources.contains_key(id),
            "{id} in both stacks"
        );
    }
}

#[test]
fn adding_an_application_renames_nothing() {
    let base = std::fs::read_to_string(repo().join("examples/multi-team.yaml")).unwrap();
    let more = format!(
        "{base}  newcomer:\n    models: [nova-micro]\n    limits: [{{ window: day, tokens: 100000 }}]\n"
    );
    let before = render_in_process("a.yaml", &base);
    let after = render_in_process("b.yaml", &more);
    let (b, a) = (&before.stacks[0].template, &after.stacks[0].template);
    for (id, resource) in &b.resources {
        assert_eq!(
            a.resources.get(id),
            Some(resource),
            "{id} changed when an application was added"
        );
    }
    assert!(a.resources.contains_key("NewcomerBudget"));

    // In a split rendering, existing applications stay in their stacks too.
    let big = large_spec("initech-ai", 300);
    let bigger =
        format!("{big}  zz-late-arrival:\n    limits: [{{ window: day, tokens: 100000 }}]\n");
    let before = render_in_process("c.yaml", &big);
    let after = render_in_process("d.yaml", &bigger);
    for (old, new) in before.stacks.iter().zip(&after.stacks) {
        assert_eq!(old.stack_name, new.stack_name);
        assert!(
            new.applications.starts_with(&old.applications),
            "{} lost applications",
            old.stack_name
        );
        for (id, resource) in &old.template.resources {
            assert_eq!(
                new.template.resources.get(id),
                Some(resource),
                "{id} changed"
            );
        }
    }
}

fn render_after(name: &str, source: &str, previous: &cfn::Rendering) -> cfn::Rendering {
    let spec = spec::parse(name, source).unwrap_or_else(|e| panic!("{e}"));
    cfn::render_after(
        &spec,
        &cfn::RenderOptions {
            code_dir: "../lambda".into(),
        },
        Some(&previous.placement()),
    )
    .expect("renders")
}

fn stack_of(rendering: &cfn::Rendering) -> std::collections::HashMap<String, String> {
    rendering
        .stacks
        .iter()
        .flat_map(|s| {
            s.applications
                .iter()
                .map(|a| (a.clone(), s.stack_name.clone()))
        })
        .collect()
}

/// Growing one application (more alarms, another model) moves no other: greedy packing in
/// declaration order would push later applications into the next stack, where the provider
/// refuses them as owned by their old one.
#[test]
fn applications_stay_in_their_stacks_when_another_grows() {
    let base = large_spec("grow", 300);
    let before = render_in_process("a.yaml", &base);
    assert!(before.stacks.len() >= 3);
    let grown = base
        .replacen(
            "    alarms:\n",
            "    alarms:\n      - { window: day, percent: 50 }\n      - { window: day, percent: 90 }\n      - { window: minute, percent: 90 }\n",
            1,
        )
        .replacen("models: [haiku, nova-lite]", "models: [haiku, nova-lite, nova-micro]", 1);
    assert_ne!(grown, base);
    let after = render_after("b.yaml", &grown, &before);
    assert_eq!(stack_of(&after), stack_of(&before), "nothing moved");
    let first = &after.stacks[0];
    assert!(
        first
            .template
            .resources
            .contains_key("Team00000DayUsdThreshold50Alarm")
    );
    // Without the earlier placement the same spec still renders, from scratch.
    assert_eq!(
        render_in_process("c.yaml", &grown).stacks.len(),
        after.stacks.len()
    );
}

/// A spec outgrowing one stack keeps that stack, its name and every resource in it; only the
/// new applications go to budget stacks.
#[test]
fn crossing_the_single_stack_threshold_renames_nothing() {
    let small = large_spec("cross", 12);
    let before = render_in_process("a.yaml", &small);
    assert_eq!(before.stacks.len(), 1);
    assert_eq!(before.stacks[0].role, cfn::StackRole::Single);
    let big = large_spec("cross", 200);
    let after = render_after("b.yaml", &big, &before);
    assert!(after.is_split());
    let main = &after.stacks[0];
    assert_eq!(
        (main.stack_name.as_str(), main.role),
        ("cross", cfn::StackRole::Platform)
    );
    assert!(
        main.applications
            .starts_with(&before.stacks[0].applications)
    );
    for (id, resource) in &before.stacks[0].template.resources {
        assert_eq!(
            main.template.resources.get(id),
            Some(resource),
            "{id} changed when the spec outgrew one stack"
        );
    }
    assert!(
        after.stacks[1..].iter().all(
            |s| s.role == cfn::StackRole::Budgets && s.stack_name.starts_with("cross-budgets-")
        )
    );
    // And back: applications removed from the spec leave their stacks; empty ones go.
    let again = render_after("c.yaml", &small, &after);
    assert_eq!(again.stacks.len(), 1);
    assert_eq!(
        again.stacks[0].template.resources,
        before.stacks[0].template.resources
    );
}

#[test]
fn rendering_is_byte_identical_on_rerender() {
    let dir_a = scratch("determinism-a");
    let dir_b = scratch("determinism-b");
    for dir in [&dir_a, &dir_b] {
        let out = synth(&[
            "render",
            "examples/large-generated.yaml",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(out.status.success());
    }
    let (a, b) = (rendered_files(&dir_a), rendered_files(&dir_b));
    assert!(a.len() > 2);
    assert_eq!(a, b);
}

#[test]
fn rerendering_a_smaller_spec_removes_stale_budget_stacks() {
    let dir = scratch("stale");
    let spec_path = dir.join("spec.yaml");
    std::fs::write(&spec_path, large_spec("shrinks", 300)).unwrap();
    let out_dir = dir.join("out");
    let render = || {
        synth(&[
            "render",
            spec_path.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
    };
    assert!(render().status.success());
    let many = rendered_files(&out_dir).len();
    std::fs::write(out_dir.join("unrelated.yaml"), "keep: me\n").unwrap();
    std::fs::write(&spec_path, large_spec("shrinks", 3)).unwrap();
    assert!(render().status.success());
    let files = rendered_files(&out_dir);
    assert!(many > 2);
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        ["shrinks.yaml", "unrelated.yaml"]
    );
    // The placement the next render keeps, beside the templates.
    let placement: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("shrinks.stacks.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        placement["stacks"],
        serde_json::json!([{ "stack": "shrinks", "applications": ["team-00000", "team-00001", "team-00002"] }])
    );
}

#[test]
fn invalid_specs_exit_2_with_located_diagnostics() {
    let dir = scratch("invalid");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "version: 1\nname: acme\nmodels:\n  haiku: anthropic.claude-3-5-haiku-20241022-v1:0\napplications:\n  bot:\n    models: [haiku3]\n    limit: []\n",
    )
    .unwrap();
    let rel = path
        .strip_prefix(repo())
        .unwrap()
        .to_string_lossy()
        .to_string();
    for command in ["validate", "render"] {
        let mut args = vec![command, rel.as_str()];
        if command == "render" {
            args.extend(["--out", "target/test-scratch/invalid/out"]);
        }
        let out = synth(&args);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        insta::assert_snapshot!(format!("invalid-{command}"), stderr);
    }
    assert!(
        !dir.join("out").exists(),
        "nothing is written for an invalid spec"
    );
}

#[test]
fn validate_reports_a_valid_spec() {
    let out = synth(&["validate", "examples/quickstart.yaml"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "examples/quickstart.yaml: valid spec `acme-genai`: 1 application(s), 4 model alias(es)\n"
    );
}

#[test]
fn validate_and_render_warn_about_default_account_quotas_the_spec_exceeds() {
    let dir = repo().join("target/test-scratch/quotas");
    std::fs::create_dir_all(&dir).unwrap();
    let mut yaml = String::from(
        "version: 1\nname: big\nmodels:\n  lite: amazon.nova-lite-v1:0\n  micro: amazon.nova-micro-v1:0\n  pro: amazon.nova-pro-v1:0\n  premier: amazon.nova-premier-v1:0\napplications:\n",
    );
    for n in 0..301 {
        yaml.push_str(&format!(
            "  team-{n:03}:\n    limits: [{{ window: day, tokens: 1000000 }}]\n"
        ));
    }
    std::fs::write(dir.join("big.yaml"), yaml).unwrap();
    let spec = "target/test-scratch/quotas/big.yaml";
    for args in [
        vec!["validate", spec],
        vec!["render", spec, "--out", "target/test-scratch/quotas/out"],
    ] {
        let out = synth(&args);
        assert!(out.status.success(), "{args:?}: a warning is not an error");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            stderr.lines().collect::<Vec<_>>(),
            [
                format!(
                    "{spec}: warning: the spec needs 301 of Amazon API Gateway's `Usage plans per account per Region`, whose default is 300 (shared with the rest of the account and Region); request an increase before deploying (Service Quotas code `L-E8693075`)"
                ),
                format!(
                    "{spec}: warning: the spec needs 1204 of Amazon Bedrock's `Inference profiles per account`, whose default is 1000 (shared with the rest of the account and Region); request an increase before deploying (Service Quotas code `L-40EC9882`)"
                ),
            ],
            "{args:?}"
        );
    }
    let quiet = synth(&["validate", "examples/quickstart.yaml"]);
    assert!(quiet.stderr.is_empty(), "no warning under the quotas");
}

#[test]
fn schema_is_json_schema_of_the_spec() {
    let out = synth(&["schema"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["version", "name", "models", "applications"]);
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["render", "--help"],
        vec!["validate", "--help"],
        vec!["schema", "--help"],
    ] {
        let out = synth(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8(out.stdout)
                .unwrap()
                .contains("Usage: synth"),
            "{args:?}"
        );
    }
}

#[test]
fn a_missing_spec_file_is_a_clear_error() {
    let out = synth(&["validate", "examples/nope.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("cannot read `examples/nope.yaml`")
    );
}

/// The stack's dashboard shows every application's use of each limit (with the limit line), the
/// burn-rate projection, cost, tokens, denials and failures, and the same body serves any number
/// of applications.
#[test]
fn dashboard_covers_limits_projection_denials_and_failures() {
    let source = std::fs::read_to_string(repo().join("examples/multi-team.yaml")).unwrap();
    let rendering = render_in_process("multi-team.yaml", &source);
    let stack = &rendering.stacks[0];
    let dashboard = &stack.template.resources["Dashboard"];
    assert_eq!(dashboard.kind, "AWS::CloudWatch::Dashboard");
    let props = serde_json::to_value(&dashboard.properties).unwrap();
    let body = props["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("a Fn::Sub body");
    // The body is JSON once `${AWS::Region}` is substituted.
    let body: serde_json::Value =
        serde_json::from_str(&body.replace("${AWS::Region}", "us-east-1")).unwrap();
    let widgets = body["widgets"].as_array().unwrap();
    let metric_of = |w: &serde_json::Value| {
        w["properties"]["metrics"][0][0]["expression"]
            .as_str()
            .map(String::from)
    };
    let expressions: Vec<String> = widgets.iter().filter_map(metric_of).collect();
    for metric in [
        "WindowUtilization",
        "ProjectedUtilization",
        "CostUsd",
        "TotalTokens",
        "RateLimitDenied",
        "InvocationFailed",
        "RateLimitApproved",
    ] {
        assert!(
            expressions
                .iter()
                .any(|e| e.contains(&format!("MetricName=\"{metric}\""))),
            "no widget for {metric}: {expressions:?}"
        );
    }
    assert!(
        expressions
            .iter()
            .any(|e| e.contains("{TokenFence,CostCenter}"))
    );
    let limits = widgets
        .iter()
        .find(|w| {
            w["properties"]["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Usage against each limit"))
        })
        .unwrap();
    assert_eq!(
        limits["properties"]["annotations"]["horizontal"][0]["value"],
        100
    );
    // Same body for 3 applications or 300: SEARCH, not a line per application.
    let large = render_in_process("large.yaml", &large_spec("big", 300));
    let large_body =
        serde_json::to_value(&large.stacks[0].template.resources["Dashboard"].properties).unwrap();
    assert_eq!(
        large_body["DashboardBody"]["Fn::Sub"]
            .as_str()
            .unwrap()
            .len(),
        props["DashboardBody"]["Fn::Sub"].as_str().unwrap().len() + "big".len() - "globex-ai".len()
    );
}

/// The YAML written is exactly the template: read back with a YAML parser, every example (and a
/// split rendering) equals the template model serialized directly.
#[test]
fn written_yaml_reads_back_as_the_template() {
    let mut renderings = Vec::new();
    for example in ["quickstart", "multi-team", "express"] {
        let source =
            std::fs::read_to_string(repo().join(format!("examples/{example}.yaml"))).unwrap();
        renderings.push(render_in_process(&format!("{example}.yaml"), &source));
    }
    renderings.push(render_in_process("large.yaml", &large_spec("big", 120)));
    for rendering in renderings {
        for stack in &rendering.stacks {
            let read: serde_json::Value = serde_yaml_ng::from_str(&stack.yaml)
                .unwrap_or_else(|e| panic!("{}: {e}", stack.file_name));
            let model = serde_json::to_value(&stack.template).unwrap();
            assert_eq!(read, model, "{}", stack.file_name);
        }
    }
}

/// A split rendering of the Express engine: every budget stack's pipes import the workflow and the
/// pipes' role from the platform, every import has its export, and every stack passes cfn-lint.
#[test]
fn split_express_rendering_links_its_pipes_to_the_platform() {
    let mut source = String::from(
        "version: 1\nname: bigflow\nmodels:\n  lite: amazon.nova-lite-v1:0\ndefaults: { max_tokens: 200 }\naccess: [rest, queue]\nengine: step-functions-express\napplications:\n",
    );
    for i in 0..130 {
        source.push_str(&format!(
            "  team-{i:03}:\n    limits: [{{ window: day, tokens: 100000 }}]\n    on_exceed: {{ action: queue }}\n"
        ));
    }
    let rendering = render_in_process("bigflow.yaml", &source);
    assert!(rendering.is_split());
    let platform = &rendering.stacks[0];
    let exports: HashSet<String> = platform
        .template
        .outputs
        .values()
        .filter_map(|o| {
            o.export
                .as_ref()
                .map(|e| e["Name"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(exports.contains("bigflow-WorkflowArn") && exports.contains("bigflow-PipeRoleArn"));
    for stack in &rendering.stacks[1..] {
        let pipes = stack
            .template
            .resources
            .values()
            .filter(|r| r.kind == "AWS::Pipes::Pipe")
            .count();
        assert_eq!(pipes, stack.applications.len(), "{}", stack.file_name);
        for line in stack.yaml.lines() {
            if let Some(name) = line.trim().strip_prefix("Fn::ImportValue: ") {
                assert!(
                    exports.contains(name),
                    "{} imports `{name}`, which nothing exports",
                    stack.file_name
                );
            }
        }
    }
    let dir = scratch("split-express");
    let files: Vec<PathBuf> = rendering
        .stacks
        .iter()
        .map(|s| {
            let path = dir.join(&s.file_name);
            std::fs::write(&path, &s.yaml).unwrap();
            path
        })
        .collect();
    cfn_lint(&files);
}
