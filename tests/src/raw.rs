//! Pre-encoded gRPC messages: for garbage that is not a valid message, and
//! for load generators that should not spend their CPU encoding.

use bytes::{Buf, BufMut};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming},
    transport::Channel,
};

/// Sends and receives message bytes as they are.
#[derive(Default)]
pub struct Raw;
pub struct RawEncoder;
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Opens an Ingest stream sending `messages` (encoded batches, or not);
/// returns the stream of raw acknowledgements.
pub async fn ingest_stream<S>(channel: Channel, messages: S) -> Result<Streaming<Vec<u8>>, tonic::Status>
where
    S: IntoIterator<Item = Vec<u8>>,
    S::IntoIter: Send + 'static,
{
    ingest_stream_from(channel, tokio_stream::iter(messages)).await
}

/// Like [`ingest_stream`] from any stream of messages.
pub async fn ingest_stream_from(
    channel: Channel,
    messages: impl tokio_stream::Stream<Item = Vec<u8>> + Send + 'static,
) -> Result<Streaming<Vec<u8>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(64 << 20);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/podlens.v1.Ingest/Stream");
    Ok(grpc.streaming(tonic::Request::new(messages), path, Raw).await?.into_inner())
}
