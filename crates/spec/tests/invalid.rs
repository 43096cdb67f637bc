//! Table tests of invalid specs: each case asserts every error's exact `file:line:col`, YAML
//! path, message and hint, and that they are all reported at once.

fn errors(source: &str) -> Vec<String> {
    match spec::parse("spec.yaml", source) {
        Ok(_) => panic!("the spec was accepted"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

fn check(source: &str, expected: &[&str]) {
    let got = errors(source);
    assert_eq!(got, expected, "\ngot:\n{}\n", got.join("\n"));
}

#[test]
fn many_errors_at_once() {
    check(
        "version: 1
name: acme
modles: {}
models:
  haiku: anthropic.claude-3-5-haiku-20241022-v1:0
  nova-micro: amazon.nova-micro-v1:0
  mystery: acme.mystery-v1
  sonnet:
    id: us.anthropic.claude-sonnet-4-20250514-v1:0
    price: { input: 3.00, output: 15.00 }
access: [rest]
applications:
  support-bot:
    models: [haiku, haiku3]
    limits:
      - { window: minute, tokens: 200000 }
      - { window: day, usd: 40.0000001 }
      - { window: month, usd: 0 }
      - { window: hour, tokens: -5 }
      - { window: weekly, tokens: 5 }
      - { window: day, tokens: 5000 }
    on_exceed: { action: queue }
    alarms:
      - { window: hour, percent: 80 }
  b:
    models: [mystery]
    limits: [{ window: day, usd: 10 }]
    on_exceed: { action: fallback, model: sonnet }
  b:
    limits: [{ window: day, tokens: 10 }]
",
        &[
            "spec.yaml:3:1: modles: unknown key `modles` (did you mean `models`?)",
            "spec.yaml:14:21: applications.support-bot.models[1]: unknown model alias `haiku3` (did you mean `haiku`?)",
            "spec.yaml:17:29: applications.support-bot.limits[1].usd: `40.0000001` has more than 6 decimal places; amounts are whole micro-dollars",
            "spec.yaml:18:31: applications.support-bot.limits[2].usd: must be positive, found `0`",
            "spec.yaml:19:33: applications.support-bot.limits[3].tokens: must be positive, found `-5`",
            "spec.yaml:20:19: applications.support-bot.limits[4].window: unknown value `weekly` (expected one of `minute`, `hour`, `day`, `month`)",
            "spec.yaml:20:35: applications.support-bot.limits[4].tokens: a limit of `5` tokens can never admit a request: one reserves at least `1040` (`defaults.max_tokens` plus request overhead) (raise the limit or lower `defaults.max_tokens`)",
            "spec.yaml:21:19: applications.support-bot.limits[5].window: a `day` limit is already declared; combine `tokens` and `usd` in one entry",
            "spec.yaml:22:26: applications.support-bot.on_exceed.action: `queue` needs the `queue` front (add `queue` to the top-level `access` list)",
            "spec.yaml:24:19: applications.support-bot.alarms[0].window: a `threshold` alarm on `tokens` needs a `tokens` limit on the `hour` window (alarms are set relative to the window's limit; add the limit or change the window)",
            "spec.yaml:27:34: applications.b.limits[0].usd: a USD limit needs a price for model `mystery` (`acme.mystery-v1`), which the built-in price book does not know (add `price: { input: ..., output: ... }` (USD per million tokens) to `models.mystery` (`synth prices` lists the models the book knows))",
            "spec.yaml:29:3: applications.b: duplicate key `b` (first defined at line 25)",
        ],
    );
}

#[test]
fn names_engine_and_cross_references() {
    check(
        "name: Acme_GenAI
engine: step-functions-standard
models:
  nova-micro: amazon.nova-micro-v1:0
  nova-pro: amazon.nova-pro-v1:0
  nova_pro: amazon.nova-pro-v1:0
applications:
  a-very-long-application-name-that-goes-on-and-on-for-ever-and-ever-x:
    limits: [{ window: day, tokens: 100000 }]
  team:
    models: [nova-micro]
    limits:
      - { window: minute, tokens: 900000 }
      - { window: day, tokens: 800000 }
    on_exceed: { action: fallback, model: nova-pro }
    mode: strict
    alarms:
      - { window: day, percent: 80, forecast: true }
      - { window: day, forecast: yes }
    cost_budget: { monthly_usd: 10, actual_percents: [10, 20, 30, 40, 50] }
",
        &[
            "spec.yaml:1:1: missing required key `version`",
            "spec.yaml:1:7: name: `Acme_GenAI` is not a valid name (use letters, digits and single hyphens, starting with a letter, e.g. `acme-genai`)",
            "spec.yaml:2:9: engine: unknown value `step-functions-standard` (did you mean `step-functions-express`?)",
            "spec.yaml:6:3: models.nova_pro: model aliases `nova-pro` and `nova_pro` differ only in separators or case, so they would share CloudFormation logical IDs",
            "spec.yaml:8:3: applications.a-very-long-application-name-that-goes-on-and-on-for-ever-and-ever-x: `a-very-long-application-name-that-goes-on-and-on-for-ever-and-ever-x` is not a valid application name (use 1 to 64 letters, digits, `-` and `_`)",
            "spec.yaml:13:35: applications.team.limits[0].tokens: the `minute` limit of `900000` tokens is larger than the `day` limit of `800000`, so it can never bind",
            "spec.yaml:15:43: applications.team.on_exceed.model: fallback model `nova-pro` (0.8/3.2 USD per million input/output tokens) is priced above `nova-micro` (0.035/0.14), which it replaces",
            "spec.yaml:16:11: applications.team.mode: unknown value `strict` (expected one of `enforce`, `shadow`)",
            "spec.yaml:18:9: applications.team.alarms[0]: an alarm is one of `percent`, `forecast: true` or `anomaly: true`, not several",
            "spec.yaml:19:34: applications.team.alarms[1].forecast: expected `true` or `false`, found `yes`",
            "spec.yaml:20:54: applications.team.cost_budget.actual_percents: AWS Budgets allows 5 notifications per budget: at most 4 actual percents besides the forecast, found 5",
        ],
    );
}

#[test]
fn yaml_syntax_error() {
    check(
        "version: 1
name: x
models: [a
",
        &["spec.yaml:4:1: invalid YAML: while parsing a flow sequence, expected ',' or ']'"],
    );
}

#[test]
fn empty_file() {
    check(
        "",
        &[
            "spec.yaml:1:1: the spec is empty; it needs at least `version`, `name`, `models` and `applications`",
        ],
    );
}

#[test]
fn derived_aws_names_and_logical_ids() {
    check(
        "version: 1
name: acme-genai-production
access: [rest, queue]
models:
  micro: amazon.nova-micro-v1:0
applications:
  xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx:
    limits: [{ window: day, tokens: 100000 }]
  support-bot:
    limits: [{ window: day, tokens: 100000 }]
  support_bot:
    limits: [{ window: day, tokens: 100000 }]
",
        &[
            "spec.yaml:7:3: applications.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx: application name `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx` makes the SQS queue name `acme-genai-production-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-requests` 91 characters long; the limit is 80",
            "spec.yaml:7:3: applications.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx: application name `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx` makes the SQS queue name `acme-genai-production-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-results` 90 characters long; the limit is 80",
            "spec.yaml:7:3: applications.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx: application `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx` with model `micro` makes the inference profile name `acme-genai-production-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-micro-570bc336` 97 characters long; the limit is 64",
            "spec.yaml:11:3: applications.support_bot: applications `support-bot` and `support_bot` differ only in separators or case, so they would share CloudFormation logical IDs",
        ],
    );
}

#[test]
fn single_problems_name_their_place() {
    let base = "version: 1\nname: acme\nmodels:\n  micro: amazon.nova-micro-v1:0\n  lite: amazon.nova-lite-v1:0\napplications:\n  app:\n";
    let cases: &[(&str, &str)] = &[
        (
            "    limits: [{ window: day, tokens: 100000 }]\n    cost_budget: { monthly_usd: 5, forecast_percent: 0 }\n",
            "spec.yaml:9:54: applications.app.cost_budget.forecast_percent: must be positive, found `0`",
        ),
        (
            "    limits: [{ window: day, tokens: 100000 }]\n    on_exceed: { action: fallback }\n",
            "spec.yaml:9:16: applications.app.on_exceed: `action: fallback` needs `model`, the alias of the cheaper model to call instead",
        ),
        (
            "    limits: [{ window: day, tokens: 100000 }]\n    on_exceed: { action: reject, model: micro }\n",
            "spec.yaml:9:41: applications.app.on_exceed.model: `model` only applies to `action: fallback`",
        ),
        (
            "    limits: [{ window: day }]\n",
            "spec.yaml:8:14: applications.app.limits[0]: a limit needs `tokens`, `usd` or both",
        ),
        (
            "    limits: [{ window: day, usd: 2000000000 }]\n",
            "spec.yaml:8:34: applications.app.limits[0].usd: `2000000000` USD is larger than the most allowed, `1000000000`",
        ),
        (
            "    limits: [{ window: day, tokens: 2000000000000 }]\n",
            "spec.yaml:8:37: applications.app.limits[0].tokens: `2000000000000` is larger than the most allowed, `1000000000000`",
        ),
        (
            "    limits: [{ window: day, tokens: 100000 }]\n    cost_centre: x\n",
            "spec.yaml:9:5: applications.app.cost_centre: unknown key `cost_centre` (did you mean `cost_center`?)",
        ),
        (
            "    limits: [{ window: day, tokens: 100000 }]\n    models: [micro, micro]\n",
            "spec.yaml:9:21: applications.app.models[1]: model alias `micro` is listed twice",
        ),
        (
            "    limits: [{ window: hour, usd: 10 }, { window: day, usd: 5 }]\n",
            "spec.yaml:8:35: applications.app.limits[0].usd: the `hour` limit of `10` USD is larger than the `day` limit of `5` USD, so it can never bind",
        ),
        (
            "    limits: { window: day }\n",
            "spec.yaml:8:13: applications.app.limits: expected a list, found a mapping",
        ),
        (
            "    limits: [{ window: day, tokens: 100000 }]\n    alarms: [{ window: day, percent: 80 }, { window: day, percent: 80 }]\n",
            "spec.yaml:9:44: applications.app.alarms[1]: this alarm is declared twice",
        ),
    ];
    for (app, expected) in cases {
        check(&format!("{base}{app}"), &[expected]);
    }
}

#[test]
fn queue_needs_the_queue_front_and_versions_must_be_known() {
    check(
        "version: 2\nname: acme\nmodels: { m: amazon.nova-micro-v1:0 }\napplications:\n  a: { limits: [{ window: day, tokens: 5000 }], on_exceed: queue }\n",
        &[
            "spec.yaml:1:10: version: unsupported spec version `2`; this tokenfence reads version `1`",
            "spec.yaml:5:60: applications.a.on_exceed: `queue` needs the `queue` front (add `queue` to the top-level `access` list)",
        ],
    );
}

#[test]
fn a_usd_limit_on_an_unpriced_fallback_is_an_error() {
    check(
        "version: 1\nname: acme\nmodels: { m: amazon.nova-micro-v1:0, x: acme.x-v1 }\napplications:\n  a:\n    models: [m]\n    limits: [{ window: day, usd: 1 }]\n    on_exceed: { action: fallback, model: x }\n",
        &[
            "spec.yaml:7:34: applications.a.limits[0].usd: a USD limit needs a price for model `x` (`acme.x-v1`), which the built-in price book does not know (add `price: { input: ..., output: ... }` (USD per million tokens) to `models.x` (`synth prices` lists the models the book knows))",
        ],
    );
}

#[test]
fn an_unpriced_model_within_a_typo_of_the_book_gets_a_suggestion() {
    check(
        "version: 1\nname: acme\nmodels: { h: us.anthropic.claude-3-5-haiku-20241022-v1, s: anthropic.claude-sonnet-4-5-20250929-v1:0 }\napplications:\n  a:\n    limits: [{ window: day, usd: 1 }]\n",
        &[
            "spec.yaml:6:34: applications.a.limits[0].usd: a USD limit needs a price for model `h` (`us.anthropic.claude-3-5-haiku-20241022-v1`), which the built-in price book does not know (did you mean `anthropic.claude-3-5-haiku-20241022-v1:0`? Otherwise add `price: { input: ..., output: ... }` (USD per million tokens) to `models.h`)",
            // A model of the same family is no typo: its price may differ.
            "spec.yaml:6:34: applications.a.limits[0].usd: a USD limit needs a price for model `s` (`anthropic.claude-sonnet-4-5-20250929-v1:0`), which the built-in price book does not know (add `price: { input: ..., output: ... }` (USD per million tokens) to `models.s` (`synth prices` lists the models the book knows))",
        ],
    );
}

#[test]
fn seats_are_checked_like_applications() {
    check(
        "version: 1
name: acme
models:
  haiku: anthropic.claude-3-5-haiku-20241022-v1:0
  lite: amazon.nova-lite-v1:0
  mystery: acme.mystery-v1
applications:
  team:
    models: [haiku]
    limits: [{ window: day, tokens: 100000 }]
    per_user:
      limits: [{ window: day, usd: 0 }]
      on_exceed: { action: fallback, model: lite }
      colour: blue
    users:
      a/b:
        limits: [{ window: day, tokens: 5000 }]
      bob:
        mode: strict
        limits: [{ window: dya, tokens: 5000 }]
    user_metrics: yes
  open:
    models: [mystery]
    limits: [{ window: day, tokens: 100000 }]
    users:
      carol:
        limits: [{ window: day, usd: 1 }]
  quiet:
    limits: [{ window: day, tokens: 100000 }]
    user_metrics: true
",
        &[
            "spec.yaml:12:36: applications.team.per_user.limits[0].usd: must be positive, found `0`",
            "spec.yaml:13:18: applications.team.per_user.on_exceed.model: a user's fallback must be a model the application may call, and `lite` is not in its `models` (add it to the application's `models`, or make it the application's own fallback)",
            "spec.yaml:14:7: applications.team.per_user.colour: unknown key `colour` (expected one of `limits`, `on_exceed`, `mode`)",
            "spec.yaml:16:7: applications.team.users.a/b: user name `a/b` may hold only letters, digits and `._@+-`, not `/`",
            "spec.yaml:19:15: applications.team.users.bob.mode: unknown value `strict` (expected one of `enforce`, `shadow`)",
            "spec.yaml:20:28: applications.team.users.bob.limits[0].window: unknown value `dya` (expected one of `minute`, `hour`, `day`, `month`)",
            "spec.yaml:21:19: applications.team.user_metrics: expected `true` or `false`, found `yes`",
            "spec.yaml:27:38: applications.open.users.carol.limits[0].usd: a USD limit needs a price for model `mystery` (`acme.mystery-v1`), which the built-in price book does not know (add `price: { input: ..., output: ... }` (USD per million tokens) to `models.mystery` (`synth prices` lists the models the book knows))",
            "spec.yaml:30:19: applications.quiet.user_metrics: `user_metrics` publishes metrics per user, but the application declares no `per_user` or `users` (declare `per_user` limits, or leave `user_metrics` out)",
        ],
    );
}

#[test]
fn seats_need_the_lambda_engine() {
    check(
        "version: 1
name: acme
models: { lite: amazon.nova-lite-v1:0 }
engine: step-functions-express
applications:
  team:
    limits: [{ window: day, tokens: 100000 }]
    per_user:
      limits: [{ window: day, tokens: 5000 }]
",
        &[
            "spec.yaml:9:7: applications.team.per_user: seats are enforced by the Lambda engine only; the Step Functions Express engine would hold only the application's limits (use `engine: lambda`, or leave seats out)",
        ],
    );
}

#[test]
fn a_price_book_that_cannot_be_read_is_named() {
    let got = errors(
        "version: 1
name: acme
price_book: no/such/book.json
models: { large: mistral.mistral-large-2407-v1:0 }
applications:
  team:
    limits: [{ window: day, usd: 10 }]
",
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0]
            .starts_with("spec.yaml:3:13: price_book: cannot read price book `no/such/book.json`"),
        "{got:?}"
    );
    assert!(got[0].ends_with("(a file in the built-in book's format (`crates/budget/data/prices.json`), its path relative to the spec)"), "{got:?}");
    // Without the book, the model is unpriced, and its USD limit says so.
    assert!(
        got[1].contains("a USD limit needs a price for model `large`"),
        "{got:?}"
    );

    let dir = std::env::temp_dir().join(format!("tokenfence-badbook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("book.json"),
        r#"{ "recorded": "2026-12-01", "region": "r", "tier": "t", "unit": "u", "note": "n", "sources": {}, "models": [{ "model": "m.x-v1:0", "input": "1", "output": "2", "source": "nowhere" }] }"#,
    )
    .unwrap();
    let spec = dir.join("spec.yaml");
    let failed = spec::parse(
        spec.to_str().unwrap(),
        "version: 1\nname: acme\nprice_book: book.json\nmodels: { lite: amazon.nova-lite-v1:0 }\napplications:\n  team:\n    limits: [{ window: day, tokens: 100000 }]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        failed.contains("price_book: price book `")
            && failed.contains("`m.x-v1:0` names the unknown source `nowhere`"),
        "{failed}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tier_prices_name_a_tier_priced_per_token_and_a_whole_price() {
    check(
        "version: 1
name: acme
models:
  h:
    id: anthropic.claude-haiku-4-5-20251001-v1:0
    price:
      input: 1
      output: 5
      cache_write_1h: -2
      tiers:
        flx: { input: 0.5, output: 2.5 }
        reserved: { input: 0.5, output: 2.5 }
        priority: { input: 1.75 }
        latency-optimized: { input: 0, output: 0, ttl: 1h }
applications:
  a:
    limits: [{ window: day, tokens: 100000 }]
",
        &[
            "spec.yaml:9:23: models.h.price.cache_write_1h: must be positive, found `-2`",
            "spec.yaml:11:9: models.h.price.tiers.flx: `flx` is not a tier priced per token (did you mean `flex`?)",
            "spec.yaml:12:9: models.h.price.tiers.reserved: `reserved` is not a tier priced per token (expected one of `flex`, `priority`, `latency-optimized`)",
            "spec.yaml:13:19: models.h.price.tiers.priority: missing required key `output`",
            "spec.yaml:14:28: models.h.price.tiers.latency-optimized: a price of zero for both input and output makes USD limits meaningless",
            "spec.yaml:14:51: models.h.price.tiers.latency-optimized.ttl: unknown key `ttl` (expected one of `input`, `output`, `cache_read`, `cache_write`, `cache_write_1h`)",
        ],
    );
}
