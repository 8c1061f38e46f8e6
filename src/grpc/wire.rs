//! `WatchFrame`: a `WatchResponse` that is already protobuf-encoded.
//!
//! A revision fanned out to ten thousand watchers is the same message ten
//! thousand times. The server encodes it once (the first stream to send it
//! fills the revision's slot, see `registry::watch::SharedRevision`) and
//! every stream writes the same bytes. On the wire nothing changes: the
//! bytes are exactly the `WatchResponse` that clients decode.
//!
//! `WatchManyFrame` does the same for `WatchMany`: the shared bytes of the
//! `WatchResponse`, behind the ids of the watches it is for. And
//! `GetVersionFrame` for resolves: a version is immutable, so its encoding
//! is made once and every resolve sends it, followed by the revision.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};

/// The decoding half of `prost::Message` for answers the server only
/// encodes: clients decode the generated messages, so nothing here is ever
/// decoded; it skips every field.
macro_rules! encode_only {
    () => {
        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }

        fn clear(&mut self) {
            *self = Self::default();
        }
    };
}

/// A message already encoded: written as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded(Bytes);

/// An encoded `promptreg.v1.WatchResponse`.
pub type WatchFrame = Encoded;

impl Encoded {
    /// Wraps the encoding of a message.
    pub fn new(bytes: Bytes) -> Encoded {
        Encoded(bytes)
    }

    /// Encodes `message`.
    pub fn of(message: &impl Message) -> Encoded {
        Encoded(Bytes::from(message.encode_to_vec()))
    }
}

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // A message is the concatenation of its fields: the encoded
        // response is written as it is.
        buf.put_slice(&self.0);
    }

    encode_only!();

    fn encoded_len(&self) -> usize {
        self.0.len()
    }
}

/// An encoded `promptreg.v1.GetVersionResponse`: the version's shared
/// encoding, then the revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GetVersionFrame {
    version: Encoded,
    revision: u64,
    rollout_id: u64,
    arm: i32,
}

/// Field numbers of `GetVersionResponse`.
const VERSION: u32 = 1;
const REVISION: u32 = 2;
const ROLLOUT_ID: u32 = 3;
const ARM: u32 = 4;

impl GetVersionFrame {
    /// `version`: the encoding of a `promptreg.v1.Version`.
    pub fn new(version: Bytes, revision: u64) -> GetVersionFrame {
        GetVersionFrame {
            version: Encoded(version),
            revision,
            rollout_id: 0,
            arm: 0,
        }
    }

    /// The rollout a resolve by label answered for, and the agent's arm.
    pub fn with_rollout(mut self, rollout_id: u64, arm: super::pb::Arm) -> GetVersionFrame {
        self.rollout_id = rollout_id;
        self.arm = arm.into();
        self
    }
}

impl Message for GetVersionFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        prost::encoding::message::encode(VERSION, &self.version, buf);
        if self.revision != 0 {
            prost::encoding::uint64::encode(REVISION, &self.revision, buf);
        }
        if self.rollout_id != 0 {
            prost::encoding::uint64::encode(ROLLOUT_ID, &self.rollout_id, buf);
        }
        if self.arm != 0 {
            prost::encoding::int32::encode(ARM, &self.arm, buf);
        }
    }

    encode_only!();

    fn encoded_len(&self) -> usize {
        prost::encoding::message::encoded_len(VERSION, &self.version)
            + if self.revision != 0 {
                prost::encoding::uint64::encoded_len(REVISION, &self.revision)
            } else {
                0
            }
            + if self.rollout_id != 0 {
                prost::encoding::uint64::encoded_len(ROLLOUT_ID, &self.rollout_id)
            } else {
                0
            }
            + if self.arm != 0 {
                prost::encoding::int32::encoded_len(ARM, &self.arm)
            } else {
                0
            }
    }
}

/// An encoded `promptreg.v1.WatchManyResponse`: the ids, then the shared
/// `WatchResponse` bytes (or a `WatchEnded`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchManyFrame {
    watch_ids: Vec<u64>,
    event: Option<ManyEvent>,
}

#[derive(Debug, Clone, PartialEq)]
enum ManyEvent {
    Response(WatchFrame),
    Ended(super::pb::WatchEnded),
}

/// Field numbers of `WatchManyResponse`.
const WATCH_IDS: u32 = 1;
const RESPONSE: u32 = 2;
const ENDED: u32 = 3;

impl WatchManyFrame {
    /// The same response for each of `watch_ids`.
    pub fn response(watch_ids: Vec<u64>, response: WatchFrame) -> WatchManyFrame {
        WatchManyFrame {
            watch_ids,
            event: Some(ManyEvent::Response(response)),
        }
    }

    /// The watches in `watch_ids` have ended.
    pub fn ended(watch_ids: Vec<u64>, ended: super::pb::WatchEnded) -> WatchManyFrame {
        WatchManyFrame {
            watch_ids,
            event: Some(ManyEvent::Ended(ended)),
        }
    }
}

impl Message for WatchManyFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        prost::encoding::uint64::encode_packed(WATCH_IDS, &self.watch_ids, buf);
        match &self.event {
            Some(ManyEvent::Response(frame)) => {
                prost::encoding::message::encode(RESPONSE, frame, buf)
            }
            Some(ManyEvent::Ended(ended)) => prost::encoding::message::encode(ENDED, ended, buf),
            None => {}
        }
    }

    encode_only!();

    fn encoded_len(&self) -> usize {
        prost::encoding::uint64::encoded_len_packed(WATCH_IDS, &self.watch_ids)
            + match &self.event {
                Some(ManyEvent::Response(frame)) => {
                    prost::encoding::message::encoded_len(RESPONSE, frame)
                }
                Some(ManyEvent::Ended(ended)) => {
                    prost::encoding::message::encoded_len(ENDED, ended)
                }
                None => 0,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::pb;

    #[test]
    fn a_version_frame_encodes_to_exactly_the_response() {
        let version = pb::Version {
            name: "support/triage".into(),
            version: 3,
            digest: "ab".repeat(32),
            template: Some(pb::Template {
                kind: Some(pb::template::Kind::Text("Hello {{name}}".into())),
            }),
            variables: vec!["name".into()],
            ..Default::default()
        };
        for revision in [0, 1, 1 << 40] {
            let response = pb::GetVersionResponse {
                version: Some(version.clone()),
                revision,
                ..Default::default()
            };
            let frame = GetVersionFrame::new(version.encode_to_vec().into(), revision);
            let bytes = frame.encode_to_vec();
            assert_eq!(bytes.len(), frame.encoded_len());
            assert_eq!(bytes, response.encode_to_vec());
            // A resolve for an agent during a rollout.
            let response = pb::GetVersionResponse {
                rollout_id: 7,
                arm: pb::Arm::Candidate.into(),
                ..response
            };
            let frame = frame.with_rollout(7, pb::Arm::Candidate);
            let bytes = frame.encode_to_vec();
            assert_eq!(bytes.len(), frame.encoded_len());
            assert_eq!(bytes, response.encode_to_vec());
        }
    }

    #[test]
    fn a_many_frame_encodes_to_exactly_the_response() {
        let response = pb::WatchResponse {
            event: Some(pb::watch_response::Event::Progress(pb::Progress {
                revision: 9,
            })),
        };
        let frame = WatchManyFrame::response(vec![3, 1, 300], WatchFrame::of(&response));
        let bytes = frame.encode_to_vec();
        assert_eq!(bytes.len(), frame.encoded_len());
        let decoded = pb::WatchManyResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.watch_ids, vec![3, 1, 300]);
        assert_eq!(
            decoded.event,
            Some(pb::watch_many_response::Event::Response(response))
        );

        let ended = pb::WatchEnded {
            code: 14,
            message: "stopping".into(),
            compact_revision: 0,
            resume_revision: 12,
        };
        let bytes = WatchManyFrame::ended(vec![7], ended.clone()).encode_to_vec();
        let decoded = pb::WatchManyResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.watch_ids, vec![7]);
        assert_eq!(
            decoded.event,
            Some(pb::watch_many_response::Event::Ended(ended))
        );
    }

    #[test]
    fn a_frame_encodes_to_exactly_the_response() {
        let response = pb::WatchResponse {
            event: Some(pb::watch_response::Event::Progress(pb::Progress {
                revision: 7,
            })),
        };
        let frame = WatchFrame::of(&response);
        let bytes = frame.encode_to_vec();
        assert_eq!(bytes, response.encode_to_vec());
        assert_eq!(
            pb::WatchResponse::decode(bytes.as_slice()).unwrap(),
            response
        );
    }
}
