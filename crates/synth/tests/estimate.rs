//! `synth estimate` as users run it: the table, `--json`, and bad input.

mod common;

use common::synth;

#[test]
fn json_estimate_of_the_quickstart() {
    let out = synth(&[
        "estimate",
        "examples/quickstart.yaml",
        "--requests-per-month",
        "100000",
        "--avg-latency-ms",
        "35000",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let engines: Vec<&str> = e["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["engine"].as_str().unwrap())
        .collect();
    assert_eq!(
        engines,
        [
            "lambda",
            "step-functions-express",
            "step-functions-standard"
        ]
    );
    // At 35 s per request Express is far cheaper than a Lambda waiting on Bedrock.
    assert_eq!(e["cheaper"], "step-functions-express");
    assert_eq!(e["prices_date"], "2026-11-28");
    assert_eq!(e["workload"]["requests_per_month"], 100_000);
    // The quickstart's one application is capped by its monthly USD limit.
    assert_eq!(e["bedrock"][0]["application"], "support-bot");
    assert_eq!(e["bedrock"][0]["monthly_max_micros"], 800_000_000);
    assert_eq!(e["bedrock_total_micros"], 800_000_000);
}

#[test]
fn table_names_the_cheaper_engine_and_the_break_even() {
    let out = synth(&["estimate", "examples/quickstart.yaml"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("guard cost per month, engine lambda  (this spec's engine)"),
        "{text}"
    );
    assert!(
        text.contains("cheaper for this workload: step-functions-express"),
        "{text}"
    );
    assert!(
        text.contains("break-even: Express is no dearer than Lambda from about 430 ms"),
        "{text}"
    );
    assert!(text.contains("support-bot"), "{text}");
}

#[test]
fn bad_workload_and_bad_spec_are_errors() {
    let out = synth(&[
        "estimate",
        "examples/quickstart.yaml",
        "--queued-percent",
        "150",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`--queued-percent` must be between 0 and 100, got `150`"),
        "{err}"
    );
    let out = synth(&[
        "estimate",
        "examples/quickstart.yaml",
        "--requests-per-month",
        "many",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a non-number");
    let out = synth(&["estimate", "does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `does-not-exist.yaml`"));
}
