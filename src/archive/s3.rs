//! The S3-compatible archive store: the production choice (AWS S3, MinIO, Ceph RGW, …).
//!
//! Requests are presigned with SigV4 by [`rusty_s3`] (a sans-IO signer: it only builds URLs,
//! so the HTTP side stays ours) and sent with reqwest over rustls. Every header that matters
//! for integrity or retention (`content-md5`, `x-amz-object-lock-*`) is part of the signature,
//! and the body carries a `Content-MD5`, so the store refuses an object damaged on the way
//! even though a presigned payload is otherwise unsigned.
//!
//! Objects up to the multipart threshold go in one `PUT`; larger ones in a multipart upload
//! (parts of at least 5 MiB, sent in order), aborted on failure so no orphaned parts keep
//! consuming storage (a crash mid-upload can still leave some: give the bucket a lifecycle
//! rule that aborts incomplete uploads after a day).
//!
//! Write-once semantics: a `PUT` carries `If-None-Match: *`, and a multipart upload first
//! checks whether the object exists. When it does, its bytes are compared: equal is success
//! (the retry of an upload whose answer was lost), different is [`ArchiveError::Conflict`].
//! With object lock (`COMPLIANCE` or `GOVERNANCE`) each object also carries a retain-until
//! date, so not even the bucket owner can delete it before then (the bucket must be created
//! with object lock enabled).

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest as _, Md5};
use reqwest::header::{CONTENT_LENGTH, ETAG};
use reqwest::{Response, StatusCode};
use rusty_s3::actions::{
    CompleteMultipartUpload, CompleteMultipartUploadResponse, CreateMultipartUpload, ListObjectsV2,
};
use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle};
use tracing::{debug, warn};

use super::config::ObjectLockMode;
use super::{validate_key, validate_prefix, ArchiveError, ArchiveStore, ObjectInfo, PutOptions};
use crate::redact::Redacted;

/// Smallest part S3 accepts (except the last one).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Most parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// Default size above which objects go through a multipart upload, and default part size.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// Longest S3 error code kept from a response body (they are short ASCII words).
const MAX_CODE_LEN: usize = 64;
/// Most bytes read from an error response body.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Everything an [`S3Store`] needs, with the secret already resolved.
#[derive(Clone, PartialEq)]
pub struct S3Settings {
    /// `https://host[:port][/path]`; `http://` only for loopback (checked by the config).
    pub endpoint: String,
    /// The SigV4 region (MinIO and s3s accept any; AWS needs the bucket's region).
    pub region: String,
    /// Bucket name; it must exist.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key. Never logged (see the `Debug` impl).
    pub secret_key: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`. Needed for
    /// endpoints given as an IP address and for most MinIO/Ceph/s3s deployments.
    pub path_style: bool,
    /// Objects larger than this go through a multipart upload.
    pub multipart_threshold: u64,
    /// Size of each multipart part (the last may be smaller); at least [`MIN_PART_SIZE`].
    pub part_size: u64,
    /// Object-lock mode to request on every object, if any.
    pub object_lock: Option<ObjectLockMode>,
    /// Retention applied when a put names no `retention_until` (only with `object_lock`).
    pub default_retention: Option<Duration>,
    /// Per-request timeout (connect, send and receive).
    pub timeout: Duration,
    /// Extra PEM root certificates (a hospital's private CA), besides the public web roots.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &Redacted(&self.secret_key))
            .field("path_style", &self.path_style)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("object_lock", &self.object_lock)
            .field("default_retention", &self.default_retention)
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Objects in an S3 bucket; see the module docs.
pub struct S3Store {
    bucket: Bucket,
    credentials: Credentials,
    client: reqwest::Client,
    multipart_threshold: u64,
    part_size: u64,
    object_lock: Option<ObjectLockMode>,
    default_retention: Option<Duration>,
    timeout: Duration,
    description: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("store", &self.description)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Build a store (and its HTTP client) from `settings`. Sends nothing.
    pub fn new(settings: S3Settings) -> Result<S3Store, ArchiveError> {
        let config = |field, message: String| ArchiveError::Config { field, message };
        let endpoint = reqwest::Url::parse(&settings.endpoint)
            .map_err(|e| config("archive.endpoint", format!("not a valid URL: {e}")))?;
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(config(
                "archive.endpoint",
                "must not contain credentials; use access_key and secret_key".into(),
            ));
        }
        if settings.part_size < MIN_PART_SIZE {
            return Err(config(
                "archive.multipart_part_bytes",
                format!("must be at least {MIN_PART_SIZE} (5 MiB, the S3 minimum)"),
            ));
        }
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint.clone(),
            style,
            settings.bucket.clone(),
            settings.region.clone(),
        )
        .map_err(|e| {
            config(
                "archive.bucket",
                format!("cannot address bucket at this endpoint ({e:?}); path_style = true is needed for IP endpoints"),
            )
        })?;
        let credentials =
            Credentials::new(settings.access_key.clone(), settings.secret_key.clone());

        // reqwest is built without a bundled crypto provider; use the process default.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .timeout(settings.timeout)
            // S3 answers what it means; a redirect (wrong region) is reported, not followed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("huizhen/", env!("CARGO_PKG_VERSION")));
        builder = if crate::webhook::is_loopback(&endpoint) {
            // An HTTP(S)_PROXY in the environment must not capture requests to this machine.
            builder.no_proxy()
        } else {
            builder.https_only(endpoint.scheme() == "https")
        };
        if let Some(ca_file) = &settings.ca_file {
            let pem = std::fs::read(ca_file).map_err(|e| ArchiveError::io(ca_file, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                config(
                    "archive.ca_file",
                    format!("not a PEM certificate bundle: {e}"),
                )
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(ArchiveError::Client)?;

        let description = format!(
            "s3 {}://{}{}{} bucket={} ({})",
            endpoint.scheme(),
            endpoint.host_str().unwrap_or(""),
            endpoint.port().map(|p| format!(":{p}")).unwrap_or_default(),
            endpoint.path().trim_end_matches('/'),
            settings.bucket,
            if settings.path_style {
                "path-style"
            } else {
                "virtual-host"
            },
        );
        Ok(S3Store {
            bucket,
            credentials,
            client,
            multipart_threshold: settings.multipart_threshold,
            part_size: settings.part_size,
            object_lock: settings.object_lock,
            default_retention: settings.default_retention,
            timeout: settings.timeout,
            description,
        })
    }

    /// How long a presigned URL stays valid: long enough to cover the request's own
    /// timeout plus clock skew between us and the store.
    fn validity(&self) -> Duration {
        self.timeout + Duration::from_secs(300)
    }

    /// The object-lock headers for one object, if object lock is configured and a retention
    /// date applies.
    fn lock_headers(&self, options: PutOptions) -> Vec<(&'static str, String)> {
        let Some(mode) = self.object_lock else {
            return Vec::new();
        };
        let until = options.retention_until.or_else(|| {
            let retention = self.default_retention?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
            Some((now + retention).as_secs())
        });
        match until.and_then(retain_until_date) {
            Some(date) => vec![
                ("x-amz-object-lock-mode", mode.header_value().to_owned()),
                ("x-amz-object-lock-retain-until-date", date),
            ],
            None => Vec::new(),
        }
    }

    /// Send one request, turning transport failures into typed errors.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, ArchiveError> {
        request.send().await.map_err(|e| self.transport_error(e))
    }

    fn transport_error(&self, e: reqwest::Error) -> ArchiveError {
        if e.is_timeout() {
            ArchiveError::Timeout {
                store: self.description.clone(),
                after: self.timeout,
            }
        } else {
            ArchiveError::Unreachable {
                store: self.description.clone(),
                // The URL carries the signature and access key id: keep it out of logs.
                reason: error_chain(&e.without_url()),
            }
        }
    }

    /// Pass a 2xx response through; turn anything else into a typed error. A 404 is
    /// [`ArchiveError::NotFound`] only when it is about the object (`NoSuchKey`), not the
    /// bucket.
    async fn check(&self, response: Response, key: &str) -> Result<Response, ArchiveError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let code = error_code(response).await;
        Err(status_error(status, code, key))
    }

    async fn body(&self, response: Response) -> Result<Bytes, ArchiveError> {
        response.bytes().await.map_err(|e| self.transport_error(e))
    }

    async fn text(&self, response: Response) -> Result<String, ArchiveError> {
        let body = self.body(response).await?;
        String::from_utf8(body.to_vec())
            .map_err(|_| ArchiveError::Protocol("response body is not UTF-8".into()))
    }

    /// The object under `key` exists already: success if it holds `bytes`, else a conflict.
    async fn confirm_existing(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        match self.get(key).await {
            Ok(existing) if existing == bytes => {
                debug!(key, "object already archived with the same content");
                Ok(())
            }
            Ok(_) => Err(ArchiveError::Conflict {
                key: key.to_owned(),
            }),
            Err(ArchiveError::NotFound { .. }) => Err(ArchiveError::Protocol(format!(
                "store reported {key:?} as existing, but it cannot be read"
            ))),
            Err(e) => Err(e),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, ArchiveError> {
        let url = self
            .bucket
            .head_object(Some(&self.credentials), key)
            .sign(self.validity());
        let response = self.send(self.client.head(url)).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            // A HEAD answer has no body, so a missing bucket also looks like this; the
            // multipart upload that follows reports that properly.
            StatusCode::NOT_FOUND => Ok(false),
            // AWS answers 403 for a missing object to callers without s3:ListBucket. Go on:
            // the upload itself will say whether we may write, and `If-None-Match` on the
            // completion still protects an existing object.
            StatusCode::FORBIDDEN => Ok(false),
            s => Err(status_error(s, None, key)),
        }
    }

    async fn put_single(
        &self,
        key: &str,
        bytes: Bytes,
        lock: &[(&'static str, String)],
    ) -> Result<(), ArchiveError> {
        let md5 = content_md5(&bytes);
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        action.headers_mut().insert("content-md5", md5.clone());
        for (name, value) in lock {
            action.headers_mut().insert(*name, value.clone());
        }
        let url = action.sign(self.validity());
        let mut request = self
            .client
            .put(url)
            .header("content-md5", md5)
            .header("if-none-match", "*");
        for (name, value) in lock {
            request = request.header(*name, value);
        }
        if bytes.is_empty() {
            // reqwest leaves Content-Length out for an empty body; S3 wants it.
            request = request.header(CONTENT_LENGTH, "0");
        }
        let response = self.send(request.body(bytes.clone())).await?;
        if response.status() == StatusCode::PRECONDITION_FAILED {
            return self.confirm_existing(key, &bytes).await;
        }
        self.check(response, key).await.map(drop)
    }

    async fn put_multipart(
        &self,
        key: &str,
        bytes: Bytes,
        lock: &[(&'static str, String)],
    ) -> Result<(), ArchiveError> {
        let len = bytes.len() as u64;
        let parts = len.div_ceil(self.part_size);
        if parts > MAX_PARTS {
            return Err(ArchiveError::TooLarge {
                key: key.to_owned(),
                reason: format!(
                    "{parts} parts of {} bytes, S3 allows {MAX_PARTS}",
                    self.part_size
                ),
            });
        }
        // A retried upload whose first answer was lost: compare rather than send it again.
        if self.exists(key).await? {
            return self.confirm_existing(key, &bytes).await;
        }

        let mut action = CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), key);
        for (name, value) in lock {
            action.headers_mut().insert(*name, value.clone());
        }
        let mut request = self.client.post(action.sign(self.validity()));
        for (name, value) in lock {
            request = request.header(*name, value);
        }
        let response = self.send(request).await?;
        let response = self.check(response, key).await?;
        let body = self.text(response).await?;
        let created = CreateMultipartUpload::parse_response(&body)
            .map_err(|e| ArchiveError::Protocol(format!("CreateMultipartUpload answer: {e}")))?;
        let upload_id = created.upload_id().to_owned();

        match self.upload_parts(key, &upload_id, &bytes).await {
            Ok(MultipartEnd::Completed) => Ok(()),
            Ok(MultipartEnd::Exists) => {
                self.abort(key, &upload_id).await;
                self.confirm_existing(key, &bytes).await
            }
            Err(e) => {
                self.abort(key, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        bytes: &Bytes,
    ) -> Result<MultipartEnd, ArchiveError> {
        let mut etags = Vec::new();
        let part_size = self.part_size as usize;
        for (index, start) in (0..bytes.len()).step_by(part_size).enumerate() {
            let part = bytes.slice(start..(start + part_size).min(bytes.len()));
            let number = u16::try_from(index + 1).expect("at most MAX_PARTS parts");
            let md5 = content_md5(&part);
            let mut action =
                self.bucket
                    .upload_part(Some(&self.credentials), key, number, upload_id);
            action.headers_mut().insert("content-md5", md5.clone());
            let request = self
                .client
                .put(action.sign(self.validity()))
                .header("content-md5", md5)
                .body(part);
            let response = self.send(request).await?;
            let response = self.check(response, key).await?;
            let etag = response
                .headers()
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| ArchiveError::Protocol("UploadPart answer has no ETag".into()))?
                .to_owned();
            etags.push(etag);
        }

        let action = CompleteMultipartUpload::new(
            &self.bucket,
            Some(&self.credentials),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(self.validity());
        let request = self
            .client
            .post(url)
            .header("if-none-match", "*")
            .body(action.body());
        let response = self.send(request).await?;
        if response.status() == StatusCode::PRECONDITION_FAILED {
            return Ok(MultipartEnd::Exists);
        }
        let response = self.check(response, key).await?;
        // S3 can answer 200 and still report an error in the body.
        let body = self.text(response).await?;
        CompleteMultipartUploadResponse::parse(&body).map_err(|_| match extract_code(&body) {
            Some(code) => ArchiveError::Server {
                status: 200,
                code: Some(code),
            },
            None => ArchiveError::Protocol("CompleteMultipartUpload answer not understood".into()),
        })?;
        Ok(MultipartEnd::Completed)
    }

    /// Best effort: a failed abort leaves parts for the bucket's lifecycle rule to remove.
    async fn abort(&self, key: &str, upload_id: &str) {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), key, upload_id)
            .sign(self.validity());
        match self.send(self.client.delete(url)).await {
            Ok(r) if r.status().is_success() => debug!(key, "multipart upload aborted"),
            Ok(r) => warn!(
                key,
                status = r.status().as_u16(),
                "aborting multipart upload failed"
            ),
            Err(e) => warn!(key, error = %e, "aborting multipart upload failed"),
        }
    }
}

enum MultipartEnd {
    Completed,
    /// The object appeared while we uploaded (`If-None-Match` refused the completion).
    Exists,
}

#[async_trait]
impl ArchiveStore for S3Store {
    async fn put(&self, key: &str, bytes: Bytes, options: PutOptions) -> Result<(), ArchiveError> {
        validate_key(key)?;
        let lock = self.lock_headers(options);
        if bytes.len() as u64 > self.multipart_threshold {
            self.put_multipart(key, bytes, &lock).await
        } else {
            self.put_single(key, bytes, &lock).await
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        validate_key(key)?;
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(self.validity());
        let response = self.send(self.client.get(url)).await?;
        let response = self.check(response, key).await?;
        self.body(response).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ArchiveError> {
        validate_prefix(prefix)?;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            if !prefix.is_empty() {
                action.with_prefix(prefix);
            }
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let response = self
                .send(self.client.get(action.sign(self.validity())))
                .await?;
            let response = self.check(response, prefix).await?;
            let body = self.text(response).await?;
            let page = ListObjectsV2::parse_response(&body)
                .map_err(|e| ArchiveError::Protocol(format!("ListObjectsV2 answer: {e}")))?;
            out.extend(page.contents.into_iter().map(|c| ObjectInfo {
                size: c.size.unwrap_or(0),
                key: c.key,
            }));
            match page.next_continuation_token {
                Some(next) if Some(&next) == token.as_ref() => {
                    return Err(ArchiveError::Protocol(
                        "ListObjectsV2 repeated its continuation token".into(),
                    ));
                }
                Some(next) => token = Some(next),
                None => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// The typed error for a non-2xx status.
fn status_error(status: StatusCode, code: Option<String>, key: &str) -> ArchiveError {
    match status.as_u16() {
        401 | 403 => ArchiveError::Denied {
            status: status.as_u16(),
            code,
        },
        404 if code.as_deref().is_none_or(|c| c == "NoSuchKey") => ArchiveError::NotFound {
            key: key.to_owned(),
        },
        s => ArchiveError::Server { status: s, code },
    }
}

/// The S3 error code of an error response, if its (bounded) body has one.
async fn error_code(mut response: Response) -> Option<String> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    extract_code(&String::from_utf8_lossy(&body))
}

/// `<Code>…</Code>` from an S3 error document, kept only if it is a short ASCII word so a
/// hostile or broken server cannot put arbitrary text into our logs and metrics.
fn extract_code(body: &str) -> Option<String> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    let code = &body[start..start + len];
    let plain = !code.is_empty()
        && code.len() <= MAX_CODE_LEN
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    plain.then(|| code.to_owned())
}

/// Base64 of the MD5 of `bytes`, for the `Content-MD5` header. MD5 is what S3 checks bodies
/// with; it guards against corruption in transit, not against an attacker (TLS does that).
fn content_md5(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(bytes))
}

/// Unix seconds as the ISO 8601 date S3 wants in `x-amz-object-lock-retain-until-date`.
fn retain_until_date(unix_secs: u64) -> Option<String> {
    let secs = i64::try_from(unix_secs).ok()?;
    Some(jiff::Timestamp::from_second(secs).ok()?.to_string())
}

/// An error and its sources, `: `-joined, for a log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            bucket: "recordings".into(),
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            path_style: true,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_MULTIPART_THRESHOLD,
            object_lock: None,
            default_retention: None,
            timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }

    #[test]
    fn codes_are_extracted_and_bounded() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
                    <Message>The request signature we calculated does not match</Message></Error>";
        assert_eq!(extract_code(body).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(extract_code("<Code>bad code with spaces</Code>"), None);
        assert_eq!(
            extract_code(&format!("<Code>{}</Code>", "A".repeat(65))),
            None
        );
        assert_eq!(extract_code("no xml"), None);
    }

    #[test]
    fn statuses_map_to_fault_groups() {
        let s = |n| StatusCode::from_u16(n).unwrap();
        assert!(matches!(
            status_error(s(403), None, "k"),
            ArchiveError::Denied { status: 403, .. }
        ));
        assert!(matches!(
            status_error(s(401), None, "k"),
            ArchiveError::Denied { .. }
        ));
        assert!(matches!(
            status_error(s(404), Some("NoSuchKey".into()), "k"),
            ArchiveError::NotFound { .. }
        ));
        assert!(matches!(
            status_error(s(404), Some("NoSuchBucket".into()), "k"),
            ArchiveError::Server { status: 404, .. }
        ));
        assert!(matches!(
            status_error(s(503), None, "k"),
            ArchiveError::Server { status: 503, .. }
        ));
    }

    #[test]
    fn md5_and_dates_match_s3_formats() {
        // RFC 1321 test vector "abc" = 900150983cd24fb0d6963f7d28e17f72.
        assert_eq!(content_md5(b"abc"), "kAFQmDzST7DWlj99KOF/cg==");
        assert_eq!(
            retain_until_date(1_893_456_000).as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
    }

    #[test]
    fn lock_headers_follow_the_configuration() {
        let store = S3Store::new(settings()).unwrap();
        assert!(store
            .lock_headers(PutOptions {
                retention_until: Some(1)
            })
            .is_empty());

        let mut s = settings();
        s.object_lock = Some(ObjectLockMode::Compliance);
        let store = S3Store::new(s.clone()).unwrap();
        // No date given and no default: the bucket's default retention applies.
        assert!(store.lock_headers(PutOptions::default()).is_empty());
        let h = store.lock_headers(PutOptions {
            retention_until: Some(1_893_456_000),
        });
        assert_eq!(
            h,
            [
                ("x-amz-object-lock-mode", "COMPLIANCE".to_owned()),
                (
                    "x-amz-object-lock-retain-until-date",
                    "2030-01-01T00:00:00Z".to_owned()
                ),
            ]
        );
        s.default_retention = Some(Duration::from_secs(86_400));
        let store = S3Store::new(s).unwrap();
        let h = store.lock_headers(PutOptions::default());
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn description_and_debug_hold_no_secret() {
        let store = S3Store::new(settings()).unwrap();
        let d = store.describe();
        assert_eq!(d, "s3 http://127.0.0.1:9000 bucket=recordings (path-style)");
        let dbg = format!("{:?} {:?}", settings(), store);
        assert!(!dbg.contains("EXAMPLEKEY"), "{dbg}");
    }

    #[test]
    fn bad_settings_name_their_field() {
        let mut s = settings();
        s.part_size = 1024;
        assert!(matches!(
            S3Store::new(s),
            Err(ArchiveError::Config {
                field: "archive.multipart_part_bytes",
                ..
            })
        ));
        let mut s = settings();
        s.endpoint = "http://user:pw@127.0.0.1:9000".into();
        assert!(matches!(
            S3Store::new(s),
            Err(ArchiveError::Config {
                field: "archive.endpoint",
                ..
            })
        ));
        let mut s = settings();
        s.path_style = false; // an IP endpoint cannot be virtual-host addressed
        assert!(matches!(
            S3Store::new(s),
            Err(ArchiveError::Config {
                field: "archive.bucket",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_without_leaking_the_url() {
        // Bind and drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = settings();
        s.endpoint = format!("http://127.0.0.1:{port}");
        let store = S3Store::new(s).unwrap();
        let err = store.get("a/b").await.unwrap_err();
        match &err {
            ArchiveError::Unreachable { reason, .. } => {
                assert!(!reason.contains("X-Amz"), "{reason}");
                assert!(!reason.contains("AKIDEXAMPLE"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
