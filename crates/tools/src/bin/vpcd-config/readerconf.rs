//! reader.conf files read the way pcscd's lexer (`configfile.l`) reads them: entries,
//! the problems that make pcscd complain or refuse the file, and the values of a
//! LIBPATH and a CHANNELID as pcscd takes them.

use std::path::Path;

/// The file name of our driver in a LIBPATH.
pub(crate) const DRIVER_FILE: &str = "libifdvpcd.so";

/// One complete entry of a reader.conf file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfEntry {
    /// Line of the entry's first key.
    pub(crate) line: usize,
    /// The FRIENDLYNAME, double quotes removed as pcscd does.
    pub(crate) friendly_name: String,
    /// The DEVICENAME token as pcscd hands it to the driver (quotes kept).
    pub(crate) device_name: Option<String>,
    /// The LIBPATH token (pcscd strips no quotes from it).
    pub(crate) lib_path: String,
    /// The CHANNELID token.
    pub(crate) channel_id: Option<String>,
}

/// Something in a reader.conf file that pcscd complains about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfProblem {
    pub(crate) line: usize,
    pub(crate) message: String,
    /// pcscd logs a `tok_error` and refuses to start with this file.
    pub(crate) fatal: bool,
}

impl ConfProblem {
    pub(crate) fn text(&self) -> String {
        if self.fatal {
            format!(
                "line {}: {}: pcscd will not start with this file",
                self.line, self.message
            )
        } else {
            format!("line {}: {}", self.line, self.message)
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct ConfParse {
    pub(crate) entries: Vec<ConfEntry>,
    pub(crate) problems: Vec<ConfProblem>,
}

/// The characters pcscd accepts in an unquoted value.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "=\\/-._@:".contains(c)
}

/// The key/value state machine of pcscd's `evaluatetoken()`.
#[derive(Default)]
struct ConfState {
    /// The pending key: its text, its line as pcscd counts, its real line.
    key: Option<(String, usize, usize)>,
    first_line: Option<usize>,
    friendly_name: Option<String>,
    device_name: Option<String>,
    lib_path: Option<String>,
    channel_id: Option<String>,
    out: ConfParse,
}

impl ConfState {
    fn problem(&mut self, line: usize, message: String, fatal: bool) {
        self.out.problems.push(ConfProblem {
            line,
            message,
            fatal,
        });
    }

    fn token(&mut self, token: String, lex_line: usize, line: usize) {
        let Some((key, key_lex_line, key_line)) = self.key.take() else {
            self.key = Some((token, lex_line, line));
            return;
        };
        if key_lex_line != lex_line {
            self.problem(key_line, format!("{key} has no value on its line"), true);
            self.key = Some((token, lex_line, line));
            return;
        }
        let field = match key.as_str() {
            "FRIENDLYNAME" => &mut self.friendly_name,
            "DEVICENAME" => &mut self.device_name,
            "LIBPATH" => &mut self.lib_path,
            "CHANNELID" => &mut self.channel_id,
            _ => {
                self.problem(key_line, format!("unknown key \"{key}\""), true);
                return;
            }
        };
        if field.is_some() {
            // pcscd keeps the key pending: the next token on this line is its value again.
            self.problem(key_line, format!("{key} given twice in one entry"), true);
            self.key = Some((key, key_lex_line, key_line));
            return;
        }
        *field = Some(if key == "FRIENDLYNAME" {
            token.replace('"', "").trim_end_matches('\n').to_owned()
        } else {
            token
        });
        self.first_line.get_or_insert(key_line);

        if self.friendly_name.is_some()
            && self.lib_path.is_some()
            && (self.device_name.is_some() || self.channel_id.is_some())
        {
            let entry = ConfEntry {
                line: self.first_line.take().unwrap_or(key_line),
                friendly_name: self.friendly_name.take().unwrap_or_default(),
                device_name: self.device_name.take(),
                lib_path: self.lib_path.take().unwrap_or_default(),
                channel_id: self.channel_id.take(),
            };
            self.out.entries.push(entry);
        }
    }

    fn finish(mut self) -> ConfParse {
        if let Some((key, _, line)) = self.key.take() {
            self.problem(line, format!("{key} has no value"), false);
        }
        // A DEVICENAME or CHANNELID left after a complete entry is normal: the C
        // project's file has a CHANNELID after the LIBPATH that completes its entry.
        if let (Some(line), true) = (
            self.first_line,
            self.friendly_name.is_some() || self.lib_path.is_some(),
        ) {
            self.problem(
                line,
                "incomplete entry: it needs FRIENDLYNAME, LIBPATH and DEVICENAME or \
                 CHANNELID; pcscd ignores it"
                    .into(),
                false,
            );
        }
        self.out
    }
}

/// Reads one reader.conf file as pcscd does: tokens are words of letters, digits and
/// `= \ / - . _ @ :`, or quoted strings (`"..."` or `'...'`, ended by the quote or the
/// end of the line); `#` starts a comment; a key and its value share a line; any
/// other character is an error that makes pcscd refuse to start.
pub(crate) fn parse_reader_conf(text: &str) -> ConfParse {
    let chars: Vec<char> = text.chars().collect();
    let mut st = ConfState::default();
    let mut i = 0;
    // The line as pcscd counts it (a newline inside an unterminated quote is not
    // counted), and the real one, for messages.
    let mut lex_line = 1;
    let mut line = 1;
    while let Some(&c) = chars.get(i) {
        match c {
            '#' => {
                while chars.get(i).is_some_and(|&c| c != '\n') {
                    i += 1;
                }
            }
            '\n' => {
                lex_line += 1;
                line += 1;
                i += 1;
            }
            ' ' | '\t' => i += 1,
            '"' | '\'' => match chars[i + 1..].iter().position(|&d| d == c || d == '\n') {
                Some(offset) => {
                    let end = i + 1 + offset;
                    let token: String = chars[i..=end].iter().collect();
                    st.token(token, lex_line, line);
                    if chars[end] == '\n' {
                        st.problem(
                            line,
                            format!(
                                "unterminated {c}quote{c}: pcscd takes the rest of the line \
                                 and the next line as one"
                            ),
                            false,
                        );
                        line += 1;
                    }
                    i = end + 1;
                }
                None => {
                    st.problem(line, format!("unterminated {c}quote{c}"), true);
                    i += 1;
                }
            },
            c if is_word_char(c) => {
                let start = i;
                while chars.get(i).copied().is_some_and(is_word_char) {
                    i += 1;
                }
                st.token(chars[start..i].iter().collect(), lex_line, line);
            }
            '\r' => {
                st.problem(
                    line,
                    "carriage return (DOS line ends?) is not allowed".into(),
                    true,
                );
                i += 1;
            }
            c => {
                st.problem(
                    line,
                    format!("character {c:?} is not allowed outside quotes"),
                    true,
                );
                i += 1;
            }
        }
    }
    st.finish()
}

pub(crate) fn strip_quotes(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// True when a LIBPATH names our driver, in any directory.
pub(crate) fn is_vpcd_lib(lib_path: &str) -> bool {
    Path::new(strip_quotes(lib_path.trim_end_matches('\n')))
        .file_name()
        .is_some_and(|n| n == DRIVER_FILE)
}

/// `strtoul(s, NULL, 0)` stored in a C `int`, as pcscd reads a CHANNELID.
pub(crate) fn c_channel_id(s: &str) -> u32 {
    let s = s.trim_start();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .filter(|h| h.starts_with(|c: char| c.is_ascii_hexdigit()))
    {
        (16, hex)
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    let mut value: u64 = 0;
    for c in digits.chars() {
        let Some(d) = c.to_digit(radix) else { break };
        value = value
            .saturating_mul(u64::from(radix))
            .saturating_add(u64::from(d));
    }
    let value = if negative {
        value.wrapping_neg()
    } else {
        value
    };
    value as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const C_PROJECT_CONF: &str = r#"# vpcd entry as the C project installs it
FRIENDLYNAME "Virtual PCD"
DEVICENAME   /dev/null:0x8C7B
LIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so
CHANNELID    0x8C7B
"#;

    #[test]
    fn conf_c_project_entry() {
        let p = parse_reader_conf(C_PROJECT_CONF);
        assert_eq!(
            p.entries,
            vec![ConfEntry {
                line: 2,
                friendly_name: "Virtual PCD".into(),
                device_name: Some("/dev/null:0x8C7B".into()),
                lib_path: "/usr/lib/pcsc/drivers/serial/libifdvpcd.so".into(),
                channel_id: None,
            }]
        );
        // pcscd completes the entry at LIBPATH; the CHANNELID starts an entry that
        // never completes, which pcscd drops without a word, and so do we.
        assert_eq!(p.problems, vec![]);
    }

    #[test]
    fn conf_incomplete_entry() {
        let p = parse_reader_conf("FRIENDLYNAME x\nDEVICENAME /dev/null:1\n# no LIBPATH\n");
        assert!(p.entries.is_empty());
        assert_eq!(p.problems.len(), 1);
        assert!(!p.problems[0].fatal && p.problems[0].message.contains("incomplete"));
        assert_eq!(p.problems[0].line, 1);
    }

    #[test]
    fn conf_several_entries_quotes_and_comments() {
        let text = "\
FRIENDLYNAME \"Phone reader\"   # trailing comment
LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so
DEVICENAME \"/dev/null:35963/slots=4/listen=::\"

  # an indented comment, then a blank line

FRIENDLYNAME 'single'
DEVICENAME /dev/ttyS0
LIBPATH /usr/lib/pcsc/drivers/libother.so
FRIENDLYNAME Channel
CHANNELID 0x8C7B
LIBPATH /opt/vpcd/libifdvpcd.so
DEVICENAME localhost:35963#comment right after the value
";
        let p = parse_reader_conf(text);
        assert_eq!(p.entries.len(), 3, "{:?}", p.entries);
        assert_eq!(p.problems, vec![]);
        let e = &p.entries[0];
        assert_eq!(e.friendly_name, "Phone reader");
        assert_eq!(
            e.device_name.as_deref(),
            Some("\"/dev/null:35963/slots=4/listen=::\"")
        );
        assert_eq!(e.line, 1);
        // pcscd strips double quotes from a FRIENDLYNAME only.
        assert_eq!(p.entries[1].friendly_name, "'single'");
        assert!(!is_vpcd_lib(&p.entries[1].lib_path));
        // The entry completes at its LIBPATH with the CHANNELID; the DEVICENAME after
        // it is left dangling, as in pcscd.
        let r = &p.entries[2];
        assert_eq!(
            (
                r.friendly_name.as_str(),
                r.channel_id.as_deref(),
                r.device_name.as_deref()
            ),
            ("Channel", Some("0x8C7B"), None)
        );
        assert_eq!(r.line, 10);
        assert!(is_vpcd_lib(&r.lib_path));
    }

    #[test]
    fn conf_errors_pcscd_refuses() {
        let fatal = |text: &str, needle: &str| {
            let p = parse_reader_conf(text);
            assert!(
                p.problems
                    .iter()
                    .any(|e| e.fatal && e.message.contains(needle)),
                "{text:?}: {:?}",
                p.problems
            );
        };
        fatal("FRIENDLYNAME a,b\n", "','");
        fatal("FRIENDLYNAME x\r\nLIBPATH y\r\n", "carriage return");
        fatal("FRIENDLYNAME\n\"Virtual PCD\"\n", "no value on its line");
        fatal("COLOUR red\n", "unknown key");
        fatal("FRIENDLYNAME a\nFRIENDLYNAME b\n", "twice");
        fatal("DEVICENAME [::1]:35963\n", "'['");
        fatal("FRIENDLYNAME \"open", "unterminated");

        // Unquoted, the second word is a key of its own whose value must follow on the
        // same line.
        let p = parse_reader_conf("FRIENDLYNAME Virtual PCD\nLIBPATH x\n");
        assert!(p
            .problems
            .iter()
            .any(|e| e.fatal && e.message.contains("PCD")));
    }

    #[test]
    fn conf_unterminated_quote_runs_into_the_next_line_as_in_pcscd() {
        let p = parse_reader_conf(
            "FRIENDLYNAME \"Virtual PCD\nLIBPATH /x/libifdvpcd.so\nCHANNELID 1\n",
        );
        // The value ends at the newline, which pcscd does not count: LIBPATH is on
        // "the same line" and complete; the real line numbers still advance.
        assert_eq!(p.entries.len(), 1, "{:?}", p.problems);
        assert_eq!(p.entries[0].friendly_name, "Virtual PCD");
        assert!(p.problems.iter().all(|e| !e.fatal));
    }

    #[test]
    fn channel_ids_as_strtoul_reads_them() {
        assert_eq!(c_channel_id("0x8C7B"), 35963);
        assert_eq!(c_channel_id("35963"), 35963);
        assert_eq!(c_channel_id("0106173"), 35963);
        assert_eq!(c_channel_id("12abc"), 12);
        assert_eq!(c_channel_id("0x"), 0);
        assert_eq!(c_channel_id("junk"), 0);
        assert_eq!(c_channel_id("-1"), u32::MAX);
        assert_eq!(c_channel_id("99999999999999999999999"), u32::MAX);
    }

    #[test]
    fn lib_path_matching() {
        assert!(is_vpcd_lib("/usr/lib/pcsc/drivers/serial/libifdvpcd.so"));
        assert!(is_vpcd_lib("libifdvpcd.so"));
        assert!(is_vpcd_lib("\"/opt/x/libifdvpcd.so\""));
        assert!(!is_vpcd_lib("/usr/lib/libifdvpcd.so.0"));
        assert!(!is_vpcd_lib("/usr/lib/libifdvpcd.so/other.so"));
        assert!(!is_vpcd_lib("/usr/lib/pcsc/drivers/libccid.so"));
    }
}
