//! The HTTP side: routing, the four endpoints, and the answers of a server
//! that is full.

use std::sync::{Arc, PoisonError};
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, RETRY_AFTER,
};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use ndarray::{Array4, Axis};
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::limits::{DRAIN_TIME, RETRY_AFTER_S};
use super::metrics::Shed;
use super::{Served, State};
use crate::image::{self, DecodeError, Format};

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Embed,
    Health,
    Selection,
    Metrics,
}

impl Endpoint {
    const ALL: [Endpoint; 4] = [
        Endpoint::Embed,
        Endpoint::Health,
        Endpoint::Selection,
        Endpoint::Metrics,
    ];

    fn path(self) -> &'static str {
        match self {
            Endpoint::Embed => "/v1/embed",
            Endpoint::Health => "/v1/health",
            Endpoint::Selection => "/v1/selection",
            Endpoint::Metrics => "/metrics",
        }
    }

    fn method(self) -> Method {
        match self {
            Endpoint::Embed => Method::POST,
            _ => Method::GET,
        }
    }

    fn of(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }
}

/// A request refused, with the reason the client sees as `{"error": ...}`.
struct ApiError {
    status: StatusCode,
    reason: String,
    /// `Allow` for a 405, `Retry-After` for a 503.
    header: Option<(HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason: reason.into(),
            header: None,
        }
    }

    /// 503: the server is full; the client may retry in [`RETRY_AFTER_S`].
    fn busy(reason: impl Into<String>) -> ApiError {
        ApiError {
            header: Some((RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S))),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json_response(self.status, &json!({ "error": self.reason }));
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// The answer to every request on a connection over `max_connections`.
pub fn shed(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    state.metrics.shed(Shed::Connections);
    let endpoint = Endpoint::of(req.uri().path()).map_or("other", Endpoint::path);
    state
        .metrics
        .request(endpoint, StatusCode::SERVICE_UNAVAILABLE.as_u16());
    ApiError::busy(format!(
        "{} connections are open (max_connections)",
        state.limits.max_connections
    ))
    .into_response()
}

pub async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let Some(endpoint) = Endpoint::of(path) else {
        let reason = format!(
            "no endpoint {path}; there are {}",
            Endpoint::ALL.map(Endpoint::path).join(", ")
        );
        state
            .metrics
            .request("other", StatusCode::NOT_FOUND.as_u16());
        return ApiError::new(StatusCode::NOT_FOUND, reason).into_response();
    };
    let result = if req.method() != endpoint.method() {
        Err(ApiError {
            header: HeaderValue::from_str(endpoint.method().as_str())
                .ok()
                .map(|v| (ALLOW, v)),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} takes {}", endpoint.path(), endpoint.method()),
            )
        })
    } else {
        match endpoint {
            Endpoint::Embed => embed(state, req).await,
            Endpoint::Health => Ok(json_response(
                StatusCode::OK,
                &json!({ "status": "ok", "subnet": state.served().id }),
            )),
            Endpoint::Selection => Ok(json_response(StatusCode::OK, &state.served().report)),
            Endpoint::Metrics => {
                let text = state.metrics.render(&state.served().id);
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(response)
            }
        }
    };
    let response = result.unwrap_or_else(ApiError::into_response);
    state
        .metrics
        .request(endpoint.path(), response.status().as_u16());
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// What an embed request's body holds, from its `Content-Type`.
enum Input {
    Image(Format),
    /// Little-endian float32, `[1, 3, H, W]`, with the shape the client declared.
    Tensor {
        declared: Option<Vec<usize>>,
    },
}

impl Input {
    fn from_headers(headers: &HeaderMap) -> Result<Input, ApiError> {
        const ACCEPTED: &str = "image/png, image/jpeg or application/octet-stream (float32 tensor)";
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("no Content-Type; send {ACCEPTED}"),
                )
            })?;
        match content_type.as_str() {
            "image/png" => Ok(Input::Image(Format::Png)),
            "image/jpeg" => Ok(Input::Image(Format::Jpeg)),
            "application/octet-stream" => {
                let declared = headers
                    .get("x-tensor-shape")
                    .map(|v| {
                        let text = v.to_str().unwrap_or_default();
                        text.split([',', 'x'])
                            .map(|d| d.trim().parse::<usize>())
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|_| {
                                ApiError::new(
                                    StatusCode::BAD_REQUEST,
                                    format!("X-Tensor-Shape `{text}` is not a list of sizes like 1,3,224,224"),
                                )
                            })
                    })
                    .transpose()?;
                Ok(Input::Tensor { declared })
            }
            other => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type `{other}` is not {ACCEPTED}"),
            )),
        }
    }
}

async fn embed(state: &State, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let (head, body) = req.into_parts();
    let limit = state.limits.max_body_bytes();
    match admit(state, &head, limit) {
        Ok(admitted) => run_embed(state, admitted, body, limit).await,
        Err(refused) => {
            // A client that waits for `100 Continue` sends no body: none to read.
            if !head.headers.contains_key(EXPECT) {
                drain(body, limit).await;
            }
            Err(refused)
        }
    }
}

/// An embed request the server takes on: what its body holds, and the
/// in-flight slot it holds until answered.
struct Admitted {
    input: Input,
    patch_tokens: bool,
    permit: OwnedSemaphorePermit,
}

/// Everything an embed request is refused for before its body is read: its
/// headers, its declared length, and a full server.
fn admit(state: &State, head: &Parts, limit: u64) -> Result<Admitted, ApiError> {
    let input = Input::from_headers(&head.headers)?;
    let patch_tokens = head.uri.query().is_some_and(|q| {
        q.split('&')
            .any(|pair| matches!(pair, "patch_tokens=1" | "patch_tokens=true"))
    });
    // Refused on the declared length, before a byte of the body is read.
    let declared = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    // Held from here to the end of inference: bodies buffered, images
    // decoded and blocking threads are all bounded by `max_in_flight`.
    let permit = Arc::clone(&state.in_flight)
        .try_acquire_owned()
        .map_err(|_| {
            state.metrics.shed(Shed::InFlight);
            ApiError::busy(format!(
                "{} requests are in flight (max_in_flight)",
                state.limits.max_in_flight
            ))
        })?;
    Ok(Admitted {
        input,
        patch_tokens,
        permit,
    })
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over the {limit}-byte limit (--max-body-mb)"),
    )
}

/// Reads an admitted request's body and runs it.
async fn run_embed(
    state: &State,
    admitted: Admitted,
    mut body: Incoming,
    limit: u64,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let Admitted {
        input,
        patch_tokens,
        permit,
    } = admitted;
    let limits = &state.limits;
    let read = tokio::time::timeout(limits.body_timeout, collect(&mut body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {:?} (body_timeout_s)",
                    limits.body_timeout
                ),
            )
        })??;
    let Some(body) = read else {
        drain(body, limit).await;
        return Err(too_large(limit));
    };
    let max_pixels = limits.max_pixels;
    // Taken after the body is in: a re-selection meanwhile is served already.
    let served = state.served();
    let (value, seconds) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        infer(&served, &body, input, max_pixels, patch_tokens)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("inference: {e}")))??;
    state.metrics.inference(seconds);
    Ok(json_response(StatusCode::OK, &value))
}

/// The whole body, or `None` once it is over `limit` bytes.
async fn collect(body: &mut Incoming, limit: u64) -> Result<Option<Bytes>, ApiError> {
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
        })?;
        read.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d));
        if read.len() as u64 > limit {
            return Ok(None);
        }
    }
    Ok(Some(Bytes::from(read)))
}

/// Reads and discards what a client still sends of a refused body, up to
/// `limit` more bytes or [`DRAIN_TIME`]: closing with unread data makes the
/// kernel reset the connection, and the client would lose the refusal.
async fn drain(mut body: Incoming, limit: u64) {
    let mut left = limit;
    let discard = async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(len) {
                Some(rest) => left = rest,
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// Decodes one image, runs it (repeated to the session's batch) and returns
/// the response object and the engine's time in seconds.
fn infer(
    served: &Served,
    body: &[u8],
    input: Input,
    max_pixels: u64,
    patch_tokens: bool,
) -> Result<(Value, f64), ApiError> {
    let [_, channels, height, width] = served.input_shape;
    let one = [1, channels, height, width];
    let bad = |reason: String| ApiError::new(StatusCode::BAD_REQUEST, reason);
    let image = match input {
        Input::Image(format) => match image::decode(body, format, max_pixels, height) {
            Ok(image) => image,
            Err(e @ DecodeError::TooLarge { .. }) => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{e} (max_pixels)"),
                ))
            }
            Err(e) => return Err(bad(e.to_string())),
        },
        Input::Tensor { declared } => {
            if declared.as_deref().is_some_and(|d| d != one.as_slice()) {
                return Err(bad(format!(
                    "X-Tensor-Shape {:?} is not the model's input {one:?}",
                    declared.unwrap_or_default()
                )));
            }
            tensor(body, one).map_err(bad)?
        }
    };
    let pixels = image
        .broadcast(served.input_shape)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "cannot fill input {:?} from one image {:?}",
                    served.input_shape,
                    image.dim()
                ),
            )
        })?
        .to_owned();
    let mut chosen = served.chosen.lock().unwrap_or_else(PoisonError::into_inner);
    let start = Instant::now();
    let out = chosen
        .session()
        .run(pixels.view())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let seconds = start.elapsed().as_secs_f64();
    drop(chosen);
    let mut value = json!({
        "subnet": served.id,
        "latency_ms": seconds * 1e3,
        "cls_token": out.cls_token.row(0).to_vec(),
    });
    if let Some(logits) = &out.logits {
        value["logits"] = json!(logits.row(0).to_vec());
        value["class"] = json!(out.top_class(0));
    }
    if patch_tokens {
        let tokens = out.patch_tokens.index_axis(Axis(0), 0);
        value["patch_tokens"] = json!(tokens
            .rows()
            .into_iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>());
    }
    Ok((value, seconds))
}

/// One image as little-endian float32 values in `shape`.
fn tensor(body: &[u8], shape: [usize; 4]) -> Result<Array4<f32>, String> {
    let values: usize = shape.iter().product();
    if body.len() != values * 4 {
        return Err(format!(
            "a raw tensor must be {values} little-endian float32 values ({} bytes) for shape {shape:?}, got {} bytes",
            values * 4,
            body.len()
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Array4::from_shape_vec(shape, data).map_err(|e| e.to_string())
}
