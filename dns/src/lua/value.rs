//! Runtime values of the LUA-expression language.

use std::{fmt, net::IpAddr, sync::Arc};

use ipnet::IpNet;

/// A value produced while evaluating a compiled expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `nil`.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// A Lua number (always a double, as in Lua 5.1 / `LuaJIT`).
    Num(f64),
    /// A string.
    Str(Arc<str>),
    /// A table: positional part plus keyed part.
    Table(Arc<Table>),
    /// A DNS name object (`qname`, `zone`); behaves as its presentation string.
    Name(Arc<str>),
    /// An address object (`who`, `bestwho`, `localwho`).
    Addr(IpAddr),
    /// A client subnet object (`ecswho`).
    Net(IpNet),
}

/// A Lua table constructor's result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Positional entries, `t[1]`..`t[n]`.
    pub array: Vec<Value>,
    /// Keyed entries in source order.
    pub keyed: Vec<(Value, Value)>,
}

impl Table {
    /// Lookup by key with Lua semantics for integer keys.
    pub fn get(&self, key: &Value) -> Value {
        #[expect(clippy::cast_sign_loss, reason = "checked >= 1 first")]
        if let Value::Num(n) = key
            && n.fract() == 0.0
            && *n >= 1.0
            && (*n as usize) <= self.array.len()
        {
            return self.array[(*n as usize) - 1].clone();
        }
        for (k, v) in &self.keyed {
            if k.loose_eq(key) {
                return v.clone();
            }
        }
        Value::Nil
    }

    /// All entries in Lua iteration order (positional first).
    pub fn entries(&self) -> impl Iterator<Item = (Value, &Value)> {
        self.array
            .iter()
            .enumerate()
            .map(|(i, v)| {
                #[expect(clippy::cast_precision_loss, reason = "table sizes are small")]
                let key = Value::Num((i + 1) as f64);
                (key, v)
            })
            .chain(self.keyed.iter().map(|(k, v)| (k.clone(), v)))
    }

    /// Values in iteration order.
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.array.iter().chain(self.keyed.iter().map(|(_, v)| v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.array.len() + self.keyed.len()
    }

    /// True if the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Value {
    /// Build a string value.
    pub fn str(s: impl Into<Arc<str>>) -> Self {
        Value::Str(s.into())
    }

    /// Build a table value from positional values.
    pub fn list(items: Vec<Value>) -> Self {
        Value::Table(Arc::new(Table {
            array: items,
            keyed: Vec::new(),
        }))
    }

    /// Lua truthiness: everything except `nil` and `false` is true.
    pub fn truthy(&self) -> bool {
        !matches!(self, Value::Nil | Value::Bool(false))
    }

    /// Lua type name for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "boolean",
            Value::Num(_) => "number",
            Value::Str(_) => "string",
            Value::Table(_) => "table",
            Value::Name(_) => "DNSName",
            Value::Addr(_) => "ComboAddress",
            Value::Net(_) => "Netmask",
        }
    }

    /// String coercion the way the `PowerDNS` bindings accept arguments (numbers become strings).
    pub fn as_string(&self) -> Option<String> {
        match self {
            Value::Str(s) | Value::Name(s) => Some(s.to_string()),
            Value::Num(_) | Value::Addr(_) | Value::Net(_) => Some(self.to_string()),
            _ => None,
        }
    }

    /// Number coercion (strings that parse as numbers are numbers, as in Lua).
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The table, if this is one.
    pub fn as_table(&self) -> Option<&Table> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }

    /// Equality as Lua `==` (numbers by value, strings by content, tables by identity).
    pub fn loose_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Table(a), Value::Table(b)) => Arc::ptr_eq(a, b),
            (Value::Str(a) | Value::Name(a), Value::Str(b) | Value::Name(b)) => a == b,
            _ => self == other,
        }
    }
}

/// Lua's number formatting: integers without a fraction, others with up to 14 significant digits.
pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "checked integral and in range"
        )]
        let i = n as i64;
        i.to_string()
    } else {
        let s = format!("{n:.14}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Num(n) => f.write_str(&format_number(*n)),
            Value::Str(s) | Value::Name(s) => f.write_str(s),
            Value::Table(_) => f.write_str("table"),
            Value::Addr(a) => write!(f, "{a}"),
            Value::Net(n) => write!(f, "{n}"),
        }
    }
}

/// The text `PowerDNS` formats a double with `%d` of `boost::format` (C++ stream default: six
/// significant digits, no trailing zeros), which is how `latlonloc()` writes its seconds.
pub fn cpp_stream_double(v: f64) -> String {
    if v == 0.0 {
        // A C++ stream prints the sign of a negative zero.
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "decimal exponent of a finite double"
    )]
    let exp = v.abs().log10().floor() as i32;
    // %g: rounding may carry into the next power of ten; format in scientific first to know.
    let sci = format!("{v:.5e}");
    let (mant, e) = sci.split_once('e').unwrap_or((&sci, "0"));
    let e: i32 = e.parse().unwrap_or(exp);
    if !(-4..6).contains(&e) {
        let mant = trim_zeros(mant);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", e.abs());
    }
    let decimals = usize::try_from(5 - e).unwrap_or(0);
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_print_like_a_cpp_stream() {
        assert_eq!(cpp_stream_double(33.6), "33.6");
        assert_eq!(cpp_stream_double(0.0), "0");
        assert_eq!(cpp_stream_double(-0.0), "-0");
        assert_eq!(
            cpp_stream_double(1.278_976_924_368_180_3e-12),
            "1.27898e-12"
        );
        assert_eq!(cpp_stream_double(59.999_999_9), "60");
        assert_eq!(cpp_stream_double(8.123_456_7), "8.12346");
        assert_eq!(cpp_stream_double(0.000_012_3), "1.23e-05");
        assert_eq!(cpp_stream_double(12.0), "12");
    }
}
