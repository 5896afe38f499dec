//! Suite files: raw serde types, then checked types. Every error names the file and the line.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::image::{Image, ImageCache};
use super::text::{OneOrMany, Seg, Text};
use super::yaml::Yaml;
use crate::error::{ConfigError, ConfigErrors, read_text};
use crate::score::Rule;

/// A checked suite.
#[derive(Debug)]
pub struct Suite {
    pub name: String,
    pub description: Option<String>,
    /// The suite file, as found (relative to where suites are searched when possible).
    pub file: PathBuf,
    pub cases: Vec<Case>,
    pub gate: Gate,
}

/// Accuracy thresholds checked per model over all cases of a suite.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    pub min_accuracy: Option<f64>,
    pub min_pass_rate: Option<f64>,
    /// The largest drop in mean score against the model's baseline before the regression trial
    /// fails, whatever the statistics say.
    pub max_drop: Option<f64>,
    /// The significance level of the regression trial's McNemar test (default 0.05).
    pub alpha: Option<f64>,
    /// Per-model overrides, with the line where each is written.
    pub models: BTreeMap<String, (Thresholds, usize)>,
    pub line: Option<usize>,
}

/// The thresholds that apply to one model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    pub min_accuracy: Option<f64>,
    pub min_pass_rate: Option<f64>,
}

impl Gate {
    pub(crate) fn for_model(&self, model: &str) -> Thresholds {
        let base = Thresholds {
            min_accuracy: self.min_accuracy,
            min_pass_rate: self.min_pass_rate,
        };
        match self.models.get(model) {
            Some((o, _)) => Thresholds {
                min_accuracy: o.min_accuracy.or(base.min_accuracy),
                min_pass_rate: o.min_pass_rate.or(base.min_pass_rate),
            },
            None => base,
        }
    }
}

/// One case: a single question, or a conversation of several turns.
#[derive(Debug)]
pub struct Case {
    pub id: String,
    pub line: usize,
    pub category: Option<String>,
    pub turns: Vec<Turn>,
    pub pass_at: f64,
    pub max_new_tokens: Option<u32>,
    pub max_latency_ms: Option<u64>,
    pub snapshot: bool,
    /// Times the case is asked (`None`: the model's `repeat`, else once).
    pub repeat: Option<u32>,
    /// Fraction of the attempts that must pass (default 1.0: every one).
    pub min_pass_rate: f64,
    /// Time to first token budget, per attempt, where the backend measures it.
    pub max_ttft_ms: Option<f64>,
    /// Decoding speed floor, per attempt, where the backend measures it.
    pub min_tokens_per_s: Option<f64>,
}

impl Case {
    /// Whether any turn shows an image.
    pub(crate) fn has_images(&self) -> bool {
        self.turns.iter().any(|t| !t.images.is_empty())
    }
}

#[derive(Debug)]
pub struct Turn {
    pub images: Vec<Arc<Image>>,
    pub question: String,
    /// The question rendered through the prompt template: what the model is sent.
    pub prompt: String,
    /// Human answers (VQA style), when given.
    pub answers: Option<Vec<String>>,
    pub rule: Option<Rule>,
}

// ---------------------------------------------------------------------------------------------
// Raw types

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    defaults: RawDefaults,
    gate: Option<RawGate>,
    cases: Vec<RawCase>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    prompt: Option<String>,
    score: Option<ScoreKind>,
    pass_at: Option<f64>,
    max_new_tokens: Option<u32>,
    max_latency_ms: Option<u64>,
    snapshot: Option<bool>,
    category: Option<String>,
    repeat: Option<u32>,
    min_pass_rate: Option<f64>,
    max_ttft_ms: Option<f64>,
    min_tokens_per_s: Option<f64>,
}

/// How a case's `answers` are scored.
#[derive(Deserialize, Clone, Copy, Debug)]
#[serde(rename_all = "snake_case")]
enum ScoreKind {
    Vqa,
    #[serde(rename = "vqa_pre2021")]
    VqaPre2021,
    Exact,
    AnyOf,
    ContainsAny,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawGate {
    min_accuracy: Option<f64>,
    min_pass_rate: Option<f64>,
    max_drop: Option<f64>,
    alpha: Option<f64>,
    #[serde(default)]
    models: BTreeMap<String, RawThresholds>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    min_accuracy: Option<f64>,
    min_pass_rate: Option<f64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawCase {
    id: Text,
    image: Option<String>,
    images: Option<Vec<String>>,
    question: Option<Text>,
    answers: Option<Vec<Text>>,
    expect: Option<RawRule>,
    category: Option<Text>,
    prompt: Option<String>,
    score: Option<ScoreKind>,
    pass_at: Option<f64>,
    max_new_tokens: Option<u32>,
    max_latency_ms: Option<u64>,
    snapshot: Option<bool>,
    repeat: Option<u32>,
    min_pass_rate: Option<f64>,
    max_ttft_ms: Option<f64>,
    min_tokens_per_s: Option<f64>,
    turns: Option<Vec<RawTurn>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawTurn {
    image: Option<String>,
    images: Option<Vec<String>>,
    question: Text,
    answers: Option<Vec<Text>>,
    expect: Option<RawRule>,
}

/// A rule as written: exactly one rule key, with `tolerance` beside `numeric` and `options`
/// beside `choice`.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    exact: Option<Text>,
    any_of: Option<Vec<Text>>,
    contains: Option<Text>,
    contains_all: Option<Vec<Text>>,
    contains_any: Option<Vec<Text>>,
    not_contains: Option<OneOrMany>,
    regex: Option<String>,
    numeric: Option<NumberOrWords>,
    tolerance: Option<f64>,
    yes_no: Option<Text>,
    choice: Option<RawChoice>,
    options: Option<Vec<Text>>,
    all: Option<Vec<RawRule>>,
    any: Option<Vec<RawRule>>,
}

/// `choice: B` (with `options:` beside it) or `choice: { answer: B, options: [...] }`.
#[derive(Debug)]
pub(crate) struct RawChoice {
    answer: String,
    options: Option<Vec<Text>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ChoiceMap {
    answer: Text,
    options: Option<Vec<Text>>,
}

impl<'de> Deserialize<'de> for RawChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawChoice;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a letter, or a map with `answer` and `options`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawChoice, E> {
                Ok(RawChoice {
                    answer: v.to_string(),
                    options: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawChoice, A::Error> {
                let m = ChoiceMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawChoice {
                    answer: m.answer.0,
                    options: m.options,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `numeric: 24` or `numeric: twenty-four`.
#[derive(Deserialize, Debug)]
#[serde(transparent)]
struct NumberOrWords(Text);

pub(crate) const RULE_NAMES: &str = "exact, any_of, contains, contains_all, contains_any, not_contains, regex, numeric, yes_no, choice, all, any";

impl RawRule {
    /// Checks the rule; `Err` is a message without location.
    pub(crate) fn check(self) -> Result<Rule, String> {
        let texts = |v: Vec<Text>, key: &str| -> Result<Vec<String>, String> {
            if v.is_empty() {
                return Err(format!("`{key}` needs at least one string"));
            }
            Ok(v.into_iter().map(|t| t.0).collect())
        };
        let mut found: Vec<(&'static str, Result<Rule, String>)> = Vec::new();
        if let Some(t) = self.exact {
            found.push(("exact", Ok(Rule::Exact(t.0))));
        }
        if let Some(v) = self.any_of {
            found.push(("any_of", texts(v, "any_of").map(Rule::AnyOf)));
        }
        if let Some(t) = self.contains {
            found.push(("contains", Ok(Rule::Contains(t.0))));
        }
        if let Some(v) = self.contains_all {
            found.push((
                "contains_all",
                texts(v, "contains_all").map(Rule::ContainsAll),
            ));
        }
        if let Some(v) = self.contains_any {
            found.push((
                "contains_any",
                texts(v, "contains_any").map(Rule::ContainsAny),
            ));
        }
        if let Some(v) = self.not_contains {
            let r = if v.0.is_empty() {
                Err("`not_contains` needs at least one string".into())
            } else {
                Ok(Rule::NotContains(v.0))
            };
            found.push(("not_contains", r));
        }
        if let Some(re) = self.regex {
            let r = regex::Regex::new(&re)
                .map(Rule::Regex)
                .map_err(|e| format!("invalid regex `{re}`: {}", one_line(&e.to_string())));
            found.push(("regex", r));
        }
        if let Some(NumberOrWords(t)) = self.numeric {
            let value = t.0.trim().parse::<f64>().ok().or_else(|| {
                crate::score::numbers::first_number(&t.0)
                    .filter(|_| t.0.chars().all(|c| c.is_alphabetic() || " -".contains(c)))
            });
            let tolerance = self.tolerance.unwrap_or(0.0);
            let r = match value {
                _ if !(tolerance >= 0.0 && tolerance.is_finite()) => Err(format!(
                    "`tolerance` must be a number >= 0, got {tolerance}"
                )),
                Some(v) if v.is_finite() => Ok(Rule::Numeric {
                    value: v,
                    tolerance,
                }),
                _ => Err(format!("`numeric` expects a number, got `{}`", t.0)),
            };
            found.push(("numeric", r));
        } else if self.tolerance.is_some() {
            return Err("`tolerance` goes with `numeric`".into());
        }
        if let Some(t) = self.yes_no {
            let r = match t.0.trim().to_lowercase().as_str() {
                "yes" | "true" => Ok(Rule::YesNo(true)),
                "no" | "false" => Ok(Rule::YesNo(false)),
                other => Err(format!("`yes_no` expects yes or no, got `{other}`")),
            };
            found.push(("yes_no", r));
        }
        if let Some(c) = self.choice {
            let r = if c.options.is_some() && self.options.is_some() {
                Err("give `options` once: inside `choice` or beside it".to_string())
            } else {
                let options: Vec<String> = c
                    .options
                    .or(self.options)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| t.0)
                    .collect();
                check_choice(&c.answer, options)
            };
            found.push(("choice", r));
        } else if self.options.is_some() {
            return Err("`options` goes with `choice`".into());
        }
        for (key, list) in [("all", self.all), ("any", self.any)] {
            if let Some(list) = list {
                let r = if list.is_empty() {
                    Err(format!("`{key}` needs at least one rule"))
                } else {
                    list.into_iter()
                        .map(RawRule::check)
                        .collect::<Result<Vec<_>, _>>()
                        .map(|rules| {
                            if key == "all" {
                                Rule::All(rules)
                            } else {
                                Rule::Any(rules)
                            }
                        })
                };
                found.push((if key == "all" { "all" } else { "any" }, r));
            }
        }
        match found.len() {
            0 => Err(format!("no scoring rule (expected one of: {RULE_NAMES})")),
            1 => found
                .pop()
                .map(|(_, r)| r)
                .unwrap_or_else(|| unreachable!()),
            _ => {
                let keys: Vec<&str> = found.iter().map(|(k, _)| *k).collect();
                Err(format!(
                    "one rule per `expect`, found {} (combine rules with `all: [...]` or `any: [...]`)",
                    keys.join(" and ")
                ))
            }
        }
    }
}

fn check_choice(answer: &str, options: Vec<String>) -> Result<Rule, String> {
    let a = answer.trim();
    let letter = if a.len() == 1 && a.chars().all(|c| c.is_ascii_alphabetic()) {
        a.chars().next().map(|c| c.to_ascii_uppercase())
    } else {
        options
            .iter()
            .position(|o| crate::score::normalize(o) == crate::score::normalize(a))
            .map(|i| (b'A' + i as u8) as char)
    };
    let Some(letter) = letter else {
        return Err(format!(
            "`choice: {a}` is neither a letter nor one of the options ({})",
            options.join(", ")
        ));
    };
    if options.len() > 26 {
        return Err("`choice` supports at most 26 options".into());
    }
    if !options.is_empty() && (letter as u8 - b'A') as usize >= options.len() {
        return Err(format!(
            "`choice: {letter}` but only {} options are given",
            options.len()
        ));
    }
    Ok(Rule::Choice { letter, options })
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Valid names for suites, cases and models: `[a-z0-9_-]+` (models also allow `.`).
pub(crate) fn valid_id(s: &str, allow_dot: bool) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '_'
                || c == '-'
                || (allow_dot && c == '.')
        })
}

/// Reads and checks one suite file. `shown` is the path used in messages.
pub fn load_suite(
    path: &Path,
    shown: &Path,
    images: &mut ImageCache,
) -> Result<Suite, ConfigErrors> {
    let err = |line: Option<usize>, msg: String| ConfigError::new(shown, line, msg);
    let text = read_text(path, "a YAML suite with `cases:`").map_err(|mut e| {
        e.file = shown.to_path_buf();
        e
    })?;
    let yaml_err = |e: super::yaml::Error| {
        err(
            e.line(),
            format!(
                "{} (expected a suite: name, description, defaults, gate, cases)",
                e.message()
            ),
        )
    };
    let doc = Yaml::parse(&text).map_err(yaml_err)?;
    let raw: RawSuite = doc.deserialize().map_err(yaml_err)?;
    let line = |path: &[Seg]| doc.line(path);
    let mut errors = ConfigErrors::default();

    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let name = raw.name.clone().unwrap_or(stem);
    if !valid_id(&name, false) {
        errors.push(err(
            line(&[Seg::Key("name")]),
            format!("invalid suite name `{name}` (expected [a-z0-9_-]+; the file stem is used when `name` is absent)"),
        ));
    }

    let d = &raw.defaults;
    let dl = |k: &str| line(&[Seg::Key("defaults"), Seg::Key(k)]);
    check_overrides(
        &mut errors,
        shown,
        &dl,
        Overrides {
            pass_at: d.pass_at,
            max_new_tokens: d.max_new_tokens,
            max_latency_ms: d.max_latency_ms,
            prompt: d.prompt.as_deref(),
            repeat: d.repeat,
            min_pass_rate: d.min_pass_rate,
            max_ttft_ms: d.max_ttft_ms,
            min_tokens_per_s: d.min_tokens_per_s,
        },
    );

    let gate = match raw.gate {
        None => Gate::default(),
        Some(g) => {
            let gl = |k: &str| line(&[Seg::Key("gate"), Seg::Key(k)]);
            check_unit(
                &mut errors,
                shown,
                gl("min_accuracy"),
                "min_accuracy",
                g.min_accuracy,
            );
            check_unit(
                &mut errors,
                shown,
                gl("min_pass_rate"),
                "min_pass_rate",
                g.min_pass_rate,
            );
            check_unit(&mut errors, shown, gl("max_drop"), "max_drop", g.max_drop);
            if let Some(a) = g.alpha
                && !(a > 0.0 && a < 1.0)
            {
                errors.push(err(
                    gl("alpha"),
                    format!("`alpha` must be between 0 and 1 (exclusive), got {a}"),
                ));
            }
            let mut models = BTreeMap::new();
            for (m, t) in g.models {
                let ml = line(&[Seg::Key("gate"), Seg::Key("models"), Seg::Key(&m)]);
                check_unit(&mut errors, shown, ml, "min_accuracy", t.min_accuracy);
                check_unit(&mut errors, shown, ml, "min_pass_rate", t.min_pass_rate);
                let th = Thresholds {
                    min_accuracy: t.min_accuracy,
                    min_pass_rate: t.min_pass_rate,
                };
                models.insert(m, (th, ml.unwrap_or(1)));
            }
            Gate {
                min_accuracy: g.min_accuracy,
                min_pass_rate: g.min_pass_rate,
                max_drop: g.max_drop,
                alpha: g.alpha,
                models,
                line: line(&[Seg::Key("gate")]),
            }
        }
    };

    if raw.cases.is_empty() {
        errors.push(err(
            line(&[Seg::Key("cases")]),
            "`cases` is empty (expected at least one case)".into(),
        ));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut ids = HashSet::new();
    let mut cases = Vec::with_capacity(raw.cases.len());
    for (i, rc) in raw.cases.into_iter().enumerate() {
        let cpath = [Seg::Key("cases"), Seg::Index(i)];
        let case_line = line(&cpath).unwrap_or(1);
        let at = |k: &str| {
            let mut p = cpath.to_vec();
            p.push(Seg::Key(k));
            line(&p)
        };
        let id = rc.id.0.clone();
        if id == "gate" || id == "regression" {
            errors.push(err(
                at("id"),
                format!(
                    "case id `{id}` is reserved for the suite's {id} trial (choose another id)"
                ),
            ));
        } else if !valid_id(&id, false) {
            errors.push(err(
                at("id"),
                format!("invalid case id `{id}` (expected [a-z0-9_-]+)"),
            ));
        } else if !ids.insert(id.clone()) {
            errors.push(err(
                at("id"),
                format!("duplicate case id `{id}` (ids must be unique in a suite)"),
            ));
        }
        check_overrides(
            &mut errors,
            shown,
            &at,
            Overrides {
                pass_at: rc.pass_at,
                max_new_tokens: rc.max_new_tokens,
                max_latency_ms: rc.max_latency_ms,
                prompt: rc.prompt.as_deref(),
                repeat: rc.repeat,
                min_pass_rate: rc.min_pass_rate,
                max_ttft_ms: rc.max_ttft_ms,
                min_tokens_per_s: rc.min_tokens_per_s,
            },
        );
        let template = rc
            .prompt
            .clone()
            .or_else(|| d.prompt.clone())
            .unwrap_or_else(|| "{question}".into());
        let score = rc.score.or(d.score).unwrap_or(ScoreKind::Vqa);

        let mut turn_inputs: Vec<(Vec<Seg>, RawTurn)> = Vec::new();
        match rc.turns {
            Some(turns) => {
                let single = [
                    ("image", rc.image.is_some()),
                    ("images", rc.images.is_some()),
                    ("question", rc.question.is_some()),
                    ("answers", rc.answers.is_some()),
                    ("expect", rc.expect.is_some()),
                ];
                for (k, present) in single {
                    if present {
                        errors.push(err(
                            at(k),
                            format!("case `{id}` has `turns`, so `{k}` belongs inside a turn"),
                        ));
                    }
                }
                if turns.is_empty() {
                    errors.push(err(
                        at("turns"),
                        format!("case `{id}`: `turns` is empty (expected at least one turn)"),
                    ));
                }
                for (j, t) in turns.into_iter().enumerate() {
                    let mut p = cpath.to_vec();
                    p.extend([Seg::Key("turns"), Seg::Index(j)]);
                    turn_inputs.push((p, t));
                }
            }
            None => match rc.question {
                Some(q) => turn_inputs.push((
                    cpath.to_vec(),
                    RawTurn {
                        image: rc.image,
                        images: rc.images,
                        question: q,
                        answers: rc.answers,
                        expect: rc.expect,
                    },
                )),
                None => {
                    errors.push(err(Some(case_line), format!("case `{id}` has no `question` (expected `question`, or `turns` for a conversation)")));
                    continue;
                }
            },
        }

        let multi = turn_inputs.len() > 1;
        let mut turns = Vec::new();
        for (tpath, t) in turn_inputs {
            let tl = |k: &str| {
                let mut p = tpath.clone();
                p.push(Seg::Key(k));
                line(&p)
            };
            let mut written: Vec<(String, Option<usize>)> = Vec::new();
            match (t.image, t.images) {
                (Some(_), Some(_)) => errors.push(err(
                    tl("images"),
                    "give either `image` or `images`, not both".into(),
                )),
                (Some(one), None) => written.push((one, tl("image"))),
                (None, Some(many)) => {
                    if many.is_empty() {
                        errors.push(err(
                            tl("images"),
                            "`images` is empty (expected at least one path)".into(),
                        ));
                    }
                    written.extend(many.into_iter().map(|m| (m, tl("images"))));
                }
                (None, None) => {}
            }
            let mut imgs = Vec::new();
            for (w, l) in written {
                match images.get(base, &w) {
                    Ok(img) => imgs.push(img),
                    Err(msg) => errors.push(err(l, msg)),
                }
            }
            let answers: Option<Vec<String>> =
                t.answers.map(|v| v.into_iter().map(|t| t.0).collect());
            if answers.as_ref().is_some_and(|a| a.is_empty()) {
                errors.push(err(
                    tl("answers"),
                    "`answers` is empty (expected the human answers)".into(),
                ));
            }
            let rule = match (&answers, t.expect) {
                (Some(_), Some(_)) => {
                    errors.push(err(
                        tl("expect"),
                        "give either `answers` (scored by `score`) or `expect`, not both".into(),
                    ));
                    None
                }
                (Some(a), None) => Some(match score {
                    ScoreKind::Vqa | ScoreKind::VqaPre2021 => {
                        let best = crate::score::vqa::best_possible(a.len());
                        let pass_at = rc.pass_at.or(d.pass_at).unwrap_or(0.5);
                        if a.len() == 1 {
                            errors.push(err(tl("answers"), "a single human answer always scores 0 under VQA accuracy \
                                 (each answer is left out once and the prediction must match 1 of the others); \
                                 give the question's human answers (VQA v2 has 10), or use `score: any_of`".into()));
                        } else if !multi && pass_at <= 1.0 && best + 1e-12 < pass_at {
                            // (a pass_at above 1 is reported as out of range; no answer count
                            // reaches it, and 4 answers reach any other)
                            errors.push(err(tl("answers"), format!(
                                "with {} human answers the best VQA accuracy is {best:.3}, below pass_at {pass_at}, so the case \
                                 can never pass (expected at least {} answers, or a lower pass_at)",
                                a.len(),
                                (1..=4).find(|&n| crate::score::vqa::best_possible(n) + 1e-12 >= pass_at).unwrap_or(4)
                            )));
                        }
                        if matches!(score, ScoreKind::Vqa) {
                            Rule::Vqa(a.clone())
                        } else {
                            Rule::VqaPre2021(a.clone())
                        }
                    }
                    ScoreKind::Exact => Rule::Any(a.iter().cloned().map(Rule::Exact).collect()),
                    ScoreKind::AnyOf => Rule::AnyOf(a.clone()),
                    ScoreKind::ContainsAny => Rule::ContainsAny(a.clone()),
                }),
                (None, Some(raw_rule)) => match raw_rule.check() {
                    Ok(r) => Some(r),
                    Err(msg) => {
                        errors.push(err(tl("expect"), msg.to_string()));
                        None
                    }
                },
                (None, None) if !multi => {
                    errors.push(err(
                        Some(case_line),
                        format!("case `{id}` has no expectation (expected `answers` or `expect`)"),
                    ));
                    None
                }
                (None, None) => None,
            };
            let question = t.question.0;
            if question.trim().is_empty() {
                errors.push(err(tl("question"), "empty `question`".into()));
            }
            turns.push(Turn {
                images: imgs,
                prompt: template.replace("{question}", &question),
                question,
                answers,
                rule,
            });
        }
        if multi && turns.iter().all(|t| t.rule.is_none()) {
            errors.push(err(Some(case_line), format!("case `{id}`: no turn has an expectation (expected `answers` or `expect` in at least one turn)")));
        }
        cases.push(Case {
            id,
            line: case_line,
            category: rc.category.map(|t| t.0).or_else(|| d.category.clone()),
            turns,
            pass_at: rc.pass_at.or(d.pass_at).unwrap_or(0.5),
            max_new_tokens: rc.max_new_tokens.or(d.max_new_tokens),
            max_latency_ms: rc.max_latency_ms.or(d.max_latency_ms),
            snapshot: rc.snapshot.or(d.snapshot).unwrap_or(true),
            repeat: rc.repeat.or(d.repeat),
            min_pass_rate: rc.min_pass_rate.or(d.min_pass_rate).unwrap_or(1.0),
            max_ttft_ms: rc.max_ttft_ms.or(d.max_ttft_ms),
            min_tokens_per_s: rc.min_tokens_per_s.or(d.min_tokens_per_s),
        });
    }

    errors.into_result(Suite {
        name,
        description: raw.description,
        file: shown.to_path_buf(),
        cases,
        gate,
    })
}

/// The fields a case and the suite's `defaults` share.
struct Overrides<'a> {
    pass_at: Option<f64>,
    max_new_tokens: Option<u32>,
    max_latency_ms: Option<u64>,
    prompt: Option<&'a str>,
    repeat: Option<u32>,
    min_pass_rate: Option<f64>,
    max_ttft_ms: Option<f64>,
    min_tokens_per_s: Option<f64>,
}

/// Checks the fields a case and the suite's `defaults` share; `at` gives a key's line.
fn check_overrides(
    errors: &mut ConfigErrors,
    file: &Path,
    at: &dyn Fn(&str) -> Option<usize>,
    o: Overrides,
) {
    check_unit(errors, file, at("pass_at"), "pass_at", o.pass_at);
    check_unit(
        errors,
        file,
        at("min_pass_rate"),
        "min_pass_rate",
        o.min_pass_rate,
    );
    let positive = [
        ("max_new_tokens", o.max_new_tokens.map(u64::from)),
        ("max_latency_ms", o.max_latency_ms),
        ("repeat", o.repeat.map(u64::from)),
    ];
    for (key, v) in positive {
        if v == Some(0) {
            errors.push(ConfigError::new(
                file,
                at(key),
                format!("`{key}` must be at least 1, got 0"),
            ));
        }
    }
    for (key, v) in [
        ("max_ttft_ms", o.max_ttft_ms),
        ("min_tokens_per_s", o.min_tokens_per_s),
    ] {
        if let Some(v) = v
            && !(v > 0.0 && v.is_finite())
        {
            errors.push(ConfigError::new(
                file,
                at(key),
                format!("`{key}` must be a number > 0, got {v}"),
            ));
        }
    }
    if let Some(p) = o.prompt
        && !p.contains("{question}")
    {
        errors.push(ConfigError::new(
            file,
            at("prompt"),
            format!("prompt template {p:?} has no `{{question}}` placeholder"),
        ));
    }
}

fn check_unit(
    errors: &mut ConfigErrors,
    file: &Path,
    line: Option<usize>,
    key: &str,
    v: Option<f64>,
) {
    if let Some(v) = v
        && !(0.0..=1.0).contains(&v)
    {
        errors.push(ConfigError::new(
            file,
            line,
            format!("`{key}` must be between 0 and 1, got {v}"),
        ));
    }
}

/// Finds suite files: `path` itself, or every `*.yaml`/`*.yml` below it, sorted.
pub(crate) fn discover(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(ConfigError::env(format!(
            "suites not found: {} is neither a suite file nor a directory (set VLMTEST_SUITES)",
            path.display()
        )));
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            ConfigError::env(format!("cannot read directory {}: {e}", dir.display()))
        })?;
        for entry in entries.flatten() {
            let p = entry.path();
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(ConfigError::env(format!(
            "no suites: no *.yaml or *.yml file under {} (set VLMTEST_SUITES)",
            path.display()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod yaml_tests;
