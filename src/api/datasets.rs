//! Datasets: create (empty or from a URI), list, show, list images, upload images, thumbnails,
//! delete, and their FID statistics (download, or register an `.npz`).
use std::io::Write;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{check_name, multipart_rejection, ApiJson, ApiPath, ApiQuery};
use super::{ApiError, AppState, Principal};
use crate::ingest::{self, looks_like_archive, IngestError, IngestSummary, Ingestor, Outcome};
use crate::jobs::{self, IngestSpec, JobKind};
use crate::store::{
    self, CacheScope, Dataset, DatasetId, DatasetImage, DatasetKind, DatasetStatus, Enqueued,
    JobId, NewJob, Scope,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDataset {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// Optional source: `file://` (under the instance's allowed roots), `http(s)://` (an image or
    /// archive), `s3://`, `gs://`, `az://` (a prefix). Ingested by a job: the answer is 202 with
    /// the dataset `ingesting` and the job's `Location`; the dataset becomes `ready` or `failed`
    /// when the job ends.
    #[serde(default)]
    #[schema(pattern = r"^(file|https?|s3|gs|az|abfss?)://[^\u0000-\u001F\u007F-\u009F]*$")]
    pub uri: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadResult {
    pub dataset: Dataset,
    #[serde(flatten)]
    pub summary: IngestSummary,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatasetPage {
    pub items: Vec<Dataset>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImagePage {
    pub items: Vec<DatasetImage>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DatasetPageQuery {
    /// From the previous page's `next_cursor`.
    #[param(format = Uuid)]
    pub cursor: Option<DatasetId>,
    /// Items per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImagePageQuery {
    /// From the previous page's `next_cursor` (a path).
    #[param(max_length = 4096)]
    pub cursor: Option<String>,
    /// Items per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatisticsQuery {
    /// Extractor id (see `GET /v1/extractors`) [default: the service's default].
    #[param(max_length = 200)]
    pub extractor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailQuery {
    /// The file's path in the dataset (as `GET /v1/datasets/{id}/images` and per-image results
    /// name it).
    #[param(max_length = 4096)]
    pub path: String,
    /// Longest side in pixels (default 128); never scaled up.
    #[param(minimum = 8, maximum = 1024)]
    pub size: Option<u32>,
}

fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(l) if (1..=500).contains(&l) => Ok(l),
        Some(l) => Err(ApiError::Unprocessable(format!(
            "limit must be 1 to 500, got {l}"
        ))),
    }
}

fn bad_cursor() -> ApiError {
    ApiError::Unprocessable("invalid cursor".into())
}

/// `POST /v1/datasets`: an empty dataset (201), or one filled from `uri` by an ingest job (202,
/// `Location` names the job).
#[utoipa::path(post, path = "/v1/datasets", tag = "datasets", request_body = CreateDataset,
    responses((status = 201, body = Dataset), (status = 202, body = Dataset, description = "ingesting from the URI", headers(("Location" = String, description = "the ingest job"), ("Content-Location" = String, description = "the dataset"))), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 415, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json"), (status = 429, body = super::Problem, content_type = "application/problem+json", description = "over the team's active-jobs quota (Retry-After) or the key's rate limit")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<CreateDataset>,
) -> Result<(StatusCode, HeaderMap, Json<Dataset>), ApiError> {
    let team = who.team(Scope::Write)?;
    check_name(&body.name)?;
    if let Some(uri) = &body.uri {
        ingest::check_uri_allowed(uri, &state.config.ingest)?;
    }
    // The dataset and its ingest job exist together or not at all: a dropped request leaves
    // nothing half made.
    let mut tx = state.pool.begin().await?;
    let adding = store::Usage {
        datasets: 1,
        ..Default::default()
    };
    store::check_quota(&mut tx, team, state.quotas(), adding)
        .await?
        .map_err(ApiError::QuotaExceeded)?;
    let job = body.uri.as_ref().map(|_| JobId::new());
    let ds = store::create_dataset(&mut tx, team, &body.name, body.uri.as_deref(), job).await?;
    if let (Some(uri), Some(job_id)) = (&body.uri, job) {
        let spec = IngestSpec {
            dataset: ds.id,
            uri: uri.clone(),
        };
        let enqueued = store::enqueue(
            &mut tx,
            &NewJob {
                id: Some(job_id),
                team,
                kind: JobKind::Ingest,
                spec: serde_json::to_value(&spec).map_err(anyhow::Error::from)?,
                datasets: vec![ds.id],
                idempotency_key: None,
                request_hash: spec.request_hash(),
                max_attempts: state.config.queue.max_attempts.max(1),
                finished: None,
                quotas: Some(state.quotas()),
            },
        )
        .await?;
        match enqueued {
            Enqueued::Created(_) => {}
            // Dropping the transaction takes the dataset back too.
            Enqueued::OverQuota(over) => return Err(ApiError::QuotaExceeded(over)),
            _ => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "the ingest job was not created"
                )))
            }
        }
    }
    tx.commit().await?;
    let mut headers = HeaderMap::new();
    let own = format!("/v1/datasets/{}", ds.id);
    let status = match job {
        Some(job) => {
            if let Ok(v) = format!("/v1/jobs/{job}").parse() {
                headers.insert(header::LOCATION, v);
            }
            if let Ok(v) = own.parse() {
                headers.insert(header::CONTENT_LOCATION, v);
            }
            StatusCode::ACCEPTED
        }
        None => {
            if let Ok(v) = own.parse() {
                headers.insert(header::LOCATION, v);
            }
            StatusCode::CREATED
        }
    };
    Ok((status, headers, Json(ds)))
}

/// `GET /v1/datasets`: the team's datasets, newest first.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", params(DatasetPageQuery),
    responses((status = 200, body = DatasetPage), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<DatasetPageQuery>,
) -> Result<Json<DatasetPage>, ApiError> {
    let team = who.team(Scope::Read)?;
    let limit = page_limit(q.limit)?;
    let page = store::list_datasets(&state.pool, team, q.cursor, limit).await?;
    Ok(Json(DatasetPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// `GET /v1/datasets/{id}`: counts, content hash, per-format summary.
#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, format = Uuid, description = "dataset id")),
    responses((status = 200, body = Dataset), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<DatasetId>,
) -> Result<Json<Dataset>, ApiError> {
    let team = who.team(Scope::Read)?;
    let ds = store::get_dataset(&state.pool, team, id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset"))?;
    Ok(Json(ds))
}

/// `GET /v1/datasets/{id}/images`: the dataset's files, by path.
#[utoipa::path(get, path = "/v1/datasets/{id}/images", tag = "datasets",
    params(("id" = String, Path, format = Uuid, description = "dataset id"), ImagePageQuery),
    responses((status = 200, body = ImagePage), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn images(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<DatasetId>,
    ApiQuery(q): ApiQuery<ImagePageQuery>,
) -> Result<Json<ImagePage>, ApiError> {
    let team = who.team(Scope::Read)?;
    let limit = page_limit(q.limit)?;
    if q.cursor.as_ref().is_some_and(|c| c.len() > 4096) {
        return Err(bad_cursor());
    }
    let page = store::list_dataset_images(&state.pool, team, id, q.cursor, limit)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset"))?;
    Ok(Json(ImagePage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// `DELETE /v1/datasets/{id}`: blobs no other dataset uses are deleted too.
#[utoipa::path(delete, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, format = Uuid, description = "dataset id")),
    responses((status = 204, description = "deleted"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<DatasetId>,
) -> Result<StatusCode, ApiError> {
    let team = who.team(Scope::Write)?;
    if store::delete_dataset(&state.pool, &state.blobs, team, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("dataset"))
    }
}

/// `GET /v1/datasets/{id}/statistics`: the dataset's FID statistics with one extractor, as the
/// `.npz` pytorch-fid and clean-fid write (`mu`, `sigma`; float64), which `gapmeter score`,
/// `calculate_frechet_distance` and clean-fid's custom statistics read. They exist once a job with
/// FID has read the whole dataset with that extractor (409 before); the `Gapmeter-Samples`
/// header gives the number of images they summarise.
#[utoipa::path(get, path = "/v1/datasets/{id}/statistics", tag = "datasets",
    params(("id" = String, Path, format = Uuid, description = "dataset id"), StatisticsQuery),
    responses((status = 200, description = "an .npz with `mu` (d) and `sigma` (d×d), float64", content_type = "application/octet-stream", body = Vec<u8>,
        headers(("Content-Disposition" = String, description = "attachment; filename=\"<dataset>-<extractor>.npz\""), ("Gapmeter-Samples" = u64, description = "images summarised"))),
        (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"), (status = 409, body = super::Problem, content_type = "application/problem+json", description = "not computed yet: run a job with FID on this dataset first"), (status = 422, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn statistics(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<DatasetId>,
    ApiQuery(q): ApiQuery<StatisticsQuery>,
) -> Result<(HeaderMap, Vec<u8>), ApiError> {
    let team = who.team(Scope::Read)?;
    let ds = store::get_dataset(&state.pool, team, id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset"))?;
    let manifest = jobs::extractor(q.extractor.as_deref(), &state.registry())?;
    // Registered statistics carry no sample count; computed ones do.
    let (gaussian, samples) = if ds.kind == DatasetKind::Statistics {
        let g = store::registered_statistics(&state.pool, ds.id, &manifest.id)
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "dataset {:?} has statistics for {:?} only, not for extractor {:?}",
                    ds.name, ds.statistics, manifest.id
                ))
            })?;
        (g, None)
    } else {
        let not_yet = || {
            ApiError::Conflict(format!(
                "dataset {:?} has no statistics with extractor {:?} yet: the first job with FID \
                 that reads the whole dataset with that extractor computes them (POST /v1/jobs)",
                ds.name, manifest.id
            ))
        };
        let hash = ds.content_hash.as_deref().ok_or_else(not_yet)?;
        let scope = CacheScope::for_team(team, state.config.cache.share_across_teams);
        let stats = jobs::cached_statistics(&state.pool, scope, &manifest, hash)
            .await?
            .filter(|s| s.n() >= 2)
            .ok_or_else(not_yet)?;
        (stats.gaussian(), Some(stats.n()))
    };
    let bytes = super::blocking(move || crate::score::statistics_npz(&gaussian)).await??;
    Ok((npz_headers(&ds.name, &manifest.id, samples), bytes))
}

/// `GET /v1/datasets/{id}/thumbnail?path=…&size=…`: one of the dataset's images as a JPEG
/// scaled to fit `size` × `size` (for galleries of the most out-of-domain images). Content
/// addressed, so cacheable; another team's dataset, or a path the dataset does not hold, is 404.
#[utoipa::path(get, path = "/v1/datasets/{id}/thumbnail", tag = "datasets",
    params(("id" = String, Path, format = Uuid, description = "dataset id"), ThumbnailQuery),
    responses((status = 200, description = "a JPEG", content_type = "image/jpeg", body = Vec<u8>),
        (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn thumbnail(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<DatasetId>,
    ApiQuery(q): ApiQuery<ThumbnailQuery>,
) -> Result<(HeaderMap, Vec<u8>), ApiError> {
    let team = who.team(Scope::Read)?;
    let size = q.size.unwrap_or(128);
    if !(8..=1024).contains(&size) {
        return Err(ApiError::Unprocessable(format!(
            "size must be 8 to 1024, got {size}"
        )));
    }
    let hash = store::member_hash(&state.pool, team, id, &q.path)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no image at {:?} in this dataset", q.path)))?;
    let bytes = state.blobs.get(&hash).await?;
    let jpeg = super::blocking(move || crate::imaging::thumbnail(&bytes, size))
        .await?
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("thumbnail of a stored image: {e}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("image/jpeg"),
    );
    // The bytes behind a hash never change; a private cache may keep the thumbnail.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, max-age=86400"),
    );
    if let Ok(v) = format!("\"{}-{size}\"", hex::encode(hash)).parse() {
        headers.insert(header::ETAG, v);
    }
    Ok((headers, jpeg))
}

fn npz_headers(dataset: &str, extractor: &str, samples: Option<u64>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    let file = format!("{}-{}.npz", file_stem(dataset), file_stem(extractor));
    if let Ok(v) = format!("attachment; filename=\"{file}\"").parse() {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(n) = samples {
        headers.insert("gapmeter-samples", n.into());
    }
    headers
}

/// `PUT /v1/datasets/{id}/statistics?extractor=…`: registers FID statistics, e.g. a benchmark's
/// published reference `.npz` (`mu`, `sigma`; float32 or float64, as pytorch-fid and clean-fid
/// write them), on an empty dataset, which becomes a `statistics` dataset: a job's source or
/// target for FID with that extractor (other metrics answer 422), never given images. Putting
/// the same extractor again replaces its statistics.
#[utoipa::path(put, path = "/v1/datasets/{id}/statistics", tag = "datasets",
    params(("id" = String, Path, format = Uuid, description = "dataset id"), StatisticsQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "an .npz with `mu` (d) and `sigma` (d×d)"),
    responses((status = 200, body = Dataset), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"), (status = 409, body = super::Problem, content_type = "application/problem+json", description = "the dataset holds images or is not ready"), (status = 413, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json", description = "not an .npz with mu and sigma, or an unknown extractor")),
    security(("bearer" = [])))]
pub async fn register_statistics(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<DatasetId>,
    ApiQuery(q): ApiQuery<StatisticsQuery>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Dataset>, ApiError> {
    let team = who.team(Scope::Write)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("statistics exceed the request size limit: {e}"))
        } else {
            ApiError::BadRequest(format!("unreadable body: {e}"))
        }
    })?;
    if store::get_dataset(&state.pool, team, id).await?.is_none() {
        return Err(ApiError::not_found("dataset"));
    }
    let manifest = jobs::extractor(q.extractor.as_deref(), &state.registry())?;
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&body))
    };
    let gaussian = super::blocking(move || {
        crate::score::read_statistics_from(std::io::Cursor::new(body), "the uploaded file")
    })
    .await?
    .map_err(|e| ApiError::Unprocessable(format!("{e:#}")))?;
    let ds = store::register_statistics(&state.pool, team, id, &manifest.id, &gaussian, &sha256)
        .await
        .map_err(|e| match e {
            store::RegisterError::NotFound => ApiError::not_found("dataset"),
            store::RegisterError::Conflict(m) => ApiError::Conflict(m),
            store::RegisterError::Db(e) => e.into(),
        })?;
    Ok(Json(ds))
}

/// `name` with everything but ASCII letters, digits, `.`, `-` and `_` replaced by `_`: safe in a
/// quoted `Content-Disposition` file name on every platform.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Multipart upload, documented for OpenAPI: any number of `file` parts.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// Images (JPEG, PNG, WebP, GIF, BMP, TIFF) or archives (.tar, .tar.gz, .zip) of them.
    #[schema(value_type = Vec<String>, format = Binary, min_items = 1)]
    files: Vec<Vec<u8>>,
}

/// `POST /v1/datasets/{id}/images`: multipart, streamed to disk part by part; each part an image
/// or an archive. The response lists every file's outcome; bad files are rejected with a reason
/// while the rest is accepted.
#[utoipa::path(post, path = "/v1/datasets/{id}/images", tag = "datasets",
    params(("id" = String, Path, format = Uuid, description = "dataset id")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, body = UploadResult), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"), (status = 409, body = super::Problem, content_type = "application/problem+json"), (status = 413, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 429, body = super::Problem, content_type = "application/problem+json", description = "over the team's active-jobs quota (Retry-After) or the key's rate limit")),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<DatasetId>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Json<UploadResult>, ApiError> {
    let team = who.team(Scope::Write)?;
    let mut form = form.map_err(multipart_rejection)?;
    let ds = store::get_dataset(&state.pool, team, id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset"))?;
    if ds.status != DatasetStatus::Ready {
        return Err(ApiError::Conflict(format!(
            "dataset {:?} is {}: files can be added to a ready dataset only",
            ds.name, ds.status
        )));
    }
    if ds.kind == DatasetKind::Statistics {
        return Err(ApiError::Conflict(format!(
            "dataset {:?} holds registered statistics, not images: upload images to another \
             dataset",
            ds.name
        )));
    }
    let limits = &state.config.limits;
    let quotas = {
        let mut conn = state.pool.acquire().await?;
        let quotas = store::team_quotas(&mut conn, team)
            .await?
            .over(state.quotas());
        let usage = store::team_usage(&mut conn, team).await?;
        quotas.remaining(&usage)
    };
    let mut ing = Ingestor::new(&state.pool, &state.blobs, limits, id).with_budget(quotas);
    let mut received = 0u64;
    let mut index = 0usize;
    let mut non_files: Vec<String> = Vec::new();
    let result: Result<(), ApiError> = async {
        while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
            // A part without a file name is a form field, not a file: skipped (and reported).
            let Some(name) = field.file_name().map(str::to_string) else {
                non_files.push(field.name().unwrap_or("").to_string());
                while field.chunk().await.map_err(multipart_error)?.is_some() {}
                continue;
            };
            index += 1;
            // An archive may be as large as the request; a single image only as the image limit.
            let cap = if looks_like_archive(&name) {
                limits.request_bytes
            } else {
                limits.image_bytes
            };
            let mut spool =
                tempfile::NamedTempFile::new().map_err(|e| ApiError::Internal(e.into()))?;
            let mut size = 0u64;
            let mut too_large = false;
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                received += chunk.len() as u64;
                size += chunk.len() as u64;
                if size > cap {
                    too_large = true;
                    continue; // keep reading so the next part can be parsed
                }
                spool
                    .write_all(&chunk)
                    .map_err(|e| ApiError::Internal(e.into()))?;
            }
            if too_large {
                if ing.admit(&name) {
                    ing.reject(&name, format!("part is over the {cap}-byte limit"));
                }
                continue;
            }
            ing.add_file(&name, spool.path())
                .await
                .map_err(|e| match e {
                    IngestError::Store(e) => ApiError::Internal(e),
                    IngestError::Interrupted => ApiError::Internal(anyhow::anyhow!("interrupted")),
                    IngestError::OverQuota(over) => ApiError::QuotaExceeded(over),
                })?;
        }
        Ok(())
    }
    .await;
    for field in &non_files {
        ing.reject(
            &format!("form field {field:?}"),
            "not a file part (no filename)",
        );
    }
    let result = result.and_then(|()| {
        if index == 0 {
            Err(ApiError::Unprocessable(
                "the upload contains no file parts (parts with a filename)".into(),
            ))
        } else {
            Ok(())
        }
    });
    state
        .metrics
        .upload_bytes
        .with_label_values(&["multipart"])
        .inc_by(received);
    record_outcomes(&state, &ing.summary);
    // Whatever was stored stays stored, even when the request ended in an error, except over a
    // quota: then the request is refused whole.
    store::refresh_dataset(&state.pool, id).await?;
    let result = match result {
        Ok(()) if ing.added().images > 0 => {
            // Another upload of the team may have counted since this one measured its room.
            let mut tx = state.pool.begin().await?;
            let fits = store::recheck_quota(&mut tx, team, state.quotas(), ing.added()).await?;
            tx.commit().await?;
            fits.map_err(ApiError::QuotaExceeded)
        }
        other => other,
    };
    if let Err(ApiError::QuotaExceeded(_)) = &result {
        store::remove_members(&state.pool, &state.blobs, id, &ing.added_paths()).await?;
    }
    result?;
    let dataset = store::get_dataset(&state.pool, team, id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset"))?;
    Ok(Json(UploadResult {
        dataset,
        summary: ing.summary,
    }))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("upload exceeds the request size limit: {e}"))
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {e}"))
    }
}

fn record_outcomes(state: &AppState, summary: &IngestSummary) {
    for f in &summary.files {
        let label = match f.outcome {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Unchanged => "unchanged",
            Outcome::Rejected => "rejected",
        };
        state.metrics.upload_files.with_label_values(&[label]).inc();
    }
}
