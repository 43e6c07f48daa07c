//! CORS: the preflight answer, and the headers that let a browser page read a response.
//! WebSocket upgrades are not subject to CORS; `server.allowed_origins` covers them.

use http::{header, Request, Response, StatusCode};

use crate::responses::{full, RequestBody, ResponseBody};
use crate::state::GatewayState;

/// Answers a CORS preflight: which methods and headers a browser may use.
pub(crate) fn preflight(
    req: &Request<RequestBody>,
    state: &GatewayState,
) -> Response<ResponseBody> {
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return response;
    };
    if add_cors(&mut response, origin, state) {
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            header::HeaderValue::from_static("600"),
        );
    }
    response
}

/// Adds `Access-Control-Allow-Origin` (and credentials) when `origin` is allowed.
pub(crate) fn add_cors(
    response: &mut Response<ResponseBody>,
    origin: &header::HeaderValue,
    state: &GatewayState,
) -> bool {
    let cors = &state.server.cors;
    let allowed = origin
        .to_str()
        .ok()
        .and_then(|origin| cors.allow_origin(origin));
    let h = response.headers_mut();
    let same_for_everyone = cors.any_origin && !cors.allow_credentials;
    if !same_for_everyone && !cors.allow_origins.is_empty() {
        h.append(header::VARY, header::HeaderValue::from_static("origin"));
    }
    let Some(value) = allowed.and_then(|a| header::HeaderValue::from_str(a).ok()) else {
        return false;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::HeaderValue::from_static("true"),
        );
    }
    true
}
