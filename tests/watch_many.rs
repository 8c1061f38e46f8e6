//! WatchMany: many watches on one stream, each with the guarantees of Watch;
//! one message for the watches that receive the same revision; bad opens
//! and cancels end only their own watch; shutdown and cleanup.

mod support;

use promptreg::grpc::pb::{
    self, watch_many_request::Request as Command, watch_many_response::Event as Out,
    watch_response::Event,
};
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// Generous: a loaded 2-core machine is slow, but a message that never
/// comes must still fail the test.
const PATIENCE: Duration = Duration::from_secs(60);

/// One WatchMany call: the sending side and the responses.
struct Many {
    send: mpsc::Sender<pb::WatchManyRequest>,
    stream: Streaming<pb::WatchManyResponse>,
}

impl Many {
    async fn open(client: &mut Client) -> Many {
        let (send, receive) = mpsc::channel(64);
        let stream = client
            .watch_many(ReceiverStream::new(receive))
            .await
            .expect("WatchMany opens")
            .into_inner();
        Many { send, stream }
    }

    async fn command(&self, request: Command) {
        self.send
            .send(pb::WatchManyRequest {
                request: Some(request),
            })
            .await
            .expect("the call is open");
    }

    async fn watch(&self, watch_id: u64, names: &[&str], start_revision: u64) {
        self.command(Command::Open(pb::WatchOpen {
            watch_id,
            watch: Some(pb::WatchRequest {
                names: names.iter().map(|s| s.to_string()).collect(),
                labels: vec!["production".into()],
                start_revision,
                ..Default::default()
            }),
        }))
        .await;
    }

    async fn cancel(&self, watch_id: u64) {
        self.command(Command::Cancel(pb::WatchCancel { watch_id }))
            .await;
    }

    /// The next message, failing after PATIENCE.
    async fn next(&mut self) -> pb::WatchManyResponse {
        tokio::time::timeout(PATIENCE, self.stream.message())
            .await
            .expect("a message within the timeout")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// The next `WatchEnded`, skipping other messages.
    async fn next_ended(&mut self) -> (Vec<u64>, pb::WatchEnded) {
        loop {
            let message = self.next().await;
            if let Some(Out::Ended(ended)) = message.event {
                return (message.watch_ids, ended);
            }
        }
    }
}

/// What each watch received, in order.
#[derive(Default)]
struct Received {
    events: BTreeMap<u64, Vec<Event>>,
    /// The id lists of the messages that carried changes.
    change_messages: Vec<Vec<u64>>,
}

impl Received {
    fn add(&mut self, message: pb::WatchManyResponse) {
        let Some(Out::Response(pb::WatchResponse { event: Some(event) })) = message.event else {
            panic!("expected a response, got {message:?}");
        };
        if matches!(event, Event::Changes(_)) {
            self.change_messages.push(message.watch_ids.clone());
        }
        for id in message.watch_ids {
            self.events.entry(id).or_default().push(event.clone());
        }
    }

    /// The revisions of the change batches watch `id` received.
    fn revisions(&self, id: u64) -> Vec<u64> {
        self.events
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                Event::Changes(batch) => Some(batch.revision),
                _ => None,
            })
            .collect()
    }

    fn snapshot_complete(&self, id: u64) -> bool {
        self.events
            .get(&id)
            .into_iter()
            .flatten()
            .any(|e| matches!(e, Event::Snapshot(s) if s.complete))
    }
}

async fn promote(client: &mut Client, name: &str, version: u64) -> u64 {
    client
        .set_label(set_label(name, "production", version, None))
        .await
        .expect("the label moves")
        .into_inner()
        .revision
}

#[tokio::test]
async fn many_watches_on_one_stream_each_keep_the_guarantees_of_watch() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    publish(&mut client, "p", "b").await;
    publish(&mut client, "q", "a").await;
    let first = promote(&mut client, "p", 1).await;
    promote(&mut client, "q", 1).await;

    let mut many = Many::open(&mut client).await;
    // 1 and 2: the same selector, from a snapshot. 3: another prompt.
    // 4: p again, resuming from the first promote.
    many.watch(1, &["p"], 0).await;
    many.watch(2, &["p"], 0).await;
    many.watch(3, &["q"], 0).await;
    many.watch(4, &["p"], first).await;
    let mut got = Received::default();
    while !(1..=3).all(|id| got.snapshot_complete(id)) || got.revisions(4) != vec![first] {
        got.add(many.next().await);
    }
    for id in 1..=4 {
        assert!(
            matches!(got.events[&id][0], Event::Created(_)),
            "watch {id} starts with created: {:?}",
            got.events[&id]
        );
    }
    assert!(got.revisions(1).is_empty() && got.revisions(3).is_empty());

    let second = promote(&mut client, "p", 2).await;
    let third = promote(&mut client, "p", 1).await;
    // q's label already points at version 1: not a change.
    promote(&mut client, "q", 1).await;
    while got.revisions(1).len() < 2 || got.revisions(2).len() < 2 || got.revisions(4).len() < 3 {
        got.add(many.next().await);
    }
    // Each watch: every matching revision exactly once, in order, and
    // nothing of the other prompt.
    assert_eq!(got.revisions(1), vec![second, third]);
    assert_eq!(got.revisions(2), vec![second, third]);
    assert_eq!(got.revisions(4), vec![first, second, third]);
    // Watches that were following the same revisions got one message for
    // all of them.
    assert!(
        got.change_messages
            .iter()
            .any(|ids| ids.contains(&1) && ids.contains(&2)),
        "one message for watches 1 and 2: {:?}",
        got.change_messages
    );
    // q's label did not move (it already pointed at version 1), so watch 3
    // has received no change at all.
    assert!(got.revisions(3).is_empty());
    assert_eq!(
        server
            .registry()
            .watch_stats()
            .open_streams
            .load(std::sync::atomic::Ordering::SeqCst),
        4,
        "each watch counts as a watch stream"
    );

    // Cancelling one leaves the others working.
    many.cancel(2).await;
    let (ids, ended) = many.next_ended().await;
    assert_eq!((ids, ended.code), (vec![2], Code::Cancelled as i32));
    let fourth = promote(&mut client, "p", 2).await;
    let mut after = Received::default();
    while after.revisions(1).is_empty() || after.revisions(4).is_empty() {
        after.add(many.next().await);
    }
    assert_eq!(after.revisions(1), vec![fourth]);
    assert_eq!(after.revisions(4), vec![fourth]);
    assert!(
        after.revisions(2).is_empty(),
        "a cancelled watch gets nothing"
    );
}

#[tokio::test]
async fn a_bad_open_or_cancel_ends_only_that_watch_and_names_the_field() {
    let server = TestServer::start_with(|config| {
        config.watch.retention_revisions = 3;
        config.watch.retention = Duration::ZERO;
    })
    .await;
    let mut client = server.client().await;
    for i in 0..6 {
        publish(&mut client, "p", &format!("v{i}")).await;
    }
    let first = promote(&mut client, "p", 1).await;
    let compact = server.registry().compact_log().unwrap();
    assert!(compact > 1);

    let mut many = Many::open(&mut client).await;
    many.watch(1, &["p"], first).await;
    let mut got = Received::default();
    while got.revisions(1).is_empty() {
        got.add(many.next().await);
    }
    let cases: Vec<(Command, u64, Code, &str)> = vec![
        (
            Command::Open(pb::WatchOpen {
                watch_id: 0,
                watch: Some(pb::WatchRequest::default()),
            }),
            0,
            Code::InvalidArgument,
            "watch_id",
        ),
        (
            Command::Open(pb::WatchOpen {
                watch_id: 1,
                watch: Some(pb::WatchRequest::default()),
            }),
            1,
            Code::AlreadyExists,
            "watch_id",
        ),
        (
            Command::Open(pb::WatchOpen {
                watch_id: 5,
                watch: None,
            }),
            5,
            Code::InvalidArgument,
            "watch",
        ),
        (
            Command::Open(pb::WatchOpen {
                watch_id: 6,
                watch: Some(pb::WatchRequest {
                    names: vec!["Not A Name!".into()],
                    ..Default::default()
                }),
            }),
            6,
            Code::InvalidArgument,
            "watch.names[0]",
        ),
        (
            // Refused by the core, not the converter: named from the WatchOpen too.
            Command::Open(pb::WatchOpen {
                watch_id: 8,
                watch: Some(pb::WatchRequest {
                    start_revision: 1_000_000,
                    ..Default::default()
                }),
            }),
            8,
            Code::InvalidArgument,
            "watch.start_revision: 1000000 is ahead",
        ),
        (
            Command::Open(pb::WatchOpen {
                watch_id: 7,
                watch: Some(pb::WatchRequest {
                    start_revision: 1,
                    ..Default::default()
                }),
            }),
            7,
            Code::OutOfRange,
            "compact",
        ),
        (
            Command::Cancel(pb::WatchCancel { watch_id: 99 }),
            99,
            Code::NotFound,
            "99",
        ),
    ];
    for (command, id, code, needle) in cases {
        many.command(command).await;
        let (ids, ended) = many.next_ended().await;
        assert_eq!(ids, vec![id]);
        assert_eq!(ended.code, code as i32, "{ended:?}");
        assert!(ended.message.contains(needle), "{ended:?} names {needle}");
        if code == Code::OutOfRange {
            assert_eq!(ended.compact_revision, compact);
        }
    }
    // Watch 1 is still open and still delivers.
    let next = promote(&mut client, "p", 2).await;
    while !got.revisions(1).contains(&next) {
        let message = many.next().await;
        if matches!(message.event, Some(Out::Response(_))) {
            got.add(message);
        }
    }
    assert_eq!(got.revisions(1), vec![first, next]);
}

#[tokio::test]
async fn shutdown_ends_every_watch_with_its_resume_revision_then_the_stream() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    let moved = promote(&mut client, "p", 1).await;
    let mut many = Many::open(&mut client).await;
    many.watch(1, &["p"], moved).await;
    many.watch(2, &["q"], 0).await;
    let mut got = Received::default();
    while got.revisions(1).is_empty() || !got.snapshot_complete(2) {
        got.add(many.next().await);
    }
    // A call with no watch must end too.
    let mut empty = Many::open(&mut client).await;

    let stopping = tokio::spawn(async move {
        server.stop().await;
    });
    let mut ended = BTreeMap::new();
    let status = loop {
        match tokio::time::timeout(PATIENCE, many.stream.message())
            .await
            .expect("the stream ends within the timeout")
        {
            Ok(Some(pb::WatchManyResponse {
                watch_ids,
                event: Some(Out::Ended(end)),
            })) => {
                for id in watch_ids {
                    ended.insert(id, end.clone());
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(ended.len(), 2, "{ended:?}");
    for end in ended.values() {
        assert_eq!(end.code, Code::Unavailable as i32);
        assert_eq!(end.resume_revision, moved + 1, "{end:?}");
    }
    let status = tokio::time::timeout(PATIENCE, empty.stream.message())
        .await
        .expect("the empty call ends within the timeout")
        .expect_err("ends with a status");
    assert_eq!(status.code(), Code::Unavailable);
    stopping.await.unwrap();
}

#[tokio::test]
async fn dropping_the_call_ends_all_its_watches() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    let mut many = Many::open(&mut client).await;
    for id in 1..=10 {
        many.watch(id, &["p"], 0).await;
    }
    let mut got = Received::default();
    while !(1..=10).all(|id| got.snapshot_complete(id)) {
        got.add(many.next().await);
    }
    let open = || {
        server
            .registry()
            .watch_stats()
            .open_streams
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(open(), 10);
    drop(many);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while open() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} watches stayed open",
            open()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends request frames as raw bytes (any bytes, framed as one gRPC message
/// each) and decodes the answers as usual: a client that sends what the
/// generated one never would.
#[derive(Debug, Clone, Default)]
struct RawFrames;

impl tonic::codec::Codec for RawFrames {
    type Encode = Vec<u8>;
    type Decode = pb::WatchManyResponse;
    type Encoder = RawFrames;
    type Decoder = tonic_prost::ProstDecoder<pb::WatchManyResponse>;

    fn encoder(&mut self) -> RawFrames {
        RawFrames
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

impl tonic::codec::Encoder for RawFrames {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        buf.put_slice(&item);
        Ok(())
    }
}

fn open_frame(watch_id: u64, name: &str) -> Vec<u8> {
    use prost::Message as _;
    pb::WatchManyRequest {
        request: Some(Command::Open(pb::WatchOpen {
            watch_id,
            watch: Some(pb::WatchRequest {
                names: vec![name.into()],
                ..Default::default()
            }),
        })),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn an_undecodable_frame_ends_the_stream_invalid_argument_naming_the_frame() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let (send, receive) = mpsc::channel::<Vec<u8>>(8);
    let mut stream = grpc
        .streaming(
            {
                let mut request = tonic::Request::new(ReceiverStream::new(receive));
                let token = format!("Bearer {}", server.admin_token());
                request
                    .metadata_mut()
                    .insert("authorization", token.parse().expect("ascii"));
                request
            },
            "/promptreg.v1.Registry/WatchMany".parse().expect("path"),
            RawFrames,
        )
        .await
        .expect("WatchMany opens")
        .into_inner();
    for id in [1, 2] {
        send.send(open_frame(id, "p")).await.expect("sent");
    }
    let mut got = Received::default();
    while !(got.snapshot_complete(1) && got.snapshot_complete(2)) {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a message within the timeout")
            .expect("the stream is healthy")
            .expect("the stream is open");
        got.add(message);
    }
    // The third frame is the twelve 0xff bytes.
    send.send(vec![0xff; 12]).await.expect("sent");
    let status = loop {
        match tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the stream ends within the timeout")
        {
            Ok(Some(message)) => assert!(
                !matches!(message.event, Some(Out::Ended(_))),
                "the status ends the watches, not a WatchEnded each: {message:?}"
            ),
            Ok(None) => panic!("the stream ended OK after an undecodable frame"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("request frame 3 could not be decoded: failed to decode Protobuf message"),
        "names the frame: {status:?}"
    );
    assert!(
        status.message().contains("every watch"),
        "says what became of the watches: {status:?}"
    );
    // Both watches are gone with the stream.
    let open = || {
        server
            .registry()
            .watch_stats()
            .open_streams
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while open() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} watches stayed open",
            open()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The fleet view of `p`/`production`: each agent's `connected`, by id.
async fn connected_agents(client: &mut Client) -> (BTreeMap<String, bool>, pb::FleetSummary) {
    let status = client
        .fleet_status(pb::FleetStatusRequest {
            name: "p".into(),
            label: "production".into(),
            summary_only: false,
        })
        .await
        .expect("fleet status")
        .into_inner();
    let rows = status
        .agents
        .into_iter()
        .map(|row| (row.agent_id, row.connected))
        .collect();
    (rows, status.summary.unwrap_or_default())
}

/// Polls the fleet view until `want` holds, failing after PATIENCE with
/// the last view seen.
async fn wait_for_fleet(
    client: &mut Client,
    what: &str,
    want: impl Fn(&BTreeMap<String, bool>) -> bool,
) -> (BTreeMap<String, bool>, pb::FleetSummary) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (rows, summary) = connected_agents(client).await;
        if want(&rows) {
            return (rows, summary);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the fleet view stayed {rows:?} ({summary:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn merged_agent_watches_keep_their_own_fleet_membership() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    publish(&mut client, "p", "b").await;
    promote(&mut client, "p", 1).await;
    let batches = || {
        server
            .registry()
            .watch_stats()
            .batches_sent
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let open_streams = || {
        server
            .registry()
            .watch_stats()
            .open_streams
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let agent = |id: u64| format!("agent-{id}");

    // Three agents of one host follow the same label on one stream.
    let mut many = Many::open(&mut client).await;
    for id in 1..=3 {
        many.command(Command::Open(pb::WatchOpen {
            watch_id: id,
            watch: Some(pb::WatchRequest {
                names: vec!["p".into()],
                labels: vec!["production".into()],
                agent_id: agent(id),
                agent: Some(pb::AgentInfo {
                    host: "pod-1".into(),
                    sdk: "test".into(),
                    version: id.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }))
        .await;
    }
    let mut got = Received::default();
    while !(1..=3).all(|id| got.snapshot_complete(id)) {
        got.add(many.next().await);
    }
    // The first promote reaches all three in one round: from then on they
    // stand at the same place and are merged into one watcher.
    let first = promote(&mut client, "p", 2).await;
    while !(1..=3).all(|id| got.revisions(id).contains(&first)) {
        got.add(many.next().await);
    }
    // Merged: the next promote is delivered by one watcher (one batch),
    // in one message for all three.
    let before = batches();
    let second = promote(&mut client, "p", 1).await;
    while !(1..=3).all(|id| got.revisions(id).contains(&second)) {
        got.add(many.next().await);
    }
    assert_eq!(
        batches() - before,
        1,
        "one watcher serves the three merged watches"
    );
    assert!(
        got.change_messages.iter().any(|ids| {
            let mut ids = ids.clone();
            ids.sort_unstable();
            ids == [1, 2, 3]
        }),
        "one message for the merged watches: {:?}",
        got.change_messages
    );
    for id in 1..=3 {
        assert_eq!(got.revisions(id), vec![first, second], "watch {id}");
    }

    // Each merged watch still counts on its own.
    assert_eq!(open_streams(), 3, "each watch counts as a watch stream");
    let all: BTreeMap<String, bool> = (1..=3).map(|id| (agent(id), true)).collect();
    let (rows, summary) =
        wait_for_fleet(&mut client, "three agents connected", |rows| *rows == all).await;
    assert_eq!(rows, all);
    assert_eq!(
        summary,
        pb::FleetSummary {
            in_sync: 0,
            stale: 3,
            disconnected: 0
        }
    );

    // Cancelling one watch disconnects exactly its agent.
    many.cancel(2).await;
    let (ids, ended) = many.next_ended().await;
    assert_eq!((ids, ended.code), (vec![2], Code::Cancelled as i32));
    let expected: BTreeMap<String, bool> = (1..=3).map(|id| (agent(id), id != 2)).collect();
    let (rows, summary) = wait_for_fleet(&mut client, "agent-2 disconnected", |rows| {
        rows.get("agent-2") == Some(&false)
    })
    .await;
    assert_eq!(rows, expected, "only agent-2 is disconnected");
    assert_eq!(
        summary,
        pb::FleetSummary {
            in_sync: 0,
            stale: 2,
            disconnected: 1
        }
    );
    assert_eq!(open_streams(), 2);

    // The other two are still served, still by one watcher, and agent-2's
    // watch gets nothing.
    let before = batches();
    let third = promote(&mut client, "p", 2).await;
    let mut after = Received::default();
    while !(after.revisions(1).contains(&third) && after.revisions(3).contains(&third)) {
        let message = many.next().await;
        assert!(
            !message.watch_ids.contains(&2),
            "a cancelled watch gets nothing: {message:?}"
        );
        after.add(message);
    }
    assert_eq!(after.revisions(1), vec![third]);
    assert_eq!(after.revisions(3), vec![third]);
    assert!(after.revisions(2).is_empty());
    assert_eq!(
        batches() - before,
        1,
        "watches 1 and 3 still share a watcher"
    );
    let (rows, _) = connected_agents(&mut client).await;
    assert_eq!(rows, expected, "agents 1 and 3 stay connected");

    // Ending the call disconnects the rest.
    drop(many);
    let none: BTreeMap<String, bool> = (1..=3).map(|id| (agent(id), false)).collect();
    wait_for_fleet(&mut client, "every agent disconnected", |rows| {
        *rows == none
    })
    .await;
}
