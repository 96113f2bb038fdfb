//! Glob patterns as Ruby's `File.fnmatch?` (no flags) matches them: used for
//! queue lists (`*`, `mail_*`, `!low`) and for plugin class patterns
//! (`Py::*`).

/// Ruby's `File.fnmatch?(pattern, name)` without flags: `*` any run, `?` one
/// character, `[...]` a class (`!`/`^` negates, `a-z` ranges); `*` and `?` do
/// not match a leading `.`; braces are literal.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    if n.first() == Some(&'.') && matches!(p.first(), Some('*' | '?' | '[')) {
        return false;
    }
    matches_from(&p, &n)
}

fn matches_from(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| matches_from(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && matches_from(&p[1..], &n[1..]),
        Some('[') => match (class_match(&p[1..], n.first().copied()), n.is_empty()) {
            (Some((true, rest)), false) => matches_from(&p[1 + rest..], &n[1..]),
            (None, false) if n[0] == '[' => matches_from(&p[1..], &n[1..]),
            _ => false,
        },
        Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && matches_from(&p[2..], &n[1..]),
        Some(c) => n.first() == Some(c) && matches_from(&p[1..], &n[1..]),
    }
}

/// Match `c` against the class starting after `[`; returns whether it
/// matched and how many pattern characters the class used (through `]`).
fn class_match(p: &[char], c: Option<char>) -> Option<(bool, usize)> {
    let c = c?;
    let mut i = 0;
    let negate = matches!(p.first(), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            hit |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            hit |= p[i] == c;
            i += 1;
        }
    }
    None
}

/// Whether `s` contains a glob metacharacter.
pub fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The same pattern as an anchored Lua pattern, for the take script, which
/// matches job classes against plugin limits inside Redis.
pub fn to_lua_pattern(glob: &str) -> String {
    let mut out = String::from("^");
    let chars: Vec<char> = glob.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => match chars[i + 1..].iter().skip(1).position(|&c| c == ']') {
                Some(end) => {
                    let class = &chars[i + 1..i + 2 + end];
                    out.push('[');
                    for (k, &c) in class.iter().enumerate() {
                        match c {
                            '!' | '^' if k == 0 => out.push('^'),
                            '-' if k > 0 && k + 1 < class.len() => out.push('-'),
                            c if c.is_ascii_alphanumeric() => out.push(c),
                            c => {
                                out.push('%');
                                out.push(c);
                            }
                        }
                    }
                    out.push(']');
                    i += end + 2;
                }
                None => out.push_str("%["),
            },
            c if c.is_ascii_alphanumeric() || !c.is_ascii() => out.push(c),
            c => {
                out.push('%');
                out.push(c);
            }
        }
        i += 1;
    }
    out.push('$');
    out
}

/// An anchored Lua pattern matching exactly `s`.
pub fn lua_literal(s: &str) -> String {
    let mut out = String::from("^");
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            out.push('%');
        }
        out.push(c);
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_ruby() {
        assert!(fnmatch("mail*", "mail_high"));
        assert!(fnmatch("*", "a/b:c"));
        assert!(!fnmatch("*", ".hidden"));
        assert!(fnmatch("q?", "q1"));
        assert!(fnmatch("q[0-9]", "q7"));
        assert!(!fnmatch("q[!0-9]", "q7"));
        assert!(!fnmatch("{a,b}", "a"));
        assert!(fnmatch("{a,b}", "{a,b}"));
    }

    #[test]
    fn lua_patterns_escape_everything_but_the_glob() {
        assert_eq!(to_lua_pattern("Py::*"), "^Py%:%:.*$");
        assert_eq!(to_lua_pattern("A.b?"), "^A%.b.$");
        assert_eq!(to_lua_pattern("q[0-9]"), "^q[0-9]$");
        assert_eq!(to_lua_pattern("q[!ab]"), "^q[^ab]$");
        assert_eq!(to_lua_pattern("Resize%Image"), "^Resize%%Image$");
        assert_eq!(lua_literal("A::B*"), "^A%:%:B%*$");
    }
}
