//! Query parsing (hickory-proto) and response encoding shared by the UDP fast path and the
//! full path.

use std::net::IpAddr;

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Record, RecordType,
        rdata::opt::{ClientSubnet, EdnsCode, EdnsOption},
    },
    serialize::binary::{BinDecodable, BinDecoder},
};
use ipnet::IpNet;

/// Largest UDP payload we advertise and send (the DNS flag day 2020 value).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// EDNS facts of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdnsInfo {
    /// Requester's UDP payload size.
    pub payload: u16,
    /// DO bit.
    pub dnssec_ok: bool,
    /// EDNS version.
    pub version: u8,
    /// Client subnet option (address, source prefix).
    pub ecs: Option<(IpAddr, u8)>,
}

/// A parsed query.
#[derive(Clone, Debug)]
pub struct ParsedQuery {
    /// Message id.
    pub id: u16,
    /// Opcode.
    pub op_code: OpCode,
    /// RD flag.
    pub rd: bool,
    /// CD flag.
    pub cd: bool,
    /// The question.
    pub query: Query,
    /// EDNS, when present.
    pub edns: Option<EdnsInfo>,
    /// Byte offset just after the question section, when the question's name is written without
    /// compression pointers: only then is the query's question the same bytes as the response's,
    /// so that a cached response can take the client's question (and its letter case) from the
    /// query. `None` for a compressed name (no client writes one, but a pointer into the header
    /// would point at the response's different flags).
    pub question_end: Option<usize>,
}

/// Why a query was not parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseFailure {
    /// Not even a header, or a response: drop silently.
    Drop,
    /// Answer with this rcode (header only, id echoed).
    Reply {
        id: u16,
        rcode: ResponseCode,
        op_code: OpCode,
    },
}

/// Parse a query message.
pub fn parse_query(buf: &[u8]) -> Result<ParsedQuery, ParseFailure> {
    let mut d = BinDecoder::new(buf);
    let header = Header::read(&mut d).map_err(|_| ParseFailure::Drop)?;
    let md = header.metadata;
    if md.message_type != MessageType::Query {
        return Err(ParseFailure::Drop);
    }
    let formerr = ParseFailure::Reply {
        id: md.id,
        rcode: ResponseCode::FormErr,
        op_code: md.op_code,
    };
    if md.op_code != OpCode::Query {
        return Err(ParseFailure::Reply {
            id: md.id,
            rcode: ResponseCode::NotImp,
            op_code: md.op_code,
        });
    }
    if header.counts.queries != 1 || header.counts.answers != 0 || header.counts.authorities != 0 {
        return Err(formerr);
    }
    let query = Query::read(&mut d).map_err(|_| ParseFailure::Reply {
        id: md.id,
        rcode: ResponseCode::FormErr,
        op_code: md.op_code,
    })?;
    let question_end = uncompressed_name(buf, HEADER_LEN).then_some(d.index());
    let mut edns = None;
    for _ in 0..header.counts.additionals {
        let rec = Record::read(&mut d).map_err(|_| ParseFailure::Reply {
            id: md.id,
            rcode: ResponseCode::FormErr,
            op_code: md.op_code,
        })?;
        if rec.record_type() == RecordType::OPT {
            if edns.is_some() {
                return Err(formerr);
            }
            let e = Edns::from(&rec);
            let ecs = match e.option(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(s)) => Some((s.addr(), s.source_prefix())),
                _ => None,
            };
            edns = Some(EdnsInfo {
                payload: e.max_payload().max(512),
                dnssec_ok: e.flags().dnssec_ok,
                version: e.version(),
                ecs,
            });
        }
    }
    Ok(ParsedQuery {
        id: md.id,
        op_code: md.op_code,
        rd: md.recursion_desired,
        cd: md.checking_disabled,
        query,
        edns,
        question_end,
    })
}

const HEADER_LEN: usize = 12;

/// True when the name at `at` is a plain sequence of labels ending in the root label.
fn uncompressed_name(buf: &[u8], mut at: usize) -> bool {
    while let Some(&len) = buf.get(at) {
        if len == 0 {
            return true;
        }
        if len & 0xC0 != 0 {
            return false;
        }
        at += 1 + usize::from(len);
    }
    false
}

/// The client subnet as a network (address masked to the source prefix).
pub fn ecs_net(ecs: (IpAddr, u8)) -> Option<IpNet> {
    IpNet::new(ecs.0, ecs.1).ok().map(|n| n.trunc())
}

/// Header-only error response.
pub fn error_reply(id: u16, op_code: OpCode, rcode: ResponseCode) -> Vec<u8> {
    let m = Message::error_msg(id, op_code, rcode);
    m.to_vec().unwrap_or_default()
}

/// Parts of a response.
pub struct ResponseParts<'a> {
    /// Response code.
    pub rcode: ResponseCode,
    /// AA flag.
    pub authoritative: bool,
    /// Answer section.
    pub answers: &'a [Record],
    /// Authority section.
    pub authority: &'a [Record],
    /// Additional section.
    pub additional: &'a [Record],
    /// ECS scope prefix to echo when the query had ECS; `None` when ECS processing is off.
    pub ecs_scope: Option<u8>,
}

/// Build the EDNS section of a response.
pub fn response_edns(q: &ParsedQuery, scope: Option<u8>) -> Option<Edns> {
    let info = q.edns?;
    let mut e = Edns::new();
    e.set_max_payload(MAX_UDP_PAYLOAD);
    e.set_version(0);
    e.set_dnssec_ok(info.dnssec_ok);
    if let Some((addr, source)) = info.ecs
        && let Some(scope) = scope
        && let Some(net) = ecs_net((addr, source))
    {
        e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
            net.network(),
            source,
            scope,
        )));
    }
    Some(e)
}

/// Encode a response; over UDP, a message larger than the requester's payload is truncated.
pub fn encode(q: &ParsedQuery, parts: &ResponseParts<'_>, udp: bool) -> Vec<u8> {
    let mut m = Message::response(q.id, q.op_code);
    m.metadata.authoritative = parts.authoritative;
    m.metadata.recursion_desired = q.rd;
    m.metadata.checking_disabled = q.cd;
    m.metadata.response_code = parts.rcode;
    m.add_query(q.query.clone());
    m.answers.extend_from_slice(parts.answers);
    m.authorities.extend_from_slice(parts.authority);
    m.additionals.extend_from_slice(parts.additional);
    if let Some(e) = response_edns(q, parts.ecs_scope) {
        m.set_edns(e);
    }
    let bytes = m.to_vec().unwrap_or_default();
    if !udp {
        return bytes;
    }
    let limit = usize::from(
        q.edns
            .map_or(512, |e| e.payload.clamp(512, MAX_UDP_PAYLOAD)),
    );
    if bytes.len() <= limit {
        return bytes;
    }
    // Drop additional data first (glue), then truncate.
    m.additionals.clear();
    let bytes = m.to_vec().unwrap_or_default();
    if bytes.len() <= limit {
        return bytes;
    }
    m.answers.clear();
    m.authorities.clear();
    m.metadata.truncation = true;
    m.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::Name;

    use super::*;

    fn query_bytes(name: &str, t: RecordType, ecs: Option<&str>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.add_query(Query::query(name.parse::<Name>().unwrap(), t));
        if let Some(ecs) = ecs {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            e.options_mut()
                .insert(EdnsOption::Subnet(ecs.parse().unwrap()));
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn parses_query_with_ecs() {
        let b = query_bytes("www.example.org.", RecordType::A, Some("192.0.2.77/24"));
        let q = parse_query(&b).unwrap();
        assert_eq!(q.id, 4242);
        assert_eq!(q.query.query_type(), RecordType::A);
        let e = q.edns.unwrap();
        assert_eq!(e.payload, 4096);
        assert_eq!(e.ecs.map(|(_, p)| p), Some(24));
        assert_eq!(ecs_net(e.ecs.unwrap()).unwrap().to_string(), "192.0.2.0/24");
    }

    #[test]
    fn malformed_queries_are_rejected() {
        assert!(matches!(parse_query(&[1, 2, 3]), Err(ParseFailure::Drop)));
        let mut b = query_bytes("a.example.", RecordType::A, None);
        b.truncate(b.len() - 3);
        assert!(matches!(
            parse_query(&b),
            Err(ParseFailure::Reply {
                rcode: ResponseCode::FormErr,
                ..
            })
        ));
        let mut b = query_bytes("a.example.", RecordType::A, None);
        b[2] |= 0x80; // a response
        assert!(matches!(parse_query(&b), Err(ParseFailure::Drop)));
    }
}
