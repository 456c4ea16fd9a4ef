//! Evaluation of the compiled tree against one query.

use std::sync::Arc;

use super::{
    EvalContext, EvalError,
    ast::{BinOp, Expr, Method, Stmt, Var},
    functions,
    value::{Table, Value, format_number},
};

/// Outcome of running a statement list.
pub(super) enum Flow {
    Next,
    Return(Value),
}

pub(super) fn exec(
    stmts: &[Stmt],
    frame: &mut Vec<Value>,
    cx: &EvalContext<'_>,
) -> Result<Flow, EvalError> {
    for s in stmts {
        match s {
            Stmt::Assign(slot, e) => {
                let v = eval(e, frame, cx)?;
                frame[*slot] = v;
            }
            Stmt::If(arms, otherwise) => {
                let mut taken = false;
                for (cond, body) in arms {
                    if eval(cond, frame, cx)?.truthy() {
                        taken = true;
                        if let Flow::Return(v) = exec(body, frame, cx)? {
                            return Ok(Flow::Return(v));
                        }
                        break;
                    }
                }
                if !taken
                    && let Some(body) = otherwise
                    && let Flow::Return(v) = exec(body, frame, cx)?
                {
                    return Ok(Flow::Return(v));
                }
            }
            Stmt::Return(e) => {
                let v = match e {
                    Some(e) => eval(e, frame, cx)?,
                    None => Value::Nil,
                };
                return Ok(Flow::Return(v));
            }
            Stmt::Call(e) => {
                eval(e, frame, cx)?;
            }
        }
    }
    Ok(Flow::Next)
}

pub(super) fn eval(
    e: &Expr,
    frame: &mut Vec<Value>,
    cx: &EvalContext<'_>,
) -> Result<Value, EvalError> {
    Ok(match e {
        Expr::Const(v) => v.clone(),
        Expr::Slot(s) => frame[*s].clone(),
        Expr::Var(v) => var(*v, cx),
        Expr::Table(array, keyed) => {
            let mut t = Table::default();
            for a in array {
                t.array.push(eval(a, frame, cx)?);
            }
            for (k, v) in keyed {
                let k = eval(k, frame, cx)?;
                let v = eval(v, frame, cx)?;
                t.keyed.push((k, v));
            }
            Value::Table(Arc::new(t))
        }
        Expr::Call(b, args) => {
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, frame, cx)?);
            }
            functions::call(*b, &vals, cx)?
        }
        Expr::Health(plan) => functions::health(plan, cx)?,
        Expr::Method(base, m, args) => {
            let base = eval(base, frame, cx)?;
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, frame, cx)?);
            }
            method(&base, *m, &vals)?
        }
        Expr::Index(t, k) => {
            let t = eval(t, frame, cx)?;
            let k = eval(k, frame, cx)?;
            match t {
                Value::Table(t) => t.get(&k),
                other => {
                    return Err(EvalError::new(format!(
                        "attempt to index a {} value",
                        other.type_name()
                    )));
                }
            }
        }
        Expr::Bin(op, a, b) => {
            let a = eval(a, frame, cx)?;
            binop(*op, a, || eval(b, frame, cx))?
        }
        Expr::Not(a) => Value::Bool(!eval(a, frame, cx)?.truthy()),
        Expr::Neg(a) => {
            let v = eval(a, frame, cx)?;
            Value::Num(-v.as_number().ok_or_else(|| {
                EvalError::new(format!("attempt to negate a {} value", v.type_name()))
            })?)
        }
        Expr::Len(a) => match eval(a, frame, cx)? {
            #[expect(clippy::cast_precision_loss, reason = "lengths are small")]
            Value::Str(s) => Value::Num(s.len() as f64),
            #[expect(clippy::cast_precision_loss, reason = "lengths are small")]
            Value::Table(t) => Value::Num(t.array.len() as f64),
            other => {
                return Err(EvalError::new(format!(
                    "attempt to get length of a {} value",
                    other.type_name()
                )));
            }
        },
    })
}

fn var(v: Var, cx: &EvalContext<'_>) -> Value {
    match v {
        Var::Qname => {
            cx.note(super::Deps::QNAME);
            Value::Name(Arc::from(cx.qname))
        }
        Var::Zone => Value::Name(Arc::from(cx.zone)),
        Var::Who => {
            cx.note(super::Deps::CLIENT);
            Value::Addr(cx.who)
        }
        Var::EcsWho => {
            cx.note(super::Deps::CLIENT);
            cx.ecs.map_or(Value::Nil, Value::Net)
        }
        Var::BestWho => {
            cx.note(super::Deps::CLIENT);
            Value::Addr(cx.bestwho)
        }
        Var::LocalWho => {
            cx.note(super::Deps::TRANSPORT);
            Value::Addr(cx.localwho)
        }
        Var::Tcp => {
            cx.note(super::Deps::TRANSPORT);
            Value::Bool(cx.tcp)
        }
        Var::DnssecOk => {
            cx.note(super::Deps::TRANSPORT);
            Value::Bool(cx.dnssec_ok)
        }
    }
}

/// A method of a name, address, netmask or netmask-group value (both tiers call this).
pub(super) fn method(base: &Value, m: Method, args: &[Value]) -> Result<Value, EvalError> {
    let as_name = |v: &Value| -> Option<String> {
        match v {
            Value::Name(s) | Value::Str(s) => Some(s.to_ascii_lowercase()),
            _ => None,
        }
    };
    Ok(match (base, m) {
        (Value::Name(n), Method::ToString) => Value::str(n.as_ref()),
        (Value::Name(n), Method::ToStringNoDot) => Value::str(n.trim_end_matches('.')),
        (Value::Name(n), Method::GetRawLabels) => Value::list(
            n.trim_end_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
                .map(Value::str)
                .collect(),
        ),
        #[expect(clippy::cast_precision_loss, reason = "label counts are small")]
        (Value::Name(n), Method::CountLabels) => Value::Num(
            n.trim_end_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
                .count() as f64,
        ),
        (Value::Name(n), Method::IsPartOf) => {
            let other = args
                .first()
                .and_then(as_name)
                .ok_or_else(|| EvalError::new("isPartOf needs a name"))?;
            let me = n.to_ascii_lowercase();
            let other = if other.ends_with('.') {
                other
            } else {
                format!("{other}.")
            };
            Value::Bool(other == "." || me == other || me.ends_with(&format!(".{other}")))
        }
        (Value::Name(n), Method::Equal) => {
            let other = args
                .first()
                .and_then(as_name)
                .ok_or_else(|| EvalError::new("equal needs a name"))?;
            let other = if other.ends_with('.') {
                other
            } else {
                format!("{other}.")
            };
            Value::Bool(n.to_ascii_lowercase() == other)
        }
        (Value::Addr(a), Method::ToString) => Value::str(a.to_string()),
        (Value::Addr(a), Method::ToStringWithPort) => Value::str(match a {
            std::net::IpAddr::V4(v4) => format!("{v4}:0"),
            std::net::IpAddr::V6(v6) => format!("[{v6}]:0"),
        }),
        (Value::Addr(a), Method::IsIpv4) => Value::Bool(a.is_ipv4()),
        (Value::Addr(a), Method::IsIpv6) => Value::Bool(a.is_ipv6()),
        (Value::Addr(_), Method::GetPort) => Value::Num(0.0),
        (Value::Net(n), Method::ToString) => Value::str(n.to_string()),
        (Value::Net(n), Method::IsIpv4) => Value::Bool(matches!(n, ipnet::IpNet::V4(_))),
        (Value::Net(n), Method::IsIpv6) => Value::Bool(matches!(n, ipnet::IpNet::V6(_))),
        (Value::Net(n), Method::GetBits) => Value::Num(f64::from(n.prefix_len())),
        (Value::Net(n), Method::GetNetwork) => Value::Addr(n.network()),
        (Value::Net(_), Method::Empty) => Value::Bool(false),
        (Value::Net(n), Method::Match) => {
            let ip = functions::address_arg(args.first())?;
            Value::Bool(functions::net_contains(n, ip))
        }
        // A netmask group (`newNMG{...}`) is a list of netmasks.
        (Value::Table(_), Method::Match) => {
            let ip = functions::address_arg(args.first())?;
            let nets = functions::nets(Some(base))?;
            Value::Bool(nets.iter().any(|n| functions::net_contains(n, ip)))
        }
        (other, m) => {
            return Err(EvalError::new(format!(
                "no method {m:?} on a {} value",
                other.type_name()
            )));
        }
    })
}

fn num(v: &Value, what: &str) -> Result<f64, EvalError> {
    v.as_number().ok_or_else(|| {
        EvalError::new(format!(
            "attempt to perform arithmetic on a {} value ({what})",
            v.type_name()
        ))
    })
}

fn concat_str(v: &Value) -> Result<String, EvalError> {
    match v {
        Value::Str(s) | Value::Name(s) => Ok(s.to_string()),
        Value::Num(n) => Ok(format_number(*n)),
        Value::Addr(_) | Value::Net(_) => Ok(v.to_string()),
        other => Err(EvalError::new(format!(
            "attempt to concatenate a {} value",
            other.type_name()
        ))),
    }
}

/// Apply a binary operator; `rhs` is evaluated lazily for `and`/`or`.
pub(super) fn binop(
    op: BinOp,
    a: Value,
    rhs: impl FnOnce() -> Result<Value, EvalError>,
) -> Result<Value, EvalError> {
    match op {
        BinOp::And => return if a.truthy() { rhs() } else { Ok(a) },
        BinOp::Or => return if a.truthy() { Ok(a) } else { rhs() },
        _ => {}
    }
    let b = rhs()?;
    Ok(match op {
        BinOp::Add => Value::Num(num(&a, "+")? + num(&b, "+")?),
        BinOp::Sub => Value::Num(num(&a, "-")? - num(&b, "-")?),
        BinOp::Mul => Value::Num(num(&a, "*")? * num(&b, "*")?),
        BinOp::Div => Value::Num(num(&a, "/")? / num(&b, "/")?),
        BinOp::Mod => {
            let (x, y) = (num(&a, "%")?, num(&b, "%")?);
            Value::Num(x - (x / y).floor() * y)
        }
        BinOp::Pow => Value::Num(num(&a, "^")?.powf(num(&b, "^")?)),
        BinOp::Concat => Value::str(concat_str(&a)? + &concat_str(&b)?),
        BinOp::Eq => Value::Bool(a.loose_eq(&b)),
        BinOp::Ne => Value::Bool(!a.loose_eq(&b)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = match (&a, &b) {
                (Value::Num(x), Value::Num(y)) => x.partial_cmp(y),
                (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
                _ => {
                    return Err(EvalError::new(format!(
                        "attempt to compare {} with {}",
                        a.type_name(),
                        b.type_name()
                    )));
                }
            };
            let Some(ord) = ord else {
                return Ok(Value::Bool(false));
            };
            Value::Bool(match op {
                BinOp::Lt => ord.is_lt(),
                BinOp::Le => ord.is_le(),
                BinOp::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        BinOp::And | BinOp::Or => unreachable!("handled above"),
    })
}
