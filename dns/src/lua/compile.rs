//! Recursive-descent parser that turns LUA-record code straight into the resolved tree of
//! [`super::ast`]. Anything outside the supported subset is a [`CompileError`] naming the
//! construct.

use std::{collections::HashMap, str::FromStr, sync::Arc};

use super::{
    CompileEnv, CompileError,
    ast::{BinOp, Builtin, Expr, Method, Stmt, Var},
    functions,
    lexer::{Tok, tokenize},
    value::{Table, Value},
};

/// Maximum `include()` nesting.
const MAX_INCLUDE_DEPTH: usize = 8;
/// Maximum nesting of statements and expressions in the native tier. Deeper code goes to the
/// interpreter tier, whose parser has Lua 5.1's own limit (200 syntax levels, as `PowerDNS`'s
/// `LuaJIT`); the native compiler recurses with larger frames and must not exhaust a worker
/// thread's stack.
const MAX_SYNTAX_LEVELS: usize = 64;

pub(super) struct Compiler<'e> {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    env: &'e CompileEnv<'e>,
    scopes: Vec<Vec<(String, usize)>>,
    globals: HashMap<String, usize>,
    pub(super) slots: usize,
    depth: usize,
    /// Slots currently known to hold a constant (straight-line assignments of constants), so
    /// `include()`d settings fold into the calls that use them and their checks register at load.
    consts: HashMap<usize, Value>,
    /// Nesting of `if` blocks; assignments inside them make a slot unknown.
    branch: usize,
    /// Current nesting of statements and expressions ([`MAX_SYNTAX_LEVELS`]).
    levels: usize,
}

impl<'e> Compiler<'e> {
    pub(super) fn new(env: &'e CompileEnv<'e>) -> Self {
        Self {
            toks: Vec::new(),
            pos: 0,
            env,
            scopes: vec![Vec::new()],
            globals: HashMap::new(),
            slots: 0,
            depth: 0,
            consts: HashMap::new(),
            branch: 0,
            levels: 0,
        }
    }

    /// Run `f` one syntax level deeper; past [`MAX_SYNTAX_LEVELS`] the code is left to the
    /// interpreter tier.
    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, CompileError>,
    ) -> Result<T, CompileError> {
        if self.levels >= MAX_SYNTAX_LEVELS {
            return Err(
                self.unsupported(&format!("nesting deeper than {MAX_SYNTAX_LEVELS} levels"))
            );
        }
        self.levels += 1;
        let r = f(self);
        self.levels -= 1;
        r
    }

    /// A chain built in a loop (`a + b + c`, `x.y.z`, `q:m():m()`) nests its tree one level per
    /// link without the compiler recursing: past [`MAX_SYNTAX_LEVELS`] it too is left to the
    /// interpreter tier, so evaluating and dropping a native tree stays shallow.
    fn chain_link(&self, links: usize) -> Result<(), CompileError> {
        if self.levels + links > MAX_SYNTAX_LEVELS {
            return Err(
                self.unsupported(&format!("nesting deeper than {MAX_SYNTAX_LEVELS} levels"))
            );
        }
        Ok(())
    }

    /// Compile a chunk of statements (the whole of `src`).
    pub(super) fn chunk(&mut self, src: &str) -> Result<Vec<Stmt>, CompileError> {
        let saved = (std::mem::take(&mut self.toks), self.pos);
        self.toks = tokenize(src)?;
        self.pos = 0;
        let block = self.block();
        let end = self.expect_eof();
        self.toks = saved.0;
        self.pos = saved.1;
        let block = block?;
        end?;
        Ok(block)
    }

    fn expect_eof(&self) -> Result<(), CompileError> {
        match self.peek() {
            Tok::Eof => Ok(()),
            t => Err(self.unexpected(t)),
        }
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn offset(&self) -> usize {
        self.toks[self.pos].1
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].0.clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Kw(k) if *k == kw)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if self.is_op(op) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<(), CompileError> {
        if self.eat_op(op) {
            Ok(())
        } else {
            Err(self.syntax(format!("expected `{op}` near {}", describe(self.peek()))))
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), CompileError> {
        if self.is_kw(kw) {
            self.next();
            Ok(())
        } else {
            Err(self.syntax(format!("expected `{kw}` near {}", describe(self.peek()))))
        }
    }

    fn syntax(&self, message: String) -> CompileError {
        CompileError::Syntax {
            message,
            offset: self.offset(),
        }
    }

    fn unsupported(&self, construct: &str) -> CompileError {
        CompileError::Unsupported {
            construct: construct.to_string(),
            offset: self.offset(),
        }
    }

    fn unexpected(&self, t: &Tok) -> CompileError {
        self.syntax(format!("unexpected {}", describe(t)))
    }

    fn block(&mut self) -> Result<Vec<Stmt>, CompileError> {
        let mut out = Vec::new();
        loop {
            while self.eat_op(";") {}
            match self.peek() {
                Tok::Eof | Tok::Kw("end" | "else" | "elseif") => break,
                Tok::Kw("return") => {
                    self.next();
                    let value =
                        if matches!(self.peek(), Tok::Eof | Tok::Kw("end" | "else" | "elseif"))
                            || self.is_op(";")
                        {
                            None
                        } else {
                            let first = self.expr()?;
                            // Extra return values are ignored, as PowerDNS reads only the first.
                            while self.eat_op(",") {
                                self.expr()?;
                            }
                            Some(first)
                        };
                    while self.eat_op(";") {}
                    out.push(Stmt::Return(value));
                    if !matches!(self.peek(), Tok::Eof | Tok::Kw("end" | "else" | "elseif")) {
                        return Err(self.syntax("code after `return`".into()));
                    }
                    break;
                }
                _ => {
                    let stmts = self.statement()?;
                    out.extend(stmts);
                }
            }
        }
        Ok(out)
    }

    fn statement(&mut self) -> Result<Vec<Stmt>, CompileError> {
        self.nested(Self::statement_inner)
    }

    fn statement_inner(&mut self) -> Result<Vec<Stmt>, CompileError> {
        match self.peek().clone() {
            Tok::Kw("local") => {
                self.next();
                if self.is_kw("function") {
                    return Err(self.unsupported("function definition"));
                }
                let mut names = vec![self.name()?];
                while self.eat_op(",") {
                    names.push(self.name()?);
                }
                let mut values = Vec::new();
                if self.eat_op("=") {
                    values.push(self.expr()?);
                    while self.eat_op(",") {
                        values.push(self.expr()?);
                    }
                }
                let mut out = Vec::new();
                for (i, name) in names.into_iter().enumerate() {
                    let value = values.get(i).cloned().unwrap_or(Expr::Const(Value::Nil));
                    let slot = self.slots;
                    self.slots += 1;
                    self.scopes.last_mut().expect("scope").push((name, slot));
                    self.note_assign(slot, &value);
                    out.push(Stmt::Assign(slot, value));
                }
                Ok(out)
            }
            Tok::Kw("if") => {
                self.next();
                let mut arms = Vec::new();
                let cond = self.expr()?;
                self.expect_kw("then")?;
                let body = self.scoped_block()?;
                arms.push((cond, body));
                let mut otherwise = None;
                loop {
                    if self.is_kw("elseif") {
                        self.next();
                        let cond = self.expr()?;
                        self.expect_kw("then")?;
                        let body = self.scoped_block()?;
                        arms.push((cond, body));
                    } else if self.is_kw("else") {
                        self.next();
                        otherwise = Some(self.scoped_block()?);
                        self.expect_kw("end")?;
                        break;
                    } else {
                        self.expect_kw("end")?;
                        break;
                    }
                }
                Ok(vec![Stmt::If(arms, otherwise)])
            }
            Tok::Kw(kw @ ("for" | "while" | "repeat" | "function" | "goto" | "break" | "do")) => {
                Err(self.unsupported(&format!("`{kw}` statement")))
            }
            Tok::Name(name) if name == "include" => {
                self.next();
                self.include()
            }
            Tok::Name(_) => {
                let start = self.offset();
                let target = self.suffixed()?;
                if self.eat_op("=") {
                    let value = self.expr()?;
                    match target {
                        Target::Name(name) => {
                            let slot = self.assign_slot(&name, start)?;
                            self.note_assign(slot, &value);
                            Ok(vec![Stmt::Assign(slot, value)])
                        }
                        Target::Expr(_) => Err(CompileError::Unsupported {
                            construct: "assignment to a table field".into(),
                            offset: start,
                        }),
                    }
                } else if self.is_op(",") {
                    Err(self.unsupported("multiple assignment"))
                } else {
                    match target {
                        Target::Expr(e @ (Expr::Call(..) | Expr::Method(..))) => {
                            Ok(vec![Stmt::Call(e)])
                        }
                        _ => Err(CompileError::Syntax {
                            message: "syntax error: expression is not a statement".into(),
                            offset: start,
                        }),
                    }
                }
            }
            t => Err(self.unexpected(&t)),
        }
    }

    fn scoped_block(&mut self) -> Result<Vec<Stmt>, CompileError> {
        self.scopes.push(Vec::new());
        self.branch += 1;
        let b = self.block();
        self.branch -= 1;
        self.scopes.pop();
        b
    }

    fn note_assign(&mut self, slot: usize, value: &Expr) {
        match value.as_const() {
            Some(v) if self.branch == 0 => {
                self.consts.insert(slot, v.clone());
            }
            _ => {
                self.consts.remove(&slot);
            }
        }
    }

    fn slot_expr(&self, slot: usize) -> Expr {
        self.consts
            .get(&slot)
            .map_or(Expr::Slot(slot), |v| Expr::Const(v.clone()))
    }

    fn assign_slot(&mut self, name: &str, offset: usize) -> Result<usize, CompileError> {
        if let Some(slot) = self.lookup_local(name) {
            return Ok(slot);
        }
        if Var::from_name(name).is_some() || Builtin::from_name(name).is_some() {
            return Err(CompileError::Unsupported {
                construct: format!("assignment to built-in `{name}`"),
                offset,
            });
        }
        if let Some(slot) = self.globals.get(name) {
            return Ok(*slot);
        }
        let slot = self.slots;
        self.slots += 1;
        self.globals.insert(name.to_string(), slot);
        Ok(slot)
    }

    fn lookup_local(&self, name: &str) -> Option<usize> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
    }

    fn include(&mut self) -> Result<Vec<Stmt>, CompileError> {
        let offset = self.offset();
        let args = self.call_args()?;
        let label = match args.as_slice() {
            [Expr::Const(Value::Str(s))] => s.to_string(),
            _ => {
                return Err(CompileError::Unsupported {
                    construct: "include() with a non-constant argument".into(),
                    offset,
                });
            }
        };
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(CompileError::Include {
                label,
                reason: "include nesting too deep".into(),
            });
        }
        let Some(code) = (self.env.include)(&label) else {
            return Err(CompileError::Include {
                label,
                reason: "no LUA record of type LUA at that name".into(),
            });
        };
        self.depth += 1;
        // Included code runs as plain statements in the including record's scope.
        let saved_scopes = std::mem::replace(&mut self.scopes, vec![Vec::new()]);
        let result = self.chunk(&code);
        self.scopes = saved_scopes;
        self.depth -= 1;
        result.map_err(|e| CompileError::Include {
            label,
            reason: e.to_string(),
        })
    }

    fn name(&mut self) -> Result<String, CompileError> {
        match self.next() {
            Tok::Name(n) => Ok(n),
            t => {
                self.pos -= 1;
                Err(self.syntax(format!("expected a name near {}", describe(&t))))
            }
        }
    }

    pub(super) fn expr(&mut self) -> Result<Expr, CompileError> {
        self.binary(0)
    }

    fn binary(&mut self, min_prec: u8) -> Result<Expr, CompileError> {
        self.nested(|c| c.binary_inner(min_prec))
    }

    fn binary_inner(&mut self, min_prec: u8) -> Result<Expr, CompileError> {
        let mut lhs = self.unary()?;
        let mut links = 0;
        loop {
            if let Tok::Op(op @ ("//" | "&" | "|" | "~" | "<<" | ">>")) = self.peek() {
                return Err(self.unsupported(&format!("operator `{op}`")));
            }
            let Some((op, prec, right_assoc)) = self.binop() else {
                break;
            };
            if prec < min_prec {
                break;
            }
            links += 1;
            self.chain_link(links)?;
            self.next();
            let next_min = if right_assoc { prec } else { prec + 1 };
            let rhs = self.binary(next_min)?;
            lhs = fold(Expr::Bin(op, Box::new(lhs), Box::new(rhs)));
        }
        Ok(lhs)
    }

    fn binop(&self) -> Option<(BinOp, u8, bool)> {
        Some(match self.peek() {
            Tok::Kw("or") => (BinOp::Or, 1, false),
            Tok::Kw("and") => (BinOp::And, 2, false),
            Tok::Op("<") => (BinOp::Lt, 3, false),
            Tok::Op(">") => (BinOp::Gt, 3, false),
            Tok::Op("<=") => (BinOp::Le, 3, false),
            Tok::Op(">=") => (BinOp::Ge, 3, false),
            Tok::Op("~=") => (BinOp::Ne, 3, false),
            Tok::Op("==") => (BinOp::Eq, 3, false),
            Tok::Op("..") => (BinOp::Concat, 5, true),
            Tok::Op("+") => (BinOp::Add, 6, false),
            Tok::Op("-") => (BinOp::Sub, 6, false),
            Tok::Op("*") => (BinOp::Mul, 7, false),
            Tok::Op("/") => (BinOp::Div, 7, false),
            Tok::Op("%") => (BinOp::Mod, 7, false),
            Tok::Op("^") => (BinOp::Pow, 9, true),
            _ => return None,
        })
    }

    fn unary(&mut self) -> Result<Expr, CompileError> {
        match self.peek() {
            Tok::Kw("not") => {
                self.next();
                Ok(fold(Expr::Not(Box::new(self.binary(8)?))))
            }
            Tok::Op("-") => {
                self.next();
                Ok(fold(Expr::Neg(Box::new(self.binary(8)?))))
            }
            Tok::Op("#") => {
                self.next();
                Ok(fold(Expr::Len(Box::new(self.binary(8)?))))
            }
            Tok::Op(op @ ("~" | "&" | "|" | "<<" | ">>" | "//")) => {
                Err(self.unsupported(&format!("operator `{op}`")))
            }
            _ => match self.suffixed()? {
                Target::Expr(e) => Ok(e),
                Target::Name(n) => self.resolve_name(&n),
            },
        }
    }

    fn resolve_name(&self, name: &str) -> Result<Expr, CompileError> {
        if let Some(slot) = self.lookup_local(name) {
            return Ok(self.slot_expr(slot));
        }
        if let Some(slot) = self.globals.get(name) {
            return Ok(self.slot_expr(*slot));
        }
        if let Some(v) = Var::from_name(name) {
            return Ok(Expr::Var(v));
        }
        Err(CompileError::Unsupported {
            construct: format!("undefined variable `{name}`"),
            offset: self.offset(),
        })
    }

    /// primary { `.name` | `[expr]` | `:method(args)` | args }
    fn suffixed(&mut self) -> Result<Target, CompileError> {
        let start = self.offset();
        let mut target = match self.next() {
            Tok::Name(n) => Target::Name(n),
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect_op(")")?;
                Target::Expr(e)
            }
            Tok::Op("{") => Target::Expr(self.table()?),
            Tok::Str(s) => Target::Expr(Expr::Const(Value::str(s))),
            Tok::Num(n) => Target::Expr(Expr::Const(Value::Num(n))),
            Tok::Kw("nil") => Target::Expr(Expr::Const(Value::Nil)),
            Tok::Kw("true") => Target::Expr(Expr::Const(Value::Bool(true))),
            Tok::Kw("false") => Target::Expr(Expr::Const(Value::Bool(false))),
            Tok::Kw("function") => {
                self.pos -= 1;
                return Err(self.unsupported("function definition"));
            }
            Tok::Kw(
                kw @ ("for" | "while" | "repeat" | "goto" | "break" | "do" | "local" | "if"),
            ) => {
                self.pos -= 1;
                return Err(self.unsupported(&format!(
                    "`{kw}` statement in an expression (statement blocks start with `;`)"
                )));
            }
            Tok::Op("...") => {
                self.pos -= 1;
                return Err(self.unsupported("varargs `...`"));
            }
            t => {
                self.pos -= 1;
                return Err(self.unexpected(&t));
            }
        };
        for links in 1.. {
            self.chain_link(links)?;
            if self.is_op("(") || self.is_op("{") || matches!(self.peek(), Tok::Str(_)) {
                let call_offset = self.offset();
                let Target::Name(name) = &target else {
                    return Err(self.unsupported("call of a computed value"));
                };
                if self.lookup_local(name).is_some() || self.globals.contains_key(name) {
                    return Err(self.unsupported(&format!("call of variable `{name}`")));
                }
                if name == "include" {
                    return Err(self.unsupported("include() inside an expression"));
                }
                let Some(builtin) = Builtin::from_name(name) else {
                    return Err(CompileError::Unsupported {
                        construct: format!("unknown function `{name}`"),
                        offset: start,
                    });
                };
                let args = self.call_args()?;
                let expr = functions::compile_call(builtin, args, self.env)
                    .map_err(|e| e.at(call_offset))?;
                target = Target::Expr(expr);
            } else if self.eat_op(".") {
                let field = self.name()?;
                if let Target::Name(n) = &target
                    && n == "pdns"
                    && self.lookup_local(n).is_none()
                {
                    let code = hickory_proto::rr::RecordType::from_str(&field).map_err(|_| {
                        self.unsupported(&format!("unknown record type `pdns.{field}`"))
                    })?;
                    target = Target::Expr(Expr::Const(Value::Num(f64::from(u16::from(code)))));
                    continue;
                }
                if let Target::Name(n) = &target
                    && self.lookup_local(n).is_none()
                    && !self.globals.contains_key(n)
                    && Var::from_name(n).is_none()
                {
                    return Err(self.unsupported(&format!("library call `{n}.{field}`")));
                }
                let base = self.target_expr(target)?;
                target = Target::Expr(fold(Expr::Index(
                    Box::new(base),
                    Box::new(Expr::Const(Value::str(field))),
                )));
            } else if self.eat_op("[") {
                let key = self.expr()?;
                self.expect_op("]")?;
                let base = self.target_expr(target)?;
                target = Target::Expr(fold(Expr::Index(Box::new(base), Box::new(key))));
            } else if self.eat_op(":") {
                let mname = self.name()?;
                let Some(method) = Method::from_name(&mname) else {
                    return Err(self.unsupported(&format!("method `:{mname}()`")));
                };
                let base = self.target_expr(target)?;
                let args = self.call_args()?;
                target = Target::Expr(Expr::Method(Box::new(base), method, args));
            } else {
                break;
            }
        }
        Ok(target)
    }

    fn target_expr(&self, t: Target) -> Result<Expr, CompileError> {
        match t {
            Target::Expr(e) => Ok(e),
            Target::Name(n) => self.resolve_name(&n),
        }
    }

    fn call_args(&mut self) -> Result<Vec<Expr>, CompileError> {
        if let Tok::Str(s) = self.peek().clone() {
            self.next();
            return Ok(vec![Expr::Const(Value::str(s))]);
        }
        if self.eat_op("{") {
            return Ok(vec![self.table()?]);
        }
        self.expect_op("(")?;
        let mut args = Vec::new();
        if !self.eat_op(")") {
            args.push(self.expr()?);
            while self.eat_op(",") {
                args.push(self.expr()?);
            }
            self.expect_op(")")?;
        }
        Ok(args)
    }

    /// Table constructor; the opening `{` is already consumed.
    fn table(&mut self) -> Result<Expr, CompileError> {
        let mut array = Vec::new();
        let mut keyed = Vec::new();
        while !self.eat_op("}") {
            if self.eat_op("[") {
                let k = self.expr()?;
                self.expect_op("]")?;
                self.expect_op("=")?;
                keyed.push((k, self.expr()?));
            } else if matches!(self.peek(), Tok::Name(_))
                && matches!(self.toks.get(self.pos + 1), Some((Tok::Op("="), _)))
            {
                let Tok::Name(n) = self.next() else {
                    unreachable!()
                };
                self.next();
                keyed.push((Expr::Const(Value::str(n)), self.expr()?));
            } else {
                array.push(self.expr()?);
            }
            if !self.eat_op(",") && !self.eat_op(";") {
                self.expect_op("}")?;
                break;
            }
        }
        Ok(fold(Expr::Table(array, keyed)))
    }
}

enum Target {
    Name(String),
    Expr(Expr),
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Name(n) => format!("`{n}`"),
        Tok::Str(s) => format!("string \"{s}\""),
        Tok::Num(n) => format!("number {n}"),
        Tok::Kw(k) => format!("`{k}`"),
        Tok::Op(o) => format!("`{o}`"),
        Tok::Eof => "end of code".into(),
    }
}

/// Constant folding: tables and operators over constants become constants at load.
fn fold(e: Expr) -> Expr {
    match e {
        Expr::Table(array, keyed)
            if array.iter().all(|e| e.as_const().is_some())
                && keyed
                    .iter()
                    .all(|(k, v)| k.as_const().is_some() && v.as_const().is_some()) =>
        {
            let array = array
                .into_iter()
                .map(|e| e.as_const().cloned().unwrap_or(Value::Nil))
                .collect();
            let keyed = keyed
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.as_const().cloned().unwrap_or(Value::Nil),
                        v.as_const().cloned().unwrap_or(Value::Nil),
                    )
                })
                .collect();
            Expr::Const(Value::Table(Arc::new(Table { array, keyed })))
        }
        Expr::Bin(op, a, b) if a.as_const().is_some() && b.as_const().is_some() => {
            let (a, b) = (a.as_const().expect("const"), b.as_const().expect("const"));
            match super::eval::binop(op, a.clone(), || Ok(b.clone())) {
                Ok(v) => Expr::Const(v),
                Err(_) => Expr::Bin(
                    op,
                    Box::new(Expr::Const(a.clone())),
                    Box::new(Expr::Const(b.clone())),
                ),
            }
        }
        Expr::Neg(a) if matches!(a.as_const(), Some(Value::Num(_))) => match a.as_const() {
            Some(Value::Num(n)) => Expr::Const(Value::Num(-n)),
            _ => Expr::Neg(a),
        },
        Expr::Not(a) if a.as_const().is_some() => {
            Expr::Const(Value::Bool(!a.as_const().is_some_and(Value::truthy)))
        }
        Expr::Index(t, k) if t.as_const().is_some() && k.as_const().is_some() => {
            match t.as_const() {
                Some(Value::Table(tab)) => Expr::Const(tab.get(k.as_const().expect("const"))),
                _ => Expr::Index(t, k),
            }
        }
        other => other,
    }
}
