//! Faye channel names: the grammar, wildcard patterns, and `expand`, the
//! list of subscription names that can match a published channel.
//!
//! Faye matches at publish time: the faye-redis engine unions the subscriber
//! sets of every name `expand` returns, so a pattern subscriber gets the
//! message without anyone walking the patterns. We use the same list for
//! local routing, so what Faye delivers and what we route agree exactly.
//! Facts from faye 1.4.3 `protocol/grammar.js` and `protocol/channel.js`
//! (reference: faye.md §1.6).

/// Characters allowed in a segment besides ASCII letters and digits. No dots,
/// colons, spaces or `%`.
const SEGMENT_PUNCTUATION: &[char] = &['-', '_', '!', '~', '(', ')', '$', '@'];

/// Why a name is not a usable channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not `/segment/...` with segments of `A-Z a-z 0-9 - _ ! ~ ( ) $ @`.
    Grammar,
    /// A wildcard (`*`, `**`) anywhere but as the whole last segment.
    Wildcard,
    /// A pattern where a concrete channel is needed (publishing).
    Pattern,
    /// `/meta/...`: Bayeux's own channels, never published or subscribed by hand.
    Meta,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invalid::Grammar => {
                "expected /segment/segment with segments of letters, digits and - _ ! ~ ( ) $ @"
            }
            Invalid::Wildcard => "a wildcard (* or **) may only be the whole last segment",
            Invalid::Pattern => "a wildcard pattern cannot be published to",
            Invalid::Meta => "/meta/ channels belong to the Bayeux protocol",
        })
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || SEGMENT_PUNCTUATION.contains(&c))
}

/// The segments of a name that starts with `/`, or `None`.
fn segments(name: &str) -> Option<Vec<&str>> {
    name.strip_prefix('/').map(|rest| rest.split('/').collect())
}

/// Check a name or pattern (`/a/b`, `/a/*`, `/a/**`, `/**`) as Faye's
/// grammar does.
pub fn check(name: &str) -> Result<(), Invalid> {
    let segs = segments(name).ok_or(Invalid::Grammar)?;
    let (last, init) = segs.split_last().expect("split always yields one part");
    for s in init {
        if s.contains('*') {
            return Err(Invalid::Wildcard);
        }
        if !valid_segment(s) {
            return Err(Invalid::Grammar);
        }
    }
    match *last {
        "*" | "**" => Ok(()),
        s if s.contains('*') => Err(Invalid::Wildcard),
        s if valid_segment(s) => Ok(()),
        _ => Err(Invalid::Grammar),
    }
}

/// Whether a valid name is a wildcard pattern.
pub fn is_pattern(name: &str) -> bool {
    name.ends_with("/*") || name.ends_with("/**")
}

/// Whether a name is under `/meta/` (or is `/meta` itself).
pub fn is_meta(name: &str) -> bool {
    name == "/meta" || name.starts_with("/meta/")
}

/// Check a channel to publish on: valid, concrete, not `/meta/`.
pub fn check_publish(name: &str) -> Result<(), Invalid> {
    check(name)?;
    if is_pattern(name) {
        return Err(Invalid::Pattern);
    }
    if is_meta(name) {
        return Err(Invalid::Meta);
    }
    Ok(())
}

/// Check a channel or pattern to subscribe to: valid, not `/meta/`.
pub fn check_subscribe(name: &str) -> Result<(), Invalid> {
    check(name)?;
    if is_meta(name) {
        return Err(Invalid::Meta);
    }
    Ok(())
}

/// Every subscription name that matches the concrete channel `name`, in
/// Faye's order: `/**`, the name, its parent with `*`, then each ancestor
/// with `**`. `/a/b/c` gives `/**, /a/b/c, /a/b/*, /a/**, /a/b/**`.
pub fn expand(name: &str) -> Vec<String> {
    let segs = segments(name).unwrap_or_default();
    let mut out = vec!["/**".to_owned(), name.to_owned()];
    let mut parent = String::new();
    for s in &segs[..segs.len().saturating_sub(1)] {
        parent.push('/');
        parent.push_str(s);
    }
    out.push(format!("{parent}/*"));
    let mut prefix = String::new();
    for s in &segs[..segs.len().saturating_sub(1)] {
        prefix.push('/');
        prefix.push_str(s);
        out.push(format!("{prefix}/**"));
    }
    out
}

/// Whether the subscription `pattern` (a name or a pattern) matches the
/// concrete channel `channel`, exactly as Faye delivers.
pub fn matches(pattern: &str, channel: &str) -> bool {
    pattern == channel || expand(channel).iter().any(|c| c == pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_is_fayes_list_in_fayes_order() {
        assert_eq!(
            expand("/a/b/c"),
            ["/**", "/a/b/c", "/a/b/*", "/a/**", "/a/b/**"]
        );
        assert_eq!(expand("/foo"), ["/**", "/foo", "/*"]);
        assert_eq!(expand("/a/b"), ["/**", "/a/b", "/a/*", "/a/**"]);
    }

    #[test]
    fn wildcards_match_as_faye_documents() {
        assert!(matches("/foo/*", "/foo/bar"));
        assert!(!matches("/foo/*", "/foo/bar/baz"));
        assert!(!matches("/foo/*", "/foo"));
        assert!(matches("/foo/**", "/foo/bar"));
        assert!(matches("/foo/**", "/foo/bar/baz"));
        assert!(!matches("/foo/**", "/foo"));
        assert!(matches("/**", "/service/x"));
        assert!(matches("/*", "/x"));
        assert!(!matches("/*", "/x/y"));
        assert!(matches("/a/b", "/a/b"));
        assert!(!matches("/a/b", "/a/b/c"));
        assert!(!matches("/a/c/*", "/a/b/c"));
    }

    #[test]
    fn grammar_accepts_fayes_segment_characters_only() {
        for ok in [
            "/a",
            "/A-z_0!~()$@",
            "/a/b/c",
            "/*",
            "/**",
            "/a/*",
            "/a/b/**",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "a", "/", "//", "/a/", "/a//b", "/a.b", "/a:b", "/a b", "/a%20",
        ] {
            assert_eq!(check(bad), Err(Invalid::Grammar), "{bad:?}");
        }
        for bad in ["/*/a", "/a/**/b", "/a*", "/a/***", "/a/b*"] {
            assert_eq!(check(bad), Err(Invalid::Wildcard), "{bad:?}");
        }
    }

    #[test]
    fn publish_and_subscribe_checks() {
        assert_eq!(check_publish("/a/*"), Err(Invalid::Pattern));
        assert_eq!(check_publish("/meta/handshake"), Err(Invalid::Meta));
        assert_eq!(check_publish("/metadata"), Ok(()));
        assert_eq!(check_publish("/service/x"), Ok(()));
        assert_eq!(check_subscribe("/a/**"), Ok(()));
        assert_eq!(check_subscribe("/meta/*"), Err(Invalid::Meta));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Matching by segments, written from Faye's documentation, against
    /// which `expand`-based matching is checked.
    fn by_segments(pattern: &str, channel: &str) -> bool {
        let p: Vec<&str> = pattern[1..].split('/').collect();
        let c: Vec<&str> = channel[1..].split('/').collect();
        let (last, init) = p.split_last().unwrap();
        let prefix_ok = c.len() >= init.len() && c[..init.len()] == *init;
        match *last {
            "*" => prefix_ok && c.len() == p.len(),
            "**" => prefix_ok && c.len() > init.len(),
            _ => p == c,
        }
    }

    fn channel() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..5)
            .prop_map(|v| v.into_iter().map(str::to_owned).collect())
    }

    proptest! {
        #[test]
        fn expand_matching_equals_segment_matching(
            c in channel(),
            p in channel(),
            tail in prop::sample::select(vec!["", "*", "**"]),
        ) {
            let channel = format!("/{}", c.join("/"));
            let pattern = match tail {
                "" => format!("/{}", p.join("/")),
                w => format!("/{}", p[..p.len() - 1].iter().map(|s| format!("{s}/")).collect::<String>()) + w,
            };
            prop_assert_eq!(check(&pattern), Ok(()));
            prop_assert_eq!(matches(&pattern, &channel), by_segments(&pattern, &channel), "{} vs {}", pattern, channel);
        }
    }
}
