//! Uploads, jobs and results, kept across restarts.
//!
//! A [`Store`] owns one data directory:
//!
//! ```text
//! <data_dir>/picasso.sqlite3        metadata (SQLite in WAL mode)
//! <data_dir>/images/<id>.<format>   uploaded files, byte for byte
//! <data_dir>/images/<id>.thumb.png  their thumbnails
//! <data_dir>/jobs/<job-id>/         a job's result files and manifest.json
//! ```
//!
//! Every file is written under a temporary name and renamed, and written
//! before the row that points at it, so a row never points at a missing or
//! partial file. A crash between the two leaves an unreferenced file, which
//! [`Store::open`] removes.
//!
//! Every image and job belongs to a session. Each query that takes a session
//! filters by it, and an id of another session is [`StoreError::NotFound`],
//! exactly like an id that does not exist.
//!
//! The key types are [`Store`], [`ImageRecord`], [`JobRecord`] and
//! [`StoreError`].

mod images;
mod jobs;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use crate::imageio::ImageError;

pub use images::ImageRecord;
pub(crate) use images::display_name;
pub use jobs::JobRecord;

/// The message of jobs found queued or running when the store opens.
pub const INTERRUPTED_MESSAGE: &str = "the server stopped before the job finished";

/// The metadata database and the files of uploads and results.
///
/// Cloning is cheap and clones share one connection, so a `Store` can be
/// handed to every worker and handler. Each method holds the connection only
/// for its queries: decoding and file I/O happen outside the lock.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connection: Mutex<Connection>,
    images_dir: PathBuf,
    jobs_dir: PathBuf,
}

/// The failure of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The image, job or file does not exist in this session.
    #[error("{0}")]
    NotFound(String),
    /// An upload was rejected; nothing was stored.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A path inside a job's folder that is not a plain relative path.
    #[error("invalid result path `{path}`: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("failed to {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Stored data that cannot be read back, such as a damaged manifest.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
}

impl StoreError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Schema migrations, applied in order. `PRAGMA user_version` records how
/// many have run, so an existing database only gets the ones it lacks.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: images and jobs.
    "CREATE TABLE images (
        id TEXT PRIMARY KEY NOT NULL,
        session TEXT NOT NULL,
        name TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        format TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_unix INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX images_by_session ON images (session, created_unix);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY NOT NULL,
        session TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT,
        progress_done INTEGER NOT NULL DEFAULT 0,
        progress_total INTEGER NOT NULL DEFAULT 0,
        created_unix INTEGER NOT NULL,
        finished_unix INTEGER,
        spec TEXT NOT NULL
    ) STRICT;
    CREATE INDEX jobs_by_session ON jobs (session, created_unix);
    CREATE INDEX jobs_by_state ON jobs (state);",
];

impl Store {
    /// Opens the store in `data_dir`, creating the folders and the database
    /// when they are missing and migrating an older schema.
    ///
    /// Jobs left `queued` or `running` by a previous process are marked
    /// `interrupted`, and files that no row points at (left by a crash
    /// between writing a file and recording it) are removed.
    ///
    /// # Errors
    ///
    /// The folders cannot be created, the database cannot be opened or
    /// migrated, or it was written by a newer version of Picasso.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let images_dir = data_dir.join("images");
        let jobs_dir = data_dir.join("jobs");
        for dir in [data_dir, &images_dir, &jobs_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|error| StoreError::io("create folder", dir, error))?;
        }

        let mut connection = Connection::open(data_dir.join("picasso.sqlite3"))?;
        configure(&connection)?;
        migrate(&mut connection)?;

        let store = Store {
            inner: Arc::new(Inner {
                connection: Mutex::new(connection),
                images_dir,
                jobs_dir,
            }),
        };
        store.mark_interrupted()?;
        store.remove_unreferenced_files()?;
        Ok(store)
    }

    /// Locks the connection. A panic while it was held leaves SQLite itself
    /// consistent (every multi-statement change is a transaction), so a
    /// poisoned lock is taken over rather than propagated.
    fn connection(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mark_interrupted(&self) -> Result<(), StoreError> {
        let count = self.connection().execute(
            "UPDATE jobs SET state = 'interrupted', message = ?1, finished_unix = ?2
             WHERE state IN ('queued', 'running')",
            rusqlite::params![INTERRUPTED_MESSAGE, now_unix()],
        )?;
        if count > 0 {
            tracing::warn!(count, "marked jobs interrupted by the last shutdown");
        }
        Ok(())
    }

    /// Removes image files and job folders that no row points at.
    fn remove_unreferenced_files(&self) -> Result<(), StoreError> {
        let (images, jobs) = {
            let connection = self.connection();
            let images = collect_ids(&connection, "SELECT id FROM images")?;
            let jobs = collect_ids(&connection, "SELECT id FROM jobs")?;
            (images, jobs)
        };

        let mut removed = 0;
        for entry in read_dir(&self.inner.images_dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.split('.').next().unwrap_or_default();
            if !images.contains(id) {
                removed += remove_path(&entry.path());
            }
        }
        for entry in read_dir(&self.inner.jobs_dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !jobs.contains(&name) {
                removed += remove_path(&entry.path());
            }
        }
        if removed > 0 {
            tracing::warn!(removed, "removed files that no image or job points at");
        }
        Ok(())
    }
}

fn configure(connection: &Connection) -> Result<(), StoreError> {
    // WAL lets readers proceed while a writer commits; NORMAL syncing is
    // durable across process crashes and only risks the last commits on a
    // power loss, which for this metadata is an acceptable trade.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.busy_timeout(Duration::from_secs(5))?;
    Ok(())
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let version: usize = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {version}, but this version of Picasso \
             knows only up to {}; run a newer Picasso or use another data_dir",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", index + 1)?;
        transaction.commit()?;
        tracing::info!(version = index + 1, "migrated the database schema");
    }
    Ok(())
}

fn collect_ids(connection: &Connection, sql: &str) -> Result<HashSet<String>, StoreError> {
    let mut statement = connection.prepare(sql)?;
    let ids = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<HashSet<String>, _>>()?;
    Ok(ids)
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, StoreError> {
    std::fs::read_dir(dir)
        .and_then(|entries| entries.collect())
        .map_err(|error| StoreError::io("list folder", dir, error))
}

/// Removes a file or a folder with its contents, returning how many were
/// removed (0 or 1). A failure is logged, not returned, because every caller
/// has already dropped the row and the leftover is swept on the next open.
fn remove_path(path: &Path) -> usize {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Ok(()) => 1,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "failed to remove a stored file");
            0
        }
    }
}

/// Checks whether `id` has the form of the ids this store and the web
/// sessions issue: 32 lowercase hexadecimal digits. Such an id is safe to
/// use as a file name, and any other string is never a valid image, job or
/// session id.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Creates a random id in the form that [`is_valid_id`] accepts.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_layout_and_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("data")).expect("open a new store");
        assert!(dir.path().join("data/picasso.sqlite3").is_file());
        assert!(dir.path().join("data/images").is_dir());
        assert!(dir.path().join("data/jobs").is_dir());
        let version: usize = store
            .connection()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("user_version");
        assert_eq!(version, MIGRATIONS.len());
        let mode: String = store
            .connection()
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn open_twice_keeps_schema_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("first open"));
        let store = Store::open(dir.path()).expect("second open runs no migration twice");
        let version: usize = store
            .connection()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("user_version");
        assert_eq!(version, MIGRATIONS.len());
    }

    #[test]
    fn newer_schema_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("first open"));
        let connection = Connection::open(dir.path().join("picasso.sqlite3")).expect("sqlite");
        connection
            .pragma_update(None, "user_version", 999)
            .expect("bump version");
        drop(connection);
        let error = Store::open(dir.path()).expect_err("schema 999 is from the future");
        assert!(error.to_string().contains("schema version 999"), "{error}");
    }

    #[test]
    fn unreferenced_files_are_removed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("first open"));
        let stray_image = dir
            .path()
            .join("images/0123456789abcdef0123456789abcdef.png");
        let stray_temp = dir.path().join("images/.tmpAbCdEf");
        let stray_job = dir.path().join("jobs/fedcba9876543210fedcba9876543210");
        std::fs::write(&stray_image, b"png").expect("write stray image");
        std::fs::write(&stray_temp, b"partial").expect("write stray temp file");
        std::fs::create_dir_all(&stray_job).expect("create stray job folder");

        drop(Store::open(dir.path()).expect("second open"));
        assert!(!stray_image.exists(), "image file without a row");
        assert!(
            !stray_temp.exists(),
            "temporary file of an interrupted write"
        );
        assert!(!stray_job.exists(), "job folder without a row");
    }

    #[test]
    fn valid_ids_are_lowercase_hex() {
        assert!(is_valid_id(&new_id()));
        assert!(is_valid_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_valid_id("0123456789ABCDEF0123456789ABCDEF"));
        assert!(!is_valid_id("../../../../etc/passwd/aaaaaaaaaa"));
        assert!(!is_valid_id("0123456789abcdef"));
        assert!(!is_valid_id(""));
    }
}
