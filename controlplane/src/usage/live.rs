//! The live view behind `sluicectl top` (`LiveService.Top`): the usage batches stored in the
//! last two minutes, by the second they arrived in, summed into rates per subscription,
//! deployment, backend or node on demand.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use sluice_proto::control::v1::live_service_server::LiveService;
use sluice_proto::control::v1::{
    LiveRates, TopFrame, TopRequest, TopRow, UsageBatch, UsageDimension,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::service::Api;

/// How long arrivals are kept: two minutes (the longest interval a frame may cover is one).
const KEPT: u64 = 120;

/// The longest interval one frame covers.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// One record's figures, by the names it is counted under.
#[derive(Debug, Clone)]
struct Arrival {
    names: [String; 4],
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    rejections: u64,
}

/// What arrived in one second.
#[derive(Debug, Default)]
struct Second {
    at: u64,
    arrivals: Vec<Arrival>,
    nodes: BTreeSet<String>,
}

/// The arrivals of the last [`KEPT`] seconds.
#[derive(Debug, Default)]
pub struct Live {
    seconds: VecDeque<Second>,
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The index of `dimension` in an arrival's names (subscription, deployment, backend, node).
fn slot(dimension: UsageDimension) -> usize {
    match dimension {
        UsageDimension::Subscription => 0,
        UsageDimension::Backend => 2,
        UsageDimension::Node => 3,
        _ => 1,
    }
}

impl Live {
    /// Adds a stored batch, arrived `now`.
    pub fn add(&mut self, batch: &UsageBatch, now: SystemTime) {
        let at = epoch_secs(now);
        while self.seconds.front().is_some_and(|s| s.at + KEPT < at) {
            self.seconds.pop_front();
        }
        if self.seconds.back().is_none_or(|s| s.at != at) {
            self.seconds.push_back(Second {
                at,
                ..Second::default()
            });
        }
        let Some(second) = self.seconds.back_mut() else {
            return;
        };
        second.nodes.insert(batch.node_id.clone());
        for r in &batch.records {
            second.arrivals.push(Arrival {
                names: [
                    r.subscription.clone(),
                    r.deployment.clone(),
                    r.backend.clone(),
                    batch.node_id.clone(),
                ],
                requests: r.requests,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                rejections: r
                    .rejections
                    .iter()
                    .fold(0u64, |n, c| n.saturating_add(c.count)),
            });
        }
    }

    /// The frame for the `interval` (whole seconds, 1 ..= 60) of completed seconds before
    /// `now`: rates per second, rows by `dimension`, the busiest `max_rows` first.
    pub fn frame(
        &self,
        dimension: UsageDimension,
        interval: Duration,
        max_rows: usize,
        now: SystemTime,
    ) -> TopFrame {
        let width = interval.as_secs().clamp(1, MAX_INTERVAL.as_secs());
        let end = epoch_secs(now);
        let start = end.saturating_sub(width);
        let mut total = Sums::default();
        let mut rows: BTreeMap<&str, Sums> = BTreeMap::new();
        let mut nodes = BTreeSet::new();
        for second in self.seconds.iter().filter(|s| s.at >= start && s.at < end) {
            nodes.extend(second.nodes.iter());
            for a in &second.arrivals {
                total.add(a);
                rows.entry(a.names[slot(dimension)].as_str())
                    .or_default()
                    .add(a);
            }
        }
        let per_second = width as f64;
        let mut rows: Vec<TopRow> = rows
            .into_iter()
            .map(|(name, sums)| TopRow {
                name: name.to_string(),
                rates: Some(sums.rates(per_second)),
            })
            .collect();
        let busy = |r: &TopRow| r.rates.as_ref().map_or(0.0, |x| x.requests + x.rejections);
        rows.sort_by(|a, b| busy(b).total_cmp(&busy(a)).then(a.name.cmp(&b.name)));
        rows.truncate(max_rows);
        TopFrame {
            at: Some((SystemTime::UNIX_EPOCH + Duration::from_secs(end)).into()),
            interval: prost_types::Duration::try_from(Duration::from_secs(width)).ok(),
            total: Some(total.rates(per_second)),
            rows,
            reporting_nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
        }
    }
}

#[derive(Debug, Default)]
struct Sums {
    answered: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    rejections: u64,
}

impl Sums {
    fn add(&mut self, a: &Arrival) {
        let answered = a.requests.saturating_sub(a.rejections);
        self.answered = self.answered.saturating_add(answered);
        self.prompt_tokens = self.prompt_tokens.saturating_add(a.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(a.completion_tokens);
        self.rejections = self.rejections.saturating_add(a.rejections);
    }

    fn rates(&self, seconds: f64) -> LiveRates {
        LiveRates {
            requests: self.answered as f64 / seconds,
            prompt_tokens: self.prompt_tokens as f64 / seconds,
            completion_tokens: self.completion_tokens as f64 / seconds,
            rejections: self.rejections as f64 / seconds,
        }
    }
}

type Frames = Pin<Box<dyn Stream<Item = Result<TopFrame, Status>> + Send>>;

#[tonic::async_trait]
impl LiveService for Api {
    type TopStream = Frames;

    async fn top(&self, request: Request<TopRequest>) -> Result<Response<Frames>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let request = request.into_inner();
        let interval = request
            .interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_secs(1), MAX_INTERVAL);
        let dimension = match request.group_by() {
            UsageDimension::Unspecified => UsageDimension::Deployment,
            d => d,
        };
        let max_rows = match request.max_rows {
            0 => 20,
            n => n as usize,
        };
        let (send, frames) = mpsc::channel(4);
        let control = self.0.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let frame = {
                    let live = control
                        .telemetry
                        .live
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    live.frame(dimension, interval, max_rows, SystemTime::now())
                };
                if send.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
        });
        let frames = futures_util::StreamExt::take_until(
            tokio_stream::wrappers::ReceiverStream::new(frames),
            self.0.closed(),
        );
        Ok(Response::new(Box::pin(frames) as Frames))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::control::v1::{RejectionCount, UsageRecord};

    #[test]
    fn a_frame_sums_the_completed_seconds_of_its_interval_into_rates() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + s);
        let batch = |node: &str, subscription: &str, requests, rejected| UsageBatch {
            node_id: node.into(),
            records: vec![UsageRecord {
                subscription: subscription.into(),
                deployment: "d".into(),
                backend: "b".into(),
                requests,
                prompt_tokens: 10 * requests,
                completion_tokens: 2 * requests,
                rejections: vec![RejectionCount {
                    reason: "requests_rate_limited".into(),
                    count: rejected,
                }],
                ..UsageRecord::default()
            }],
            ..UsageBatch::default()
        };
        let mut live = Live::default();
        live.add(&batch("n1", "a", 4, 0), t(0));
        live.add(&batch("n2", "b", 2, 2), t(1));
        live.add(&batch("n1", "a", 100, 0), t(2)); // the second in progress: not yet shown
        let frame = live.frame(
            UsageDimension::Subscription,
            Duration::from_secs(2),
            20,
            t(2),
        );
        let total = frame.total.unwrap();
        assert_eq!((total.requests, total.rejections), (2.0, 1.0));
        assert_eq!(total.prompt_tokens, 30.0);
        assert_eq!(frame.reporting_nodes, 2);
        let names: Vec<&str> = frame.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        // Kept two minutes.
        live.add(&batch("n3", "c", 1, 0), t(500));
        assert_eq!(live.seconds.len(), 1);
    }
}
