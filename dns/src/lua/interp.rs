//! The interpreter tier: record bodies outside the native subset (loops, functions, globals,
//! the Lua standard library) run in an embedded Lua 5.1 interpreter, the language level of
//! `PowerDNS`'s `LuaJIT`/Lua 5.1.
//!
//! As `PowerDNS`'s `enable-lua-records=shared`: one Lua state per worker thread, created on the
//! thread's first interpreted record, whose globals persist between queries. The built-in
//! functions are the native tier's ([`functions::call`], [`eval::method`]): each Lua global is a
//! thin adapter that converts values and calls the one implementation. Every run has an
//! instruction budget (`PowerDNS`'s `lua-records-exec-limit`); over budget the record fails and
//! the answer is SERVFAIL.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, LazyLock},
};

use mlua::{
    AnyUserData, Function, HookTriggers, Lua, LuaOptions, MetaMethod, MultiValue, StdLib, UserData,
    UserDataMethods, Value as LuaValue,
};
use prometheus_client::metrics::counter::Counter;

use super::{
    CompileError, Deps, EvalContext, EvalError,
    ast::{BUILTINS, Builtin, METHODS},
    eval, functions,
    value::{Table, Value},
};

/// Registry key of the per-query dispatcher (a scoped function bound to the query's context).
const DISPATCH_KEY: &str = "catalyst.dispatch";
/// Dispatcher index of `include(label)`.
const INCLUDE: usize = usize::MAX;
/// Compiled chunks kept per worker before the cache is cleared (reloads leave old code behind).
const MAX_CACHED_CHUNKS: usize = 10_000;

/// Runs stopped by the instruction budget (all workers).
static EXEC_LIMIT_HITS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The counter of runs stopped by the instruction budget, for the metrics registry.
pub fn exec_limit_counter() -> Counter {
    EXEC_LIMIT_HITS.clone()
}

/// A record body for the interpreter, checked to compile at load.
#[derive(Debug)]
pub struct Chunk {
    /// Lua source as run: `return <code>`, or the code after a leading `;`.
    source: Arc<str>,
    /// `LUA LUA` records of the zone by absolute lower-case name, for `include()`.
    includes: Arc<HashMap<String, String>>,
    /// Zone apex with trailing dot (include labels are relative to it).
    zone: Arc<str>,
    /// Instruction budget per run; 0 = unlimited.
    exec_limit: u32,
}

/// The Lua source `PowerDNS` runs for record code: a leading `;` marks a statement block,
/// anything else is an expression.
pub fn source_of(code: &str) -> String {
    match code.strip_prefix(';') {
        Some(block) => block.to_string(),
        None => format!("return {code}"),
    }
}

impl Chunk {
    /// Check that `code` compiles as Lua 5.1; the error carries Lua's message.
    pub fn compile(
        code: &str,
        includes: Arc<HashMap<String, String>>,
        zone: &str,
        exec_limit: u32,
    ) -> Result<Self, CompileError> {
        let source: Arc<str> = Arc::from(source_of(code));
        with_state(|st| st.function(&source).map(|_| ())).map_err(|e| CompileError::Lua {
            message: lua_message(&e),
        })?;
        Ok(Self {
            source,
            includes,
            zone: Arc::from(zone),
            exec_limit,
        })
    }

    /// Run against one query in this worker's state.
    pub fn run(&self, cx: &EvalContext<'_>) -> Result<Value, EvalError> {
        // Globals persist between queries, so no interpreted answer is provably pure: never
        // cached. The client address is assumed read (ECS scope = the source prefix).
        cx.note(Deps::IMPURE | Deps::CLIENT | Deps::QNAME);
        with_state(|st| st.run(self, cx)).map_err(|e| EvalError::new(lua_message(&e)))
    }
}

fn lua_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::SyntaxError { message, .. } | mlua::Error::RuntimeError(message) => {
            message.clone()
        }
        mlua::Error::CallbackError { cause, .. } => lua_message(cause),
        other => other.to_string(),
    }
}

/// One worker's interpreter.
struct State {
    lua: Lua,
    chunks: HashMap<Arc<str>, Function>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn with_state<R>(f: impl FnOnce(&mut State) -> mlua::Result<R>) -> mlua::Result<R> {
    STATE.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| mlua::Error::RuntimeError("re-entrant LUA record evaluation".into()))?;
        if slot.is_none() {
            *slot = Some(State::new()?);
        }
        let st = slot.as_mut().expect("initialised above");
        f(st)
    })
}

impl State {
    fn new() -> mlua::Result<Self> {
        // The libraries a record body may use: no `io`, `package`/`require`, `debug` or file
        // loading, and `os` limited to the clock: zone files must not reach the host.
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::OS,
            LuaOptions::default(),
        )?;
        let globals = lua.globals();
        let os: mlua::Table = globals.get("os")?;
        for name in [
            "execute",
            "exit",
            "getenv",
            "remove",
            "rename",
            "tmpname",
            "setlocale",
        ] {
            os.set(name, LuaValue::Nil)?;
        }
        for name in ["dofile", "loadfile", "module", "require"] {
            globals.set(name, LuaValue::Nil)?;
        }
        for (i, (name, _)) in BUILTINS.iter().enumerate() {
            globals.set(*name, adapter(&lua, i)?)?;
        }
        globals.set("include", adapter(&lua, INCLUDE)?)?;
        Ok(Self {
            lua,
            chunks: HashMap::new(),
        })
    }

    fn function(&mut self, source: &Arc<str>) -> mlua::Result<Function> {
        if let Some(f) = self.chunks.get(source) {
            return Ok(f.clone());
        }
        let f = self
            .lua
            .load(source.as_ref())
            .set_name("=lua-record")
            .into_function()?;
        if self.chunks.len() >= MAX_CACHED_CHUNKS {
            self.chunks.clear();
        }
        self.chunks.insert(source.clone(), f.clone());
        Ok(f)
    }

    fn run(&mut self, chunk: &Chunk, cx: &EvalContext<'_>) -> mlua::Result<Value> {
        let f = self.function(&chunk.source)?;
        let lua = self.lua.clone();
        let g = lua.globals();
        g.set("qname", to_lua(&lua, &Value::Name(Arc::from(cx.qname)))?)?;
        g.set("zone", to_lua(&lua, &Value::Name(Arc::from(cx.zone)))?)?;
        g.set("who", to_lua(&lua, &Value::Addr(cx.who))?)?;
        g.set("bestwho", to_lua(&lua, &Value::Addr(cx.bestwho))?)?;
        g.set("localwho", to_lua(&lua, &Value::Addr(cx.localwho))?)?;
        g.set(
            "ecswho",
            to_lua(&lua, &cx.ecs.map_or(Value::Nil, Value::Net))?,
        )?;
        g.set("tcp", cx.tcp)?;
        g.set("dnssecOK", cx.dnssec_ok)?;
        if chunk.exec_limit > 0 {
            lua.set_hook(
                HookTriggers::new().every_nth_instruction(chunk.exec_limit),
                |_, _| {
                    EXEC_LIMIT_HITS.inc();
                    Err(mlua::Error::RuntimeError(
                        "Lua record reached maximum number of instructions".into(),
                    ))
                },
            )?;
        } else {
            lua.remove_hook();
        }
        let result = lua.scope(|scope| {
            let dispatch = scope.create_function(|lua, (index, args): (usize, MultiValue)| {
                dispatch(lua, index, &args, chunk, cx)
            })?;
            lua.set_named_registry_value(DISPATCH_KEY, dispatch)?;
            let ret: LuaValue = f.call(())?;
            from_lua(&ret)
        });
        lua.unset_named_registry_value(DISPATCH_KEY)?;
        result
    }
}

/// The global for built-in `index`: forwards to the dispatcher bound to the current query.
fn adapter(lua: &Lua, index: usize) -> mlua::Result<Function> {
    lua.create_function(move |lua, args: MultiValue| {
        let dispatch: Function = lua
            .named_registry_value(DISPATCH_KEY)
            .map_err(|_| mlua::Error::RuntimeError("called outside a LUA record".into()))?;
        dispatch.call::<MultiValue>((index, args))
    })
}

fn dispatch(
    lua: &Lua,
    index: usize,
    args: &MultiValue,
    chunk: &Chunk,
    cx: &EvalContext<'_>,
) -> mlua::Result<MultiValue> {
    if index == INCLUDE {
        let label = args
            .front()
            .and_then(|v| v.as_string().map(mlua::LuaString::to_string_lossy))
            .ok_or_else(|| mlua::Error::RuntimeError("include needs a label".into()))?;
        let name = if label.ends_with('.') {
            label.to_ascii_lowercase()
        } else {
            format!("{}.{}", label.to_ascii_lowercase(), chunk.zone)
        };
        // As PowerDNS: a missing include target is not an error.
        if let Some(code) = chunk.includes.get(&name) {
            lua.load(code.as_str()).set_name("=include").exec()?;
        }
        return Ok(MultiValue::new());
    }
    let (_, builtin) = BUILTINS[index];
    let result = if builtin == Builtin::NewCaFromRaw {
        // Raw bytes are not text: read them before any string conversion.
        match args.front() {
            Some(LuaValue::String(s)) => functions::addr_from_raw(&s.as_bytes()).map(Value::Addr),
            _ => Err(EvalError::new("newCAFromRaw needs a 4- or 16-byte string")),
        }
    } else {
        let vals = args
            .iter()
            .map(from_lua)
            .collect::<mlua::Result<Vec<_>>>()?;
        functions::call(builtin, &vals, cx)
    };
    let v = result.map_err(|e| mlua::Error::RuntimeError(e.message))?;
    Ok(MultiValue::from_vec(vec![to_lua(lua, &v)?]))
}

/// A name, address or netmask object in Lua; its methods are the native tier's.
struct Object(Value);

impl UserData for Object {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        for (name, m) in METHODS {
            methods.add_method(*name, move |lua, this, args: MultiValue| {
                let vals = args
                    .iter()
                    .map(from_lua)
                    .collect::<mlua::Result<Vec<_>>>()?;
                let v = eval::method(&this.0, *m, &vals)
                    .map_err(|e| mlua::Error::RuntimeError(e.message))?;
                to_lua(lua, &v)
            });
        }
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(this.0.to_string()));
        methods.add_meta_function(MetaMethod::Concat, |_, (a, b): (LuaValue, LuaValue)| {
            Ok(format!("{}{}", concat_part(&a)?, concat_part(&b)?))
        });
        methods.add_meta_method(MetaMethod::Eq, |_, this, other: AnyUserData| {
            Ok(other.borrow::<Object>().is_ok_and(|o| o.0 == this.0))
        });
    }
}

fn concat_part(v: &LuaValue) -> mlua::Result<String> {
    Ok(match from_lua(v)? {
        Value::Nil | Value::Bool(_) | Value::Table(_) => {
            return Err(mlua::Error::RuntimeError(format!(
                "attempt to concatenate a {} value",
                v.type_name()
            )));
        }
        other => other.to_string(),
    })
}

fn to_lua(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    Ok(match v {
        Value::Nil => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Num(n) => LuaValue::Number(*n),
        Value::Str(s) => LuaValue::String(lua.create_string(s.as_bytes())?),
        Value::Table(t) => {
            let out = lua.create_table_with_capacity(t.array.len(), t.keyed.len())?;
            for (i, v) in t.array.iter().enumerate() {
                out.raw_set(i + 1, to_lua(lua, v)?)?;
            }
            for (k, v) in &t.keyed {
                out.raw_set(to_lua(lua, k)?, to_lua(lua, v)?)?;
            }
            LuaValue::Table(out)
        }
        Value::Name(_) | Value::Addr(_) | Value::Net(_) => {
            LuaValue::UserData(lua.create_userdata(Object(v.clone()))?)
        }
    })
}

fn from_lua(v: &LuaValue) -> mlua::Result<Value> {
    Ok(match v {
        LuaValue::Nil => Value::Nil,
        LuaValue::Boolean(b) => Value::Bool(*b),
        #[expect(clippy::cast_precision_loss, reason = "Lua 5.1 numbers are doubles")]
        LuaValue::Integer(i) => Value::Num(*i as f64),
        LuaValue::Number(n) => Value::Num(*n),
        LuaValue::String(s) => Value::str(s.to_string_lossy()),
        LuaValue::Table(t) => {
            let mut out = Table::default();
            let len = t.raw_len();
            for i in 1..=len {
                out.array.push(from_lua(&t.raw_get::<LuaValue>(i)?)?);
            }
            for pair in t.pairs::<LuaValue, LuaValue>() {
                let (k, v) = pair?;
                let positional = match &k {
                    #[expect(clippy::cast_precision_loss, reason = "table lengths are small")]
                    LuaValue::Integer(i) => *i >= 1 && (*i as f64) <= len as f64,
                    #[expect(clippy::cast_precision_loss, reason = "table lengths are small")]
                    LuaValue::Number(n) => n.fract() == 0.0 && *n >= 1.0 && *n <= len as f64,
                    _ => false,
                };
                if !positional {
                    out.keyed.push((from_lua(&k)?, from_lua(&v)?));
                }
            }
            Value::Table(Arc::new(out))
        }
        LuaValue::UserData(u) => match u.borrow::<Object>() {
            Ok(o) => o.0.clone(),
            Err(_) => return Err(mlua::Error::RuntimeError("unknown userdata".into())),
        },
        other => {
            return Err(mlua::Error::RuntimeError(format!(
                "a {} value cannot leave Lua",
                other.type_name()
            )));
        }
    })
}
