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
use store::{epoch_ms, Marks, Query};

/// The most batches one transaction stores.
const GROUP_COMMIT: usize = 2048;

/// Answers a Report stream can hold before it is read (a node has at most 32 batches in
/// flight).
const ANSWERS: usize = 64;

/// One batch waiting for the writer, and where its answer goes.
pub struct Job {
    batch: UsageBatch,
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
            let pruned =
                tokio::task::spawn_blocking(move || control.store().prune_usage(epoch_ms(before)))
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
        let batches: Vec<UsageBatch> = jobs.iter().map(|j| j.batch.clone()).collect();
        let writer = Arc::clone(&control);
        let stored = tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            let mut marks = lock(&writer.telemetry.marks);
            let result = writer.store().store_usage(&batches, &mut marks, now);
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
            Ok((answers, stored)) => {
                let resent = jobs.len() - stored;
                control.metrics.batches(stored as u64, resent as u64);
                let mut live = lock(&control.telemetry.live);
                for ((job, batch), through) in jobs.iter().zip(&batches).zip(answers) {
                    if through == batch.sequence {
                        live.add(batch, now);
                        if let Some(made) = batch.sent_at.and_then(|t| SystemTime::try_from(t).ok())
                        {
                            let lag = now.duration_since(made).unwrap_or_default();
                            control.metrics.telemetry_lag(lag.as_secs_f64());
                        }
                    }
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
            loop {
                let message = tokio::select! {
                    message = batches.message() => message,
                    () = &mut closed => return,
                };
                match message {
                    Ok(Some(batch)) if batch.node_id.is_empty() || batch.sequence == 0 => {
                        let _ = errors
                            .send(Err(Status::invalid_argument(
                                "a usage batch needs its node_id and a sequence from 1",
                            )))
                            .await;
                        return;
                    }
                    Ok(Some(batch)) => {
                        let job = Job {
                            batch,
                            answer: answer.clone(),
                        };
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
        let rows = tokio::task::spawn_blocking(move || control.store().query_usage(&query))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(QueryUsageResponse { rows }))
    }
}
