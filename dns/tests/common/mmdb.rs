//! A tiny MaxMind DB writer for test fixtures (IPv4 trees, 24-bit records): enough of the
//! format for the city and ASN lookups catalyst-dns does, so nothing is downloaded.

use std::net::Ipv4Addr;

/// A value in the data section.
#[derive(Clone, Debug)]
pub enum V {
    Str(&'static str),
    F64(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, V)>),
    Arr(Vec<V>),
}

fn ctrl(out: &mut Vec<u8>, typ: u8, size: usize) {
    let (first, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 285 {
        (29, vec![(size - 29) as u8])
    } else {
        let s = size - 285;
        (30, vec![(s >> 8) as u8, s as u8])
    };
    if typ <= 7 {
        out.push((typ << 5) | first);
    } else {
        out.push(first);
        out.push(typ - 7);
    }
    out.extend(extra);
}

fn uint(out: &mut Vec<u8>, typ: u8, b: &[u8]) {
    let skip = b.iter().take_while(|x| **x == 0).count();
    ctrl(out, typ, b.len() - skip);
    out.extend_from_slice(&b[skip..]);
}

fn encode(v: &V, out: &mut Vec<u8>) {
    match v {
        V::Str(s) => {
            ctrl(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        V::F64(f) => {
            ctrl(out, 3, 8);
            out.extend_from_slice(&f.to_be_bytes());
        }
        V::U16(n) => uint(out, 5, &n.to_be_bytes()),
        V::U32(n) => uint(out, 6, &n.to_be_bytes()),
        V::U64(n) => uint(out, 9, &n.to_be_bytes()),
        V::Map(m) => {
            ctrl(out, 7, m.len());
            for (k, v) in m {
                encode(&V::Str(k), out);
                encode(v, out);
            }
        }
        V::Arr(a) => {
            ctrl(out, 11, a.len());
            for v in a {
                encode(v, out);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// Build a database mapping IPv4 networks to values.
pub fn build(db_type: &'static str, entries: &[(Ipv4Addr, u8, V)]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    for (net, prefix, value) in entries {
        let off = data.len();
        encode(value, &mut data);
        let bits = u32::from(*net);
        let mut node = 0;
        for depth in 0..*prefix {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth + 1 == *prefix {
                nodes[node][bit] = Rec::Data(off);
            } else {
                node = if let Rec::Node(n) = nodes[node][bit] {
                    n
                } else {
                    nodes.push([Rec::Empty, Rec::Empty]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Rec::Node(n);
                    n
                };
            }
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Empty => count,
                Rec::Node(i) => i,
                Rec::Data(off) => count + 16 + off,
            } as u32;
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let meta = V::Map(vec![
        ("binary_format_major_version", V::U16(2)),
        ("binary_format_minor_version", V::U16(0)),
        ("build_epoch", V::U64(1_700_000_000)),
        ("database_type", V::Str(db_type)),
        (
            "description",
            V::Map(vec![("en", V::Str("catalyst-dns test fixture"))]),
        ),
        ("ip_version", V::U16(4)),
        ("languages", V::Arr(vec![V::Str("en")])),
        ("node_count", V::U32(count as u32)),
        ("record_size", V::U16(24)),
    ]);
    let mut m = Vec::new();
    encode(&meta, &mut m);
    out.extend_from_slice(&m);
    out
}

/// A city record.
pub fn city(
    cc: &'static str,
    continent: &'static str,
    region: &'static str,
    lat: f64,
    lon: f64,
) -> V {
    V::Map(vec![
        ("continent", V::Map(vec![("code", V::Str(continent))])),
        ("country", V::Map(vec![("iso_code", V::Str(cc))])),
        (
            "location",
            // PowerDNS's GeoIP backend ignores locations without an accuracy radius.
            V::Map(vec![
                ("accuracy_radius", V::U16(100)),
                ("latitude", V::F64(lat)),
                ("longitude", V::F64(lon)),
            ]),
        ),
        (
            "subdivisions",
            V::Arr(vec![V::Map(vec![("iso_code", V::Str(region))])]),
        ),
    ])
}

/// An ASN record.
pub fn asn(n: u32) -> V {
    V::Map(vec![("autonomous_system_number", V::U32(n))])
}
