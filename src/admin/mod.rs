//! The admin HTTP listener (`[server] admin`): `/health`, `/status`, `/metrics`, `/usage`
//! and `POST /reload`, per `contract-admin.md`. Handlers read atomics and the limit store's
//! per-key counters; the core lock is taken only to copy the config `Arc` or to swap it.

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
        let config = shared.core.lock().config().clone();
        let node = config.cluster.as_ref().map_or_else(crate::config::host_name, |c| c.node.clone());
        Self { shared, usage, started: Instant::now(), node }
    }
}

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
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
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

fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => {
            if admin.shared.core.lock().is_draining() {
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
            let window = admin.shared.core.lock().config().usage.window_days;
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
