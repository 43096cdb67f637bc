//! Calling Bedrock: the [`Bedrock`] trait the gateway is generic over, and [`SignedBedrock`],
//! which passes the caller's request bytes to the Bedrock runtime signed with SigV4 and hands
//! back Bedrock's answer as it came, streams included.
//!
//! Why bytes, not the SDK's typed operations: the SDK's request and response types have no serde
//! support, so passing JSON through them meant a hand-written mapping that refused or silently
//! dropped every field it did not know (`requestMetadata`, `serviceTier`, citations, `cachePoint`
//! TTLs, ...), and needed a code change for every new Bedrock field. Signing the caller's bytes
//! with `aws-sigv4`, credentials and region from `aws-config`, passes every field as sent and
//! gives back Bedrock's status, headers, body and event stream byte for byte.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::ops::Operation;

/// Bedrock's body, whole or as the event stream's bytes as they arrive.
pub enum AnswerBody {
    /// The whole body.
    Full(Bytes),
    /// The bytes of an event stream (`application/vnd.amazon.eventstream`), as they arrive.
    Stream(Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>),
}

impl std::fmt::Debug for AnswerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnswerBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            AnswerBody::Stream(_) => write!(f, "Stream"),
        }
    }
}

/// Bedrock's answer as it came: status, headers and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: AnswerBody,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error type Bedrock named (`x-amzn-ErrorType`, without its `:…` suffix).
    pub fn error_type(&self) -> Option<&str> {
        self.header("x-amzn-errortype")
            .map(|t| t.split(':').next().unwrap_or(t))
    }
}

/// One call to pass to Bedrock.
#[derive(Debug, Clone)]
pub struct Call {
    /// The operation.
    pub operation: Operation,
    /// The body to send, exactly.
    pub body: Bytes,
    /// Headers passed on: `content-type`, `accept` and Bedrock's own `x-amzn-bedrock-*`.
    pub headers: Vec<(String, String)>,
}

/// Why no answer came back from Bedrock. An answer that is an error (a status and
/// `x-amzn-ErrorType`) is not one of these: it is an [`Answer`], classified by
/// [`is_refusal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BedrockError {
    /// Failed after the request may have been sent: a cut connection (502).
    Failed(String),
    /// No answer before the deadline (504).
    Timeout(String),
    /// Provably not sent: no connection, or no time left before the deadline (503).
    NotSent(String),
}

impl BedrockError {
    /// The error's message.
    pub fn message(&self) -> &str {
        match self {
            BedrockError::Failed(m) | BedrockError::Timeout(m) | BedrockError::NotSent(m) => m,
        }
    }
}

/// Whether an error answer proves Bedrock started no billed generation, so the reservation may be
/// refunded.
///
/// Bedrock bills every generation it starts, whether or not the caller receives the answer. Only
/// the errors it returns when it *refused* the request (Bedrock API reference, Converse and
/// InvokeModel, Errors; "Troubleshooting Amazon Bedrock API error codes") prove that nothing was
/// generated: `ValidationException` (400), `AccessDeniedException` (403),
/// `ResourceNotFoundException` (404), `ThrottlingException` and `ModelNotReadyException` (429),
/// `ServiceUnavailableException` (503), `ServiceQuotaExceededException` (400). Everything else —
/// `InternalServerException`, `ModelTimeoutException`, `ModelErrorException`,
/// `ModelStreamErrorException`, an unknown error — may follow a billed generation and is settled
/// at the worst case.
pub fn is_refusal(status: u16, error_type: Option<&str>) -> bool {
    matches!(
        error_type,
        Some(
            "ValidationException"
                | "AccessDeniedException"
                | "ResourceNotFoundException"
                | "ThrottlingException"
                | "ModelNotReadyException"
                | "ServiceUnavailableException"
                | "ServiceQuotaExceededException"
        )
    ) && (400..600).contains(&status)
}

/// Something that answers Bedrock runtime calls: the real runtime, or a test double.
pub trait Bedrock: Send + Sync + 'static {
    /// Sends `call` for `model_id` (a model ID, inference profile ID or ARN) and returns
    /// Bedrock's answer, never retrying: a retried generation is a second billed generation
    /// under one reservation.
    fn send(
        &self,
        model_id: &str,
        call: Call,
    ) -> impl Future<Output = Result<Answer, BedrockError>> + Send;
}

/// The Bedrock runtime over HTTPS, each request signed with SigV4 (service `bedrock`).
///
/// The endpoint comes from the standard AWS configuration: `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`,
/// `AWS_ENDPOINT_URL`, or the profile's `endpoint_url`, else
/// `https://bedrock-runtime.{region}.amazonaws.com`.
#[derive(Clone)]
pub struct SignedBedrock {
    http: reqwest::Client,
    endpoint: String,
    /// The endpoint parsed once: each request only sets its path on a copy.
    base: Result<reqwest::Url, String>,
    region: String,
    credentials: Option<SharedCredentialsProvider>,
    cached: Arc<tokio::sync::Mutex<Option<Credentials>>>,
}

impl std::fmt::Debug for SignedBedrock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedBedrock")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// How long before their expiry credentials are refreshed.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);

impl SignedBedrock {
    /// A client from the standard AWS configuration.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        let key = aws_types::service_config::ServiceConfigKey::builder()
            .service_id("Bedrock Runtime")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .expect("every field is set");
        let region = config
            .region()
            .map_or_else(|| "us-east-1".to_string(), |r| r.to_string());
        let endpoint = config
            .service_config()
            .and_then(|c| c.load_config(key))
            .or_else(|| config.endpoint_url().map(str::to_string))
            .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
        SignedBedrock {
            // No retries, no redirects: one request is one generation at most.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
            base: reqwest::Url::parse(&endpoint).map_err(|e| e.to_string()),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region,
            credentials: config.credentials_provider(),
            cached: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn credentials(&self) -> Result<Credentials, BedrockError> {
        let Some(provider) = &self.credentials else {
            return Err(BedrockError::NotSent(
                "no AWS credentials are configured to sign the call to Bedrock".into(),
            ));
        };
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c
                .expiry()
                .is_none_or(|e| e > SystemTime::now() + CREDENTIALS_MARGIN);
            if fresh {
                return Ok(c.clone());
            }
        }
        let c = provider.provide_credentials().await.map_err(|e| {
            BedrockError::NotSent(format!("AWS credentials could not be loaded: {e}"))
        })?;
        *cached = Some(c.clone());
        Ok(c)
    }
}

/// A model ID as one percent-encoded path segment (`:` and `/` of ARNs and versions encoded).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Bedrock for SignedBedrock {
    async fn send(&self, model_id: &str, call: Call) -> Result<Answer, BedrockError> {
        let url = match &self.base {
            Ok(base) => {
                let mut url = base.clone();
                url.set_path(&format!(
                    "{}/model/{}/{}",
                    base.path().trim_end_matches('/'),
                    encode_segment(model_id),
                    call.operation.path()
                ));
                url
            }
            Err(e) => {
                return Err(BedrockError::NotSent(format!(
                    "the Bedrock endpoint `{}` is not a URL: {e}",
                    self.endpoint
                )));
            }
        };
        let credentials = self.credentials().await?;
        let identity: Identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("bedrock")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| BedrockError::NotSent(format!("signing failed: {e}")))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            call.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            SignableBody::Bytes(&call.body),
        )
        .map_err(|e| BedrockError::NotSent(format!("signing failed: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| BedrockError::NotSent(format!("signing failed: {e}")))?
            .into_parts();
        let mut request = self.http.post(url);
        for (name, value) in &call.headers {
            request = request.header(name, value);
        }
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request.body(call.body).send().await.map_err(|e| {
            if e.is_connect() {
                BedrockError::NotSent(format!("could not connect to Bedrock: {e}"))
            } else {
                BedrockError::Failed(format!("the call to Bedrock failed: {e}"))
            }
        })?;
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let streams = call.operation.streams() && status == 200;
        let body =
            if streams {
                AnswerBody::Stream(Box::pin(
                    response
                        .bytes_stream()
                        .map(|chunk| chunk.map_err(|e| format!("Bedrock's stream broke: {e}"))),
                ))
            } else {
                AnswerBody::Full(response.bytes().await.map_err(|e| {
                    BedrockError::Failed(format!("Bedrock's answer was cut off: {e}"))
                })?)
            };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_one_path_segment() {
        assert_eq!(
            encode_segment("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
        );
        assert_eq!(
            encode_segment("arn:aws:bedrock:us-east-1:1:application-inference-profile/x"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Aapplication-inference-profile%2Fx"
        );
    }

    async fn config_at(endpoint: &str) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .load()
            .await
    }

    /// Sends one Converse call through a client configured with `endpoint` to a socket that
    /// answers `{}`, and returns the request line it received.
    async fn request_line(endpoint: impl FnOnce(u16) -> String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client hung up before its headers ended");
                head.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
            String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap()
                .to_string()
        });
        let config = config_at(&endpoint(port)).await;
        let call = Call {
            operation: Operation::Converse,
            body: Bytes::from_static(b"{}"),
            headers: vec![("content-type".into(), "application/json".into())],
        };
        let answer = SignedBedrock::from_config(&config)
            .send("us.amazon.nova-micro-v1:0", call)
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        server.await.unwrap()
    }

    #[tokio::test]
    async fn requests_go_to_the_endpoints_path() {
        assert_eq!(
            request_line(|port| format!("http://127.0.0.1:{port}")).await,
            "POST /model/us.amazon.nova-micro-v1%3A0/converse HTTP/1.1"
        );
        // An endpoint behind a path prefix (a proxy or a private gateway) keeps it.
        assert_eq!(
            request_line(|port| format!("http://127.0.0.1:{port}/bedrock/")).await,
            "POST /bedrock/model/us.amazon.nova-micro-v1%3A0/converse HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn an_endpoint_that_is_no_url_is_not_sent() {
        let config = config_at("not a url").await;
        let call = Call {
            operation: Operation::Converse,
            body: Bytes::from_static(b"{}"),
            headers: vec![],
        };
        let error = SignedBedrock::from_config(&config)
            .send("amazon.nova-micro-v1:0", call)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, BedrockError::NotSent(m) if m.contains("`not a url` is not a URL")),
            "{error:?}"
        );
    }

    #[test]
    fn only_refusals_are_refundable() {
        assert!(is_refusal(400, Some("ValidationException")));
        assert!(is_refusal(429, Some("ThrottlingException")));
        assert!(is_refusal(429, Some("ModelNotReadyException")));
        assert!(is_refusal(503, Some("ServiceUnavailableException")));
        assert!(!is_refusal(500, Some("InternalServerException")));
        assert!(!is_refusal(408, Some("ModelTimeoutException")));
        assert!(!is_refusal(424, Some("ModelErrorException")));
        assert!(!is_refusal(500, None));
        assert!(!is_refusal(400, None));
    }
}
