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
}

impl Builtin {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "pickrandom" => Self::PickRandom,
            "pickrandomsample" => Self::PickRandomSample,
            "pickhashed" => Self::PickHashed,
            "pickwrandom" => Self::PickWRandom,
            "pickwhashed" => Self::PickWHashed,
            "picknamehashed" => Self::PickNameHashed,
            "pickchashed" => Self::PickCHashed,
            "pickclosest" => Self::PickClosest,
            "closestMagic" => Self::ClosestMagic,
            "latlonMagic" => Self::LatlonMagic,
            "all" => Self::All,
            "view" => Self::View,
            "netmask" => Self::Netmask,
            "newNMG" => Self::NewNmg,
            "country" => Self::Country,
            "countryCode" => Self::CountryCode,
            "continent" => Self::Continent,
            "continentCode" => Self::ContinentCode,
            "region" => Self::Region,
            "regionCode" => Self::RegionCode,
            "asnum" => Self::Asnum,
            "latlon" => Self::Latlon,
            "latlonloc" => Self::LatlonLoc,
            "createForward" => Self::CreateForward,
            "createReverse" => Self::CreateReverse,
            "createForward6" => Self::CreateForward6,
            "createReverse6" => Self::CreateReverse6,
            "filterForward" => Self::FilterForward,
            "ifportup" => Self::IfPortUp,
            "ifurlup" => Self::IfUrlUp,
            "ifurlextup" => Self::IfUrlExtUp,
            "dblookup" => Self::DbLookup,
            "failover" => Self::Failover,
            "tostring" => Self::ToString,
            "tonumber" => Self::ToNumber,
            _ => return None,
        })
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
}

impl Method {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "toString" => Self::ToString,
            "toStringNoDot" => Self::ToStringNoDot,
            "getRawLabels" => Self::GetRawLabels,
            "countLabels" => Self::CountLabels,
            "isPartOf" => Self::IsPartOf,
            "equal" => Self::Equal,
            "toStringWithPort" => Self::ToStringWithPort,
            _ => return None,
        })
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
