//! The LUA-record language: `PowerDNS`'s LUA record code compiled at zone load into a native
//! evaluator (a resolved expression tree; no interpreter, no Lua state per query).
//!
//! The subset: literals, tables (`{...}`, `{{w, v}, ...}`, `{key = value}`), calls of the
//! built-in functions, `..`, arithmetic and comparison, `and`/`or`/`not`, `if/then/elseif/else/end`,
//! `local`, assignments, `return`, `include()`, the query variables and the name/address methods.
//! Bodies outside the subset run in the interpreter tier ([`interp`], embedded Lua 5.1); a body
//! neither tier can load becomes a [`Compiled::Failed`] record that answers SERVFAIL.

mod ast;
mod compile;
mod eval;
pub mod functions;
pub mod interp;
mod lexer;
pub mod value;

use std::{cell::Cell, collections::HashMap, net::IpAddr, sync::Arc};

use ipnet::IpNet;

pub use self::{
    functions::{Env, Selector},
    value::Value,
};
use crate::health;

/// Load-time failure of a LUA record.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CompileError {
    /// The code does not parse.
    #[error("syntax error at offset {offset}: {message}")]
    Syntax { message: String, offset: usize },
    /// The code uses something outside the supported language.
    #[error("unsupported construct at offset {offset}: {construct}")]
    Unsupported { construct: String, offset: usize },
    /// A function was called with arguments it cannot take.
    #[error("bad call at offset {offset}: {message}")]
    BadCall { message: String, offset: usize },
    /// `include()` failed.
    #[error("include('{label}') failed: {reason}")]
    Include { label: String, reason: String },
    /// Not Lua at all: the interpreter's own message (`lua-record:LINE: ...`).
    #[error("Lua syntax error: {message}")]
    Lua { message: String },
}

impl CompileError {
    /// Attach a code offset to a call error built without one.
    pub(crate) fn at(self, at: usize) -> Self {
        match self {
            CompileError::BadCall { message, offset } if offset == usize::MAX => {
                CompileError::BadCall {
                    message,
                    offset: at,
                }
            }
            other => other,
        }
    }

    pub(crate) fn bad_call(message: impl Into<String>) -> Self {
        CompileError::BadCall {
            message: message.into(),
            offset: usize::MAX,
        }
    }
}

/// Query-time failure: the answer is SERVFAIL.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{message}")]
pub struct EvalError {
    /// What went wrong.
    pub message: String,
}

impl EvalError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// What an evaluation depended on; decides whether and how its answer may be cached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deps(pub u8);

impl Deps {
    /// Read the client address (who, bestwho, ecswho, geo, hashed pickers).
    pub const CLIENT: u8 = 1;
    /// Made a random choice among more than one candidate.
    pub const RANDOM: u8 = 2;
    /// Read the query name (matters for wildcard owners).
    pub const QNAME: u8 = 4;
    /// Read transport facts (tcp, localwho, dnssecOK).
    pub const TRANSPORT: u8 = 8;
    /// Read health state (answers change on health transitions).
    pub const HEALTH: u8 = 16;
    /// Read failover state.
    pub const FAILOVER: u8 = 32;
    /// Ran in the interpreter tier, whose globals persist: not provably pure, never cached.
    pub const IMPURE: u8 = 64;

    /// True if the flag is set.
    pub fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

/// The random draws of one answer. When its only randomness is one pick among `n` candidates
/// (uniform or weighted), the answer cache keeps one encoded answer per outcome and draws among
/// them itself with the same odds (see `crate::cache`), instead of evaluating every query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Draws {
    /// Random picks made (saturating).
    pub picks: u8,
    /// A draw that is not one pick among fixed outcomes was made (`pickrandomsample`).
    pub other: bool,
    /// The first pick: its odds and outcome.
    pub first: Option<Pick>,
}

/// One random pick among fixed outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The outcome, an index into the candidates.
    pub picked: u16,
    /// The odds of each candidate.
    pub odds: Odds,
}

/// The odds of the candidates of a [`Pick`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Odds {
    /// This many candidates, equally likely.
    Uniform(u16),
    /// Candidate `i` with probability `weights[i] / sum(weights)` (every weight ≥ 1).
    Weighted(Arc<[u32]>),
}

impl Odds {
    /// Number of candidates.
    pub fn len(&self) -> usize {
        match self {
            Self::Uniform(n) => usize::from(*n),
            Self::Weighted(w) => w.len(),
        }
    }

    /// True without candidates.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Draws {
    /// The pick when it was the answer's only randomness.
    pub fn single(&self) -> Option<&Pick> {
        if self.picks == 1 && !self.other {
            self.first.as_ref()
        } else {
            None
        }
    }
}

/// Everything an expression may read about the query being answered.
pub struct EvalContext<'a> {
    /// Query name, lower case, with trailing dot.
    pub qname: &'a str,
    /// Zone apex, with trailing dot.
    pub zone: &'a str,
    /// Owner name of the LUA record (may be a wildcard), with trailing dot.
    pub owner: &'a str,
    /// Resolver address.
    pub who: IpAddr,
    /// EDNS Client Subnet, when present and processed.
    pub ecs: Option<IpNet>,
    /// ECS network address when present, otherwise `who`.
    pub bestwho: IpAddr,
    /// Local address the query arrived on.
    pub localwho: IpAddr,
    /// Query came over TCP.
    pub tcp: bool,
    /// DO bit set.
    pub dnssec_ok: bool,
    /// Services: health, geo, failover.
    pub env: &'a Env,
    /// Zone data lookup for `dblookup(name, type)`: presentation strings of the records.
    pub zone_lookup: &'a dyn Fn(&str, u16) -> Vec<String>,
    /// Dependencies noted during evaluation.
    pub deps: Cell<Deps>,
    /// Random draws made so far in this answer (carried across its LUA records).
    pub draws: Cell<Draws>,
    /// Outcome imposed on the answer's first uniform pick (the answer cache filling the slot it
    /// drew); `None`: draw at random.
    pub forced_pick: Option<u16>,
}

impl EvalContext<'_> {
    pub(crate) fn note(&self, flag: u8) {
        let d = self.deps.get();
        self.deps.set(Deps(d.0 | flag));
    }

    /// [`Self::forced_pick`] when the coming draw is the answer's first pick.
    fn forced_first(&self) -> Option<usize> {
        let d = self.draws.take();
        let first = d.picks == 0;
        self.draws.set(d);
        self.forced_pick.filter(|_| first).map(usize::from)
    }

    /// Records a random draw in [`Self::draws`]; for the answer's first, `first` says which
    /// pick among fixed odds it was (`None`: not such a pick).
    fn record(&self, first: impl FnOnce() -> Option<Pick>) {
        self.note(Deps::RANDOM);
        let mut d = self.draws.take();
        if d.picks == 0 {
            match first() {
                Some(pick) => d.first = Some(pick),
                None => d.other = true,
            }
        }
        d.picks = d.picks.saturating_add(1);
        self.draws.set(d);
    }

    /// A uniform pick in `0..n` (n ≥ 2), recorded in [`Self::draws`]; the answer's first pick
    /// takes [`Self::forced_pick`] when that is in range.
    pub(crate) fn uniform_draw(&self, n: usize) -> usize {
        use rand::RngExt as _;
        let i = match self.forced_first() {
            Some(f) if f < n => f,
            _ => rand::rng().random_range(0..n),
        };
        self.record(|| {
            Some(Pick {
                picked: u16::try_from(i).ok()?,
                odds: Odds::Uniform(u16::try_from(n).ok()?),
            })
        });
        i
    }

    /// A weighted draw `r` in `0..sum` whose outcome is the first running sum in `firsts` above
    /// `r` (`pickwrandom`, as `PowerDNS`'s `std::upper_bound`). Recorded in [`Self::draws`] as a
    /// pick among the candidates with their weights when the running sums increase strictly
    /// (otherwise the outcomes are not fixed odds: recorded as another draw); the answer's first
    /// pick takes [`Self::forced_pick`] as the candidate to land on.
    pub(crate) fn weighted_draw(&self, firsts: &[u32], sum: u32) -> u32 {
        use rand::RngExt as _;
        let increasing =
            firsts.first().is_some_and(|&f| f > 0) && firsts.windows(2).all(|w| w[0] < w[1]);
        let r = match self.forced_first() {
            Some(j) if increasing && j < firsts.len() => firsts[j] - 1,
            _ => rand::rng().random_range(0..sum),
        };
        self.record(|| {
            if !increasing || u16::try_from(firsts.len()).is_err() {
                return None;
            }
            let picked = u16::try_from(firsts.partition_point(|&f| f <= r)).ok()?;
            let mut prev = 0;
            let weights: Arc<[u32]> = firsts
                .iter()
                .map(|&f| {
                    let w = f - prev;
                    prev = f;
                    w
                })
                .collect();
            Some(Pick {
                picked,
                odds: Odds::Weighted(weights),
            })
        });
        r
    }

    /// Any other random draw: the answer is not one of a fixed set of outcomes.
    pub(crate) fn other_draw(&self) {
        self.record(|| None);
    }
}

/// Things the compiler needs from the zone being loaded.
pub struct CompileEnv<'a> {
    /// Code of the `LUA LUA` record at `label.<zone>`, for `include()`.
    pub include: &'a dyn Fn(&str) -> Option<String>,
    /// Health registry where checks are registered at load.
    pub health: &'a health::Registry,
    /// Zone apex being loaded (health events name it).
    pub zone: &'a str,
    /// `LUA LUA` records of the zone by absolute lower-case name (interpreter `include()`).
    pub includes: &'a Arc<HashMap<String, String>>,
    /// Instruction budget of one interpreted run (`lua-records-exec-limit`); 0 = unlimited.
    pub exec_limit: u32,
}

/// Which tier runs a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// The native compiled evaluator.
    Native,
    /// The embedded Lua 5.1 interpreter.
    Interpreter,
    /// Neither could load the body: every query of the record answers SERVFAIL.
    Failed,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Native => "native",
            Tier::Interpreter => "interpreter",
            Tier::Failed => "failed",
        })
    }
}

/// A LUA record body ready to run in the tier that can run it.
#[derive(Debug)]
pub enum Compiled {
    /// Compiled by the native compiler.
    Native(Program),
    /// Checked to compile as Lua 5.1; runs in the worker's interpreter.
    Interpreter(interp::Chunk),
    /// Failed to load; answers SERVFAIL.
    Failed(CompileError),
}

impl Compiled {
    /// Compile with the native compiler, falling back to the interpreter for what the native
    /// subset does not cover. Errors the native compiler proves (a bad constant argument, a
    /// failed include) and bodies that are not Lua are returned.
    pub fn compile(code: &str, env: &CompileEnv<'_>) -> Result<Self, CompileError> {
        match Program::compile(code, env) {
            Ok(p) => Ok(Compiled::Native(p)),
            Err(CompileError::Unsupported { .. } | CompileError::Syntax { .. }) => {
                interp::Chunk::compile(code, env.includes.clone(), env.zone, env.exec_limit)
                    .map(Compiled::Interpreter)
            }
            Err(e) => Err(e),
        }
    }

    /// The tier.
    pub fn tier(&self) -> Tier {
        match self {
            Compiled::Native(_) => Tier::Native,
            Compiled::Interpreter(_) => Tier::Interpreter,
            Compiled::Failed(_) => Tier::Failed,
        }
    }

    /// Run against one query; returns the content strings (one RR each).
    pub fn run(&self, cx: &EvalContext<'_>) -> Result<Vec<String>, EvalError> {
        match self {
            Compiled::Native(p) => p.run(cx),
            Compiled::Interpreter(c) => result_strings(&c.run(cx)?),
            Compiled::Failed(e) => Err(EvalError::new(format!("record failed to load: {e}"))),
        }
    }
}

/// A compiled LUA record.
#[derive(Debug)]
pub struct Program {
    stmts: Vec<ast::Stmt>,
    slots: usize,
}

impl Program {
    /// Compile record code. Code starting with `;` is a statement block, anything else an
    /// expression (`PowerDNS` prefixes it with `return `).
    pub fn compile(code: &str, env: &CompileEnv<'_>) -> Result<Self, CompileError> {
        let mut c = compile::Compiler::new(env);
        let stmts = if let Some(block) = code.strip_prefix(';') {
            c.chunk(block)?
        } else {
            // Offsets stay relative to the record text: shift by the 7 bytes of "return ".
            c.chunk(&format!("return {code}")).map_err(|e| match e {
                CompileError::Syntax { message, offset } => CompileError::Syntax {
                    message,
                    offset: offset.saturating_sub(7),
                },
                CompileError::Unsupported { construct, offset } => CompileError::Unsupported {
                    construct,
                    offset: offset.saturating_sub(7),
                },
                CompileError::BadCall { message, offset } => CompileError::BadCall {
                    message,
                    offset: offset.saturating_sub(7),
                },
                other @ (CompileError::Include { .. } | CompileError::Lua { .. }) => other,
            })?
        };
        Ok(Self {
            stmts,
            slots: c.slots,
        })
    }

    /// Run against one query; returns the content strings (one RR each).
    pub fn run(&self, cx: &EvalContext<'_>) -> Result<Vec<String>, EvalError> {
        let mut frame = vec![Value::Nil; self.slots];
        let v = match eval::exec(&self.stmts, &mut frame, cx)? {
            eval::Flow::Return(v) => v,
            eval::Flow::Next => Value::Nil,
        };
        result_strings(&v)
    }
}

fn result_strings(v: &Value) -> Result<Vec<String>, EvalError> {
    match v {
        Value::Table(t) => t
            .values()
            .map(|v| {
                v.as_string()
                    .ok_or_else(|| EvalError::new(format!("result list holds a {}", v.type_name())))
            })
            .collect(),
        Value::Nil | Value::Bool(_) => Err(EvalError::new(format!(
            "record returned {}, not a string or a list of strings",
            v.type_name()
        ))),
        other => Ok(vec![other.as_string().unwrap_or_default()]),
    }
}

#[cfg(test)]
mod tests;
