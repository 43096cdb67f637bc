//! `invoke serve`: the gateway's HTTP API on axum, with API keys mapped to applications. It
//! speaks the Bedrock runtime's own paths (`/model/{modelId}/converse`, `converse-stream`,
//! `invoke`, `invoke-with-response-stream`, `count-tokens`), so clients only change endpoint
//! and key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ledger::Ledger;

use crate::bedrock::Bedrock;
use crate::gateway::{Caller, Front, Gateway, Outcome, Reply, Request};
use crate::ops::Operation;

/// What `serve` answers for a path it does not know.
const ROUTES: &str = "routes: POST /model/{modelId}/converse, /converse-stream, /invoke, /invoke-with-response-stream, /count-tokens; GET /usage";

struct Served<L, B> {
    gateway: Arc<Gateway<L, B>>,
    keys: HashMap<String, Caller>,
    /// Keys issued with `synth keys` and found in the ledger, with when they were looked up: a
    /// revoked key stops working within [`crate::gateway::Settings::config_ttl`].
    issued: Mutex<HashMap<String, (Instant, Caller)>>,
}

/// The HTTP API over `gateway`, authenticating callers by their key (`x-api-key` or
/// `Authorization: Bearer`): first against `keys` (key -> application and user), then against
/// the keys issued in the ledger (stored by digest).
pub fn router<L: Ledger, B: Bedrock>(
    gateway: Arc<Gateway<L, B>>,
    keys: HashMap<String, Caller>,
) -> Router {
    let state = Arc::new(Served {
        gateway,
        keys,
        issued: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/model/{model_id}/{operation}", post(operation::<L, B>))
        .route("/usage", get(usage::<L, B>))
        .fallback(|| async { to_response(Reply::error(404, "UnknownOperationException", ROUTES)) })
        .with_state(state)
}

/// A request ID unique across processes: process, clock and a counter.
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}-{:x}-{:x}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The caller's key: `x-api-key`, or `Authorization: Bearer <key>` (the Bedrock API key
/// convention, which SDKs and coding agents in Bedrock mode send).
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key") {
        return key.to_str().ok();
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

async fn authenticate<L: Ledger, B: Bedrock>(
    state: &Served<L, B>,
    headers: &HeaderMap,
) -> Result<Caller, Reply> {
    let Some(key) = presented_key(headers) else {
        return Err(Reply::error(
            401,
            "MissingApiKey",
            "send the application's API key in the `x-api-key` header or as `Authorization: Bearer KEY`",
        ));
    };
    if let Some(caller) = state.keys.get(key) {
        return Ok(caller.clone());
    }
    let ttl = state.gateway.settings().config_ttl;
    if let Some((at, caller)) = state.issued.lock().expect("key cache").get(key)
        && at.elapsed() < ttl
    {
        return Ok(caller.clone());
    }
    let issued = state
        .gateway
        .ledger()
        .key(&ledger::key_digest(key))
        .await
        .map_err(|_| {
            Reply::error(
                503,
                "LedgerUnavailable",
                "the budget ledger is unavailable, so the key could not be checked",
            )
        })?;
    let Some(issued) = issued else {
        return Err(Reply::error(
            401,
            "InvalidApiKey",
            "the API key is not known, or was revoked",
        ));
    };
    let caller = Caller {
        application: issued.application,
        user: issued.user,
    };
    let mut cache = state.issued.lock().expect("key cache");
    // Bounded: a long-running server meets many keys; dropping the cache only costs lookups.
    if cache.len() >= 10_000 {
        cache.clear();
    }
    cache.insert(key.to_string(), (Instant::now(), caller.clone()));
    Ok(caller)
}

async fn operation<L: Ledger, B: Bedrock>(
    State(state): State<Arc<Served<L, B>>>,
    Path((model, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(operation) = Operation::from_path(&operation) else {
        return to_response(Reply::error(404, "UnknownOperationException", ROUTES));
    };
    let caller = match authenticate(&state, &headers).await {
        Ok(caller) => caller,
        Err(reply) => return to_response(reply),
    };
    let limit = state.gateway.settings().max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return to_response(Reply::error(
                413,
                "PayloadTooLarge",
                format!("the body is larger than {limit} bytes"),
            ));
        }
    };
    let passed: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    // Run the request to completion in its own task: a client that disconnects must not cancel
    // the settlement of a reservation, nor the reading of a stream Bedrock bills anyway.
    let gateway = Arc::clone(&state.gateway);
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<Response>();
    tokio::spawn(async move {
        let request_id = new_request_id();
        let request = Request {
            caller: &caller,
            operation,
            model: &model,
            body: &bytes,
            headers: &passed,
            front: Front::Sync,
            request_id: &request_id,
        };
        let outcome = gateway.call(&request, None).await;
        match outcome {
            Outcome::Stream(opened) => {
                let (tx, rx) = tokio::sync::mpsc::channel(32);
                let head = opened.reply.clone();
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|chunk| (chunk, rx))
                });
                let mut response = Response::new(Body::from_stream(stream));
                *response.status_mut() =
                    StatusCode::from_u16(head.status).unwrap_or(StatusCode::OK);
                set_headers(&mut response, head.headers);
                let _ = opened_tx.send(response);
                gateway.relay(opened, tx).await;
            }
            Outcome::Reply(reply) => {
                let _ = opened_tx.send(to_response(reply));
            }
            _ => {
                let _ = opened_tx.send(to_response(Reply::error(
                    500,
                    "InternalError",
                    "unexpected async outcome on the sync front",
                )));
            }
        }
    });
    match opened_rx.await {
        Ok(response) => response,
        Err(_) => to_response(Reply::error(
            500,
            "InternalError",
            "the request failed; its reservation is settled by the sweeper at its worst case",
        )),
    }
}

async fn usage<L: Ledger, B: Bedrock>(
    State(state): State<Arc<Served<L, B>>>,
    headers: HeaderMap,
) -> Response {
    match authenticate(&state, &headers).await {
        Ok(caller) => to_response(state.gateway.usage(&caller).await),
        Err(reply) => to_response(reply),
    }
}

/// A reply as an HTTP response: Bedrock's bytes as they came, or the gateway's JSON.
pub fn to_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match reply.raw {
        Some(raw) => (status, raw).into_response(),
        None => (status, axum::Json(reply.body)).into_response(),
    };
    set_headers(&mut response, reply.headers);
    response
}

fn set_headers(response: &mut Response, headers: Vec<(String, String)>) {
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().insert(n, v);
        }
    }
}

/// A TLS server configuration for [`serve_tls`].
pub type TlsConfig = tokio_rustls::rustls::ServerConfig;

/// Loads a PEM certificate chain and private key for `invoke serve --tls-cert --tls-key`.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<TlsConfig>, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("`--tls-cert {}`: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("`--tls-key {}`: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("the TLS certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until `shutdown`; then stops accepting and lets the
/// connections in flight finish their requests (and so settle their reservations).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Arc<TlsConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        // No Nagle delay: a stream's events are small writes that must leave as they come.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let Ok(Ok(stream)) = handshake.await else {
                return;
            };
            let builder = Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(router),
            );
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap finished connections so the set does not grow with the server's age.
        while connections.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}
