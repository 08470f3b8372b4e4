//! The blank-filling playground (`GET /`): one HTML page compiled into the binary (no CDN, no
//! build step): a text box with `[MASK]` / `[gMASK]` buttons, GLM-130B's generation controls,
//! the fills streamed in place and highlighted, time to first token and tokens/s.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page.
pub(crate) const PAGE: &str = include_str!("page.html");

pub(crate) async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}
