//! The page and its two assets: compiled into the binary, or, for the lab's
//! "update a service" step, read from a directory at each request
//! (`WEBUI_ASSETS_DIR`), so that an edited stylesheet shows at the next
//! reload without rebuilding anything (the original lab rebuilt an image;
//! here that would be a Rust build of minutes).
//!
//! A directory serves the page's own three files by their fixed names,
//! nothing else under it and nothing outside it: no path from a request
//! ever reaches the file system.

use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// One file of the page.
#[derive(Clone, Copy)]
struct Asset {
    /// Its name in the directory (and in `services/webui/`).
    file: &'static str,
    route: &'static str,
    content_type: &'static str,
    built_in: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        file: "index.html",
        route: "/",
        content_type: "text/html; charset=utf-8",
        built_in: include_str!("index.html"),
    },
    Asset {
        file: "app.js",
        route: "/static/app.js",
        content_type: "text/javascript; charset=utf-8",
        built_in: include_str!("app.js"),
    },
    Asset {
        file: "style.css",
        route: "/static/style.css",
        content_type: "text/css; charset=utf-8",
        built_in: include_str!("style.css"),
    },
];

/// Where the page comes from.
#[derive(Clone, Debug, Default)]
pub struct Assets {
    /// `None`: the files compiled in.
    dir: Option<Arc<Path>>,
}

/// A `WEBUI_ASSETS_DIR` that cannot be served.
#[derive(Debug, thiserror::Error)]
#[error(
    "WEBUI_ASSETS_DIR {dir:?} is not a directory webui can read ({reason}); \
     it should hold index.html, app.js and style.css, like services/webui/"
)]
pub struct AssetsError {
    dir: PathBuf,
    reason: String,
}

impl Assets {
    /// The page as compiled in.
    pub fn built_in() -> Self {
        Self::default()
    }

    /// The page read from `dir` at each request. A file missing there is
    /// said now, and answered 500 with its path until it is back.
    pub fn from_dir(dir: PathBuf) -> Result<Self, AssetsError> {
        let refuse = |reason: String| AssetsError {
            dir: dir.clone(),
            reason,
        };
        let meta = std::fs::metadata(&dir).map_err(|error| refuse(error.to_string()))?;
        if !meta.is_dir() {
            return Err(refuse("not a directory".into()));
        }
        let missing: Vec<&str> = ASSETS
            .iter()
            .map(|asset| asset.file)
            .filter(|file| !dir.join(file).is_file())
            .collect();
        if missing.is_empty() {
            tracing::info!(dir = %dir.display(), "webui serves its page from {}: edits show at the next reload", dir.display());
        } else {
            tracing::warn!(dir = %dir.display(), ?missing, "webui serves its page from {}, which lacks {missing:?}", dir.display());
        }
        Ok(Self {
            dir: Some(dir.into()),
        })
    }

    /// The page's three routes.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        ASSETS.iter().fold(Router::new(), |router, &asset| {
            let dir = self.dir.clone();
            router.route(
                asset.route,
                get(move || async move { serve(asset, dir.as_deref()).await }),
            )
        })
    }
}

async fn serve(asset: Asset, dir: Option<&Path>) -> Response {
    let Some(dir) = dir else {
        let headers = [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ];
        return (headers, asset.built_in).into_response();
    };
    let path = dir.join(asset.file);
    match tokio::fs::read(&path).await {
        // Revalidated at every load: an edit shows at the next reload.
        Ok(body) => {
            let headers = [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ];
            (headers, body).into_response()
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read a page file");
            let body = format!("webui cannot read {}: {error}\n", path.display());
            (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
        }
    }
}
