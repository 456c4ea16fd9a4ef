//! Tokenizer for the Lua subset used in LUA records.

use super::CompileError;

/// One token with its byte offset in the source.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Name(String),
    Str(String),
    Num(f64),
    Kw(&'static str),
    Op(&'static str),
    Eof,
}

const KEYWORDS: &[&str] = &[
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
];

const OPS: &[&str] = &[
    "...", "..", "==", "~=", "<=", ">=", "::", "//", "<<", ">>", "+", "-", "*", "/", "%", "^", "#",
    "<", ">", "=", "(", ")", "{", "}", "[", "]", ";", ":", ",", ".", "&", "|", "~",
];

/// Tokenize `src` into (token, offset) pairs ending with `Eof`.
pub fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, CompileError> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            i += 2;
            if let Some(level) = long_bracket_level(b, i) {
                i = skip_long(b, i, level).ok_or_else(|| err("unfinished long comment", start))?;
            } else {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &src[start..i];
            match KEYWORDS.iter().find(|k| **k == word) {
                Some(k) => out.push((Tok::Kw(k), start)),
                None => out.push((Tok::Name(word.to_string()), start)),
            }
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let (n, len) = number(&src[i..]).ok_or_else(|| err("malformed number", start))?;
            out.push((Tok::Num(n), start));
            i += len;
            continue;
        }
        if c == b'"' || c == b'\'' {
            let (s, end) = quoted(b, i)?;
            out.push((Tok::Str(s), start));
            i = end;
            continue;
        }
        if c == b'['
            && let Some(level) = long_bracket_level(b, i)
        {
            let end = skip_long(b, i, level).ok_or_else(|| err("unfinished long string", start))?;
            let open = level + 2;
            let mut body = &src[i + open..end - open];
            if body.starts_with('\n') {
                body = &body[1..];
            }
            out.push((Tok::Str(body.to_string()), start));
            i = end;
            continue;
        }
        match OPS.iter().find(|op| src[i..].starts_with(**op)) {
            Some(op) => {
                out.push((Tok::Op(op), start));
                i += op.len();
            }
            None => return Err(err(&format!("unexpected character `{}`", c as char), start)),
        }
    }
    out.push((Tok::Eof, b.len()));
    Ok(out)
}

fn err(msg: &str, offset: usize) -> CompileError {
    CompileError::Syntax {
        message: msg.to_string(),
        offset,
    }
}

/// `[[`, `[=[`, … at `i`: returns the number of `=`.
fn long_bracket_level(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let mut j = i + 1;
    while b.get(j) == Some(&b'=') {
        j += 1;
    }
    (b.get(j) == Some(&b'[')).then_some(j - i - 1)
}

/// Returns the offset just past the closing bracket.
fn skip_long(b: &[u8], i: usize, level: usize) -> Option<usize> {
    let mut j = i + level + 2;
    while j < b.len() {
        if b[j] == b']'
            && b.get(j + 1 + level) == Some(&b']')
            && b[j + 1..j + 1 + level].iter().all(|c| *c == b'=')
        {
            return Some(j + level + 2);
        }
        j += 1;
    }
    None
}

fn number(s: &str) -> Option<(f64, usize)> {
    let b = s.as_bytes();
    if s.starts_with("0x") || s.starts_with("0X") {
        let mut j = 2;
        while j < b.len() && b[j].is_ascii_hexdigit() {
            j += 1;
        }
        let v = u64::from_str_radix(&s[2..j], 16).ok()?;
        #[expect(clippy::cast_precision_loss, reason = "Lua numbers are doubles")]
        return Some((v as f64, j));
    }
    let mut j = 0;
    while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
        j += 1;
    }
    if j < b.len() && (b[j] == b'e' || b[j] == b'E') {
        j += 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    if j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'_') {
        return None;
    }
    s[..j].parse().ok().map(|v| (v, j))
}

fn quoted(b: &[u8], start: usize) -> Result<(String, usize), CompileError> {
    let q = b[start];
    let mut out: Vec<u8> = Vec::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = b.get(i) else {
            return Err(err("unfinished string", start));
        };
        match c {
            _ if c == q => {
                let s = String::from_utf8(out).map_err(|_| err("string is not UTF-8", start))?;
                return Ok((s, i + 1));
            }
            b'\n' => return Err(err("unfinished string", start)),
            b'\\' => {
                i += 1;
                let Some(&e) = b.get(i) else {
                    return Err(err("unfinished string", start));
                };
                match e {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'a' => out.push(7),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'v' => out.push(11),
                    b'\\' | b'"' | b'\'' | b'\n' => out.push(e),
                    b'0'..=b'9' => {
                        let mut v: u32 = 0;
                        let mut n = 0;
                        while n < 3 && b.get(i).is_some_and(u8::is_ascii_digit) {
                            v = v * 10 + u32::from(b[i] - b'0');
                            i += 1;
                            n += 1;
                        }
                        let byte = u8::try_from(v).map_err(|_| err("escape too large", i))?;
                        out.push(byte);
                        continue;
                    }
                    _ => return Err(err(&format!("invalid escape `\\{}`", e as char), i)),
                }
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = tokenize("pickwhashed({{1,'a'},{2,\"b\\65\"}}) .. x -- c").unwrap();
        let toks: Vec<_> = t.into_iter().map(|(t, _)| t).collect();
        assert_eq!(toks[0], Tok::Name("pickwhashed".into()));
        assert!(toks.contains(&Tok::Str("bA".into())));
        assert!(toks.contains(&Tok::Op("..")));
        assert_eq!(toks.last(), Some(&Tok::Eof));
    }

    #[test]
    fn long_strings_and_numbers() {
        let t = tokenize("[[a\nb]] 0x10 1.5e1").unwrap();
        assert_eq!(t[0].0, Tok::Str("a\nb".into()));
        assert_eq!(t[1].0, Tok::Num(16.0));
        assert_eq!(t[2].0, Tok::Num(15.0));
    }
}
