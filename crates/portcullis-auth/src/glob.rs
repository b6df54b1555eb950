//! Model allow-lists: `*` matches any run of characters, `?` exactly one.

/// A list of model globs. An empty list places no restriction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelGlobs(Vec<String>);

impl ModelGlobs {
    pub fn new(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }

    pub fn is_unrestricted(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, model: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|pattern| matches(pattern.as_bytes(), model.as_bytes()))
    }
}

/// Iterative wildcard match with single backtracking point: linear in practice, no recursion.
fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(patterns: &[&str]) -> ModelGlobs {
        ModelGlobs::new(patterns.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn star_and_question_mark() {
        let list = globs(&["smollm*", "gemma-?-270m"]);
        assert!(list.allows("smollm2"));
        assert!(list.allows("smollm"));
        assert!(list.allows("gemma-3-270m"));
        assert!(!list.allows("gemma-30-270m"));
        assert!(!list.allows("llama3"));
        assert!(!list.allows("xsmollm2"));
    }

    #[test]
    fn exact_names_and_inner_stars() {
        let list = globs(&["a*b*c", "exact"]);
        assert!(list.allows("abc"));
        assert!(list.allows("a-xx-b-yy-c"));
        assert!(!list.allows("a-xx-b-yy-cd"));
        assert!(list.allows("exact"));
        assert!(!list.allows("exactly"));
    }

    #[test]
    fn empty_list_allows_everything() {
        assert!(ModelGlobs::default().allows("anything"));
        assert!(globs(&["*"]).allows(""));
    }
}
