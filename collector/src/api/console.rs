//! The web console: static files embedded in the binary at build time (`collector/console/`,
//! plain ES modules and a vendored uPlot: no Node toolchain at build time), served at `/`
//! and `/console/<file>` to anyone (they hold no data: every figure they show comes from the
//! read API, with the reader's token the page asks for).
//!
//! Each answer carries an `ETag` (revalidated with `If-None-Match`: 304), gzip when the client
//! takes it (compressed once, on first use), and security headers: a Content-Security-Policy
//! that allows scripts, styles and connections only from the collector itself (no inline
//! script, no `eval`), `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer`.

use std::io::Write;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// Whether its name changes with its content (vendored files carry their version in
    /// `VENDORED.md`; a new version is a new build), so browsers may keep it for a day.
    long_lived: bool,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../console/", $name)),
            long_lived: false,
        }
    };
    ($name:literal, $type:expr, long) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../console/", $name)),
            long_lived: true,
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("util.js", JS),
    asset!("fleet.js", JS),
    asset!("agent.js", JS),
    asset!("explore.js", JS),
    asset!("chart.js", JS),
    asset!("quarantine.js", JS),
    asset!("ingest.js", JS),
    asset!("uplot.min.js", JS, long),
    asset!("uplot.min.css", "text/css; charset=utf-8", long),
    asset!("uplot.LICENSE", "text/plain; charset=utf-8", long),
];

/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Per asset: its ETag and, once asked for, its gzip.
struct Prepared {
    etag: String,
    gzip: OnceLock<Option<Vec<u8>>>,
}

fn prepared() -> &'static [Prepared] {
    static PREPARED: OnceLock<Vec<Prepared>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| Prepared {
                etag: format!("\"{:016x}\"", fnv1a(asset.body)),
                gzip: OnceLock::new(),
            })
            .collect()
    })
}

/// FNV-1a, 64 bits: a content tag, not a security measure.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

/// The security headers of every console answer.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let found = ASSETS
        .iter()
        .zip(prepared())
        .find(|(asset, _)| asset.name == name);
    let Some((asset, prepared)) = found else {
        let mut response = (StatusCode::NOT_FOUND, "no such file in the console\n").into_response();
        secure(response.headers_mut());
        return response;
    };
    let cache = if asset.long_lived {
        "public, max-age=86400"
    } else {
        "no-cache"
    };
    let matches = request
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == prepared.etag));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let takes_gzip = request
            .get(ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
        let compressed = takes_gzip
            .then(|| prepared.gzip.get_or_init(|| gzip(asset.body)).as_deref())
            .flatten()
            .filter(|gz| gz.len() < asset.body.len());
        match compressed {
            Some(gz) => {
                let mut response = gz.to_vec().into_response();
                response
                    .headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                response
            }
            None => asset.body.into_response(),
        }
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if let Ok(tag) = HeaderValue::from_str(&prepared.etag) {
        headers.insert(ETAG, tag);
    }
    secure(headers);
    response
}

/// `GET /`: the console's page.
pub async fn get_index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /console/{file}`: its scripts, styles and the vendored uPlot.
pub async fn get_asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let Some(from) = line.split('"').nth(1) else {
                    continue;
                };
                let file = from.trim_start_matches("./");
                assert!(
                    names.contains(&file),
                    "{}: {file} is not embedded",
                    asset.name
                );
            }
        }
        let index = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(
            !index.contains("<script>"),
            "no inline script (the CSP forbids it)"
        );
        for src in index.split("src=\"").skip(1) {
            let file = src
                .split('"')
                .next()
                .unwrap()
                .trim_start_matches("/console/");
            assert!(names.contains(&file), "index.html: {file} is not embedded");
        }
    }

    #[test]
    fn answers_are_tagged_compressed_and_revalidated() {
        let mut request = HeaderMap::new();
        request.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
        let first = serve("app.js", &request);
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[CONTENT_ENCODING], "gzip");
        assert!(
            first.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let tag = first.headers()[ETAG].clone();
        request.insert(IF_NONE_MATCH, tag);
        assert_eq!(serve("app.js", &request).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            serve("../Cargo.toml", &request).status(),
            StatusCode::NOT_FOUND
        );
    }
}
