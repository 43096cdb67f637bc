//! The launcher's IAM is real enough to catch a role that lacks what the code calls: the deployed
//! functions run with their own role's credentials and every call is authorized against the
//! rendered policies (`tests/tools/iam_check.py`). Here the quickstart's invoke role is rendered
//! without `dynamodb:BatchGetItem` (the gap issue #15 found) and with its inference-profile
//! statement conditioned on another stack's tag: on AWS `/usage` then fails and Bedrock refuses
//! the call, and so it must here. The other end-to-end tests assert that the roles as rendered
//! allowed every call (`Moto::assert_roles_allowed`).

use e2e::{LocalAws, api_event, converse};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_without_a_permission_the_code_needs_is_denied_as_on_aws() {
    let artifacts = harness::lambda_artifacts();
    let local = LocalAws::start("iam").await;
    let out = local.dir.join("out");
    harness::synth_render(
        &harness::repo().join("examples/quickstart.yaml"),
        &out,
        &artifacts,
    );
    let rendered = std::fs::read_to_string(out.join("acme-genai.yaml")).unwrap();
    let narrowed = rendered
        .replacen("            - dynamodb:BatchGetItem\n", "", 1)
        .replacen(
            "aws:ResourceTag/tokenfence:stack: acme-genai",
            "aws:ResourceTag/tokenfence:stack: another-stack",
            1,
        );
    assert_ne!(
        rendered.len(),
        narrowed.len(),
        "the template names BatchGetItem"
    );
    assert!(
        narrowed.contains("another-stack"),
        "the tag condition was rendered"
    );
    let template = out.join("narrowed.yaml");
    std::fs::write(&template, narrowed).unwrap();
    local.deploy(&template, "acme-genai");
    let key = local.api_key("acme-genai-support-bot");

    // GET /usage reads every window in one BatchGetItem: denied, so it answers 503.
    let mut usage = api_event(&key, "unused", &json!({}));
    usage["resource"] = json!("/usage");
    usage["path"] = json!("/usage");
    usage["httpMethod"] = json!("GET");
    usage["requestContext"]["resourcePath"] = json!("/usage");
    usage["requestContext"]["httpMethod"] = json!("GET");
    usage["requestContext"]["path"] = json!("/v1/usage");
    usage["pathParameters"] = Value::Null;
    usage["body"] = Value::Null;
    let answer = local.invoke("acme-genai-invoke", &usage);
    assert_eq!(answer["statusCode"], 503, "{answer}");

    // A converse through the application's inference profile: Bedrock refuses it before any
    // generation, so the stub never sees it and the reservation is refunded.
    let sent_before = local.stub.requests();
    let answer = local.invoke(
        "acme-genai-invoke",
        &api_event(
            &key,
            "haiku",
            &converse("Summarise our refund policy.", 200),
        ),
    );
    assert_eq!(answer["statusCode"], 403, "{answer}");
    assert!(
        answer["body"]
            .as_str()
            .unwrap()
            .contains("bedrock:InvokeModel"),
        "Bedrock's AccessDenied reaches the caller: {answer}"
    );
    assert_eq!(
        local.stub.requests(),
        sent_before,
        "nothing reached Bedrock"
    );

    let calls = local.moto.iam_calls().await;
    let denied: Vec<(&str, &str)> = calls
        .iter()
        .filter(|c| !c.allowed)
        .map(|c| (c.action.as_str(), c.resource.as_str()))
        .collect();
    assert!(
        denied.contains(&(
            "dynamodb:BatchGetItem",
            "arn:aws:dynamodb:us-east-1:123456789012:table/acme-genai-ledger"
        )),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|(action, resource)| *action == "bedrock:InvokeModel"
                && resource.contains(":application-inference-profile/")),
        "{denied:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.allowed && c.action == "dynamodb:UpdateItem"),
        "what the role still grants is allowed: {calls:?}"
    );
}
