//! `server.allowed_origins`: which browser pages may open a subscription transport.
//!
//! Browsers send `Origin` with every WebSocket upgrade and cross-origin request, and
//! attach the site's cookies whatever page made the request. CORS only decides whether
//! that page may *read* an HTTP response; a WebSocket is not subject to it at all. So the
//! gateway itself refuses transports from origins it does not know, before any upgrade or
//! upstream work. Requests without `Origin` come from non-browser clients and pass.

use http::{header, HeaderMap, Response, StatusCode};

use crate::config::AllowedOrigins;
use crate::responses::{json_error, ResponseBody};

/// 403 when the request's `Origin` is not allowed; `None` lets it through.
pub(crate) fn refuse(
    headers: &HeaderMap,
    allowed: &AllowedOrigins,
) -> Option<Response<ResponseBody>> {
    let refused = headers
        .get_all(header::ORIGIN)
        .iter()
        .find(|origin| !allowed.allows(origin.as_bytes()))?;
    let origin = String::from_utf8_lossy(refused.as_bytes());
    let origin: String = origin.chars().take(200).collect();
    Some(json_error(
        StatusCode::FORBIDDEN,
        &format!("origin \"{origin}\" is not allowed; add it to server.allowed_origins"),
        "ORIGIN_NOT_ALLOWED",
    ))
}
