//! Zones: master files loaded into an in-memory store, static records ready to serve and LUA
//! records compiled. [`Zone::answer`] implements authoritative lookup (exact, CNAME chains inside
//! the zone, wildcards, empty non-terminals, delegations with glue, NXDOMAIN/NODATA with SOA).

pub mod loc;
mod lookup;
pub mod parser;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{CNAME, NS, PTR, TXT},
};

pub use self::lookup::{Answer, ClientInfo, Outcome, ZoneSet};
use self::parser::{RawRecord, Token};
use crate::{
    health,
    lua::{CompileEnv, CompileError, Compiled, Env, Tier},
};

/// `PowerDNS`'s type code for LUA records.
pub const LUA_TYPE_CODE: u16 = 65402;

/// A zone failed to load.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The file could not be read.
    #[error("failed to read zone file `{file}`")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Master-file syntax.
    #[error("{file}:{line}: {construct}")]
    Syntax {
        file: String,
        line: usize,
        construct: String,
    },
    /// A record's data is invalid.
    #[error("{file}:{line}: invalid {rtype} record: {reason}")]
    Record {
        file: String,
        line: usize,
        rtype: String,
        reason: String,
    },
    /// LUA records failed to load and the zone is strict.
    #[error("zone `{zone}` is strict and {} LUA record(s) failed to load: {}", failures.len(), failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    LuaStrict {
        zone: String,
        failures: Vec<LuaFailure>,
    },
    /// Several errors (each listed once).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<ZoneError>),
    /// Zone-level problem (no SOA, records outside the zone).
    #[error("zone `{zone}`: {reason}")]
    Zone { zone: String, reason: String },
}

impl ZoneError {
    /// Every individual error, each once (for `check-zone`).
    pub fn messages(&self) -> Vec<String> {
        match self {
            ZoneError::Multiple(all) => all.iter().flat_map(ZoneError::messages).collect(),
            ZoneError::LuaStrict { failures, .. } => {
                failures.iter().map(ToString::to_string).collect()
            }
            other => {
                let mut msg = other.to_string();
                let mut src = std::error::Error::source(other);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                vec![msg]
            }
        }
    }
}

/// A LUA record that failed to load: it answers SERVFAIL (or, in a strict zone, the zone is
/// rejected).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{file}:{line}: LUA record `{owner}` ({rtype}): {error}")]
pub struct LuaFailure {
    /// Zone file.
    pub file: String,
    /// Line of the record.
    pub line: usize,
    /// Owner name.
    pub owner: String,
    /// Declared type.
    pub rtype: String,
    /// Why it failed, naming the construct.
    pub error: CompileError,
}

/// How the quoted chunks of a LUA record are joined (`PowerDNS` `lua-records-insert-whitespace`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkJoin {
    /// Plain concatenation (`PowerDNS`'s modern default, `no`).
    #[default]
    Concat,
    /// One space after each chunk (`yes`).
    Space,
}

/// A compiled LUA record.
#[derive(Debug)]
pub struct LuaRecord {
    /// Unique id within the zone set (cache key part).
    pub id: u32,
    /// Owner name (may be a wildcard).
    pub owner: Name,
    /// Owner in presentation form with trailing dot.
    pub owner_str: String,
    /// Declared type.
    pub rtype: RecordType,
    /// TTL of the synthesised RRs.
    pub ttl: u32,
    /// Source code (joined chunks).
    pub code: String,
    /// The body in the tier that runs it.
    pub program: Compiled,
    /// Line in the zone file.
    pub line: usize,
}

impl LuaRecord {
    /// Which tier runs the record.
    pub fn tier(&self) -> Tier {
        self.program.tier()
    }
}

/// All data at one owner name.
#[derive(Debug, Default)]
pub struct Node {
    /// Static `RRsets` by type.
    pub rrsets: Vec<(RecordType, Vec<Record>)>,
    /// LUA records (any declared type except LUA).
    pub lua: Vec<Arc<LuaRecord>>,
}

impl Node {
    /// Static records of a type.
    pub fn rrset(&self, t: RecordType) -> Option<&[Record]> {
        self.rrsets
            .iter()
            .find(|(rt, _)| *rt == t)
            .map(|(_, r)| r.as_slice())
    }
}

/// A loaded zone.
#[derive(Debug)]
pub struct Zone {
    /// Apex.
    pub origin: Name,
    /// Apex, lower case, with trailing dot.
    pub origin_str: String,
    /// SOA record.
    pub soa: Record,
    /// TTL of negative answers: min(SOA TTL, SOA minimum).
    pub negative_ttl: u32,
    nodes: HashMap<Name, Node>,
    ents: HashSet<Name>,
    cuts: HashSet<Name>,
    /// Services the LUA records use.
    pub env: Arc<Env>,
    /// Source file.
    pub file: PathBuf,
    /// Number of LUA records.
    pub lua_records: usize,
    /// Number of static records.
    pub static_records: usize,
    /// LUA records that failed to load (they answer SERVFAIL), in file order.
    pub lua_failures: Vec<LuaFailure>,
}

/// Inputs of a zone load.
pub struct ZoneSource<'a> {
    /// Zone apex.
    pub origin: &'a str,
    /// Master file.
    pub file: &'a Path,
    /// Chunk joining mode.
    pub join: ChunkJoin,
    /// Shared services (health registry, geo, failover).
    pub health: Arc<health::Registry>,
    /// Geo databases.
    pub geo: Option<Arc<crate::geo::GeoDb>>,
    /// Failover state.
    pub failover: Arc<crate::failover::FailoverState>,
    /// First LUA record id to assign.
    pub next_id: &'a mut u32,
    /// Reject the zone when a LUA record fails to load (instead of serving SERVFAIL for it).
    pub strict: bool,
    /// Instruction budget of one interpreted LUA run; 0 = unlimited.
    pub exec_limit: u32,
}

/// Unescape a quoted zone string (`\"`, `\\`, `\DDD`).
pub fn unescape(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            if b.len() >= i + 4 && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
                let v = u32::from(b[i + 1] - b'0') * 100
                    + u32::from(b[i + 2] - b'0') * 10
                    + u32::from(b[i + 3] - b'0');
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            } else {
                out.push(b[i + 1]);
                i += 2;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The code of a LUA record from its quoted chunks, as `PowerDNS`'s `LUARecordContent::getCode`
/// builds it: the stored form `"c1" "c2"` is split at every `"` (empty pieces dropped, so the
/// `" "` separators are pieces too); `Concat` (`lua-records-insert-whitespace=no`, the default
/// since 5.0) keeps every piece but the single-space separators, `Space` (`yes`, the default
/// before 5.0) appends one space to every piece, separators included — so chunks end up three
/// spaces apart, with one trailing space.
pub fn join_chunks(chunks: &[Token], mode: ChunkJoin) -> String {
    let stored = chunks
        .iter()
        .map(|c| format!("\"{}\"", c.text()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut code = String::new();
    for piece in stored.split('"').filter(|p| !p.is_empty()) {
        match mode {
            ChunkJoin::Concat if piece == " " => {}
            ChunkJoin::Concat => code.push_str(piece),
            ChunkJoin::Space => {
                code.push_str(piece);
                code.push(' ');
            }
        }
    }
    unescape(&code)
}

/// Positions of domain names in the RDATA of types whose names may be relative.
fn name_positions(t: RecordType) -> &'static [usize] {
    match t {
        RecordType::NS | RecordType::CNAME | RecordType::PTR | RecordType::ANAME => &[0],
        RecordType::MX => &[1],
        RecordType::SRV => &[3],
        RecordType::SOA => &[0, 1],
        _ => &[],
    }
}

/// Parse RDATA tokens of `t`, resolving relative names against `origin`.
pub fn parse_rdata(t: RecordType, tokens: &[Token], origin: &str) -> Result<RData, String> {
    if t == loc::loc_type() {
        let text: Vec<&str> = tokens.iter().map(Token::text).collect();
        return loc::loc_rdata(&text.join(" "));
    }
    let pos = name_positions(t);
    let mut text = String::new();
    for (i, tok) in tokens.iter().enumerate() {
        if i > 0 {
            text.push(' ');
        }
        match tok {
            Token::Word(w) if pos.contains(&i) => text.push_str(&parser::absolute(w, origin)),
            Token::Word(w) => text.push_str(w),
            Token::Quoted(q) => {
                text.push('"');
                text.push_str(q);
                text.push('"');
            }
        }
    }
    if t == RecordType::TXT {
        let strings = tokens
            .iter()
            .map(|t| match t {
                Token::Quoted(q) => unescape(q),
                Token::Word(w) => unescape(w),
            })
            .collect();
        return Ok(RData::TXT(TXT::new(strings)));
    }
    RData::try_from_str(t, &text).map_err(|e| e.to_string())
}

/// Parse one LUA result string as RDATA of `t` (names are absolute, as in `PowerDNS`).
pub fn parse_lua_content(t: RecordType, s: &str) -> Result<RData, String> {
    let fqdn = |s: &str| -> Result<Name, String> {
        let s = s.trim();
        let mut n = Name::from_str(s).map_err(|e| format!("`{s}`: {e}"))?;
        n.set_fqdn(true);
        Ok(n)
    };
    if t == loc::loc_type() {
        return loc::loc_rdata(s);
    }
    // The common case (every pick function returns addresses) without the text lexer; what the
    // standard parser refuses takes the general path below, with its error message.
    match t {
        RecordType::A => {
            if let Ok(a) = s.trim().parse::<std::net::Ipv4Addr>() {
                return Ok(RData::A(a.into()));
            }
        }
        RecordType::AAAA => {
            if let Ok(a) = s.trim().parse::<std::net::Ipv6Addr>() {
                return Ok(RData::AAAA(a.into()));
            }
        }
        _ => {}
    }
    match t {
        RecordType::TXT => Ok(RData::TXT(TXT::new(vec![s.to_string()]))),
        RecordType::CNAME => Ok(RData::CNAME(CNAME(fqdn(s)?))),
        RecordType::NS => Ok(RData::NS(NS(fqdn(s)?))),
        RecordType::PTR => Ok(RData::PTR(PTR(fqdn(s)?))),
        _ => {
            let toks: Vec<Token> = s
                .split_whitespace()
                .map(|w| Token::Word(w.to_string()))
                .collect();
            if toks.is_empty() {
                return Err(format!("empty {t} content"));
            }
            parse_rdata(t, &toks, ".").map_err(|e| format!("`{s}`: {e}"))
        }
    }
}

/// The declared type of a LUA record: `Ok(None)` for `LUA LUA` (an `include()` source).
fn lua_type(word: &str) -> Result<Option<RecordType>, String> {
    if word.eq_ignore_ascii_case("LUA") {
        return Ok(None);
    }
    if loc::is_loc(word) {
        return Ok(Some(loc::loc_type()));
    }
    match RecordType::from_str(&word.to_ascii_uppercase()) {
        Ok(t) if !matches!(t, RecordType::Unknown(_)) => Ok(Some(t)),
        _ => Err(format!("unsupported type `{word}` in LUA record")),
    }
}

impl Zone {
    /// Load and compile a zone.
    pub fn load(src: ZoneSource<'_>) -> Result<Self, ZoneError> {
        let raws = parser::parse_file(src.file, src.origin)?;
        Self::from_raw(raws, src)
    }

    /// Build from already-parsed records.
    #[expect(
        clippy::too_many_lines,
        clippy::needless_pass_by_value,
        reason = "one pass over the records reads best in one place; the source is a bundle of handles"
    )]
    pub fn from_raw(raws: Vec<RawRecord>, src: ZoneSource<'_>) -> Result<Self, ZoneError> {
        let origin_str = if src.origin.ends_with('.') {
            src.origin.to_ascii_lowercase()
        } else {
            format!("{}.", src.origin.to_ascii_lowercase())
        };
        let zerr = |reason: String| ZoneError::Zone {
            zone: origin_str.clone(),
            reason,
        };
        let origin = Name::from_str(&origin_str).map_err(|e| zerr(format!("bad origin: {e}")))?;
        let env = Arc::new(Env {
            health: src.health.clone(),
            geo: src.geo.clone(),
            failover: src.failover.clone(),
            zone: origin_str.clone(),
        });
        // LUA-typed LUA records are include() targets; collect their code first.
        let mut includes: HashMap<String, String> = HashMap::new();
        let join = |chunks: &[Token]| join_chunks(chunks, src.join);
        for r in &raws {
            if (r.rtype == "LUA" || r.rtype == "TYPE65402")
                && r.rdata
                    .first()
                    .is_some_and(|t| t.text().eq_ignore_ascii_case("LUA"))
            {
                includes.insert(r.owner.clone(), join(&r.rdata[1..]));
            }
        }
        let includes = Arc::new(includes);
        let mut errors: Vec<ZoneError> = Vec::new();
        let mut lua_failures: Vec<LuaFailure> = Vec::new();
        let mut nodes: HashMap<Name, Node> = HashMap::new();
        let mut soa = None;
        let mut static_records = 0;
        let mut lua_records = 0;
        for r in raws {
            let rec_err = |reason: String| ZoneError::Record {
                file: r.file.display().to_string(),
                line: r.line,
                rtype: r.rtype.clone(),
                reason,
            };
            let owner = match Name::from_str(&r.owner) {
                Ok(o) => o,
                Err(e) => {
                    errors.push(rec_err(format!("bad owner `{}`: {e}", r.owner)));
                    continue;
                }
            };
            if !origin.zone_of(&owner) {
                errors.push(rec_err(format!(
                    "owner `{}` is outside the zone `{origin_str}`",
                    r.owner
                )));
                continue;
            }
            if r.rtype == "LUA" || r.rtype == "TYPE65402" {
                let Some(tword) = r.rdata.first() else {
                    errors.push(rec_err("missing type and code".into()));
                    continue;
                };
                let rtype = match lua_type(tword.text()) {
                    Ok(Some(t)) => t,
                    Ok(None) => continue, // LUA LUA: include() source only
                    Err(e) => {
                        errors.push(rec_err(e));
                        continue;
                    }
                };
                if r.rdata.len() < 2 || r.rdata[1..].iter().any(|t| matches!(t, Token::Word(_))) {
                    errors.push(rec_err("code must be one or more quoted strings".into()));
                    continue;
                }
                let code = join(&r.rdata[1..]);
                let base = r.owner.trim_start_matches("*.").to_string();
                let include = |label: &str| -> Option<String> {
                    let name = parser::absolute(label, &origin_str).to_ascii_lowercase();
                    includes.get(&name).cloned().or_else(|| {
                        // PowerDNS resolves include labels against the zone; also accept the
                        // record's own parent for convenience.
                        includes.get(&parser::absolute(label, &base)).cloned()
                    })
                };
                let cenv = CompileEnv {
                    include: &include,
                    health: &src.health,
                    zone: &origin_str,
                    includes: &includes,
                    exec_limit: src.exec_limit,
                };
                // Per-record isolation: a body neither tier loads answers SERVFAIL; every other
                // name serves.
                let program = Compiled::compile(&code, &cenv).unwrap_or_else(|error| {
                    lua_failures.push(LuaFailure {
                        file: r.file.display().to_string(),
                        line: r.line,
                        owner: r.owner.clone(),
                        rtype: rtype.to_string(),
                        error: error.clone(),
                    });
                    Compiled::Failed(error)
                });
                let id = *src.next_id;
                *src.next_id += 1;
                lua_records += 1;
                nodes
                    .entry(owner.clone())
                    .or_default()
                    .lua
                    .push(Arc::new(LuaRecord {
                        id,
                        owner: owner.clone(),
                        owner_str: r.owner.clone(),
                        rtype,
                        ttl: r.ttl,
                        code,
                        program,
                        line: r.line,
                    }));
                continue;
            }
            let rtype = match RecordType::from_str(&r.rtype) {
                _ if loc::is_loc(&r.rtype) => loc::loc_type(),
                Ok(t) if !matches!(t, RecordType::Unknown(_)) => t,
                _ => {
                    errors.push(rec_err("unsupported record type".into()));
                    continue;
                }
            };
            let rdata = match parse_rdata(rtype, &r.rdata, &r.origin) {
                Ok(d) => d,
                Err(e) => {
                    errors.push(rec_err(e));
                    continue;
                }
            };
            let record = Record::from_rdata(owner.clone(), r.ttl, rdata);
            if rtype == RecordType::SOA {
                if owner != origin {
                    errors.push(rec_err("SOA must be at the zone apex".into()));
                    continue;
                }
                if soa.is_some() {
                    errors.push(rec_err("second SOA record".into()));
                    continue;
                }
                soa = Some(record.clone());
            }
            static_records += 1;
            let node = nodes.entry(owner).or_default();
            match node.rrsets.iter_mut().find(|(t, _)| *t == rtype) {
                Some((_, set)) => {
                    // RFC 2181: one TTL per RRset; the first wins.
                    let mut record = record;
                    record.ttl = set[0].ttl;
                    if !set.iter().any(|r| r.data == record.data) {
                        set.push(record);
                    }
                }
                None => node.rrsets.push((rtype, vec![record])),
            }
        }
        if soa.is_none() {
            errors.push(zerr("no SOA record at the apex".into()));
        }
        if src.strict && !lua_failures.is_empty() {
            errors.push(ZoneError::LuaStrict {
                zone: origin_str.clone(),
                failures: std::mem::take(&mut lua_failures),
            });
        }
        match errors.len() {
            0 => {}
            1 => return Err(errors.remove(0)),
            _ => return Err(ZoneError::Multiple(errors)),
        }
        let soa = soa.ok_or_else(|| zerr("no SOA record at the apex".into()))?;
        let negative_ttl = match &soa.data {
            RData::SOA(s) => s.minimum.min(soa.ttl),
            _ => soa.ttl,
        };
        let mut ents = HashSet::new();
        let mut cuts = HashSet::new();
        for (name, node) in &nodes {
            if *name != origin && node.rrset(RecordType::NS).is_some() {
                cuts.insert(name.clone());
            }
            let mut n = name.base_name();
            while origin.zone_of(&n) && n != origin {
                if !nodes.contains_key(&n) {
                    ents.insert(n.clone());
                }
                n = n.base_name();
            }
        }
        for (name, node) in &nodes {
            let cname = node.rrset(RecordType::CNAME).is_some()
                || node.lua.iter().any(|l| l.rtype == RecordType::CNAME);
            let others = node.rrsets.iter().any(|(t, _)| *t != RecordType::CNAME)
                || node.lua.iter().any(|l| l.rtype != RecordType::CNAME);
            if cname && others {
                return Err(zerr(format!("`{name}` has a CNAME and other data")));
            }
        }
        Ok(Self {
            origin,
            origin_str,
            soa,
            negative_ttl,
            nodes,
            ents,
            cuts,
            env,
            file: src.file.to_path_buf(),
            lua_records,
            static_records,
            lua_failures,
        })
    }

    /// Presentation strings of the static records at `name` of type `qtype` (for `dblookup`).
    pub fn db_lookup(&self, name: &str, qtype: u16) -> Vec<String> {
        let Ok(mut n) = Name::from_str(name) else {
            return Vec::new();
        };
        n.set_fqdn(true);
        self.nodes
            .get(&n)
            .and_then(|node| node.rrset(RecordType::from(qtype)))
            .map(|set| set.iter().map(|r| r.data.to_string()).collect())
            .unwrap_or_default()
    }

    /// All LUA records (for check-zone listings).
    pub fn lua_records(&self) -> impl Iterator<Item = &Arc<LuaRecord>> {
        self.nodes.values().flat_map(|n| n.lua.iter())
    }
}

#[cfg(test)]
mod tests;
