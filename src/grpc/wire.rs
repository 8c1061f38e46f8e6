//! `WatchFrame`: a `WatchResponse` that is already protobuf-encoded.
//!
//! A revision fanned out to ten thousand watchers is the same message ten
//! thousand times. The server encodes it once (the first stream to send it
//! fills the revision's slot, see `registry::watch::SharedRevision`) and
//! every stream writes the same bytes. On the wire nothing changes: the
//! bytes are exactly the `WatchResponse` that clients decode.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};

/// An encoded `promptreg.v1.WatchResponse`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchFrame(Bytes);

impl WatchFrame {
    /// Wraps the encoding of a `WatchResponse`.
    pub fn encoded(bytes: Bytes) -> WatchFrame {
        WatchFrame(bytes)
    }

    /// Encodes `response`.
    pub fn of(response: &super::pb::WatchResponse) -> WatchFrame {
        WatchFrame(Bytes::from(response.encode_to_vec()))
    }
}

impl Message for WatchFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // A message is the concatenation of its fields: the encoded
        // response is written as it is.
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // The server never decodes a WatchFrame; clients decode
        // `pb::WatchResponse`.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::pb;

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
