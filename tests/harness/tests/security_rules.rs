//! tokenfence's security rules (`tests/security/rules`, run with every cfn-lint call the tests
//! make) each catch what they exist for: the insecure fixture breaks every rule once.

use std::collections::BTreeMap;

#[test]
fn every_security_rule_reports_the_insecure_fixture() {
    let fixture = harness::repo().join("tests/security/fixtures/insecure.yaml");
    let out = harness::cfn_lint_output(&[fixture]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "cfn-lint passed an insecure template:\n{stdout}"
    );
    let mut found: BTreeMap<&str, usize> = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(id) = line
            .split_whitespace()
            .next()
            .filter(|id| id.starts_with("E91"))
        {
            *found.entry(id).or_default() += 1;
        }
    }
    let expected = BTreeMap::from([
        ("E9101", 1), // bedrock:*
        ("E9102", 2), // Bedrock actions on Resource: *
        ("E9103", 3), // table, queue, topic unencrypted
        ("E9104", 1), // open method
        ("E9105", 1), // queue feeding Lambda without DLQ
        ("E9106", 2), // log group without retention, function without declared group
    ]);
    assert_eq!(found, expected, "{stdout}");
}

#[test]
fn rendered_stacks_and_templates_meet_the_security_rules() {
    // The rendered examples are linted (with these rules) by crates/synth/tests/render.rs; this
    // covers the hand-written templates users copy.
    let templates: Vec<_> = std::fs::read_dir(harness::repo().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    harness::cfn_lint(&templates);
}
