//! Finding the first number in an answer: digits ("24", "1,000", "-3.5") or English number words
//! ("twenty-four", "one hundred and five", "a dozen").

fn unit(word: &str) -> Option<f64> {
    const UNITS: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    if word == "none" {
        return Some(0.0);
    }
    if word == "dozen" {
        return Some(12.0);
    }
    UNITS.iter().position(|u| *u == word).map(|i| i as f64)
}

fn tens(word: &str) -> Option<f64> {
    const TENS: [&str; 8] = [
        "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    TENS.iter()
        .position(|t| *t == word)
        .map(|i| (i as f64 + 2.0) * 10.0)
}

fn scale(word: &str) -> Option<f64> {
    match word {
        "hundred" => Some(100.0),
        "thousand" => Some(1_000.0),
        "million" => Some(1_000_000.0),
        _ => None,
    }
}

fn is_number_word(w: &str) -> bool {
    unit(w).is_some() || tens(w).is_some() || scale(w).is_some()
}

/// Parses a token made of digits, with an optional sign, thousands separators and a decimal part.
fn parse_digits(token: &str) -> Option<f64> {
    let t = token.trim_end_matches(['.', ',']);
    let cleaned: String = if t.contains(',') {
        // "1,000" and "12,345,678" are thousands separators; "3,5" is not accepted.
        let (int, frac) = match t.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (t, None),
        };
        let groups: Vec<&str> = int.trim_start_matches(['-', '+']).split(',').collect();
        let ok = groups.len() > 1
            && !groups[0].is_empty()
            && groups[0].len() <= 3
            && groups[1..].iter().all(|g| g.len() == 3);
        if !ok {
            return None;
        }
        let mut s = int.replace(',', "");
        if let Some(f) = frac {
            s.push('.');
            s.push_str(f);
        }
        s
    } else {
        t.to_string()
    };
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The first number in `text`, or `None`.
pub(crate) fn first_number(text: &str) -> Option<f64> {
    let lower = text.to_lowercase();
    // Tokens: runs of letters, or runs of digits with their sign, separators and decimal point.
    let mut tokens: Vec<String> = Vec::new();
    let chars: Vec<char> = lower.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit()
            || ((c == '-' || c == '+')
                && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit())
                && (i == 0 || !chars[i - 1].is_alphanumeric()))
        {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || ((chars[i] == '.' || chars[i] == ',')
                        && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit())))
            {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else {
            if c == '-' {
                tokens.push("-".into());
            }
            i += 1;
        }
    }

    let mut k = 0;
    while k < tokens.len() {
        let tok = &tokens[k];
        if (tok.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') && tok.len() > 1
            || tok.chars().all(|c| c.is_ascii_digit()) && !tok.is_empty())
            && let Some(v) = parse_digits(tok)
        {
            return Some(v);
        }
        if is_number_word(tok) || (tok == "a" && tokens.get(k + 1).is_some_and(|n| n == "dozen")) {
            return Some(words_value(&tokens[k..]));
        }
        k += 1;
    }
    None
}

/// The value of the number-word phrase at the start of `tokens` ("twenty - four", "one hundred
/// and five", "a dozen").
fn words_value(tokens: &[String]) -> f64 {
    let mut total = 0.0;
    let mut current = 0.0;
    let mut seen = false;
    for (i, tok) in tokens.iter().enumerate() {
        let w = tok.as_str();
        if let Some(u) = unit(w) {
            if w == "dozen" {
                current = if current == 0.0 { 12.0 } else { current * 12.0 };
            } else {
                current += u;
            }
            seen = true;
        } else if let Some(t) = tens(w) {
            current += t;
            seen = true;
        } else if let Some(s) = scale(w) {
            current = if current == 0.0 { s } else { current * s };
            if s >= 1_000.0 {
                total += current;
                current = 0.0;
            }
            seen = true;
        } else if ((w == "-" || w == "and") && seen) || (w == "a" && i == 0) {
            continue;
        } else {
            break;
        }
    }
    total + current
}

#[cfg(test)]
mod tests {
    use super::first_number;

    #[test]
    fn digits_and_words() {
        let cases: &[(&str, Option<f64>)] = &[
            ("24", Some(24.0)),
            ("There are 24 coins.", Some(24.0)),
            ("about 1,000 people", Some(1000.0)),
            ("3.5 meters", Some(3.5)),
            ("-3 degrees", Some(-3.0)),
            ("twenty-four", Some(24.0)),
            ("Twenty four coins", Some(24.0)),
            ("one hundred and five", Some(105.0)),
            ("two thousand three hundred", Some(2300.0)),
            ("a dozen eggs", Some(12.0)),
            ("I see three cats and 2 dogs", Some(3.0)),
            ("none", Some(0.0)),
            ("zero", Some(0.0)),
            ("no number here", None),
            ("", None),
            ("seventeen.", Some(17.0)),
            ("The year 1969.", Some(1969.0)),
            ("covid-19", Some(19.0)),
        ];
        for (text, want) in cases {
            assert_eq!(first_number(text), *want, "{text:?}");
        }
    }

    #[test]
    fn bad_thousands_groups_are_not_numbers_but_later_ones_are() {
        assert_eq!(first_number("1,2,3"), None);
        assert_eq!(first_number("12,5 then 7"), Some(7.0));
    }
}
