//! `GetFlows` responses as the relay forwards them: the agent's encoded message, passed on
//! byte for byte, with only what the merge needs (`time`, which of the oneof it holds) read
//! from it. Decoding every `flow.Flow` and encoding it again was most of the relay's cost.

use prost::Message as _;
use prost::bytes::{Buf as _, BufMut as _, Bytes};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use crate::{
    api::observer::{GetFlowsRequest, GetFlowsResponse},
    flow::timestamp_ns,
};

/// Field numbers of `observer.GetFlowsResponse` (specs/hubble-observer-api.md).
const FLOW: u32 = 1;
const NODE_STATUS: u32 = 2;
const LOST_EVENTS: u32 = 3;
const TIME: u32 = 1001;

/// What a response holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `flow`.
    Flow,
    /// `node_status`.
    NodeStatus,
    /// `lost_events`.
    LostEvents,
    /// None of the oneof (or a member this build does not know).
    Other,
}

/// One encoded `GetFlowsResponse` with its time and kind.
#[derive(Debug, Clone)]
pub struct WireResponse {
    bytes: Bytes,
    time_ns: i128,
    kind: Kind,
}

/// A malformed response from an agent.
#[derive(Debug, thiserror::Error)]
#[error("malformed GetFlowsResponse: {0}")]
pub struct WireError(&'static str);

fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    prost::encoding::decode_varint(buf).map_err(|_| WireError("bad varint"))
}

impl WireResponse {
    /// Reads the top-level fields of an encoded response; only `time` is decoded.
    pub fn parse(bytes: Bytes) -> Result<Self, WireError> {
        let (mut time_ns, mut kind) = (0, Kind::Other);
        let mut buf: &[u8] = &bytes;
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            let tag = u32::try_from(key >> 3).map_err(|_| WireError("bad field number"))?;
            match key & 7 {
                0 => {
                    varint(&mut buf)?;
                }
                1 | 5 => {
                    let n = if key & 7 == 1 { 8 } else { 4 };
                    if buf.len() < n {
                        return Err(WireError("truncated fixed field"));
                    }
                    buf.advance(n);
                }
                2 => {
                    let len =
                        usize::try_from(varint(&mut buf)?).map_err(|_| WireError("bad length"))?;
                    if buf.len() < len {
                        return Err(WireError("truncated field"));
                    }
                    let (field, rest) = buf.split_at(len);
                    match tag {
                        FLOW => kind = Kind::Flow,
                        NODE_STATUS => kind = Kind::NodeStatus,
                        LOST_EVENTS => kind = Kind::LostEvents,
                        TIME => {
                            let ts = prost_types::Timestamp::decode(field)
                                .map_err(|_| WireError("bad time"))?;
                            time_ns = timestamp_ns(&ts);
                        }
                        _ => {}
                    }
                    buf = rest;
                }
                _ => return Err(WireError("unsupported wire type")),
            }
        }
        Ok(Self {
            bytes,
            time_ns,
            kind,
        })
    }

    /// A response the relay makes itself (node status events).
    pub fn encode(r: &GetFlowsResponse) -> Self {
        Self {
            bytes: Bytes::from(r.encode_to_vec()),
            time_ns: r.time.as_ref().map_or(0, timestamp_ns),
            kind: match r.response_types {
                Some(super::ResponseTypes::Flow(_)) => Kind::Flow,
                Some(super::ResponseTypes::NodeStatus(_)) => Kind::NodeStatus,
                Some(super::ResponseTypes::LostEvents(_)) => Kind::LostEvents,
                None => Kind::Other,
            },
        }
    }

    /// The full message.
    pub fn decode(&self) -> Result<GetFlowsResponse, prost::DecodeError> {
        GetFlowsResponse::decode(self.bytes.clone())
    }

    /// `time` in nanoseconds since the epoch (0 when absent).
    pub fn time_ns(&self) -> i128 {
        self.time_ns
    }

    /// Which member of the oneof it holds.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The encoded message.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// The relay's side of the agents' `GetFlows`: requests encoded, responses read as
/// [`WireResponse`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentCodec;

/// The relay's own `GetFlows`: requests decoded, [`WireResponse`]s written as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCodec;

/// Encodes a prost message.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestEncoder;

/// Decodes a `GetFlowsRequest`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestDecoder;

/// Writes a [`WireResponse`]'s bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct WireEncoder;

/// Reads a [`WireResponse`] (the message's bytes are taken from tonic's buffer, not copied).
#[derive(Debug, Default, Clone, Copy)]
pub struct WireDecoder;

impl Encoder for RequestEncoder {
    type Item = GetFlowsRequest;
    type Error = Status;
    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode GetFlowsRequest: {e}")))
    }
}

impl Decoder for RequestDecoder {
    type Item = GetFlowsRequest;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        GetFlowsRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode GetFlowsRequest: {e}")))
    }
}

impl Encoder for WireEncoder {
    type Item = WireResponse;
    type Error = Status;
    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item.bytes);
        Ok(())
    }
}

impl Decoder for WireDecoder {
    type Item = WireResponse;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        WireResponse::parse(bytes)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for AgentCodec {
    type Encode = GetFlowsRequest;
    type Decode = WireResponse;
    type Encoder = RequestEncoder;
    type Decoder = WireDecoder;
    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }
    fn decoder(&mut self) -> WireDecoder {
        WireDecoder
    }
}

impl Codec for ClientCodec {
    type Encode = WireResponse;
    type Decode = GetFlowsRequest;
    type Encoder = WireEncoder;
    type Decoder = RequestDecoder;
    fn encoder(&mut self) -> WireEncoder {
        WireEncoder
    }
    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}
