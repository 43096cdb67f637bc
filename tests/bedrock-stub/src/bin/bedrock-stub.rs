//! `bedrock-stub [ADDR] [--latency-ms N]`: runs the Converse stub until killed and prints
//! `listening on http://ADDR` once ready.

use std::time::Duration;

#[tokio::main]
async fn main() {
    let mut addr = "127.0.0.1:0".to_string();
    let mut config = bedrock_stub::StubConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--latency-ms" => {
                let ms = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--latency-ms takes a number");
                config.latency = Duration::from_millis(ms);
            }
            "--output-tokens" => {
                config.output_tokens = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--output-tokens takes a number")
            }
            other => addr = other.to_string(),
        }
    }
    let stub = bedrock_stub::start(addr.parse().expect("an address like 127.0.0.1:0"), config)
        .await
        .expect("bind");
    println!("listening on {}", stub.url());
    tokio::signal::ctrl_c().await.expect("signal handler");
}
