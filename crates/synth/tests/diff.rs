//! `synth diff`: what an update does, and the changes CloudFormation cannot apply.

mod common;

use std::collections::BTreeSet;

use common::{large_spec, repo, scratch, synth};

fn render(spec: &std::path::Path, out: &std::path::Path, previous: Option<&std::path::Path>) {
    let mut args = vec![
        "render".to_string(),
        spec.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    if let Some(p) = previous {
        args.extend(["--previous".into(), p.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = synth(&args);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

fn diff(
    old: &std::path::Path,
    new: &std::path::Path,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let (old, new) = (old.display().to_string(), new.display().to_string());
    let mut args = vec!["diff", old.as_str(), new.as_str()];
    args.extend(extra);
    let out = synth(&args);
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The create-only table is CloudFormation's, as cfn-lint's pinned schemas say, for every type
/// synth renders.
#[test]
fn create_only_properties_are_the_resource_schemas() {
    let site = std::fs::read_dir(harness::venv().join("lib"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("site-packages/cfnlint/data/schemas"))
        .find(|p| p.is_dir())
        .expect("cfn-lint's schemas in the test venv");
    let providers: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(site.join("providers/us-east-1.json")).unwrap(),
    )
    .unwrap();
    let table = synth::diff::create_only();
    for (kind, props) in &table {
        if kind.starts_with("Custom::") {
            continue;
        }
        let file = providers[kind]
            .as_str()
            .unwrap_or_else(|| panic!("{kind} has a schema"));
        let schema: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(site.join(format!("resources/{file}.json"))).unwrap(),
        )
        .unwrap();
        let expected: BTreeSet<String> = schema["createOnlyProperties"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p.as_str().unwrap().split('/').nth(2).unwrap().to_string())
            .collect();
        assert_eq!(
            props.iter().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{kind}: regenerate data/create-only.json from cfn-lint's schemas"
        );
    }
    // Every type the examples render is in the table.
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let spec = spec::parse("x", &std::fs::read_to_string(&path).unwrap()).unwrap();
        let rendering = cfn::render(
            &spec,
            &cfn::RenderOptions {
                code_dir: ".".into(),
            },
        )
        .unwrap();
        for stack in &rendering.stacks {
            for resource in stack.template.resources.values() {
                assert!(
                    table.contains_key(&resource.kind),
                    "{} is not in the table",
                    resource.kind
                );
            }
        }
    }
}

#[test]
fn replacements_are_named_and_a_replaced_custom_name_is_refused() {
    let dir = scratch("diff-replace");
    let quickstart = std::fs::read_to_string(repo().join("examples/quickstart.yaml")).unwrap();
    let (old_spec, new_spec) = (dir.join("old.yaml"), dir.join("new.yaml"));
    std::fs::write(&old_spec, &quickstart).unwrap();
    // The alias points at another model: its inference profile is replaced, under a new name.
    std::fs::write(
        &new_spec,
        quickstart.replace(
            "haiku: anthropic.claude-3-5-haiku-20241022-v1:0",
            "haiku: anthropic.claude-haiku-4-5-20251001-v1:0",
        ),
    )
    .unwrap();
    let (old, new) = (dir.join("old"), dir.join("new"));
    render(&old_spec, &old, None);
    render(&new_spec, &new, Some(&old));
    let (code, out, _) = diff(&old, &new, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("stack acme-genai\n"), "{out}");
    assert!(
        out.contains("  ! SupportBotHaikuProfile (AWS::Bedrock::ApplicationInferenceProfile) replaced: InferenceProfileName, ModelSource\n"),
        "{out}"
    );
    assert!(
        out.contains("  ~ SupportBotBudget (Custom::TokenBudget)\n"),
        "{out}"
    );
    assert!(!out.contains("cannot apply"), "{out}");
    assert_eq!(diff(&old, &old, &[]).1, "no changes\n");

    // The same change under the old name, as renderings before the model hash made it.
    let kept = dir.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    let old_name = std::fs::read_to_string(old.join("acme-genai.yaml")).unwrap();
    let name_of = |t: &str| {
        t.lines()
            .find(|l| l.contains("InferenceProfileName: acme-genai-support-bot-haiku-"))
            .unwrap()
            .trim()
            .to_string()
    };
    let new_template = std::fs::read_to_string(new.join("acme-genai.yaml")).unwrap();
    std::fs::write(
        kept.join("acme-genai.yaml"),
        new_template.replace(&name_of(&new_template), &name_of(&old_name)),
    )
    .unwrap();
    let (code, out, err) = diff(&old, &kept, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("cannot apply: `SupportBotHaikuProfile` (AWS::Bedrock::ApplicationInferenceProfile) in stack `acme-genai` is replaced (ModelSource changes) but keeps its `InferenceProfileName`"),
        "{out}"
    );
    assert!(err.contains("pass --allow-unsafe"), "{err}");
    assert_eq!(diff(&old, &kept, &["--allow-unsafe"]).0, Some(0));
}

#[test]
fn applications_moved_between_stacks_are_refused_and_placement_avoids_them() {
    let dir = scratch("diff-move");
    let base = large_spec("movers", 300);
    let grown = base.replacen(
        "    alarms:\n",
        "    alarms:\n      - { window: day, percent: 50 }\n      - { window: day, percent: 90 }\n      - { window: minute, percent: 90 }\n      - { window: minute, percent: 50 }\n",
        1,
    );
    let (base_spec, grown_spec) = (dir.join("base.yaml"), dir.join("grown.yaml"));
    std::fs::write(&base_spec, &base).unwrap();
    std::fs::write(&grown_spec, &grown).unwrap();
    let (old, fresh, kept) = (dir.join("old"), dir.join("fresh"), dir.join("kept"));
    render(&base_spec, &old, None);
    // Rendered from scratch, the grown first application pushes others into the next stacks.
    render(&grown_spec, &fresh, None);
    let (code, out, _) = diff(&old, &fresh, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(" moved here from "), "{out}");
    assert!(out.contains("cannot apply: `"), "{out}");
    assert!(out.contains("Budget` moves from stack `movers"), "{out}");
    // With the earlier placement nothing moves, and the update applies.
    render(&grown_spec, &kept, Some(&old));
    let (code, out, _) = diff(&old, &kept, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("moved"), "{out}");
    assert!(
        out.contains("  + Team00000DayUsdThreshold50Alarm (Custom::TokenAlarm)\n"),
        "{out}"
    );
}
