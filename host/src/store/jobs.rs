//! Jobs: a row per job with its state and progress, and a folder of result
//! files that the job runner fills.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::images::{IMAGE_COLUMNS, ImageRecord};
use super::{Store, StoreError, is_valid_id, new_id, now_unix, remove_path};
use crate::job::spec::{JobSpec, JobState, Manifest};

/// The name of the manifest inside a job's folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: String,
    /// The owner; never sent to clients.
    #[serde(skip_serializing)]
    pub session: String,
    pub state: JobState,
    /// The reason the job failed, was cancelled or was interrupted.
    pub message: Option<String>,
    /// Renders finished so far, out of `progress_total`.
    pub progress_done: u64,
    pub progress_total: u64,
    pub created_unix: u64,
    /// When the job reached a final state.
    pub finished_unix: Option<u64>,
    pub spec: JobSpec,
}

const JOB_COLUMNS: &str = "id, session, state, message, progress_done, progress_total, \
                           created_unix, finished_unix, spec";

/// A job row before its state and spec are parsed, so that a damaged row
/// becomes [`StoreError::Corrupt`] naming the job.
struct JobRow {
    id: String,
    session: String,
    state: String,
    message: Option<String>,
    progress_done: u64,
    progress_total: u64,
    created_unix: u64,
    finished_unix: Option<u64>,
    spec: String,
}

impl JobRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<JobRow> {
        Ok(JobRow {
            id: row.get("id")?,
            session: row.get("session")?,
            state: row.get("state")?,
            message: row.get("message")?,
            progress_done: row.get("progress_done")?,
            progress_total: row.get("progress_total")?,
            created_unix: row.get("created_unix")?,
            finished_unix: row.get("finished_unix")?,
            spec: row.get("spec")?,
        })
    }

    fn parse(self) -> Result<JobRecord, StoreError> {
        let id = self.id;
        let state = JobState::parse(&self.state).ok_or_else(|| {
            StoreError::Corrupt(format!("job `{id}` has the unknown state `{}`", self.state))
        })?;
        let spec = serde_json::from_str(&self.spec).map_err(|error| {
            StoreError::Corrupt(format!("job `{id}` has an unreadable spec: {error}"))
        })?;
        Ok(JobRecord {
            id,
            session: self.session,
            state,
            message: self.message,
            progress_done: self.progress_done,
            progress_total: self.progress_total,
            created_unix: self.created_unix,
            finished_unix: self.finished_unix,
            spec,
        })
    }
}

impl Store {
    /// Records a new job of `session` in the `queued` state.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn create_job(&self, session: &str, spec: &JobSpec) -> Result<JobRecord, StoreError> {
        let spec_json = serde_json::to_string(spec).map_err(|error| {
            StoreError::Corrupt(format!("failed to encode a job spec: {error}"))
        })?;
        let record = JobRecord {
            id: new_id(),
            session: session.to_owned(),
            state: JobState::Queued,
            message: None,
            progress_done: 0,
            progress_total: 0,
            created_unix: now_unix(),
            finished_unix: None,
            spec: spec.clone(),
        };
        self.connection().execute(
            "INSERT INTO jobs (id, session, state, created_unix, spec)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.id,
                session,
                record.state.as_str(),
                record.created_unix,
                spec_json
            ],
        )?;
        Ok(record)
    }

    /// Sets a job's state and message. A final state also records the
    /// finishing time.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when the job was deleted meanwhile.
    pub fn set_job_state(
        &self,
        job: &str,
        state: JobState,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        let finished = state.is_final().then(now_unix);
        let updated = self.connection().execute(
            "UPDATE jobs SET state = ?2, message = ?3, finished_unix = ?4 WHERE id = ?1",
            params![job, state.as_str(), message, finished],
        )?;
        if updated == 0 {
            return Err(job_not_found(job));
        }
        Ok(())
    }

    /// Records how many of a job's renders are done.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when the job was deleted meanwhile.
    pub fn set_job_progress(&self, job: &str, done: u64, total: u64) -> Result<(), StoreError> {
        let updated = self.connection().execute(
            "UPDATE jobs SET progress_done = ?2, progress_total = ?3 WHERE id = ?1",
            params![job, done, total],
        )?;
        if updated == 0 {
            return Err(job_not_found(job));
        }
        Ok(())
    }

    /// Reads one job of `session`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when `session` has no job `id`.
    pub fn job(&self, session: &str, id: &str) -> Result<JobRecord, StoreError> {
        let row = self
            .connection()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND session = ?2"),
                [id, session],
                JobRow::from_row,
            )
            .optional()?;
        row.ok_or_else(|| job_not_found(id))?.parse()
    }

    /// Lists the jobs of `session`, newest first.
    ///
    /// # Errors
    ///
    /// Database errors, or a row that cannot be parsed.
    pub fn list_jobs(&self, session: &str) -> Result<Vec<JobRecord>, StoreError> {
        let rows = {
            let connection = self.connection();
            let mut statement = connection.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE session = ?1
                 ORDER BY created_unix DESC, rowid DESC"
            ))?;
            statement
                .query_map([session], JobRow::from_row)?
                .collect::<Result<Vec<_>, _>>()?
        };
        rows.into_iter().map(JobRow::parse).collect()
    }

    /// Deletes a job's row, then its folder.
    ///
    /// A job that is still queued or running should be cancelled first: a
    /// render that writes after the deletion leaves a folder without a row,
    /// which the next [`Store::open`] removes.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when `session` has no job `id`.
    pub fn delete_job(&self, session: &str, id: &str) -> Result<(), StoreError> {
        let deleted = self.connection().execute(
            "DELETE FROM jobs WHERE id = ?1 AND session = ?2",
            [id, session],
        )?;
        if deleted == 0 {
            return Err(job_not_found(id));
        }
        remove_path(&self.inner.jobs_dir.join(id));
        Ok(())
    }

    /// Returns the folder for a job's result files, creating it when missing.
    ///
    /// `job` must be an id from [`Store::create_job`]. A creation failure is
    /// logged here and surfaces again as the error of the first write.
    pub fn job_dir(&self, job: &str) -> PathBuf {
        // Ids are plain names by construction; this keeps a caller's bug
        // from turning a crafted id into a path outside the jobs folder.
        let name = if is_valid_id(job) {
            job
        } else {
            tracing::error!(job, "job_dir called with a malformed job id");
            "malformed-job-id"
        };
        let dir = self.inner.jobs_dir.join(name);
        if let Err(error) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), %error, "failed to create a job folder");
        }
        dir
    }

    /// Resolves the path of a result file of a job of `session`.
    ///
    /// `rel_path` is relative to the job's folder, as written in its
    /// manifest. Symbolic links that lead out of the folder are rejected too.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidPath`] for an absolute path or one with `..`;
    /// [`StoreError::NotFound`] for another session's job or a missing file.
    pub fn job_file(
        &self,
        session: &str,
        job: &str,
        rel_path: &str,
    ) -> Result<PathBuf, StoreError> {
        let record = self.job(session, job)?;
        check_relative(rel_path)?;

        let dir = self.inner.jobs_dir.join(&record.id);
        let missing = || {
            StoreError::NotFound(format!(
                "file `{rel_path}` not found in job `{}`",
                record.id
            ))
        };
        let path = dir.join(rel_path);
        let resolved = path.canonicalize().map_err(|_| missing())?;
        let root = dir.canonicalize().map_err(|_| missing())?;
        if !resolved.starts_with(&root) {
            return Err(StoreError::InvalidPath {
                path: rel_path.to_owned(),
                reason: "it leads outside the job's folder",
            });
        }
        if !resolved.is_file() {
            return Err(missing());
        }
        Ok(resolved)
    }

    /// Reads a job's manifest, or `None` while the job has not written one.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for another session's job;
    /// [`StoreError::Corrupt`] for a manifest that does not parse.
    pub fn manifest(&self, session: &str, job: &str) -> Result<Option<Manifest>, StoreError> {
        let record = self.job(session, job)?;
        let path = self.inner.jobs_dir.join(&record.id).join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::io("read manifest", &path, error)),
        };
        serde_json::from_str(&text).map(Some).map_err(|error| {
            StoreError::Corrupt(format!(
                "manifest of job `{}` does not parse: {error}",
                record.id
            ))
        })
    }

    /// Deletes jobs and uploads created more than `retention` ago, with
    /// their files, and returns how many of each went.
    ///
    /// Jobs still queued or running are kept, and so are the images they
    /// use.
    ///
    /// # Errors
    ///
    /// Database errors; a file that cannot be removed is only logged.
    pub fn purge_expired(&self, retention: Duration) -> Result<usize, StoreError> {
        let cutoff = now_unix().saturating_sub(retention.as_secs());
        let (jobs, images) = self.purge_created_before(cutoff)?;
        if jobs + images > 0 {
            tracing::info!(jobs, images, "purged expired jobs and uploads");
        }
        Ok(jobs + images)
    }

    /// Deletes what was created strictly before `cutoff` (Unix seconds).
    fn purge_created_before(&self, cutoff: u64) -> Result<(usize, usize), StoreError> {
        let (jobs, images) = {
            let mut connection = self.connection();
            let transaction = connection.transaction()?;
            let in_use = images_of_unfinished_jobs(&transaction)?;
            let jobs = delete_returning_ids(
                &transaction,
                "DELETE FROM jobs WHERE created_unix < ?1
                 AND state NOT IN ('queued', 'running') RETURNING id",
                cutoff,
            )?;
            let mut images = Vec::new();
            {
                let mut statement = transaction.prepare(&format!(
                    "SELECT {IMAGE_COLUMNS} FROM images WHERE created_unix < ?1"
                ))?;
                for image in statement.query_map([cutoff], ImageRecord::from_row)? {
                    let image = image?;
                    if !in_use.contains(&image.id) {
                        images.push(image);
                    }
                }
            }
            for image in &images {
                transaction.execute("DELETE FROM images WHERE id = ?1", [&image.id])?;
            }
            transaction.commit()?;
            (jobs, images)
        };

        for job in &jobs {
            remove_path(&self.inner.jobs_dir.join(job));
        }
        for image in &images {
            self.remove_image_files(image);
        }
        Ok((jobs.len(), images.len()))
    }
}

fn images_of_unfinished_jobs(
    connection: &rusqlite::Connection,
) -> Result<HashSet<String>, StoreError> {
    let mut statement =
        connection.prepare("SELECT spec FROM jobs WHERE state IN ('queued', 'running')")?;
    let mut images = HashSet::new();
    for spec in statement.query_map([], |row| row.get::<_, String>(0))? {
        // A spec that does not parse protects nothing; the job itself
        // reports it when it runs.
        if let Ok(spec) = serde_json::from_str::<JobSpec>(&spec?) {
            images.extend(spec.images);
        }
    }
    Ok(images)
}

fn delete_returning_ids(
    connection: &rusqlite::Connection,
    sql: &str,
    cutoff: u64,
) -> Result<Vec<String>, StoreError> {
    let mut statement = connection.prepare(sql)?;
    let ids = statement
        .query_map([cutoff], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(ids)
}

fn job_not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("job `{id}` not found in this session"))
}

/// Accepts only relative paths made of plain names: no root, no `..`, no
/// `.`, no empty segment.
fn check_relative(rel_path: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidPath {
        path: rel_path.to_owned(),
        reason,
    };
    if rel_path.is_empty() {
        return Err(invalid("it is empty"));
    }
    if rel_path.contains('\0') || rel_path.contains('\\') {
        return Err(invalid("it contains a NUL byte or a backslash"));
    }
    if rel_path.split('/').any(str::is_empty) {
        return Err(invalid("it has an empty segment or a leading slash"));
    }
    for component in Path::new(rel_path).components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(invalid("it contains `..`")),
            Component::CurDir => return Err(invalid("it contains `.`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("it is absolute"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::images::files_under;

    const ALICE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const BOB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn spec(images: &[&str]) -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "images": images,
            "models": ["mnist"],
            "visualizations": [{"plugin": "occlusion", "settings": {"window": 8}}],
        }))
        .expect("valid spec")
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir).expect("open store")
    }

    #[test]
    fn job_lifecycle_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let job = store.create_job(ALICE, &spec(&["x"])).expect("create");
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.finished_unix, None);

        store
            .set_job_state(&job.id, JobState::Running, None)
            .expect("running");
        store.set_job_progress(&job.id, 3, 8).expect("progress");
        let running = store.job(ALICE, &job.id).expect("read");
        assert_eq!(running.state, JobState::Running);
        assert_eq!((running.progress_done, running.progress_total), (3, 8));
        assert_eq!(running.spec.visualizations[0].plugin, "occlusion");

        store
            .set_job_state(&job.id, JobState::Failed, Some("model `mnist` not found"))
            .expect("failed");
        let failed = store.job(ALICE, &job.id).expect("read");
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(failed.message.as_deref(), Some("model `mnist` not found"));
        assert!(
            failed.finished_unix.is_some(),
            "a final state has a finish time"
        );
    }

    #[test]
    fn jobs_list_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let first = store.create_job(ALICE, &spec(&[])).expect("first");
        let second = store.create_job(ALICE, &spec(&[])).expect("second");
        store.create_job(BOB, &spec(&[])).expect("other session");
        let ids: Vec<_> = store
            .list_jobs(ALICE)
            .expect("list")
            .into_iter()
            .map(|job| job.id)
            .collect();
        assert_eq!(ids, vec![second.id, first.id]);
    }

    #[test]
    fn other_session_cannot_reach_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let job = store.create_job(ALICE, &spec(&[])).expect("create");
        std::fs::write(store.job_dir(&job.id).join("a.png"), b"png").expect("write result");
        assert!(store.list_jobs(BOB).expect("list").is_empty());
        let results = [
            store.job(BOB, &job.id).map(drop),
            store.job_file(BOB, &job.id, "a.png").map(drop),
            store.manifest(BOB, &job.id).map(drop),
            store.delete_job(BOB, &job.id),
        ];
        for result in results {
            assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");
        }
        store
            .job_file(ALICE, &job.id, "a.png")
            .expect("owner reads it");
    }

    #[test]
    fn job_file_rejects_traversal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let job = store.create_job(ALICE, &spec(&[])).expect("create");
        let job_dir = store.job_dir(&job.id);
        std::fs::create_dir_all(job_dir.join("maps")).expect("subfolder");
        std::fs::write(job_dir.join("maps/m.npy"), b"npy").expect("write");
        std::fs::write(dir.path().join("secret.txt"), b"secret").expect("write outside");

        let found = store
            .job_file(ALICE, &job.id, "maps/m.npy")
            .expect("nested file");
        assert!(found.ends_with("maps/m.npy"));
        for bad in [
            "../../secret.txt",
            "maps/../../../secret.txt",
            "/etc/passwd",
            "",
            "./maps/m.npy",
            "maps//m.npy",
            "maps\\m.npy",
        ] {
            let result = store.job_file(ALICE, &job.id, bad);
            assert!(
                matches!(result, Err(StoreError::InvalidPath { .. })),
                "path {bad:?} gave {result:?}"
            );
        }
        let missing = store.job_file(ALICE, &job.id, "nothing.png");
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        let folder = store.job_file(ALICE, &job.id, "maps");
        assert!(matches!(folder, Err(StoreError::NotFound(_))), "{folder:?}");
    }

    #[cfg(unix)]
    #[test]
    fn job_file_rejects_symlink_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let job = store.create_job(ALICE, &spec(&[])).expect("create");
        std::fs::write(dir.path().join("secret.txt"), b"secret").expect("write outside");
        std::os::unix::fs::symlink(
            dir.path().join("secret.txt"),
            store.job_dir(&job.id).join("link.png"),
        )
        .expect("symlink");
        let result = store.job_file(ALICE, &job.id, "link.png");
        assert!(
            matches!(result, Err(StoreError::InvalidPath { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn manifest_absent_then_parsed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let job = store.create_job(ALICE, &spec(&[])).expect("create");
        assert!(store.manifest(ALICE, &job.id).expect("read").is_none());

        let manifest = serde_json::json!({
            "job": job.id, "host_version": "0.1.0", "wit_package": "picasso:plugin@0.1.0",
            "seed": 7, "started_unix": 1, "models": [], "plugins": [], "images": [],
        });
        std::fs::write(
            store.job_dir(&job.id).join(MANIFEST_FILE),
            manifest.to_string(),
        )
        .expect("write manifest");
        let read = store
            .manifest(ALICE, &job.id)
            .expect("read")
            .expect("present");
        assert_eq!(read.seed, 7);

        std::fs::write(store.job_dir(&job.id).join(MANIFEST_FILE), "{").expect("damage");
        let damaged = store.manifest(ALICE, &job.id);
        assert!(
            matches!(damaged, Err(StoreError::Corrupt(_))),
            "{damaged:?}"
        );
    }

    #[test]
    fn delete_job_removes_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let job = store.create_job(ALICE, &spec(&[])).expect("create");
        let job_dir = store.job_dir(&job.id);
        std::fs::write(job_dir.join("a.png"), b"png").expect("write");
        store.delete_job(ALICE, &job.id).expect("delete");
        assert!(!job_dir.exists());
        let again = store.job(ALICE, &job.id);
        assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
        let update = store.set_job_progress(&job.id, 1, 1);
        assert!(matches!(update, Err(StoreError::NotFound(_))), "{update:?}");
    }

    #[test]
    fn restart_keeps_jobs_and_interrupts_unfinished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (queued, running, done) = {
            let store = open(dir.path());
            let queued = store.create_job(ALICE, &spec(&[])).expect("queued");
            let running = store.create_job(ALICE, &spec(&[])).expect("running");
            store
                .set_job_state(&running.id, JobState::Running, None)
                .expect("start");
            let done = store.create_job(ALICE, &spec(&[])).expect("done");
            store
                .set_job_state(&done.id, JobState::Completed, None)
                .expect("finish");
            std::fs::write(store.job_dir(&done.id).join("a.png"), b"png").expect("result");
            (queued.id, running.id, done.id)
        };

        let store = open(dir.path());
        for id in [&queued, &running] {
            let job = store.job(ALICE, id).expect("still there");
            assert_eq!(job.state, JobState::Interrupted, "job {id}");
            assert_eq!(
                job.message.as_deref(),
                Some(super::super::INTERRUPTED_MESSAGE)
            );
            assert!(job.finished_unix.is_some());
        }
        assert_eq!(
            store.job(ALICE, &done).expect("kept").state,
            JobState::Completed
        );
        store
            .job_file(ALICE, &done, "a.png")
            .expect("result file kept");
    }

    #[test]
    fn purge_removes_old_jobs_and_images() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let png = {
            let mut bytes = std::io::Cursor::new(Vec::new());
            image::DynamicImage::new_rgba8(2, 2)
                .write_to(&mut bytes, image::ImageFormat::Png)
                .expect("encode");
            bytes.into_inner()
        };
        let limits = crate::config::UploadConfig::default();
        let used = store
            .add_image(ALICE, "used.png", &png, &limits)
            .expect("image");
        let free = store
            .add_image(ALICE, "free.png", &png, &limits)
            .expect("image");
        let done = store.create_job(ALICE, &spec(&[])).expect("done");
        store
            .set_job_state(&done.id, JobState::Completed, None)
            .expect("finish");
        std::fs::write(store.job_dir(&done.id).join("a.png"), b"png").expect("result");
        let waiting = store.create_job(ALICE, &spec(&[&used.id])).expect("queued");

        assert_eq!(
            store
                .purge_expired(Duration::from_secs(3600))
                .expect("purge"),
            0,
            "nothing is an hour old"
        );

        let (jobs, images) = store
            .purge_created_before(now_unix() + 1)
            .expect("purge all");
        assert_eq!((jobs, images), (1, 1));
        let left: Vec<_> = store
            .list_jobs(ALICE)
            .expect("list")
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(left, vec![waiting.id], "the queued job stays");
        let left: Vec<_> = store
            .list_images(ALICE)
            .expect("list")
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(
            left,
            vec![used.id.clone()],
            "the image of the queued job stays"
        );
        assert!(!dir.path().join("jobs").join(&done.id).exists());
        let image_files = files_under(&dir.path().join("images"));
        assert!(
            image_files
                .iter()
                .all(|path| !path.to_string_lossy().contains(&free.id)),
            "files of the purged image: {image_files:?}"
        );
    }
}
