//! Usage telemetry on the control plane: `UsageService` (nodes' `Report` streams, operators'
//! `Query`) and `LiveService.Top` (the live view behind `sluicectl top`).
//!
//! Every batch from every node goes to one writer task, which stores what has gathered in
//! one transaction (group commit: one fsync for many nodes) and only then answers each
//! batch with its incarnation's last stored sequence. A resent batch — its answer was lost
//! with a connection, or the control plane restarted after storing it — is answered without
//! being stored again ([`store::Store::store_usage`]).

pub mod live;
pub mod store;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sluice_proto::control::v1::usage_service_server::UsageService;
use sluice_proto::control::v1::{
    QueryUsageRequest, QueryUsageResponse, ReportUsageResponse, UsageBatch, UsageDimension,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Caller;
use crate::service::{Api, ControlPlane};
use store::{epoch_ms, Answer, Marks, Offered, Query};

/// The most records one batch may hold (a node sends at most
/// `sluice::telemetry::reporter::MAX_BATCH_RECORDS`).
pub const MAX_RECORDS: usize = 20_000;

/// The longest name (subscription, deployment, backend, model, status class, rejection
/// reason) a batch may carry: 1 KiB.
pub const MAX_NAME_BYTES: usize = 1024;

/// The largest latency histogram a record may carry: 64 KiB.
pub const MAX_HISTOGRAM_BYTES: usize = 64 << 10;

/// The most batches one transaction stores.
const GROUP_COMMIT: usize = 2048;

/// Answers a Report stream can hold before it is read (a node has at most 32 batches in
/// flight).
const ANSWERS: usize = 64;

/// One batch waiting for the writer, and where its answer goes.
pub struct Job {
    batch: UsageBatch,
    /// The first batch of its stream.
    opens: bool,
    answer: mpsc::Sender<Result<ReportUsageResponse, Status>>,
}

/// The control plane's telemetry state: each incarnation's last stored sequence, the
/// writer's queue, and the live window.
pub struct Telemetry {
    marks: Mutex<Marks>,
    jobs: mpsc::Sender<Job>,
    queue: Mutex<Option<mpsc::Receiver<Job>>>,
    /// What arrived in the last minute, for `Top`.
    pub live: Mutex<live::Live>,
}

impl Telemetry {
    /// State starting from the stored `marks`.
    pub fn new(marks: Marks) -> Self {
        let (jobs, queue) = mpsc::channel(GROUP_COMMIT * 4);
        Self {
            marks: Mutex::new(marks),
            jobs,
            queue: Mutex::new(Some(queue)),
            live: Mutex::new(live::Live::default()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the writer task (once; later calls do nothing) and the task that deletes usage
/// older than `retention` every ten minutes.
pub fn spawn(control: &Arc<ControlPlane>, retention: Duration) {
    let Some(queue) = lock(&control.telemetry.queue).take() else {
        return;
    };
    tokio::spawn(write(Arc::clone(control), queue));
    let control = Arc::clone(control);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            let before = SystemTime::now()
                .checked_sub(retention)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let control = Arc::clone(&control);
            let pruned = tokio::task::spawn_blocking(move || {
                control.usage_store().prune_usage(epoch_ms(before))
            })
            .await;
            match pruned {
                Ok(Ok(rows)) if rows > 0 => {
                    tracing::info!(rows, "usage past its retention deleted")
                }
                Ok(Err(e)) => tracing::error!("pruning usage: {e}"),
                _ => {}
            }
        }
    });
}

/// The writer: stores what has gathered in one transaction, then answers each batch.
async fn write(control: Arc<ControlPlane>, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_COMMIT {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let batches: Vec<Offered> = jobs
            .iter()
            .map(|j| Offered {
                batch: j.batch.clone(),
                opens: j.opens,
            })
            .collect();
        let writer = Arc::clone(&control);
        let stored = tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            let mut marks = lock(&writer.telemetry.marks);
            let result = writer.usage_store().store_usage(&batches, &mut marks, now);
            (batches, result, now)
        })
        .await;
        let (batches, result, now) = match stored {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("usage writer: {e}");
                continue;
            }
        };
        match result {
            Ok(answers) => {
                let count = |f: fn(&Answer) -> bool| answers.iter().filter(|a| f(a)).count() as u64;
                control.metrics.batches(
                    count(|a| matches!(a, Answer::Stored(_))),
                    count(|a| matches!(a, Answer::Resent(_))),
                );
                let mut live = lock(&control.telemetry.live);
                for ((job, offered), answer) in jobs.iter().zip(&batches).zip(answers) {
                    let batch = &offered.batch;
                    let through = match answer {
                        Answer::Stored(through) => {
                            live.add(batch, now);
                            if let Some(made) =
                                batch.sent_at.and_then(|t| SystemTime::try_from(t).ok())
                            {
                                let lag = now.duration_since(made).unwrap_or_default();
                                control.metrics.telemetry_lag(lag.as_secs_f64());
                            }
                            through
                        }
                        Answer::Resent(through) => through,
                        Answer::Gap(through) => {
                            // Ends the stream: the node sends what is unanswered again, in
                            // order, from the missing one.
                            let _ = job.answer.try_send(Err(Status::failed_precondition(format!(
                                "usage batch {} of node {} follows one not stored (stored through {through}): send again from {}",
                                batch.sequence,
                                batch.node_id,
                                through + 1
                            ))));
                            continue;
                        }
                    };
                    // A stream whose node stopped reading answers loses this one: its
                    // next answer says as much (the highest stored sequence).
                    let _ = job.answer.try_send(Ok(ReportUsageResponse {
                        stored_through: through,
                    }));
                }
            }
            Err(e) => {
                tracing::error!("storing usage: {e}; nodes will send it again");
                for job in &jobs {
                    let _ = job
                        .answer
                        .try_send(Err(Status::unavailable(format!("storing usage: {e}"))));
                }
            }
        }
    }
}

/// Why `batch` is refused, if it is: a node id that is not one (see `Register`); no
/// sequence or incarnation; too many records; a name past [`MAX_NAME_BYTES`]; a bucket not
/// between 2020 and a day from now; a histogram past [`MAX_HISTOGRAM_BYTES`].
fn check(batch: &UsageBatch) -> Result<(), String> {
    let name_ok = |s: &str| s.len() <= MAX_NAME_BYTES && !s.chars().any(char::is_control);
    crate::service::check_node_id(&batch.node_id).map_err(|s| s.message().to_string())?;
    if batch.sequence == 0 || batch.incarnation == 0 {
        return Err("a usage batch needs a sequence and an incarnation from 1".into());
    }
    if batch.records.len() > MAX_RECORDS {
        return Err(format!("a usage batch holds at most {MAX_RECORDS} records"));
    }
    let latest = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    // 2020-01-01.
    const EARLIEST: u64 = 1_577_836_800;
    for r in &batch.records {
        let names = [
            &r.subscription,
            &r.deployment,
            &r.backend,
            &r.model,
            &r.status_class,
        ];
        if !names.iter().all(|n| name_ok(n)) || !r.rejections.iter().all(|c| name_ok(&c.reason)) {
            return Err(format!(
                "a usage record's names: at most {MAX_NAME_BYTES} bytes, no control characters"
            ));
        }
        let start = r
            .bucket_start
            .and_then(|t| u64::try_from(t.seconds).ok())
            .unwrap_or(0);
        if !(EARLIEST..=latest).contains(&start) {
            return Err("a usage record's bucket_start: from 2020 to a day from now".into());
        }
        if r.latency_histogram.len() > MAX_HISTOGRAM_BYTES {
            return Err(format!(
                "a usage record's latency_histogram: at most {MAX_HISTOGRAM_BYTES} bytes"
            ));
        }
    }
    Ok(())
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<ReportUsageResponse, Status>> + Send>>;

#[tonic::async_trait]
impl UsageService for Api {
    type ReportStream = AnswerStream;

    async fn report(
        &self,
        request: Request<Streaming<UsageBatch>>,
    ) -> Result<Response<AnswerStream>, Status> {
        self.0.tokens.check(Caller::Node, request.metadata())?;
        let mut batches = request.into_inner();
        let (answer, answers) = mpsc::channel(ANSWERS);
        let jobs = self.0.telemetry.jobs.clone();
        let errors = answer.clone();
        let closed = self.0.closed();
        tokio::spawn(async move {
            tokio::pin!(closed);
            let mut opens = true;
            loop {
                let message = tokio::select! {
                    message = batches.message() => message,
                    () = &mut closed => return,
                };
                match message {
                    Ok(Some(batch)) => {
                        if let Err(why) = check(&batch) {
                            let _ = errors.send(Err(Status::invalid_argument(why))).await;
                            return;
                        }
                        let job = Job {
                            batch,
                            opens,
                            answer: answer.clone(),
                        };
                        opens = false;
                        if jobs.send(job).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        });
        // Ends at shutdown: the node sends again what is unanswered to the next one.
        let stream = futures_util::StreamExt::take_until(
            tokio_stream::wrappers::ReceiverStream::new(answers),
            self.0.closed(),
        );
        Ok(Response::new(Box::pin(stream) as AnswerStream))
    }

    async fn query(
        &self,
        request: Request<QueryUsageRequest>,
    ) -> Result<Response<QueryUsageResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let request = request.into_inner();
        let now = epoch_ms(SystemTime::now());
        let millis = |t: Option<prost_types::Timestamp>| {
            t.and_then(|t| SystemTime::try_from(t).ok()).map(epoch_ms)
        };
        let bucket_ms = match request.bucket {
            None => 0,
            Some(d) => {
                let d = Duration::try_from(d)
                    .map_err(|_| Status::invalid_argument("bucket: a positive duration"))?;
                let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                if ms % 60_000 != 0 || ms == 0 {
                    return Err(Status::invalid_argument(
                        "bucket: a whole number of minutes (usage is stored per minute)",
                    ));
                }
                ms
            }
        };
        let group_by = request
            .group_by()
            .filter(|d| *d != UsageDimension::Unspecified)
            .collect();
        let query = Query {
            from_ms: millis(request.from).unwrap_or(0),
            to_ms: millis(request.to).unwrap_or(now + 60_000),
            bucket_ms,
            group_by,
            subscription: request.subscription,
            deployment: request.deployment,
            backend: request.backend,
        };
        let control = Arc::clone(&self.0);
        let rows = tokio::task::spawn_blocking(move || control.usage_store().query_usage(&query))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(QueryUsageResponse { rows }))
    }
}
