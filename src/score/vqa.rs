//! Official VQA v2 accuracy, re-implemented from the reference evaluation script.
//!
//! Source of truth: `PythonEvaluationTools/vqaEvaluation/vqaEval.py` in the GitHub repository
//! `GT-Vision-Lab/VQA` (the current, Python 3 version: the one with the `print(...)` calls, the
//! `avgGTAcc` per-question mean and the punctuation list that contains `-` and `!`). The code
//! below is an independent Rust re-implementation of that script's behaviour for one question;
//! it reproduces the script's quirks on purpose so that scores agree with published numbers.
//!
//! # What the official script does for one question
//!
//! * **Prediction.** `\n` and `\t` are replaced by spaces, the result is stripped, then
//!   punctuation is processed and finally digits, articles and contractions (see [`normalize`]).
//! * **Human answers.** They are *not* stripped and never go through the digit / article /
//!   contraction step. Only when the answers are not all identical (`len(set(answers)) > 1`) is
//!   each of them put through the punctuation step; when all of them are the same string they are
//!   compared verbatim. (The official annotation files are already normalised, which is why this
//!   rarely matters there; with hand-written answers it does: with ten `"two"` answers even the
//!   prediction `"two"` scores 0, because it normalises to `"2"` while the answers stay `"two"`.)
//! * **Score.** For every answer, take the *other* answers (leave-one-out), count how many equal
//!   the normalised prediction, and score `min(1, matches / 3)`. The question's accuracy is the
//!   mean over all answers. With ten answers this gives 0.3, 0.6, 0.9 and 1.0 for 1, 2, 3 and 4+
//!   matching answers. The same formula is used for any number of answers (a single answer can
//!   therefore never score above 0, because its leave-one-out set is empty); an empty list,
//!   which would divide by zero in Python, scores 0.
//!
//! # Punctuation quirks reproduced
//!
//! * The characters ``; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !`` are punctuation (note that
//!   `'`, `:`, `.`, `$`, `%`, `&`, `*` and `#` are not). For each of them: if the *input* text
//!   contains that character directly followed or preceded by an ASCII space, or if the input
//!   contains a digit-comma-digit sequence anywhere (`(\d)(,)(\d)`), every occurrence is deleted;
//!   otherwise every occurrence is replaced by a space. So `"1,000-2"` becomes `"10002"` while
//!   `"ice-cream"` becomes `"ice cream"`.
//! * Periods are then removed by the regex `(?!<=\d)(\.)(?!\d)`. The leading group is a negative
//!   *lookahead* for the literal text `<=` followed by a digit, not a lookbehind; as the next
//!   character must be a `.`, it can never fail, so the rule is simply "delete a period that is
//!   not followed by a digit" (`"5.x"` becomes `"5x"`, `"3.5"` stays).
//! * The script passes `re.UNICODE` as the third positional argument of `Pattern.sub`, which is
//!   `count`, not `flags`: at most `re.UNICODE == 32` periods are deleted per answer.
//! * `\d` is Python's Unicode-aware `\d` (general category `Nd`), which the `regex` crate's
//!   Unicode `\d` matches as well (up to differences between Unicode versions).
//!
//! # Differences from Python that remain
//!
//! * Lowercasing uses [`str::to_lowercase`] where Python uses `str.lower()`; both apply the
//!   full Unicode mappings, including the final-sigma rule, and can only differ where the
//!   Unicode versions of Python and Rust differ.
//! * Whitespace (`str.strip()` / `str.split()`) follows Python's `str.isspace`, which is Unicode
//!   `White_Space` plus U+001C..U+001F; Rust's [`char::is_whitespace`] lacks the latter four, so
//!   they are added by hand.
//! * The per-question mean is a plain left-to-right sum, as in Python 3.11 and earlier
//!   (Python 3.12 sums floats with compensation; the difference is at most an ulp or so).

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// Punctuation characters of the official script, in its order.
const PUNCTUATION: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// The script deletes at most this many periods per answer (`re.UNICODE` passed as `count`).
const MAX_PERIODS_REMOVED: usize = 32;

/// `commaStrip`: a comma between two (Unicode) decimal digits, anywhere in the text.
static COMMA_BETWEEN_DIGITS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d,\d").expect("literal regex compiles"));

/// A single Unicode decimal digit (general category `Nd`), like Python's `\d` on `str`.
static DECIMAL_DIGIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A\d\z").expect("literal regex compiles"));

/// The answer normalisation the official evaluation applies (punctuation, then digits/articles/contractions).
///
/// This is the full pipeline the official script runs on a *prediction*: `\n` and `\t` become
/// spaces, surrounding whitespace is stripped, punctuation is processed (see the module
/// documentation), then the text is lowercased, split on whitespace, the number words
/// `none`/`zero`..`ten` become digits, the articles `a`, `an` and `the` are dropped, known
/// contractions without an apostrophe (`dont`) get one (`don't`), and the words are joined with
/// single spaces.
///
/// Note that [`accuracy`] does *not* apply this to the human answers; see the module docs.
pub fn normalize(answer: &str) -> String {
    let cleaned = answer.replace(['\n', '\t'], " ");
    let stripped = cleaned.trim_matches(is_python_space);
    process_digit_article(&process_punctuation(stripped))
}

/// VQA accuracy of `prediction` against the human `answers`, in [0, 1].
///
/// Exactly the official per-question score: the prediction is [`normalize`]d; the answers are
/// compared verbatim when they are all identical and after the punctuation step only otherwise;
/// the result is the mean, over each answer left out in turn, of `min(1, matches / 3)` where
/// `matches` counts the remaining answers equal to the prediction. Returns 0 for no answers.
pub fn accuracy(answers: &[String], prediction: &str) -> f64 {
    let Some(first) = answers.first() else {
        return 0.0;
    };
    let prediction = normalize(prediction);
    let disagree = answers.iter().any(|a| a != first);
    let matched: Vec<bool> = answers
        .iter()
        .map(|a| {
            let a: Cow<'_, str> = if disagree {
                Cow::Owned(process_punctuation(a))
            } else {
                Cow::Borrowed(a)
            };
            a == prediction.as_str()
        })
        .collect();
    let total = matched.iter().filter(|&&m| m).count();
    let sum = matched
        .iter()
        .map(|&m| {
            // Matching answers among the other ones: the left-out answer no longer counts.
            let others = total - usize::from(m);
            (others as f64 / 3.0).min(1.0)
        })
        .fold(0.0, |acc, x| acc + x);
    sum / answers.len() as f64
}

/// The human answers no prediction can ever equal, each with the form that would match.
///
/// Predictions are always normalised (lowercase, number words as digits, no articles, contractions
/// with their apostrophe) while the official scorer compares them with the answers as written
/// (after the punctuation step when the answers disagree). An answer such as `"Two"`, `"four"` or
/// `"a dog"` therefore never matches; the VQA v2 annotation files are stored normalised, and
/// hand-written suites must be too.
pub fn unmatchable(answers: &[String]) -> Vec<(String, String)> {
    let disagree = answers
        .first()
        .is_some_and(|f| answers.iter().any(|a| a != f));
    let mut out: Vec<(String, String)> = Vec::new();
    for a in answers {
        let compared = if disagree {
            process_punctuation(a)
        } else {
            a.clone()
        };
        if process_digit_article(&compared) != compared && !out.iter().any(|(x, _)| x == a) {
            out.push((a.clone(), normalize(a)));
        }
    }
    out
}

/// Python's `str.isspace`: Unicode `White_Space` plus the separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\d` on `str`: a Unicode decimal digit (general category `Nd`).
fn is_decimal_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    let mut buf = [0u8; 4];
    DECIMAL_DIGIT.is_match(c.encode_utf8(&mut buf))
}

/// The official `processPunctuation` step: punctuation is deleted or replaced by a space, then
/// periods not followed by a digit are deleted (at most [`MAX_PERIODS_REMOVED`] of them).
fn process_punctuation(text: &str) -> String {
    let delete_all = COMMA_BETWEEN_DIGITS.is_match(text);

    // Bit i is set when PUNCTUATION[i] occurs next to an ASCII space somewhere in `text`.
    let mut next_to_space: u32 = 0;
    let mut previous: Option<char> = None;
    for c in text.chars() {
        if let Some(p) = previous {
            if c == ' ' {
                next_to_space |= punctuation_bit(p);
            }
            if p == ' ' {
                next_to_space |= punctuation_bit(c);
            }
        }
        previous = Some(c);
    }

    let mut spaced = String::with_capacity(text.len());
    for c in text.chars() {
        let bit = punctuation_bit(c);
        if bit == 0 {
            spaced.push(c);
        } else if !delete_all && next_to_space & bit == 0 {
            spaced.push(' ');
        }
    }

    // `(?!<=\d)(\.)(?!\d)`: the first lookahead is vacuous (see the module docs); the period is
    // removed unless the character after it (in `spaced`) is a decimal digit.
    let mut out = String::with_capacity(spaced.len());
    let mut removed = 0;
    let mut chars = spaced.chars().peekable();
    while let Some(c) = chars.next() {
        let followed_by_digit = chars.peek().is_some_and(|&n| is_decimal_digit(n));
        if c == '.' && !followed_by_digit && removed < MAX_PERIODS_REMOVED {
            removed += 1;
        } else {
            out.push(c);
        }
    }
    out
}

/// The bit of `c` in the punctuation bit set, or 0 when `c` is not punctuation.
fn punctuation_bit(c: char) -> u32 {
    PUNCTUATION
        .iter()
        .position(|&p| p == c)
        .map_or(0, |i| 1 << i)
}

/// The official `processDigitArticle` step: lowercase, split on whitespace, map number words to
/// digits, drop articles, restore contractions, join with single spaces.
fn process_digit_article(text: &str) -> String {
    let lowered = text.to_lowercase();
    let words: Vec<&str> = lowered
        .split(is_python_space)
        .filter(|w| !w.is_empty())
        .map(|w| number_word(w).unwrap_or(w))
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| contraction(w).unwrap_or(w))
        .collect();
    words.join(" ")
}

/// The official `manualMap`: number words to digits.
fn number_word(word: &str) -> Option<&'static str> {
    Some(match word {
        "none" | "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "ten" => "10",
        _ => return None,
    })
}

/// The official contractions table, entry for entry (including its oddities: identity entries
/// such as `let's`, the reversed `somebody'd` -> `somebodyd`, and capitalised keys such as `Im`
/// that can never match because words are lowercased before the lookup).
fn contraction(word: &str) -> Option<&'static str> {
    Some(match word {
        "aint" => "ain't",
        "arent" => "aren't",
        "cant" => "can't",
        "couldve" => "could've",
        "couldnt" => "couldn't",
        "couldn'tve" => "couldn't've",
        "couldnt've" => "couldn't've",
        "didnt" => "didn't",
        "doesnt" => "doesn't",
        "dont" => "don't",
        "hadnt" => "hadn't",
        "hadnt've" => "hadn't've",
        "hadn'tve" => "hadn't've",
        "hasnt" => "hasn't",
        "havent" => "haven't",
        "hed" => "he'd",
        "hed've" => "he'd've",
        "he'dve" => "he'd've",
        "hes" => "he's",
        "howd" => "how'd",
        "howll" => "how'll",
        "hows" => "how's",
        "Id've" => "I'd've",
        "I'dve" => "I'd've",
        "Im" => "I'm",
        "Ive" => "I've",
        "isnt" => "isn't",
        "itd" => "it'd",
        "itd've" => "it'd've",
        "it'dve" => "it'd've",
        "itll" => "it'll",
        "let's" => "let's",
        "maam" => "ma'am",
        "mightnt" => "mightn't",
        "mightnt've" => "mightn't've",
        "mightn'tve" => "mightn't've",
        "mightve" => "might've",
        "mustnt" => "mustn't",
        "mustve" => "must've",
        "neednt" => "needn't",
        "notve" => "not've",
        "oclock" => "o'clock",
        "oughtnt" => "oughtn't",
        "ow's'at" => "'ow's'at",
        "'ows'at" => "'ow's'at",
        "'ow'sat" => "'ow's'at",
        "shant" => "shan't",
        "shed've" => "she'd've",
        "she'dve" => "she'd've",
        "she's" => "she's",
        "shouldve" => "should've",
        "shouldnt" => "shouldn't",
        "shouldnt've" => "shouldn't've",
        "shouldn'tve" => "shouldn't've",
        "somebody'd" => "somebodyd",
        "somebodyd've" => "somebody'd've",
        "somebody'dve" => "somebody'd've",
        "somebodyll" => "somebody'll",
        "somebodys" => "somebody's",
        "someoned" => "someone'd",
        "someoned've" => "someone'd've",
        "someone'dve" => "someone'd've",
        "someonell" => "someone'll",
        "someones" => "someone's",
        "somethingd" => "something'd",
        "somethingd've" => "something'd've",
        "something'dve" => "something'd've",
        "somethingll" => "something'll",
        "thats" => "that's",
        "thered" => "there'd",
        "thered've" => "there'd've",
        "there'dve" => "there'd've",
        "therere" => "there're",
        "theres" => "there's",
        "theyd" => "they'd",
        "theyd've" => "they'd've",
        "they'dve" => "they'd've",
        "theyll" => "they'll",
        "theyre" => "they're",
        "theyve" => "they've",
        "twas" => "'twas",
        "wasnt" => "wasn't",
        "wed've" => "we'd've",
        "we'dve" => "we'd've",
        "weve" => "we've",
        "werent" => "weren't",
        "whatll" => "what'll",
        "whatre" => "what're",
        "whats" => "what's",
        "whatve" => "what've",
        "whens" => "when's",
        "whered" => "where'd",
        "wheres" => "where's",
        "whereve" => "where've",
        "whod" => "who'd",
        "whod've" => "who'd've",
        "who'dve" => "who'd've",
        "wholl" => "who'll",
        "whos" => "who's",
        "whove" => "who've",
        "whyll" => "why'll",
        "whyre" => "why're",
        "whys" => "why's",
        "wont" => "won't",
        "wouldve" => "would've",
        "wouldnt" => "wouldn't",
        "wouldnt've" => "wouldn't've",
        "wouldn'tve" => "wouldn't've",
        "yall" => "y'all",
        "yall'll" => "y'all'll",
        "y'allll" => "y'all'll",
        "yall'd've" => "y'all'd've",
        "y'alld've" => "y'all'd've",
        "y'all'dve" => "y'all'd've",
        "youd" => "you'd",
        "youd've" => "you'd've",
        "you'dve" => "you'd've",
        "youll" => "you'll",
        "youre" => "you're",
        "youve" => "you've",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmatchable_answers_are_found() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            unmatchable(&v(&["4", "four", "4", "the coins", "Yes"])),
            vec![
                ("four".to_string(), "4".to_string()),
                ("the coins".to_string(), "coins".to_string()),
                ("Yes".to_string(), "yes".to_string())
            ]
        );
        assert!(unmatchable(&v(&["ice-cream", "ice cream", "t-shirt", "don't"])).is_empty());
        // identical answers are compared verbatim: "two" ×10 can never match
        assert_eq!(unmatchable(&v(&["two", "two"])).len(), 1);
    }

    /// `n` copies of `answer`.
    fn rep(answer: &str, n: usize) -> Vec<String> {
        vec![answer.to_string(); n]
    }

    /// `k` copies of `a` followed by `n - k` copies of `b`.
    fn mix(a: &str, k: usize, b: &str, n: usize) -> Vec<String> {
        let mut v = rep(a, k);
        v.extend(rep(b, n - k));
        v
    }

    fn strings(answers: &[&str]) -> Vec<String> {
        answers.iter().map(|s| s.to_string()).collect()
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    // ---- normalize: case, whitespace, numbers, articles, contractions ----

    #[test]
    fn lowercases() {
        assert_eq!(normalize("YES"), "yes");
        assert_eq!(normalize("Red Car"), "red car");
    }

    #[test]
    fn strips_and_collapses_whitespace() {
        assert_eq!(normalize("  Yes \n"), "yes");
        assert_eq!(normalize("\tred\n\nblue  car "), "red blue car");
    }

    #[test]
    fn splits_on_python_whitespace() {
        // U+3000 and U+001C are whitespace for Python's `str.split()`; U+001C is not for Rust's
        // `char::is_whitespace`, so this checks the hand-written Python whitespace test.
        assert_eq!(normalize("red\u{3000}blue"), "red blue");
        assert_eq!(normalize("red\u{1c}blue"), "red blue");
        assert_eq!(normalize("\u{1f}yes\u{a0}"), "yes");
    }

    #[test]
    fn number_words_become_digits() {
        assert_eq!(normalize("two"), "2");
        assert_eq!(normalize("Two"), "2");
        assert_eq!(normalize("none"), "0");
        assert_eq!(normalize("zero"), "0");
        assert_eq!(normalize("ten"), "10");
        assert_eq!(normalize("three dogs"), "3 dogs");
    }

    #[test]
    fn only_zero_to_ten_are_mapped() {
        assert_eq!(normalize("eleven"), "eleven");
        assert_eq!(normalize("twenty one"), "twenty 1");
    }

    #[test]
    fn articles_are_dropped() {
        assert_eq!(normalize("a dog"), "dog");
        assert_eq!(normalize("The Dog"), "dog");
        assert_eq!(normalize("an apple and a pear"), "apple and pear");
        assert_eq!(normalize("the"), "");
        assert_eq!(normalize("A Two"), "2");
    }

    #[test]
    fn contractions_get_an_apostrophe() {
        assert_eq!(normalize("dont"), "don't");
        assert_eq!(normalize("I dont know"), "i don't know");
        assert_eq!(normalize("Whats"), "what's");
        assert_eq!(normalize("twas"), "'twas");
    }

    #[test]
    fn apostrophes_are_kept() {
        // `'` is not in the punctuation list, and "don't" / "it's" are not table keys.
        assert_eq!(normalize("don't"), "don't");
        assert_eq!(normalize("it's"), "it's");
    }

    #[test]
    fn contraction_table_oddities() {
        // The reversed entry and the unreachable capitalised keys of the official table.
        assert_eq!(normalize("somebody'd"), "somebodyd");
        assert_eq!(normalize("Im"), "im");
        assert_eq!(normalize("ive"), "ive");
    }

    // ---- normalize: punctuation ----

    #[test]
    fn trailing_punctuation() {
        assert_eq!(normalize("yes."), "yes");
        assert_eq!(normalize("Yes!"), "yes");
        assert_eq!(normalize("yes?"), "yes");
        assert_eq!(normalize("yes;"), "yes");
    }

    #[test]
    fn characters_that_are_not_punctuation() {
        assert_eq!(normalize("3:00"), "3:00");
        assert_eq!(normalize("$5.00"), "$5.00");
        assert_eq!(normalize("50%"), "50%");
    }

    #[test]
    fn abbreviations_lose_their_periods() {
        assert_eq!(normalize("st. louis"), "st louis");
        assert_eq!(normalize("u.s."), "us");
        assert_eq!(normalize("The U.S.A."), "usa");
    }

    #[test]
    fn decimal_point_is_kept() {
        assert_eq!(normalize("3.5"), "3.5");
        assert_eq!(normalize(".5"), ".5");
        assert_eq!(normalize("3."), "3");
    }

    #[test]
    fn thousands_comma_is_removed() {
        assert_eq!(normalize("1,000"), "1000");
        assert_eq!(normalize("1,000,000"), "1000000");
    }

    #[test]
    fn digit_comma_digit_deletes_all_punctuation() {
        // Without it, `-` would become a space; with it anywhere, every punctuation char goes.
        assert_eq!(normalize("1,000-2"), "10002");
        assert_eq!(normalize("ice-cream 1,5"), "icecream 15");
    }

    #[test]
    fn comma_not_between_digits_becomes_space() {
        assert_eq!(normalize("x,y"), "x y");
        // The space split off the article "a", which is then dropped.
        assert_eq!(normalize("a,b"), "b");
        assert_eq!(normalize("1,a"), "1");
    }

    #[test]
    fn punctuation_next_to_space_is_deleted_everywhere() {
        assert_eq!(normalize("red-white-blue"), "red white blue");
        // " -" occurs, so every `-` is deleted, including the one inside "red-white".
        assert_eq!(normalize("red-white -blue"), "redwhite blue");
        assert_eq!(normalize("yes, no"), "yes no");
        assert_eq!(normalize("yes (maybe)"), "yes maybe");
        assert_eq!(normalize("(yes)"), "yes");
    }

    #[test]
    fn adjacency_is_checked_after_tab_replacement() {
        // The tab becomes a space first, so " -" occurs and every `-` is deleted ...
        assert_eq!(normalize("ice-cream\t-x"), "icecream x");
        // ... while U+3000 is not an ASCII space: each `-` becomes a space.
        assert_eq!(normalize("ice-cream\u{3000}-x"), "ice cream x");
    }

    #[test]
    fn period_strip_lookahead_is_not_a_lookbehind() {
        // `(?!<=\d)` is a lookahead for the text "<=" plus a digit, so a period after a digit is
        // still removed; a real `(?<!\d)` would have kept these.
        assert_eq!(normalize("5.x"), "5x");
        assert_eq!(normalize("v1."), "v1");
        assert_eq!(normalize("<=5.x"), "5x");
    }

    #[test]
    fn period_followed_by_period() {
        // Only the period directly before the digit survives.
        assert_eq!(normalize("..5"), ".5");
        assert_eq!(normalize("..."), "");
    }

    #[test]
    fn at_most_32_periods_are_removed() {
        // `re.UNICODE` (32) is passed as `count`: 40 periods leave 8.
        assert_eq!(normalize(&".".repeat(40)), "........");
        let input = "a.".repeat(33);
        assert_eq!(normalize(&input), format!("{}.", "a".repeat(33)));
    }

    #[test]
    fn unicode_digits_count_as_digits() {
        // Arabic-Indic digits are `\d` in Python: the period before one is kept, and the comma
        // between two of them triggers the comma rule.
        assert_eq!(normalize("٣.٥"), "٣.٥");
        assert_eq!(normalize("٣,٥"), "٣٥");
    }

    #[test]
    fn empty_and_blank_inputs() {
        assert_eq!(normalize(""), "");
        assert_eq!(normalize(" \n\t "), "");
        assert_eq!(normalize("  ...  "), "");
        assert_eq!(normalize("?!"), "");
    }

    // ---- accuracy: the leave-one-out formula ----

    #[test]
    fn ten_identical_matching_answers() {
        assert_close(accuracy(&rep("yes", 10), "yes"), 1.0);
    }

    #[test]
    fn no_matching_answer() {
        assert_close(accuracy(&rep("yes", 10), "no"), 0.0);
    }

    #[test]
    fn one_match_of_ten() {
        // Left-out match: 0/3; the other nine sets hold it once: 9 * (1/3) / 10.
        assert_close(accuracy(&mix("2", 1, "3", 10), "2"), 0.3);
    }

    #[test]
    fn two_matches_of_ten() {
        // (2 * 1/3 + 8 * 2/3) / 10.
        assert_close(accuracy(&mix("2", 2, "3", 10), "2"), 0.6);
    }

    #[test]
    fn three_matches_of_ten() {
        // (3 * 2/3 + 7 * 1) / 10.
        assert_close(accuracy(&mix("2", 3, "3", 10), "2"), 0.9);
    }

    #[test]
    fn four_or_more_matches_of_ten() {
        assert_close(accuracy(&mix("2", 4, "3", 10), "2"), 1.0);
        assert_close(accuracy(&mix("2", 9, "3", 10), "2"), 1.0);
    }

    #[test]
    fn position_of_matches_does_not_matter() {
        let answers = strings(&["no", "yes", "no", "no", "yes", "no", "no", "no", "no", "no"]);
        assert_close(accuracy(&answers, "yes"), 0.6);
    }

    #[test]
    fn single_answer_never_scores() {
        // Its leave-one-out set is empty, so it has zero matches.
        assert_close(accuracy(&rep("yes", 1), "yes"), 0.0);
    }

    #[test]
    fn three_identical_answers() {
        // Each leave-one-out set has two matches: 2/3.
        assert_close(accuracy(&rep("yes", 3), "yes"), 2.0 / 3.0);
    }

    #[test]
    fn two_of_three_answers() {
        // (1/3 + 1/3 + 2/3) / 3.
        assert_close(accuracy(&strings(&["yes", "yes", "no"]), "yes"), 4.0 / 9.0);
    }

    #[test]
    fn four_identical_answers() {
        assert_close(accuracy(&rep("yes", 4), "yes"), 1.0);
    }

    #[test]
    fn three_matches_of_twelve() {
        // (3 * 2/3 + 9 * 1) / 12.
        assert_close(accuracy(&mix("yes", 3, "no", 12), "yes"), 11.0 / 12.0);
    }

    #[test]
    fn empty_answers_score_zero() {
        assert_close(accuracy(&[], "yes"), 0.0);
        assert_close(accuracy(&[], ""), 0.0);
    }

    // ---- accuracy: normalisation of the prediction ----

    #[test]
    fn prediction_is_normalised() {
        let answers = rep("yes", 10);
        assert_close(accuracy(&answers, "Yes."), 1.0);
        assert_close(accuracy(&answers, "YES!"), 1.0);
        assert_close(accuracy(&answers, "  yes\n"), 1.0);
        assert_close(accuracy(&answers, "\tyes\t"), 1.0);
    }

    #[test]
    fn prediction_number_word_article_contraction() {
        assert_close(accuracy(&rep("2", 10), "two"), 1.0);
        assert_close(accuracy(&rep("10", 10), "Ten"), 1.0);
        assert_close(accuracy(&rep("dog", 10), "the dog"), 1.0);
        assert_close(accuracy(&rep("don't", 10), "dont"), 1.0);
        assert_close(accuracy(&rep("don't", 10), "don't"), 1.0);
    }

    #[test]
    fn prediction_punctuation() {
        assert_close(accuracy(&rep("st louis", 10), "St. Louis"), 1.0);
        assert_close(accuracy(&rep("1000", 10), "1,000"), 1.0);
        assert_close(accuracy(&mix("3.5", 6, "3", 10), "3.5"), 1.0);
        assert_close(accuracy(&mix("3.5", 6, "3", 10), "3.50"), 0.0);
        assert_close(accuracy(&rep("us", 10), "U.S."), 1.0);
    }

    #[test]
    fn empty_prediction() {
        assert_close(accuracy(&rep("yes", 10), ""), 0.0);
        // Blank human answers survive the punctuation step unchanged and match "".
        assert_close(accuracy(&mix("", 3, "no", 10), "   "), 0.9);
    }

    // ---- accuracy: the `len(set(answers)) > 1` quirk ----

    #[test]
    fn identical_answers_are_compared_verbatim() {
        // All ten are the same string, so they are not normalised; the prediction is ("2").
        assert_close(accuracy(&rep("Two", 10), "two"), 0.0);
        assert_close(accuracy(&rep("Two", 10), "Two"), 0.0);
        assert_close(accuracy(&rep("two", 10), "two"), 0.0);
        assert_close(accuracy(&rep("Yes.", 10), "Yes."), 0.0);
        assert_close(accuracy(&rep("yes", 10), "yes"), 1.0);
    }

    #[test]
    fn disagreeing_answers_get_punctuation_processing() {
        // "yes." -> "yes" once the answers disagree.
        assert_close(accuracy(&mix("yes.", 3, "no", 10), "yes"), 0.9);
        // "1,000" -> "1000" and "ice-cream" -> "ice cream".
        assert_close(accuracy(&mix("1,000", 3, "1000", 10), "1,000"), 1.0);
        assert_close(
            accuracy(&mix("ice-cream", 3, "ice cream", 10), "ice cream"),
            1.0,
        );
    }

    #[test]
    fn disagreeing_answers_keep_case_numbers_and_articles() {
        // Punctuation only: no lowercasing, number mapping or article removal.
        assert_close(accuracy(&mix("Yes", 3, "no", 10), "yes"), 0.0);
        assert_close(accuracy(&mix("two", 8, "2", 10), "two"), 0.6);
        assert_close(accuracy(&mix("a dog", 4, "cat", 10), "a dog"), 0.0);
        assert_close(accuracy(&mix("dont", 4, "no", 10), "dont"), 0.0);
    }

    #[test]
    fn disagreeing_answers_are_not_stripped() {
        // A leading space survives, and "yes!" becomes "yes " with a trailing space.
        assert_close(accuracy(&mix(" yes", 3, "no", 10), "yes"), 0.0);
        assert_close(accuracy(&mix("yes!", 3, "no", 10), "yes"), 0.0);
    }

    #[test]
    fn one_differing_answer_switches_processing_on() {
        // Nine "Yes" and one "yes": they disagree, "Yes" stays capitalised, one match.
        let mut answers = rep("Yes", 9);
        answers.push("yes".to_string());
        assert_close(accuracy(&answers, "yes"), 0.3);
        // Nine "yes." and one "yes": after punctuation all ten are "yes".
        let mut answers = rep("yes.", 9);
        answers.push("yes".to_string());
        assert_close(accuracy(&answers, "yes"), 1.0);
        // Ten "yes." alone would be compared verbatim and never match.
        assert_close(accuracy(&rep("yes.", 10), "yes"), 0.0);
    }

    #[test]
    fn accuracy_stays_in_unit_interval() {
        for k in 0..=12 {
            let a = accuracy(&mix("yes", k, "no", 12), "yes");
            assert!((0.0..=1.0).contains(&a), "{k}: {a}");
        }
    }
}
