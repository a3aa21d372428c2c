//! Jobs: validation, a bounded queue, and a fixed pool of render workers.
//!
//! [`JobQueue::submit`] validates a [`JobSpec`](spec::JobSpec) against the
//! loaded models, plugins and the session's images, records the job in the
//! [`Store`], and queues it; it never waits for rendering. Workers are OS
//! threads, so wasm renders and ONNX Runtime never run on the async
//! runtime's threads. [`runner`] does the work of one job, for the server and
//! for `picasso explain` alike.

pub mod runner;
pub mod spec;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use self::runner::{JobImage, Plan, RunError};
use self::spec::{JobSpec, JobState};
use crate::model::ModelCatalog;
use crate::plugin::PluginRegistry;
use crate::store::{JobRecord, Store, StoreError};

/// Why a job could not be submitted or changed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The request names something that does not exist or does not fit.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the job queue is full ({capacity} jobs waiting); retry in {retry_after_seconds} s")]
    QueueFull {
        capacity: usize,
        retry_after_seconds: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct QueuedJob {
    session: String,
    record: JobRecord,
    plan: Plan,
    cancel: Arc<AtomicBool>,
}

struct Shared {
    store: Store,
    models: Arc<ModelCatalog>,
    plugins: Arc<PluginRegistry>,
    max_renders: usize,
    capacity: usize,
    /// Cancel flags of queued and running jobs.
    cancels: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

/// The queue of jobs and its workers.
#[derive(Clone)]
pub struct JobQueue {
    shared: Arc<Shared>,
    sender: Sender<QueuedJob>,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl JobQueue {
    /// Starts `workers` render threads behind a queue of `capacity` jobs.
    pub fn start(
        store: Store,
        models: Arc<ModelCatalog>,
        plugins: Arc<PluginRegistry>,
        workers: usize,
        capacity: usize,
        max_renders: usize,
    ) -> JobQueue {
        let (sender, receiver) = crossbeam_channel::bounded(capacity);
        let shared = Arc::new(Shared {
            store,
            models,
            plugins,
            max_renders,
            capacity,
            cancels: Mutex::new(HashMap::new()),
        });
        for index in 0..workers.max(1) {
            let shared = shared.clone();
            let receiver: Receiver<QueuedJob> = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("picasso-render-{index}"))
                // Plugins run on this thread's stack, up to the configured
                // wasm stack limit.
                .stack_size(shared.plugins.sandbox().limits().thread_stack_size())
                .spawn(move || {
                    for job in receiver {
                        shared.run(job);
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a render worker");
            }
        }
        tracing::info!(workers = workers.max(1), capacity, "started render workers");
        JobQueue { shared, sender }
    }

    /// Validates and queues a job for `session`.
    ///
    /// # Errors
    ///
    /// [`JobError::Invalid`] for unknown images, models or plugins and
    /// invalid settings; [`JobError::QueueFull`] when no more jobs may wait.
    pub fn submit(&self, session: &str, spec: JobSpec) -> Result<JobRecord, JobError> {
        let shared = &self.shared;
        if spec.images.is_empty() {
            return Err(JobError::Invalid("choose at least one image".to_owned()));
        }
        for id in &spec.images {
            match shared.store.image(session, id) {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => {
                    return Err(JobError::Invalid(format!(
                        "image `{id}` not found; upload it first (POST /api/images)"
                    )));
                }
                Err(error) => return Err(error.into()),
            }
        }
        let renders = spec.images.len() * spec.models.len() * spec.visualizations.len();
        if renders > shared.max_renders {
            return Err(JobError::Invalid(format!(
                "the job has {renders} renders (images x models x visualizations); the limit is \
                 {} (jobs.max_renders_per_job)",
                shared.max_renders
            )));
        }
        let mut plan = runner::plan(
            String::new(),
            &spec.models,
            &spec.visualizations,
            spec.seed,
            &shared.models,
            &shared.plugins,
        )
        .map_err(JobError::Invalid)?;

        if self.sender.is_full() {
            return Err(self.queue_full());
        }
        let mut spec = spec;
        spec.seed = Some(plan.seed);
        let record = shared.store.create_job(session, &spec)?;
        plan.job = record.id.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels().insert(record.id.clone(), cancel.clone());
        let queued = QueuedJob {
            session: session.to_owned(),
            record: record.clone(),
            plan,
            cancel,
        };
        match self.sender.try_send(queued) {
            Ok(()) => Ok(record),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.cancels().remove(&job.record.id);
                let message = "the job queue was full";
                shared
                    .store
                    .set_job_state(&job.record.id, JobState::Failed, Some(message))?;
                Err(self.queue_full())
            }
        }
    }

    fn queue_full(&self) -> JobError {
        JobError::QueueFull {
            capacity: self.shared.capacity,
            // Renders take seconds; retrying sooner only adds load.
            retry_after_seconds: 10,
        }
    }

    fn cancels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicBool>>> {
        match self.shared.cancels.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Cancels a queued or running job of `session`. Cancelling a finished
    /// job changes nothing.
    ///
    /// # Errors
    ///
    /// [`JobError::NotFound`] when the session has no such job.
    pub fn cancel(&self, session: &str, job: &str) -> Result<(), JobError> {
        let record = match self.shared.store.job(session, job) {
            Ok(record) => record,
            Err(StoreError::NotFound(_)) => {
                return Err(JobError::NotFound(format!("job `{job}` not found")));
            }
            Err(error) => return Err(error.into()),
        };
        if record.state.is_final() {
            return Ok(());
        }
        if let Some(flag) = self.cancels().get(job) {
            flag.store(true, Ordering::Relaxed);
        }
        self.shared
            .store
            .set_job_state(job, JobState::Cancelled, Some("cancelled by the user"))?;
        tracing::info!(job, "cancelled job");
        Ok(())
    }
}

impl Shared {
    fn run(&self, job: QueuedJob) {
        let id = job.record.id.clone();
        let result = self.run_job(&job);
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.remove(&id);
        }
        let (state, message) = match result {
            Ok(failed) => (JobState::Completed, failed),
            Err(RunError::Cancelled) => (
                JobState::Cancelled,
                Some("cancelled by the user".to_owned()),
            ),
            Err(error) => {
                tracing::error!(job = %id, %error, "job failed");
                (JobState::Failed, Some(error.to_string()))
            }
        };
        if let Err(error) = self.store.set_job_state(&id, state, message.as_deref()) {
            tracing::error!(job = %id, %error, "cannot record the end of a job");
        }
    }

    /// Runs a job; on success returns a message when some renders failed.
    fn run_job(&self, job: &QueuedJob) -> Result<Option<String>, RunError> {
        if job.cancel.load(Ordering::Relaxed) {
            return Err(RunError::Cancelled);
        }
        let id = &job.record.id;
        self.store
            .set_job_state(id, JobState::Running, None)
            .map_err(|error| RunError::Write {
                path: self.store.job_dir(id),
                message: error.to_string(),
            })?;

        let images = job
            .record
            .spec
            .images
            .iter()
            .map(|image_id| {
                let store = self.store.clone();
                let session = job.session.clone();
                let image_id = image_id.clone();
                let name = store
                    .image(&session, &image_id)
                    .map(|record| record.name)
                    .unwrap_or_else(|_| image_id.clone());
                JobImage {
                    id: image_id.clone(),
                    name,
                    load: Box::new(move || {
                        store
                            .load_image(&session, &image_id)
                            .map(|(_, rgba)| rgba)
                            .map_err(|error| error.to_string())
                    }),
                }
            })
            .collect();

        // Progress goes to SQLite; writing it at most every 200 ms keeps the
        // database out of the render loop's way.
        let last = Mutex::new(Instant::now() - Duration::from_secs(1));
        let store = self.store.clone();
        let job_id = id.clone();
        let progress: runner::Progress = Arc::new(move |done: f64, total: u64| {
            let Ok(mut last) = last.lock() else { return };
            if last.elapsed() < Duration::from_millis(200) && done < total as f64 {
                return;
            }
            *last = Instant::now();
            // Progress is stored in thousandths of a render.
            let result = store.set_job_progress(&job_id, (done * 1000.0) as u64, total * 1000);
            if let Err(error) = result {
                tracing::warn!(job = %job_id, %error, "cannot record progress");
            }
        });
        let dir = self.store.job_dir(id);
        let manifest = runner::run(
            &job.plan,
            self.plugins.sandbox(),
            images,
            &dir,
            progress,
            &job.cancel,
        )?;
        Ok(manifest.failure_summary())
    }
}
