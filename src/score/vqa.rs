//! Official VQA v2 accuracy, re-implemented from the reference evaluation script.
//!
//! Source of truth: `PythonEvaluationTools/vqaEvaluation/vqaEval.py` in the GitHub repository
//! `GT-Vision-Lab/VQA` at commit `a013f00` (2021-03-11, "Fixed processing answers bug", the
//! current master). [`accuracy`] reproduces that version for one question, quirks included, so
//! that scores agree with what the official script prints. The version before that commit, which
//! results published before 2021 may use, is kept as its own rule, [`accuracy_pre2021`]
//! (`vqa_pre2021` in suites and in `vlmtest score`). Each rule below is pinned by a test named
//! after it; `../shared/VQA.md` of the project describes the same behaviour quirk by quirk.
//!
//! # What the official script (a013f00) does for one question
//!
//! 1. **Whitespace clean-up**, always, on every human answer and on the prediction: each `\n`
//!    and `\t` becomes a space, then leading and trailing whitespace is stripped (Python's
//!    `str.isspace` set, which unlike [`char::is_whitespace`] includes U+001C..U+001F). An inner
//!    `\r` and inner runs of spaces stay.
//! 2. **The unanimity gate.** When all cleaned answers are the same string (`len(set(answers))
//!    == 1`), nothing else happens to the answers *or to the prediction*: the cleaned strings are
//!    compared exactly, case-sensitively. Ten `"yes"` answers give `"Yes"`, `"yes."` and
//!    `"a yes"` a score of 0 (the authors leave unanimous answers alone because they are often
//!    OCR text). Otherwise every answer and the prediction go through steps 3 and 4.
//! 3. **Punctuation pass** ([`process_punctuation`]): the 21 ASCII characters
//!    ``; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !`` are punctuation (`.`, `'`, `:`, `*`, `#`,
//!    `$`, `%`, `&`, `^`, `~`, `|` and every non-ASCII mark are not). For each of them, decided on
//!    the *original* text: if it holds an ASCII digit, a comma and an ASCII digit in a row
//!    anywhere, or the character next to an ASCII space, every occurrence is deleted; otherwise
//!    every occurrence becomes a space. Then, left to right, each `.` not directly followed by an
//!    ASCII digit is deleted — at most 32 of them: the script passes `re.UNICODE` (32) as
//!    `sub`'s `count` argument. The regex's `(?!<=\d)` is a look-*ahead* for the text `<=` (a
//!    typo for a look-behind) and has no effect, so `"3."` loses its period.
//! 4. **Word pass** ([`process_digit_article`]): lowercase (full Unicode mapping), split on runs
//!    of whitespace, map the whole tokens `none`/`zero`..`ten` to `0`..`10`, drop `a`, `an` and
//!    `the` wherever they are, map each token once through the official contraction table
//!    (120 keys, oddities included), join with single spaces.
//! 5. **Score**: for each answer *i* (by position — exactly one answer is left out even when
//!    others are the same string), `m_i` = how many of the *other* answers equal the prediction,
//!    `a_i = min(1, m_i / 3)`; the accuracy is `(a_1 + … + a_n) / n`, summed left to right in
//!    f64 as Python does. With ten answers, k matches give 0, 0.3, 0.6, 0.9 and 1.0 for
//!    k = 0, 1, 2, 3 and 4 or more (not `min(1, k/3)`).
//!
//! `\d` is ASCII-only here: the official file targets Python 2, whose `re` matches only ASCII
//! digits for patterns compiled without `re.UNICODE`. The number of answers is taken as given;
//! an empty list (a division by zero in Python) scores 0.
//!
//! # The pre-2021 version ([`accuracy_pre2021`])
//!
//! Before a013f00 the script always put the prediction through steps 1, 3 and 4, while the human
//! answers got no whitespace clean-up and only step 3, and only when they were not unanimous. So
//! ten `"two"` answers never matched (the prediction `"two"` became `"2"`), and `"Yes"` matched ten
//! `"yes"`. lmms-eval's current scorer is a third variant (both sides always fully normalised);
//! vlmtest does not offer it.

/// Punctuation characters of the official script, in its order.
const PUNCTUATION: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// The script deletes at most this many periods per string (`re.UNICODE` passed as `count`).
const MAX_PERIODS_REMOVED: usize = 32;

/// VQA accuracy of `prediction` against the human `answers`, in [0, 1]: the official per-question
/// score of vqaEval.py at a013f00 (see the module documentation). Returns 0 for no answers.
pub(crate) fn accuracy(answers: &[String], prediction: &str) -> f64 {
    let cleaned: Vec<String> = answers.iter().map(|a| clean_whitespace(a)).collect();
    let prediction = clean_whitespace(prediction);
    if unanimous(&cleaned) {
        return leave_one_out(&cleaned, &prediction);
    }
    let processed: Vec<String> = cleaned.iter().map(|a| process(a)).collect();
    leave_one_out(&processed, &process(&prediction))
}

/// VQA accuracy as the official script computed it before a013f00 (2021-03-11): the prediction
/// is always cleaned and fully processed; the answers are neither cleaned nor word-processed,
/// and get the punctuation pass only when they are not unanimous.
pub(crate) fn accuracy_pre2021(answers: &[String], prediction: &str) -> f64 {
    let prediction = normalize(prediction);
    if unanimous(answers) {
        return leave_one_out(answers, &prediction);
    }
    let processed: Vec<String> = answers.iter().map(|a| process_punctuation(a)).collect();
    leave_one_out(&processed, &prediction)
}

/// The highest VQA accuracy any prediction can reach against `n` human answers: every answer
/// matching leaves `n - 1` matches per leave-one-out set, so `min(1, (n - 1) / 3)`; below 4
/// answers no prediction scores 1, and a single answer always scores 0.
pub(crate) fn best_possible(n: usize) -> f64 {
    (n.saturating_sub(1) as f64 / 3.0).min(1.0)
}

/// The full processing the official script applies to non-unanimous answers and to the
/// prediction: whitespace clean-up, the punctuation pass, then the word pass
/// (`"  The U.S.A.!\n"` → `"usa"`, `"Two dogs"` → `"2 dogs"`, `"dont"` → `"don't"`).
pub(crate) fn normalize(text: &str) -> String {
    process(&clean_whitespace(text))
}

/// Steps 3 and 4 on an already cleaned string.
fn process(cleaned: &str) -> String {
    process_digit_article(&process_punctuation(cleaned))
}

/// Step 1: `\n` and `\t` become spaces, then surrounding (Python) whitespace is stripped.
fn clean_whitespace(text: &str) -> String {
    text.replace(['\n', '\t'], " ")
        .trim_matches(is_python_space)
        .to_string()
}

/// Whether all strings are the same (`len(set(answers)) == 1`; vacuously true for none).
fn unanimous<S: AsRef<str>>(answers: &[S]) -> bool {
    answers
        .first()
        .is_none_or(|first| answers.iter().all(|a| a.as_ref() == first.as_ref()))
}

/// Step 5: the mean over answers, each left out once by position, of `min(1, matches / 3)`,
/// summed left to right as Python's `sum` does.
fn leave_one_out<S: AsRef<str>>(answers: &[S], prediction: &str) -> f64 {
    if answers.is_empty() {
        return 0.0;
    }
    let matched: Vec<bool> = answers.iter().map(|a| a.as_ref() == prediction).collect();
    let total = matched.iter().filter(|&&m| m).count();
    let sum = matched
        .iter()
        .map(|&m| ((total - usize::from(m)) as f64 / 3.0).min(1.0))
        .fold(0.0, |acc, a| acc + a);
    sum / answers.len() as f64
}

/// Python's `str.isspace`: Unicode `White_Space` plus the separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Step 3, the official `processPunctuation` (see the module documentation).
fn process_punctuation(text: &str) -> String {
    // `commaStrip` = `(\d)(,)(\d)`, ASCII digits (Python 2 `re` without re.UNICODE).
    let delete_all = text
        .as_bytes()
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == b',' && w[2].is_ascii_digit());

    // Bit i is set when PUNCTUATION[i] occurs next to an ASCII space in the original text.
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

    // `periodStrip` = `(?!<=\d)(\.)(?!\d)` applied with count 32: delete a period unless the next
    // character is an ASCII digit, at most 32 times, on the text the step above produced.
    let mut out = String::with_capacity(spaced.len());
    let mut removed = 0;
    let mut chars = spaced.chars().peekable();
    while let Some(c) = chars.next() {
        let followed_by_digit = chars.peek().is_some_and(char::is_ascii_digit);
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

/// Step 4, the official `processDigitArticle`: lowercase, split on whitespace, map number words
/// to digits, drop articles, map contractions once, join with single spaces.
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
            (actual - expected).abs() <= 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    /// Two distinct answers, so that the unanimity gate is open and both sides are processed.
    fn processed(prediction: &str, answer: &str) -> f64 {
        accuracy(&mix(answer, 4, "zzz", 10), prediction)
    }

    // ---- VQA.md §1: whitespace clean-up ----

    #[test]
    fn s1_newline_and_tab_become_spaces_then_strip() {
        assert_eq!(clean_whitespace(" yes\n"), "yes");
        assert_eq!(clean_whitespace("\tyes\t"), "yes");
        assert_eq!(clean_whitespace("red\nblue"), "red blue");
        assert_eq!(clean_whitespace("red\tblue"), "red blue");
    }

    #[test]
    fn s1_inner_cr_and_space_runs_stay() {
        assert_eq!(clean_whitespace("red\rblue"), "red\rblue");
        assert_eq!(clean_whitespace("red   blue"), "red   blue");
        // Unanimous answers are compared after clean-up only: the inner run must match exactly.
        assert_close(accuracy(&rep("red  blue", 10), "red  blue"), 1.0);
        assert_close(accuracy(&rep("red  blue", 10), "red blue"), 0.0);
    }

    #[test]
    fn s1_python_whitespace_set_is_stripped() {
        // U+001C..U+001F are whitespace for Python but not for Rust's char::is_whitespace.
        for ws in [
            '\u{1c}', '\u{1f}', '\u{a0}', '\u{3000}', '\u{2028}', '\u{85}', '\u{b}',
        ] {
            assert_eq!(clean_whitespace(&format!("{ws}yes{ws}")), "yes", "{ws:?}");
        }
        // U+200B (zero width space) is not whitespace.
        assert_eq!(clean_whitespace("\u{200b}yes"), "\u{200b}yes");
    }

    #[test]
    fn s1_applies_to_answers_and_prediction() {
        // Unanimous answers with surrounding whitespace match the bare prediction, and back.
        assert_close(accuracy(&rep(" yes\n", 10), "yes"), 1.0);
        assert_close(accuracy(&rep("yes", 10), " yes\n"), 1.0);
        assert_close(accuracy(&rep("yes", 10), "\u{1f}yes\u{3000}"), 1.0);
    }

    // ---- VQA.md §2: the unanimity gate ----

    #[test]
    fn s2_unanimous_answers_leave_both_sides_alone() {
        assert_close(accuracy(&rep("no", 10), "No"), 0.0);
        assert_close(accuracy(&rep("two", 10), "two"), 1.0);
        assert_close(accuracy(&rep("two", 10), "2"), 0.0);
        assert_close(accuracy(&rep("yes", 10), "yes."), 0.0);
        assert_close(accuracy(&rep("yes", 10), "Yes"), 0.0);
        assert_close(accuracy(&rep("yes", 10), "a yes"), 0.0);
        assert_close(accuracy(&rep("yes", 10), " yes\n"), 1.0);
        assert_close(accuracy(&rep("Yes.", 10), "Yes."), 1.0);
        assert_close(accuracy(&rep("STOP", 10), "STOP"), 1.0);
    }

    #[test]
    fn s2_unanimity_is_decided_after_clean_up() {
        // " yes" and "yes\n" clean to the same string: unanimous, so "Yes" does not match.
        let answers = strings(&[
            " yes", "yes\n", "yes", "yes", "yes", "yes", "yes", "yes", "yes", "yes",
        ]);
        assert_close(accuracy(&answers, "Yes"), 0.0);
        assert_close(accuracy(&answers, "yes"), 1.0);
    }

    #[test]
    fn s2_unanimity_is_case_sensitive() {
        // "Yes" and "yes" differ: the gate opens and both sides are processed.
        let mut answers = rep("Yes", 9);
        answers.push("yes".into());
        assert_close(accuracy(&answers, "YES"), 1.0);
        // Nine "yes." and one "yes": after processing all ten are "yes".
        let mut answers = rep("yes.", 9);
        answers.push("yes".into());
        assert_close(accuracy(&answers, "Yes!"), 1.0);
    }

    #[test]
    fn s2_two_distinct_answers_process_both_sides() {
        assert_close(accuracy(&mix("two", 8, "2", 10), "Two"), 1.0);
        assert_close(accuracy(&mix("a dog", 4, "cat", 10), "The Dog."), 1.0);
        assert_close(accuracy(&mix("dont", 4, "no", 10), "don't"), 1.0);
    }

    // ---- VQA.md §3: punctuation pass ----

    #[test]
    fn s3_the_21_punctuation_characters_become_spaces() {
        for c in PUNCTUATION {
            assert_eq!(process_punctuation(&format!("a{c}b")), "a b", "{c:?}");
        }
    }

    #[test]
    fn s3_other_marks_are_never_touched() {
        for c in [
            '\'', ':', '*', '#', '$', '%', '&', '^', '~', '|', '“', '”', '’', '。', '！', '…',
        ] {
            let s = format!("a{c}b");
            assert_eq!(process_punctuation(&s), s, "{c:?}");
        }
    }

    #[test]
    fn s3_examples() {
        assert_eq!(process_punctuation("1,000"), "1000");
        assert_eq!(process_punctuation("1, 000"), "1 000");
        assert_eq!(process_punctuation("red,white"), "red white");
        assert_eq!(process_punctuation("t-shirt"), "t shirt");
        assert_eq!(process_punctuation("red-blue - green"), "redblue  green");
        assert_eq!(process_punctuation("1,000 (approx)"), "1000 approx");
        assert_eq!(process_punctuation("t-shirt 1,2"), "tshirt 12");
        assert_eq!(process_punctuation("1,,000"), "1  000");
    }

    #[test]
    fn s3_space_adjacency_decides_per_character_from_the_original() {
        // " (" occurs, so "(" is deleted; ")" is next to no space, so it becomes one.
        assert_eq!(process_punctuation("yes (maybe)"), "yes maybe ");
        // "- " makes every "-" vanish, "," stays a space.
        assert_eq!(process_punctuation("a-b - c,d"), "ab  c d");
        // Only an ASCII space counts: a tab or U+3000 beside the mark does not.
        assert_eq!(process_punctuation("a-b\u{3000}-c"), "a b\u{3000} c");
    }

    #[test]
    fn s3_digit_comma_digit_is_ascii_only() {
        // Arabic-Indic digits are not `\d` in Python 2: the comma becomes a space.
        assert_eq!(process_punctuation("٣,٥"), "٣ ٥");
        assert_eq!(process_punctuation("3,5-x"), "35x");
    }

    #[test]
    fn s3_periods() {
        assert_eq!(process_punctuation("2.5"), "2.5");
        assert_eq!(process_punctuation("3..5"), "3.5");
        assert_eq!(process_punctuation("u.s.a."), "usa");
        assert_eq!(process_punctuation("no.1"), "no.1");
        assert_eq!(process_punctuation("3."), "3");
        // A period before a non-ASCII digit is deleted.
        assert_eq!(process_punctuation("3.٥"), "3٥");
    }

    #[test]
    fn s3_at_most_32_periods_are_deleted() {
        assert_eq!(
            process_punctuation(&format!("yes{}", ".".repeat(33))),
            "yes."
        );
        assert_eq!(process_punctuation(&".".repeat(40)), "........");
        // Kept periods (before a digit) do not count against the 32.
        let s = format!("{}{}", ".1".repeat(5), ".".repeat(33));
        assert_eq!(process_punctuation(&s), format!("{}.", ".1".repeat(5)));
    }

    #[test]
    fn s3_order_punctuation_then_periods() {
        assert_eq!(process_punctuation("1,2.,5"), "12.5");
        // "(" becomes a space, and the period, now before a space, is deleted.
        assert_eq!(process_punctuation("3.(5"), "3 5");
    }

    // ---- VQA.md §4: word pass ----

    #[test]
    fn s4_lowercase_full_unicode() {
        assert_eq!(process_digit_article("YES"), "yes");
        assert_eq!(process_digit_article("ÉTÉ"), "été");
        // Full mapping: U+0130 lowercases to "i" + combining dot.
        assert_eq!(process_digit_article("İ"), "i\u{307}");
    }

    #[test]
    fn s4_split_on_whitespace_runs() {
        assert_eq!(
            process_digit_article("  red \u{3000}\u{1c} blue  "),
            "red blue"
        );
        assert_eq!(process_digit_article("red\rblue"), "red blue");
    }

    #[test]
    fn s4_number_words() {
        let words = [
            "none", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            "ten",
        ];
        let digits = ["0", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
        for (w, d) in words.iter().zip(digits) {
            assert_eq!(process_digit_article(w), d);
        }
        assert_eq!(process_digit_article("eleven"), "eleven");
        assert_eq!(process_digit_article("twenty"), "twenty");
        assert_eq!(process_digit_article("one hundred"), "1 hundred");
        assert_eq!(process_digit_article("someone"), "someone");
    }

    #[test]
    fn s4_articles_anywhere() {
        assert_eq!(process_digit_article("letter a"), "letter");
        assert_eq!(normalize("a-frame"), "frame");
        assert_eq!(normalize("(a) red"), "red");
        assert_eq!(
            process_digit_article("An Apple and THE pear"),
            "apple and pear"
        );
        assert_eq!(process_digit_article("the"), "");
    }

    #[test]
    fn s4_contractions_whole_token_once() {
        assert_eq!(process_digit_article("dont"), "don't");
        assert_eq!(process_digit_article("twas"), "'twas");
        assert_eq!(process_digit_article("couldnt've"), "couldn't've");
        assert_eq!(process_digit_article("couldn'tve"), "couldn't've");
        // Values are not keys again: mapped once.
        assert_eq!(process_digit_article("don't"), "don't");
        assert_eq!(process_digit_article("dontx"), "dontx");
    }

    #[test]
    fn s4_contraction_oddities() {
        assert_eq!(process_digit_article("let's"), "let's");
        assert_eq!(process_digit_article("she's"), "she's");
        assert_eq!(process_digit_article("somebody'd"), "somebodyd");
        // Capitalised keys never match lowercased tokens.
        for w in ["im", "ive", "id've", "i'dve"] {
            assert_eq!(process_digit_article(w), w);
        }
        // Common words that are not keys.
        for w in ["its", "lets", "shes", "wed", "ill", "id"] {
            assert_eq!(process_digit_article(w), w);
        }
    }

    /// The contraction table as VQA.md describes it, built independently: list A (one key per
    /// value, all apostrophes removed), list B (one key per apostrophe, exactly one removed),
    /// and the odd entries.
    #[test]
    fn s4_contraction_table_matches_its_description() {
        let a = "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll how's I'm I've isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't should've shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll that's there'd there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll what're what's what've when's where'd where's where've who'd who'll who's who've why'll why're why's won't would've wouldn't y'all you'd you'll you're you've";
        let b = "couldn't've hadn't've he'd've I'd've it'd've mightn't've she'd've shouldn't've somebody'd've someone'd've something'd've there'd've they'd've we'd've who'd've wouldn't've y'all'll y'all'd've you'd've 'ow's'at";
        let mut table: Vec<(String, String)> = Vec::new();
        for v in a.split(' ') {
            table.push((v.replace('\'', ""), v.to_string()));
        }
        for v in b.split(' ') {
            for (i, _) in v.match_indices('\'') {
                table.push((format!("{}{}", &v[..i], &v[i + 1..]), v.to_string()));
            }
        }
        table.push(("let's".into(), "let's".into()));
        table.push(("she's".into(), "she's".into()));
        table.push(("somebody'd".into(), "somebodyd".into()));
        let keys: std::collections::BTreeSet<&str> =
            table.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys.len(), 120, "VQA.md: 120 keys");
        let values: std::collections::BTreeSet<&str> =
            table.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values.len(), 98, "VQA.md: 98 values");
        for (k, v) in &table {
            assert_eq!(contraction(k), Some(v.as_str()), "key {k:?}");
        }
        // And nothing else is a key: every key of ours is in the described table.
        let ours = include_str!("vqa.rs")
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"'))
            .filter_map(|l| l.split_once("\" => \""))
            .map(|(k, _)| k.to_string())
            .filter(|k| contraction(k).is_some())
            .count();
        assert_eq!(ours, 120);
    }

    // ---- VQA.md §5: score ----

    #[test]
    fn s5_k_matches_of_ten() {
        let expected = [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        for (k, e) in expected.iter().enumerate() {
            // k copies of "2" among "3"s (distinct answers, except k = 10, which is unanimous).
            assert_close(accuracy(&mix("2", k, "3", 10), "2"), *e);
        }
    }

    #[test]
    fn s5_exactly_one_answer_is_left_out_by_position() {
        // Ten "yes": each leave-one-out set still has nine matches.
        assert_close(accuracy(&rep("yes", 10), "yes"), 1.0);
        assert_close(accuracy(&rep("yes", 1), "yes"), 0.0);
        assert_close(accuracy(&rep("yes", 3), "yes"), 2.0 / 3.0);
        assert_close(accuracy(&strings(&["yes", "yes", "no"]), "yes"), 4.0 / 9.0);
    }

    #[test]
    fn s5_position_of_matches_does_not_change_the_value() {
        let answers = strings(&["no", "yes", "no", "no", "yes", "no", "no", "no", "no", "no"]);
        assert_close(accuracy(&answers, "yes"), 0.6);
    }

    #[test]
    fn s5_left_to_right_float_sum() {
        // k = 2 at the front: 2 * (1/3) + 8 * (2/3), summed left to right, is 0.6000000000000001
        // or 0.6 or 0.5999999999999999 depending on where the matches sit, as in Python.
        let front = accuracy(&mix("2", 2, "3", 10), "2");
        let mut back = rep("3", 8);
        back.extend(rep("2", 2));
        let back = accuracy(&back, "2");
        let python = |a: &[f64]| a.iter().fold(0.0, |s, x| s + x) / 10.0;
        let third = 1.0_f64 / 3.0;
        let two_thirds = 2.0_f64 / 3.0;
        let mut v = vec![third, third];
        v.extend([two_thirds; 8]);
        assert_eq!(front, python(&v));
        let mut v = vec![two_thirds; 8];
        v.extend([third, third]);
        assert_eq!(back, python(&v));
    }

    #[test]
    fn s5_n_is_taken_as_given() {
        assert_close(accuracy(&mix("yes", 3, "no", 12), "yes"), 11.0 / 12.0);
        assert_close(accuracy(&[], "yes"), 0.0);
        assert_close(best_possible(0), 0.0);
        assert_close(best_possible(1), 0.0);
        assert_close(best_possible(2), 1.0 / 3.0);
        assert_close(best_possible(4), 1.0);
        assert_close(best_possible(10), 1.0);
    }

    #[test]
    fn end_to_end_examples() {
        assert_close(processed("St. Louis", "st louis"), 1.0);
        assert_close(processed("1,000", "1000"), 1.0);
        assert_close(processed("3.50", "3.5"), 0.0);
        assert_close(processed("Two dogs!", "2 dogs"), 1.0);
        assert_close(processed("I dont know", "i don't know"), 1.0);
        assert_close(processed("", "yes"), 0.0);
        // Blank answers match a blank prediction.
        assert_close(accuracy(&mix("", 3, "no", 10), "   "), 0.9);
    }

    #[test]
    fn accuracy_stays_in_unit_interval() {
        for k in 0..=12 {
            let a = accuracy(&mix("yes", k, "no", 12), "yes");
            assert!((0.0..=1.0).contains(&a), "{k}: {a}");
        }
    }

    // ---- the pre-2021 version ----

    #[test]
    fn pre2021_always_normalises_the_prediction_only() {
        assert_close(accuracy_pre2021(&rep("yes", 10), "Yes."), 1.0);
        assert_close(accuracy_pre2021(&rep("two", 10), "two"), 0.0);
        assert_close(accuracy_pre2021(&rep("2", 10), "two"), 1.0);
        // Answers are not cleaned: a trailing newline never matches.
        assert_close(accuracy_pre2021(&rep("yes\n", 10), "yes"), 0.0);
        // Disagreeing answers get the punctuation pass but keep their case.
        assert_close(accuracy_pre2021(&mix("yes.", 3, "no", 10), "yes"), 0.9);
        assert_close(accuracy_pre2021(&mix("Yes", 3, "no", 10), "yes"), 0.0);
    }
}
