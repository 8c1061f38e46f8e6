//! The prost codecs of promptreg's client and server.
//!
//! Both start with a small encode buffer: tonic's default allocates 8 KiB
//! per RPC and keeps it for the life of a stream, which dominated the
//! memory of an idle Watch stream; 1 KiB grows on demand.
//!
//! The server's codec also answers a request it cannot decode with
//! INVALID_ARGUMENT: tonic's prost decoder says INTERNAL, as if the server
//! were at fault, when the bytes came from the client. The client keeps
//! tonic's decoder, since an answer it cannot decode is not its own
//! argument's fault. [`FramingErrorLayer`] does the same for requests whose
//! gRPC framing tonic refuses before a decoder runs.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstCodec;

fn encode_buffer() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

/// The client's codec.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(encode_buffer())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

/// The server's codec: [`SmallBufferCodec`]'s encoder, and a decoder whose
/// failure is INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct ServerCodec<T, U>(SmallBufferCodec<T, U>);

impl<T, U> Codec for ServerCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <SmallBufferCodec<T, U> as Codec>::Encoder;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// How the status of an undecodable request starts; prost's reason follows.
pub const UNDECODABLE: &str = "the request could not be decoded: ";

/// Decodes one request message; bytes that are not one are the client's
/// bad argument.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost names the message and field it was in, when it got that far.
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("{UNDECODABLE}{e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The texts of tonic's INTERNAL answers to a request whose gRPC framing is
/// broken before any decoder sees it: a compressed-flag with no
/// `grpc-encoding`, a flag other than 0 or 1, a message cut short by the
/// end of the stream. All are the client's bytes.
const BROKEN_FRAMING: &[&str] = &[
    "protocol error: received message with",
    "Unexpected EOF decoding stream",
];

/// A layer in front of every service that turns tonic's INTERNAL answer to a
/// request with broken gRPC framing into INVALID_ARGUMENT (the answer is
/// trailers-only, so its status is in the response headers).
#[derive(Debug, Clone, Default)]
pub struct FramingErrorLayer;

impl<S> tower::Layer<S> for FramingErrorLayer {
    type Service = FramingErrors<S>;

    fn layer(&self, inner: S) -> FramingErrors<S> {
        FramingErrors { inner }
    }
}

/// See [`FramingErrorLayer`].
#[derive(Debug, Clone)]
pub struct FramingErrors<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for FramingErrors<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            let headers = response.headers_mut();
            let internal = headers
                .get("grpc-status")
                .is_some_and(|code| code.as_bytes() == b"13");
            // The message is percent-encoded: a space is `%20`.
            let broken_framing = headers.get("grpc-message").is_some_and(|message| {
                let message = String::from_utf8_lossy(message.as_bytes()).replace("%20", " ");
                BROKEN_FRAMING.iter().any(|text| message.starts_with(text))
            });
            if internal && broken_framing {
                headers.insert("grpc-status", http::HeaderValue::from_static("3"));
            }
            Ok(response)
        })
    }
}
