//! Scoring: pure functions from (rule, answer) to a score in [0, 1].
//!
//! `vqa` is the official VQA v2 accuracy (see [`vqa`]); every other rule uses the simple
//! normalisation of [`normalize`]: trimmed, lowercase, trailing punctuation removed.

pub(crate) mod numbers;
pub(crate) mod vqa;

use std::fmt;

use regex::Regex;

/// A checked scoring rule.
#[derive(Debug, Clone)]
pub enum Rule {
    /// Official VQA v2 accuracy against human answers (vqaEval.py as of a013f00, 2021).
    Vqa(Vec<String>),
    /// VQA v2 accuracy as the official script computed it before 2021 (see [`vqa`]).
    VqaPre2021(Vec<String>),
    /// Equality after trimming, case-sensitive.
    Exact(String),
    /// Normalised equality with any of the strings.
    AnyOf(Vec<String>),
    Contains(String),
    ContainsAll(Vec<String>),
    ContainsAny(Vec<String>),
    NotContains(Vec<String>),
    Regex(Regex),
    /// The first number in the answer (digits or number words) within `tolerance` of `value`.
    Numeric {
        value: f64,
        tolerance: f64,
    },
    /// `true` for yes.
    YesNo(bool),
    /// A multiple-choice letter (`A`..), answered by the letter or by the option's text.
    Choice {
        letter: char,
        options: Vec<String>,
    },
    /// Every rule: the lowest score.
    All(Vec<Rule>),
    /// Any rule: the highest score.
    Any(Vec<Rule>),
}

/// The simple normalisation: trimmed, lowercase, trailing punctuation removed.
pub(crate) fn normalize(s: &str) -> String {
    s.trim()
        .to_lowercase()
        .trim_end_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .trim()
        .to_string()
}

impl Rule {
    /// The rule's name as written in a suite.
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Vqa(_) => "vqa",
            Rule::VqaPre2021(_) => "vqa_pre2021",
            Rule::Exact(_) => "exact",
            Rule::AnyOf(_) => "any_of",
            Rule::Contains(_) => "contains",
            Rule::ContainsAll(_) => "contains_all",
            Rule::ContainsAny(_) => "contains_any",
            Rule::NotContains(_) => "not_contains",
            Rule::Regex(_) => "regex",
            Rule::Numeric { .. } => "numeric",
            Rule::YesNo(_) => "yes_no",
            Rule::Choice { .. } => "choice",
            Rule::All(_) => "all",
            Rule::Any(_) => "any",
        }
    }

    /// The score of `answer` under this rule, in [0, 1].
    pub fn score(&self, answer: &str) -> f64 {
        let lower = answer.to_lowercase();
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        match self {
            Rule::Vqa(answers) => vqa::accuracy(answers, answer),
            Rule::VqaPre2021(answers) => vqa::accuracy_pre2021(answers, answer),
            Rule::Exact(s) => b(answer.trim() == s.trim()),
            Rule::AnyOf(options) => {
                let n = normalize(answer);
                b(options.iter().any(|o| normalize(o) == n))
            }
            Rule::Contains(s) => b(lower.contains(&s.to_lowercase())),
            Rule::ContainsAll(v) => b(v.iter().all(|s| lower.contains(&s.to_lowercase()))),
            Rule::ContainsAny(v) => b(v.iter().any(|s| lower.contains(&s.to_lowercase()))),
            Rule::NotContains(v) => b(!v.iter().any(|s| lower.contains(&s.to_lowercase()))),
            Rule::Regex(re) => b(re.is_match(answer)),
            Rule::Numeric { value, tolerance } => b(numbers::first_number(answer)
                .is_some_and(|x| (x - value).abs() <= *tolerance + 1e-9)),
            Rule::YesNo(want) => b(yes_no(answer) == Some(*want)),
            Rule::Choice { letter, options } => b(choice(answer, options) == Some(*letter)),
            Rule::All(rules) => rules.iter().map(|r| r.score(answer)).fold(1.0, f64::min),
            Rule::Any(rules) => rules.iter().map(|r| r.score(answer)).fold(0.0, f64::max),
        }
    }
}

/// Reads a yes/no answer from its first word.
pub fn yes_no(answer: &str) -> Option<bool> {
    let n = normalize(answer);
    let first = n
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())?;
    match first {
        "yes" | "y" | "yeah" | "yep" | "true" | "correct" => Some(true),
        "no" | "n" | "nope" | "false" | "incorrect" => Some(false),
        _ => None,
    }
}

/// Reads a multiple-choice answer: a leading letter ("B", "(B)", "B.", "B) red"), a phrase such as
/// "the answer is B", or the text of exactly one option.
pub fn choice(answer: &str, options: &[String]) -> Option<char> {
    let max_letter = if options.is_empty() {
        'Z'
    } else {
        (b'A' + (options.len().min(26) as u8) - 1) as char
    };
    let valid = |c: char| c.is_ascii_uppercase() && c <= max_letter;
    let t = answer.trim();
    // "B", "(B)", "B.", "B)", "B: red" at the start; the letter must stand alone.
    let start = t.trim_start_matches(['(', '[', '*', ' ']);
    let mut chars = start.chars();
    if let Some(c) = chars.next() {
        let c_up = c.to_ascii_uppercase();
        let rest = chars.as_str();
        let alone = rest.is_empty() || rest.starts_with([')', ']', '.', ':', ',', ' ', '*', '\n']);
        // A lowercase "a" at the start is usually the article, not the option.
        if alone && valid(c_up) && (c.is_ascii_uppercase() || rest.is_empty()) {
            return Some(c_up);
        }
    }
    static ANSWER_IS: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"(?i)\b(?:answer|option|choice)\s*(?:is|:)?\s*:?\s*\(?([A-Z])\b")
            .expect("literal regex")
    });
    if let Some(c) = ANSWER_IS
        .captures(t)
        .and_then(|m| m[1].chars().next())
        .map(|c| c.to_ascii_uppercase())
        .filter(|c| valid(*c))
    {
        return Some(c);
    }
    let n = normalize(answer);
    if let Some(i) = options.iter().position(|o| normalize(o) == n) {
        return Some((b'A' + i as u8) as char);
    }
    let mentioned: Vec<usize> = options
        .iter()
        .enumerate()
        .filter(|(_, o)| !normalize(o).is_empty() && n.contains(&normalize(o)))
        .map(|(i, _)| i)
        .collect();
    match mentioned.as_slice() {
        [i] => Some((b'A' + *i as u8) as char),
        _ => None,
    }
}

impl fmt::Display for Rule {
    /// What the rule expects, for failure messages and reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Rule::Vqa(answers) | Rule::VqaPre2021(answers) => {
                // "orange ×7, ginger, tan": the human answers with their counts, most common first.
                let mut counts: Vec<(String, usize)> = Vec::new();
                for a in answers {
                    match counts.iter_mut().find(|(s, _)| s == a) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((a.clone(), 1)),
                    }
                }
                counts.sort_by_key(|c| std::cmp::Reverse(c.1));
                let parts: Vec<String> = counts
                    .iter()
                    .map(|(s, n)| {
                        if *n > 1 {
                            format!("{s:?} ×{n}")
                        } else {
                            format!("{s:?}")
                        }
                    })
                    .collect();
                write!(f, "{} over [{}]", self.name(), parts.join(", "))
            }
            Rule::Exact(s) => write!(f, "exactly {s:?}"),
            Rule::AnyOf(v) => write!(f, "any of [{}]", list(v)),
            Rule::Contains(s) => write!(f, "contains {s:?}"),
            Rule::ContainsAll(v) => write!(f, "contains all of [{}]", list(v)),
            Rule::ContainsAny(v) => write!(f, "contains any of [{}]", list(v)),
            Rule::NotContains(v) => write!(f, "contains none of [{}]", list(v)),
            Rule::Regex(re) => write!(f, "matches /{}/", re.as_str()),
            Rule::Numeric { value, tolerance } if *tolerance > 0.0 => {
                write!(f, "a number within {tolerance} of {value}")
            }
            Rule::Numeric { value, .. } => write!(f, "the number {value}"),
            Rule::YesNo(b) => write!(f, "{}", if *b { "yes" } else { "no" }),
            Rule::Choice { letter, options } => {
                let i = (*letter as u8 - b'A') as usize;
                match options.get(i) {
                    Some(text) => write!(f, "choice {letter} ({text:?})"),
                    None => write!(f, "choice {letter}"),
                }
            }
            Rule::All(rules) => {
                let parts: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
                write!(f, "all of ({})", parts.join("; "))
            }
            Rule::Any(rules) => {
                let parts: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
                write!(f, "any of ({})", parts.join("; "))
            }
        }
    }
}

/// "Simple accuracy", as the hand-written comparison scripts computed it: does the answer contain
/// one of the human answers (after the VQA normalisation, as a whole word or phrase)?
pub(crate) fn simple_match(answers: &[String], prediction: &str) -> bool {
    let pred = format!(" {} ", vqa::normalize(prediction));
    answers.iter().any(|a| {
        let a = vqa::normalize(a);
        !a.is_empty() && pred.contains(&format!(" {a} "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn simple_rules() {
        assert_eq!(Rule::Exact("Paris".into()).score(" Paris "), 1.0);
        assert_eq!(Rule::Exact("Paris".into()).score("paris"), 0.0);
        assert_eq!(Rule::AnyOf(s(&["cat", "kitten"])).score("Cat."), 1.0);
        assert_eq!(Rule::AnyOf(s(&["cat", "kitten"])).score("a cat"), 0.0);
        assert_eq!(Rule::Contains("paris".into()).score("It is PARIS."), 1.0);
        assert_eq!(
            Rule::ContainsAll(s(&["red", "blue"])).score("red and green"),
            0.0
        );
        assert_eq!(
            Rule::ContainsAny(s(&["red", "blue"])).score("red and green"),
            1.0
        );
        assert_eq!(
            Rule::NotContains(s(&["sorry", "cannot"])).score("I cannot see"),
            0.0
        );
        assert_eq!(
            Rule::NotContains(s(&["sorry", "cannot"])).score("A cat"),
            1.0
        );
        let re = Rule::Regex(Regex::new(r"^\w+$").unwrap());
        assert_eq!(re.score("one"), 1.0);
        assert_eq!(re.score("two words"), 0.0);
    }

    #[test]
    fn numeric_with_tolerance_and_words() {
        let r = Rule::Numeric {
            value: 24.0,
            tolerance: 2.0,
        };
        assert_eq!(r.score("There are 22 coins"), 1.0);
        assert_eq!(r.score("twenty-six"), 1.0);
        assert_eq!(r.score("27"), 0.0);
        assert_eq!(r.score("many"), 0.0);
        let exact = Rule::Numeric {
            value: 3.0,
            tolerance: 0.0,
        };
        assert_eq!(exact.score("Three."), 1.0);
        assert_eq!(exact.score("4"), 0.0);
    }

    #[test]
    fn yes_no_reads_the_first_word() {
        assert_eq!(yes_no("Yes, it is."), Some(true));
        assert_eq!(yes_no("no"), Some(false));
        assert_eq!(yes_no("  Nope!"), Some(false));
        assert_eq!(yes_no("Maybe yes"), None);
        assert_eq!(Rule::YesNo(true).score("Yes."), 1.0);
        assert_eq!(Rule::YesNo(true).score("No."), 0.0);
        assert_eq!(Rule::YesNo(false).score(""), 0.0);
    }

    #[test]
    fn choice_by_letter_or_text() {
        let opts = s(&["red", "green", "blue"]);
        let r = Rule::Choice {
            letter: 'B',
            options: opts.clone(),
        };
        for good in [
            "B",
            "(B)",
            "B.",
            "B) green",
            "b",
            "The answer is B",
            "green",
            "Green.",
        ] {
            assert_eq!(r.score(good), 1.0, "{good:?}");
        }
        for bad in [
            "A",
            "C) blue",
            "red",
            "a green apple and a blue one",
            "D",
            "",
        ] {
            assert_eq!(r.score(bad), 0.0, "{bad:?}");
        }
        // "a" as an article is not option A
        assert_eq!(choice("a red one", &opts), Some('A'));
        assert_eq!(choice("a banana", &opts), None);
    }

    #[test]
    fn combinators() {
        let all = Rule::All(vec![
            Rule::Contains("cat".into()),
            Rule::NotContains(s(&["dog"])),
        ]);
        assert_eq!(all.score("a cat"), 1.0);
        assert_eq!(all.score("a cat and a dog"), 0.0);
        let any = Rule::Any(vec![Rule::Exact("4".into()), Rule::AnyOf(s(&["four"]))]);
        assert_eq!(any.score("Four"), 1.0);
        assert_eq!(any.score("5"), 0.0);
    }

    #[test]
    fn describes_expectations() {
        let r = Rule::Vqa(s(&["orange", "orange", "tan"]));
        assert_eq!(r.to_string(), r#"vqa over ["orange" ×2, "tan"]"#);
        let c = Rule::Choice {
            letter: 'B',
            options: s(&["red", "green"]),
        };
        assert_eq!(c.to_string(), r#"choice B ("green")"#);
    }

    #[test]
    fn simple_match_is_whole_word() {
        assert!(simple_match(&s(&["cat"]), "It is a cat."));
        assert!(!simple_match(&s(&["cat"]), "It is a catalog."));
        assert!(simple_match(&s(&["2"]), "two"));
    }
}
