//! The compiled form of a LUA record: a tree of resolved nodes. Names are resolved to slots or
//! query variables and function names to [`Builtin`]s at load, so evaluation never looks
//! anything up by name.

use std::sync::Arc;

use super::{functions::HealthPlan, value::Value};

/// Query variables an expression may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    Qname,
    Zone,
    Who,
    EcsWho,
    BestWho,
    LocalWho,
    Tcp,
    DnssecOk,
}

impl Var {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "qname" => Var::Qname,
            "zone" => Var::Zone,
            "who" => Var::Who,
            "ecswho" => Var::EcsWho,
            "bestwho" => Var::BestWho,
            "localwho" => Var::LocalWho,
            "tcp" => Var::Tcp,
            "dnssecOK" => Var::DnssecOk,
            _ => return None,
        })
    }
}

/// Functions callable from LUA records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    PickRandom,
    PickRandomSample,
    PickHashed,
    PickWRandom,
    PickWHashed,
    PickNameHashed,
    PickCHashed,
    PickClosest,
    ClosestMagic,
    LatlonMagic,
    All,
    View,
    Netmask,
    NewNmg,
    Country,
    CountryCode,
    Continent,
    ContinentCode,
    Region,
    RegionCode,
    Asnum,
    Latlon,
    LatlonLoc,
    CreateForward,
    CreateReverse,
    CreateForward6,
    CreateReverse6,
    FilterForward,
    IfPortUp,
    IfUrlUp,
    IfUrlExtUp,
    DbLookup,
    Failover,
    ToString,
    ToNumber,
    NewCa,
    NewCaFromRaw,
    NewNetmask,
}

/// Every built-in function by the name LUA records call it (both tiers read this table).
pub const BUILTINS: &[(&str, Builtin)] = &[
    ("pickrandom", Builtin::PickRandom),
    ("pickrandomsample", Builtin::PickRandomSample),
    ("pickhashed", Builtin::PickHashed),
    ("pickwrandom", Builtin::PickWRandom),
    ("pickwhashed", Builtin::PickWHashed),
    ("picknamehashed", Builtin::PickNameHashed),
    ("pickchashed", Builtin::PickCHashed),
    ("pickclosest", Builtin::PickClosest),
    ("closestMagic", Builtin::ClosestMagic),
    ("latlonMagic", Builtin::LatlonMagic),
    ("all", Builtin::All),
    ("view", Builtin::View),
    ("netmask", Builtin::Netmask),
    ("newNMG", Builtin::NewNmg),
    ("country", Builtin::Country),
    ("countryCode", Builtin::CountryCode),
    ("continent", Builtin::Continent),
    ("continentCode", Builtin::ContinentCode),
    ("region", Builtin::Region),
    ("regionCode", Builtin::RegionCode),
    ("asnum", Builtin::Asnum),
    ("latlon", Builtin::Latlon),
    ("latlonloc", Builtin::LatlonLoc),
    ("createForward", Builtin::CreateForward),
    ("createReverse", Builtin::CreateReverse),
    ("createForward6", Builtin::CreateForward6),
    ("createReverse6", Builtin::CreateReverse6),
    ("filterForward", Builtin::FilterForward),
    ("ifportup", Builtin::IfPortUp),
    ("ifurlup", Builtin::IfUrlUp),
    ("ifurlextup", Builtin::IfUrlExtUp),
    ("dblookup", Builtin::DbLookup),
    ("failover", Builtin::Failover),
    ("tostring", Builtin::ToString),
    ("tonumber", Builtin::ToNumber),
    ("newCA", Builtin::NewCa),
    ("newCAFromRaw", Builtin::NewCaFromRaw),
    ("newNetmask", Builtin::NewNetmask),
];

impl Builtin {
    pub fn from_name(name: &str) -> Option<Self> {
        BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
}

/// Methods of the name and address objects (`qname:getRawLabels()`, `who:toString()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    ToString,
    ToStringNoDot,
    GetRawLabels,
    CountLabels,
    IsPartOf,
    Equal,
    ToStringWithPort,
    IsIpv4,
    IsIpv6,
    GetPort,
    GetBits,
    GetNetwork,
    Match,
    Empty,
}

/// Every method by name (both tiers read this table).
pub const METHODS: &[(&str, Method)] = &[
    ("toString", Method::ToString),
    ("toStringNoDot", Method::ToStringNoDot),
    ("getRawLabels", Method::GetRawLabels),
    ("countLabels", Method::CountLabels),
    ("isPartOf", Method::IsPartOf),
    ("equal", Method::Equal),
    ("toStringWithPort", Method::ToStringWithPort),
    ("isIPv4", Method::IsIpv4),
    ("isIPv6", Method::IsIpv6),
    ("getPort", Method::GetPort),
    ("getBits", Method::GetBits),
    ("getNetwork", Method::GetNetwork),
    ("match", Method::Match),
    ("empty", Method::Empty),
];

impl Method {
    pub fn from_name(name: &str) -> Option<Self> {
        METHODS.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Concat,
    And,
    Or,
}

#[derive(Clone, Debug)]
pub enum Expr {
    Const(Value),
    Var(Var),
    Slot(usize),
    Table(Vec<Expr>, Vec<(Expr, Expr)>),
    Call(Builtin, Vec<Expr>),
    /// A health-checked call whose targets were registered at load.
    Health(Arc<HealthPlan>),
    Method(Box<Expr>, Method, Vec<Expr>),
    Index(Box<Expr>, Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Len(Box<Expr>),
}

impl Expr {
    pub fn as_const(&self) -> Option<&Value> {
        match self {
            Expr::Const(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Stmt {
    Assign(usize, Expr),
    If(Vec<(Expr, Vec<Stmt>)>, Option<Vec<Stmt>>),
    Return(Option<Expr>),
    Call(Expr),
}
