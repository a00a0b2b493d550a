//! The admin HTTP listener (`[server] admin`): `/health`, `/status`, `/metrics`, `/usage`
//! and `POST /reload`, per `contract-admin.md`. Handlers read atomics and the limit store's
//! per-key counters and the running config's `Arc`; they never take the SIP path's lock
//! (a reload swaps the config in the core too).

pub mod metrics;
pub mod reload;
pub mod status;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::transport::Shared;
use crate::usage::UsageTracker;

/// What the admin handlers need.
pub struct Admin {
    pub shared: Arc<Shared>,
    pub usage: Arc<Mutex<UsageTracker>>,
    pub started: Instant,
    pub node: String,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, usage: Arc<Mutex<UsageTracker>>) -> Self {
        let config = shared.config();
        let node = config.cluster.as_ref().map_or_else(crate::config::host_name, |c| c.node.clone());
        Self { shared, usage, started: Instant::now(), node }
    }
}

/// How long a client may take to send its request head, and to finish with its connection.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest request head read (headers; no admin path reads a body).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves admin requests until shutdown.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = admin.shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req)) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A slow or stuck client is cut off: nothing it does holds a task for long.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", serde_json::to_vec_pretty(value).unwrap_or_default())
}

/// True when the request may use a path that needs the token: no token is configured, or
/// it carries `Authorization: Bearer <token>` (compared without an early exit).
fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    let token = admin.shared.config().admin_token.clone();
    let Some(token) = token else { return true };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    given.len() == token.len()
        && given.iter().zip(token.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let health = req.method() == Method::GET && req.uri().path() == "/health";
    if !health && !authorized(admin, &req) {
        let mut r = respond(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized");
        r.headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
        return r;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => {
            if admin.shared.is_draining() {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining")
            } else {
                respond(StatusCode::OK, "text/plain", "ok")
            }
        }
        (&Method::GET, "/status") => json(StatusCode::OK, &status::status(admin)),
        (&Method::GET, "/metrics") => {
            respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics::render(admin))
        }
        (&Method::GET, "/usage") => {
            let rows = {
                let mut usage = admin.usage.lock();
                usage.roll(Instant::now());
                usage.report()
            };
            let window = admin.shared.config().usage.window_days;
            json(StatusCode::OK, &serde_json::json!({ "window_days": window, "scopes": rows }))
        }
        (&Method::POST, "/reload") => match reload::reload(&admin.shared) {
            Ok(summary) => json(StatusCode::OK, &serde_json::json!({ "reloaded": true, "summary": summary })),
            Err(errors) => {
                json(StatusCode::BAD_REQUEST, &serde_json::json!({ "reloaded": false, "errors": errors }))
            }
        },
        (_, "/health" | "/status" | "/metrics" | "/usage" | "/reload") => {
            respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed")
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
    }
}
