//! A pre-scan that bounds how deeply YAML text nests, before libyaml sees it.
//!
//! libyaml's scanner re-checks the pending simple key of every open flow level on each token,
//! so text nested N flow levels deep costs O(N²): `a: [[[[...]]]]` with 100,000 levels (200 KB)
//! stalled the source for over a minute. serde's own recursion limit does not help, because it
//! is checked only after libyaml has turned the whole document into events.
//!
//! The scanner follows libyaml's rules for where a token may start (quoted and plain scalars,
//! comments, block scalars, the indentation stack, multi-line plain scalars) closely enough to
//! count open flow collections (`[`, `{`) and block collections (`- `, `key:`). Where it cannot
//! tell, it counts rather than skips: a miscount must make it reject a strange valid file, never
//! let a deep one through to the parser.

/// Documents nested deeper than this are rejected before parsing. Kubernetes objects nest about
/// a dozen levels; a CRD's schema perhaps thirty.
pub const MAX_DEPTH: usize = 64;

/// Where the text first nests deeper than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooDeep {
    /// 1-based line number.
    pub line: usize,
}

/// Checks that no part of `text` nests more than `limit` collections deep. Linear in the text.
pub fn check_depth(text: &str, limit: usize) -> Result<(), TooDeep> {
    let mut scanner = Scanner {
        limit,
        flow: 0,
        block: Vec::new(),
        mode: Mode::Normal,
        node_start: true,
        in_plain: false,
        key_col: None,
    };
    for (index, line) in lines(text).enumerate() {
        scanner
            .line(line)
            .map_err(|Deeper| TooDeep { line: index + 1 })?;
    }
    Ok(())
}

/// The limit was crossed on the current line.
struct Deeper;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    SingleQuoted,
    DoubleQuoted,
    /// Inside a block scalar (`|`, `>`). `parent` is the column of the collection holding it
    /// (-1 at the top level): content lines are indented deeper. `content` is the content's
    /// indentation, once the first content line (or an explicit indicator) has fixed it.
    BlockScalar {
        parent: isize,
        content: Option<usize>,
    },
}

struct Scanner {
    limit: usize,
    /// Open flow collections.
    flow: usize,
    /// Columns of the open block collections, strictly increasing: libyaml's indentation stack.
    block: Vec<usize>,
    mode: Mode,
    /// Between tokens, where a node (and so a quote, a flow collection, a block scalar) may start.
    node_start: bool,
    /// A plain scalar in block context is open; an indented next line continues it as text.
    in_plain: bool,
    /// Column where the current block-context node began; it opens a mapping there if a `:`
    /// follows (a simple key).
    key_col: Option<usize>,
}

impl Scanner {
    fn line(&mut self, line: &str) -> Result<(), Deeper> {
        let indent = line.chars().take_while(|&c| c == ' ').count();
        let first = line.chars().find(|&c| c != ' ' && c != '\t');
        if let Mode::BlockScalar { parent, content } = self.mode {
            let Some(_) = first else {
                return Ok(()); // blank lines belong to the scalar
            };
            let inside = match content {
                Some(content) => indent >= content,
                None => to_isize(indent) > parent,
            };
            if inside && !(indent == 0 && is_document_marker(line)) {
                if content.is_none() {
                    self.mode = Mode::BlockScalar {
                        parent,
                        content: Some(indent),
                    };
                }
                return Ok(());
            }
            self.mode = Mode::Normal;
        }
        let Some(first) = first else {
            return Ok(()); // blank lines change nothing, not even a multi-line plain scalar
        };
        let mut skip = 0;
        if self.mode == Mode::Normal && first == '#' {
            // A comment line ends a plain scalar and is not a token: no indentation change.
            self.in_plain = false;
            return Ok(());
        }
        if self.mode == Mode::Normal && self.flow == 0 {
            if indent == 0 && is_document_marker(line) {
                self.block.clear();
                self.in_plain = false;
                self.node_start = true;
                self.key_col = None;
                skip = 3;
            } else if self.in_plain && self.block.last().is_none_or(|&top| indent > top) {
                // libyaml reads an indented line after a plain scalar as more of its text.
                self.node_start = false;
            } else {
                self.in_plain = false;
                while self.block.last().is_some_and(|&top| top > indent) {
                    self.block.pop();
                }
                self.node_start = true;
                self.key_col = None;
            }
        }
        self.scan(line, skip)
    }

    fn scan(&mut self, line: &str, skip: usize) -> Result<(), Deeper> {
        let mut chars = line.chars().enumerate().skip(skip).peekable();
        let mut prev_blank = true;
        while let Some((col, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            match self.mode {
                Mode::SingleQuoted => {
                    if c == '\'' {
                        if next == Some('\'') {
                            chars.next(); // '' is an escaped quote
                        } else {
                            self.mode = Mode::Normal;
                            self.node_start = false;
                        }
                    }
                    prev_blank = false;
                    continue;
                }
                Mode::DoubleQuoted => {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        self.mode = Mode::Normal;
                        self.node_start = false;
                    }
                    prev_blank = false;
                    continue;
                }
                Mode::BlockScalar { .. } => return Ok(()),
                Mode::Normal => {}
            }
            if c == ' ' || c == '\t' {
                prev_blank = true;
                continue;
            }
            if c == '#' && prev_blank {
                self.in_plain = false;
                return Ok(()); // a comment runs to the end of the line
            }
            prev_blank = false;
            let block = self.flow == 0;
            let next_blank = next.is_none_or(|n| n == ' ' || n == '\t');
            if self.node_start {
                match c {
                    '\'' => {
                        self.begin_node(col);
                        self.mode = Mode::SingleQuoted;
                    }
                    '"' => {
                        self.begin_node(col);
                        self.mode = Mode::DoubleQuoted;
                    }
                    '[' | '{' => {
                        self.begin_node(col);
                        self.open_flow()?;
                    }
                    ']' | '}' => self.close_flow(),
                    ',' => {}
                    '|' | '>' if block => {
                        let top = self.block.last().map(|&top| to_isize(top));
                        let explicit = chars
                            .by_ref()
                            .take(2)
                            .find_map(|(_, h)| h.to_digit(10))
                            .filter(|&d| d > 0)
                            .map(|d| d as usize);
                        self.mode = Mode::BlockScalar {
                            parent: top.unwrap_or(-1),
                            // libyaml: an explicit indentation is relative to the parent's.
                            content: explicit.map(|d| {
                                top.map_or(d, |top| usize::try_from(top).unwrap_or(0) + d)
                            }),
                        };
                        return Ok(()); // the rest of the header line is not content
                    }
                    '-' | '?' | ':' if next_blank => {
                        if block {
                            self.open_block(col)?;
                        }
                    }
                    '!' | '&' | '*' => {
                        // Tag, anchor or alias: a node's properties, or (alias) the node.
                        self.begin_node(col);
                        while let Some(&(_, n)) = chars.peek() {
                            if n == ' ' || n == '\t' || (!block && ",[]{}".contains(n)) {
                                break;
                            }
                            chars.next();
                        }
                        if c == '*' {
                            self.node_start = false;
                        }
                    }
                    _ => {
                        self.begin_node(col);
                        self.node_start = false;
                        if block {
                            self.in_plain = true;
                        }
                    }
                }
            } else {
                match c {
                    ':' if next_blank
                        || (!block && matches!(next, Some(',' | '[' | ']' | '{' | '}'))) =>
                    {
                        if block {
                            self.in_plain = false;
                            if let Some(key) = self.key_col.take() {
                                self.open_block(key)?;
                            }
                        }
                        self.node_start = true;
                    }
                    ',' if !block => self.node_start = true,
                    // In flow context no plain scalar can hold these: they are structure.
                    '[' | '{' if !block => {
                        self.open_flow()?;
                        self.node_start = true;
                    }
                    ']' | '}' if !block => self.close_flow(),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn begin_node(&mut self, col: usize) {
        if self.flow == 0 && self.key_col.is_none() {
            self.key_col = Some(col);
        }
    }

    fn open_flow(&mut self) -> Result<(), Deeper> {
        self.flow += 1;
        self.node_start = true;
        self.check()
    }

    fn close_flow(&mut self) {
        self.flow = self.flow.saturating_sub(1);
        self.node_start = false;
    }

    /// A block collection entry (`- `, `? `, `key:`) at `col`, with libyaml's roll/unroll rule.
    fn open_block(&mut self, col: usize) -> Result<(), Deeper> {
        while self.block.last().is_some_and(|&top| top > col) {
            self.block.pop();
        }
        if self.block.last().is_none_or(|&top| top < col) {
            self.block.push(col);
        }
        self.key_col = None;
        self.node_start = true;
        self.check()
    }

    fn check(&self) -> Result<(), Deeper> {
        if self.block.len() + self.flow > self.limit {
            Err(Deeper)
        } else {
            Ok(())
        }
    }
}

fn to_isize(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

fn is_document_marker(line: &str) -> bool {
    (line.starts_with("---") || line.starts_with("..."))
        && line[3..]
            .chars()
            .next()
            .is_none_or(|c| c == ' ' || c == '\t')
}

/// YAML's line breaks: LF, CR, CRLF, and (libyaml follows YAML 1.1) NEL, LS and PS. Splitting
/// on LF alone would let a CR-separated line hide inside what looks like one line.
fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.char_indices().find(|&(_, c)| is_break(c)) {
            Some((at, c)) => {
                let mut next = at + c.len_utf8();
                if c == '\r' && text[next..].starts_with('\n') {
                    next += 1;
                }
                rest = Some(&text[next..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str) -> bool {
        check_depth(text, MAX_DEPTH).is_ok()
    }

    #[test]
    fn deep_flow_nesting_is_rejected_and_the_limit_itself_is_fine() {
        let nested = |n: usize| format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        // The mapping is one level, so 63 brackets reach the limit exactly.
        assert!(depth_ok(&nested(MAX_DEPTH - 1)));
        assert_eq!(
            check_depth(&nested(MAX_DEPTH), MAX_DEPTH),
            Err(TooDeep { line: 1 })
        );
        assert!(!depth_ok(&format!("a: {}", "[".repeat(100_000))));
        assert!(!depth_ok(&format!("x: 1\ny: {}", "{a: ".repeat(100_000))));
    }

    #[test]
    fn deep_block_nesting_is_rejected() {
        assert!(!depth_ok(&"- ".repeat(100_000)));
        let indented: String = (0..100).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        assert_eq!(
            check_depth(&indented, MAX_DEPTH),
            Err(TooDeep {
                line: MAX_DEPTH + 1
            })
        );
    }

    #[test]
    fn brackets_in_scalars_comments_and_block_scalars_do_not_count() {
        let deep = "[".repeat(200);
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\ndata:\n\
             \x20 plain: echo a{deep}\n\
             \x20 single: '{deep} it''s'\n\
             \x20 double: \"{deep} \\\" {deep}\"\n\
             \x20 # {deep}\n\
             \x20 script: |\n    {deep}\n\n    {deep}\n\
             \x20 folded: >-\n      {deep}\n\
             \x20 after: [1, [2]]\n\
             list:\n- |\n  {deep}\n- - {{a: b}}\n---\n--- |\n{deep}\n"
        );
        assert!(depth_ok(&text), "{:?}", check_depth(&text, MAX_DEPTH));
    }

    #[test]
    fn a_quote_inside_a_multi_line_plain_scalar_hides_nothing() {
        // libyaml reads `'world` as more of the plain scalar, not as the start of a quote, so
        // the brackets after it are structure.
        let text = format!("msg: hello\n  'world\nk: {}\n", "[".repeat(1000));
        assert!(!depth_ok(&text));
        // Nor does a block scalar hide a less indented sibling.
        let text = format!("x:\n  [a]: |\n    t\n  k: {}\n", "[".repeat(1000));
        assert!(!depth_ok(&text));
        let text = format!("k: |\n  x\r k: {}\n", "[".repeat(1000));
        assert!(!depth_ok(&text), "a CR is a line break");
    }

    #[test]
    fn the_repositorys_manifests_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut seen = 0;
        for entry in walkdir::WalkDir::new(&root)
            .into_iter()
            // The fuzz corpus holds hostile YAML on purpose.
            .filter_entry(|e| !matches!(e.file_name().to_str(), Some("target" | ".git" | "fuzz")))
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                let text = std::fs::read_to_string(path).expect("readable test data");
                assert_eq!(check_depth(&text, MAX_DEPTH), Ok(()), "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen > 0, "no YAML found under {}", root.display());
    }
}
