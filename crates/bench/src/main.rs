//! `bench decision [--iterations N]`: per-request percentiles of the in-process decision,
//! uncontended and with every core on one application.
//!
//! `bench load --url URL --concurrency C --seconds S --format converse|converse-stream|openai|openai-stream [--header K:V]...`:
//! a closed-loop load generator. Each of C connections sends the request mix (bodies of 200 to
//! 4,000 characters, maxTokens 64 to 256, round robin) back to back for S seconds. Prints one JSON
//! line: requests, per-second rate, status counts, latency percentiles in microseconds. With
//! `BENCH_SAMPLES=FILE` it also writes every request's latency (µs), in the order they finished
//! per connection, one per line: to see a distribution's modes, or when its slow requests came.
//!
//! `bench relay --listen ADDR --upstream HOST:PORT --mode tcp|http`: the do-nothing peers of a
//! gateway, to tell what any proxy costs on this machine from what tokenfence's own work costs.
//! `tcp` copies bytes between the caller and the upstream (no HTTP parsing: the least any proxy
//! can add); `http` is `invoke serve`'s HTTP stack with no budget work (axum server, reqwest
//! client, TCP_NODELAY, body buffered, answer relayed as it came).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ledger::MemoryLedger;
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("decision") => decision(&args[1..]),
        Some("load") => load(&args[1..]),
        Some("relay") => relay(&args[1..]),
        _ => {
            eprintln!(
                "usage: bench decision [--iterations N] | bench load --url URL --concurrency C --seconds S --format converse|converse-stream|openai|openai-stream [--header K:V]... | bench relay --listen ADDR --upstream HOST:PORT --mode tcp|http"
            );
            std::process::exit(2);
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn summary(mut samples: Vec<u64>, elapsed: Duration) -> serde_json::Value {
    if let Some(path) = std::env::var_os("BENCH_SAMPLES") {
        let text: String = samples.iter().map(|s| format!("{s}\n")).collect();
        // The samples are the run's result; losing them must not pass silently.
        std::fs::write(path, text).expect("BENCH_SAMPLES");
    }
    samples.sort_unstable();
    json!({
        "requests": samples.len(),
        "per_second": samples.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": bench::percentile(&samples, 50.0),
        "p90_us": bench::percentile(&samples, 90.0),
        "p99_us": bench::percentile(&samples, 99.0),
        "p999_us": bench::percentile(&samples, 99.9),
        "max_us": samples.last().copied().unwrap_or(0),
    })
}

fn decision(args: &[String]) {
    let iterations: usize =
        flag(args, "--iterations").map_or(1_000_000, |v| v.parse().expect("--iterations N"));
    let limits = Arc::new(bench::roomy_limits());
    let body = Arc::new(bench::converse_body(1_000, 256));
    let now = 1_795_801_683;
    let ids = Arc::new(AtomicU64::new(0));
    let parsed: Arc<serde_json::Value> = Arc::new(serde_json::from_slice(&body).unwrap());
    let run = |threads: usize, parse: bool| {
        let ledger = Arc::new(MemoryLedger::new());
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (ledger, limits, body, ids, parsed) = (
                    ledger.clone(),
                    limits.clone(),
                    body.clone(),
                    ids.clone(),
                    parsed.clone(),
                );
                std::thread::spawn(move || {
                    let mut samples = Vec::with_capacity(iterations / threads);
                    for _ in 0..iterations / threads {
                        let id = ids.fetch_add(1, Ordering::Relaxed).to_string();
                        let t = Instant::now();
                        if parse {
                            bench::decide(&ledger, &limits, &body, &id, now);
                        } else {
                            bench::decide_parsed(&ledger, &limits, &parsed, &id, now);
                        }
                        samples.push(t.elapsed().as_nanos() as u64);
                    }
                    samples
                })
            })
            .collect();
        let samples: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let mut s = summary(samples, started.elapsed());
        // Decisions are sub-microsecond: report nanoseconds.
        for key in ["p50", "p90", "p99", "max"] {
            let v = s[format!("{key}_us")].take();
            s.as_object_mut().unwrap().remove(&format!("{key}_us"));
            s[format!("{key}_ns")] = v;
        }
        s["threads"] = json!(threads);
        s
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "{}",
        json!({
            "uncontended": run(1, true),
            "contended": run(cores, true),
            "uncontended_parsed": run(1, false),
        })
    );
}

fn load(args: &[String]) {
    let url = flag(args, "--url").expect("--url").to_string();
    let concurrency: usize = flag(args, "--concurrency")
        .unwrap_or("8")
        .parse()
        .expect("--concurrency");
    let seconds: u64 = flag(args, "--seconds")
        .unwrap_or("10")
        .parse()
        .expect("--seconds");
    let format = flag(args, "--format").unwrap_or("converse");
    let openai = format.starts_with("openai");
    // Streams are timed to their first body bytes (time to first byte), then read to the end.
    let streaming = format.ends_with("-stream");
    let mut headers = reqwest::header::HeaderMap::new();
    for (i, a) in args.iter().enumerate() {
        if a == "--header" {
            let (k, v) = args[i + 1].split_once(':').expect("--header K:V");
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                v.trim().parse().unwrap(),
            );
        }
    }
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    let mix: Vec<Vec<u8>> = [(200, 64), (1_000, 128), (4_000, 256), (500, 96)]
        .into_iter()
        .map(|(chars, max_tokens)| {
            if openai {
                let text: String = "The quick brown fox jumps over the lazy dog. "
                    .chars()
                    .cycle()
                    .take(chars)
                    .collect();
                serde_json::to_vec(&json!({
                    "model": "nova-micro",
                    "messages": [{ "role": "user", "content": text }],
                    "max_tokens": max_tokens,
                    "stream": streaming
                }))
                .unwrap()
            } else {
                bench::converse_body(chars, max_tokens)
            }
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(concurrency)
            .build()
            .unwrap();
        let mix = Arc::new(mix);
        let end = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|worker| {
                let (client, url, mix) = (client.clone(), url.clone(), mix.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
                    let mut n = worker;
                    while Instant::now() < end {
                        let body = mix[n % mix.len()].clone();
                        n += 1;
                        let t = Instant::now();
                        let (status, elapsed) = match client.post(&url).body(body).send().await {
                            Ok(mut response) if streaming => {
                                let status = response.status().as_u16();
                                let _ = response.chunk().await;
                                let first = t.elapsed();
                                while let Ok(Some(_)) = response.chunk().await {}
                                (status, first)
                            }
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let _ = response.bytes().await;
                                (status, t.elapsed())
                            }
                            Err(_) => (0, t.elapsed()),
                        };
                        samples.push(elapsed.as_micros() as u64);
                        *statuses.entry(status).or_default() += 1;
                    }
                    (samples, statuses)
                })
            })
            .collect();
        let mut samples = Vec::new();
        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
        for task in tasks {
            let (s, st) = task.await.unwrap();
            samples.extend(s);
            for (k, v) in st {
                *statuses.entry(k).or_default() += v;
            }
        }
        let mut s = summary(samples, started.elapsed());
        s["statuses"] = json!(statuses);
        s["concurrency"] = json!(concurrency);
        s
    });
    println!("{result}");
}

fn relay(args: &[String]) {
    let listen = flag(args, "--listen").expect("--listen ADDR").to_string();
    let upstream = flag(args, "--upstream")
        .expect("--upstream HOST:PORT")
        .to_string();
    let mode = flag(args, "--mode").unwrap_or("http").to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .expect("bind --listen");
        match mode.as_str() {
            "tcp" => loop {
                let (mut inbound, _) = listener.accept().await.expect("accept");
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            },
            "http" => {
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .expect("an HTTP client");
                let base = Arc::new(format!("http://{upstream}"));
                let app = axum::Router::new().fallback(
                    move |uri: axum::http::Uri,
                          headers: axum::http::HeaderMap,
                          body: axum::body::Bytes| {
                        let (client, base) = (client.clone(), Arc::clone(&base));
                        async move { http_relay(&client, &base, &uri, &headers, body).await }
                    },
                );
                axum::serve(
                    axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        let _ = tcp.set_nodelay(true);
                    }),
                    app,
                )
                .await
                .expect("serve");
            }
            other => panic!("--mode tcp|http, not `{other}`"),
        }
    });
}

/// One request relayed as `invoke serve` relays it, minus the budget: the body read whole,
/// passed on with the caller's content type, the answer's status, content type and body back.
async fn http_relay(
    client: &reqwest::Client,
    base: &str,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = client.post(format!("{base}{path}")).body(body);
    if let Some(kind) = headers.get(axum::http::header::CONTENT_TYPE) {
        request = request.header(reqwest::header::CONTENT_TYPE, kind.as_bytes());
    }
    match request.send().await {
        Ok(answer) => {
            let status = axum::http::StatusCode::from_u16(answer.status().as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            let kind = answer
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .map(|v| v.as_bytes().to_vec());
            let bytes = answer.bytes().await.unwrap_or_default();
            let mut response = (status, bytes).into_response();
            if let Some(kind) = kind.and_then(|k| axum::http::HeaderValue::from_bytes(&k).ok()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::CONTENT_TYPE, kind);
            }
            response
        }
        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
    }
}
