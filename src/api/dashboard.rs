//! The web dashboard: three static files compiled into the binary (no CDN, works offline),
//! served at `/`. Everything it shows comes from the public API with the user's key, so it has
//! no privileges of its own.
use axum::http::{header, HeaderMap, HeaderValue};

const INDEX: &str = include_str!("dashboard/index.html");
const APP: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Only this origin's script, style and API; thumbnails arrive as `blob:` URLs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> (HeaderMap, &'static str) {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Assets change with the binary; revalidating them is cheap.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (headers, body)
}

pub async fn index() -> (HeaderMap, &'static str) {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn app_js() -> (HeaderMap, &'static str) {
    asset("text/javascript; charset=utf-8", APP)
}

pub async fn style_css() -> (HeaderMap, &'static str) {
    asset("text/css; charset=utf-8", STYLE)
}
