//! The `vlmtest` command: `score` re-scores answers from any tool; `report` prints the summary
//! of the last run.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::config::suite::RawRule;
use crate::score::Rule;

#[derive(Parser)]
#[command(
    name = "vlmtest",
    version,
    about = "Regression tests for vision-language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score answers read as JSON lines on stdin; one JSON line out per line in.
    ///
    /// Input lines: {"answers": [...], "prediction": "..."} for `--rule vqa` (and any_of, exact,
    /// contains_any), or {"prediction": "..."} for a rule given in full, e.g.
    /// --rule '{contains: cat}' or --rule '{"numeric": 24, "tolerance": 2}'.
    /// Output lines: {"score": <f64>, "passed": <bool>}, plus "id" when the input has one;
    /// a bad line gives {"error": "...", "line": N} and a non-zero exit at the end.
    Score {
        /// `vqa` (official VQA v2 accuracy), `vqa_pre2021` (the official script before its 2021
        /// fix), `any_of`, `exact`, `contains_any` (with per-line answers), or a rule as YAML
        /// flow or JSON.
        #[arg(long)]
        rule: String,
        /// A line passes when its score is at least this.
        #[arg(long, default_value_t = 0.5)]
        pass_at: f64,
    },
    /// Run the suites without cargo: the same harness as `cargo test --test vlm`, taking the same
    /// libtest flags (`vlmtest run -- --list`, `vlmtest run -- smolvlm --test-threads 4`).
    Run {
        /// libtest arguments: a filter, --exact, --list, --ignored, --test-threads N, --format terse...
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Download the files of in-process (`backend = "candle"`) models into the Hugging Face cache
    /// (`HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN` are honoured), so that runs need no network. With no
    /// MODEL, every enabled candle model of models.toml (VLMTEST_MODELS) that names a `repo`.
    /// A model's `tokenizer_repo` is fetched with it.
    Fetch {
        /// Model names from models.toml.
        models: Vec<String>,
    },
    /// Write the last run's results as baselines: one file per model, `{model}.json` in
    /// VLMTEST_BASELINES (default baselines/ at the crate root), meant to be committed. A model
    /// with a baseline gets a `{model}::{suite}::regression` trial per suite in later runs.
    Baseline {
        /// Only these models (default: every model of the run).
        models: Vec<String>,
    },
    /// Compare two runs case by case: BASE and NEW are each a report.json, a baseline file or a
    /// baselines folder. Exit status 1 when a model × suite regressed, 2 on bad input.
    Compare {
        base: PathBuf,
        new: PathBuf,
        #[arg(long, value_enum, default_value_t = CompareFormat::Md)]
        format: CompareFormat,
        /// Significance level of McNemar's exact test.
        #[arg(long, default_value_t = crate::compare::DEFAULT_ALPHA)]
        alpha: f64,
        /// Also call a drop in mean score larger than this a regression.
        #[arg(long)]
        max_drop: Option<f64>,
    },
    /// Merge the VLMTEST_OUT folders of shards (cargo nextest --partition, several machines)
    /// into OUT: every figure and gate recomputed from the case records. Exit status 1 when a
    /// case or gate failed or trials of the plan are missing ("incomplete"), 2 on bad input
    /// (a missing folder, shards of different plans, a case two shards disagree on).
    Merge {
        /// The folder to write the merged reports to.
        out: PathBuf,
        /// The shards' VLMTEST_OUT folders.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Compare with the baselines in this folder (default: the folder the run read them
        /// from, as run.json records it).
        #[arg(long)]
        baselines: Option<PathBuf>,
    },
    /// Serve one model of models.toml over an OpenAI-compatible HTTP API on 127.0.0.1
    /// (POST /v1/chat/completions, GET /v1/models, GET /health), loading it once, so that the
    /// processes of a nextest run and other tools share it. Point a run at it with
    /// `backend = "openai"`, `base_url = "http://127.0.0.1:PORT/v1"`, `model = "MODEL"`.
    Serve(crate::serve::ServeArgs),
    /// Print the summary of the last run (from VLMTEST_OUT, default target/vlmtest).
    Report {
        /// The output directory of the run.
        #[arg(long, env = "VLMTEST_OUT", default_value = "target/vlmtest")]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Markdown)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CompareFormat {
    Md,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Markdown,
    Json,
}

/// How each input line is scored.
enum Scorer {
    /// A rule over the line's `answers`.
    WithAnswers(fn(Vec<String>) -> Rule),
    Fixed(Rule),
}

fn parse_rule(text: &str) -> Result<Scorer, String> {
    let t = text.trim();
    let per_line: Option<fn(Vec<String>) -> Rule> = match t {
        "vqa" => Some(Rule::Vqa),
        "vqa_pre2021" => Some(Rule::VqaPre2021),
        "any_of" => Some(Rule::AnyOf),
        "contains_any" => Some(Rule::ContainsAny),
        "exact" => Some(|a: Vec<String>| Rule::Any(a.into_iter().map(Rule::Exact).collect())),
        _ => None,
    };
    if let Some(f) = per_line {
        return Ok(Scorer::WithAnswers(f));
    }
    let raw: RawRule = crate::config::yaml::from_str(t).map_err(|e| {
        format!(
            "--rule: {} (expected vqa, vqa_pre2021, any_of, exact, contains_any, or a rule such as '{{contains: cat}}' with one of: {})",
            e.message(),
            crate::config::suite::RULE_NAMES
        )
    })?;
    raw.check()
        .map(Scorer::Fixed)
        .map_err(|e| format!("--rule: {e}"))
}

fn score_line(scorer: &Scorer, line: &str, pass_at: f64) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let prediction = match obj.get("prediction") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => return Err("missing \"prediction\" (a string)".into()),
        Some(other) => other.to_string(),
    };
    let score = match scorer {
        Scorer::Fixed(rule) => rule.score(&prediction),
        Scorer::WithAnswers(make) => {
            let answers = obj
                .get("answers")
                .and_then(Value::as_array)
                .ok_or("missing \"answers\" (a list of strings)")?;
            let answers: Vec<String> = answers
                .iter()
                .map(|a| match a {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            make(answers).score(&prediction)
        }
    };
    let mut out = json!({"score": score, "passed": score >= pass_at});
    if let Some(id) = obj.get("id") {
        out["id"] = id.clone();
    }
    Ok(out)
}

fn score(rule: &str, pass_at: f64) -> ExitCode {
    let scorer = match parse_rule(rule) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut bad = 0usize;
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: reading stdin: {e}");
                return ExitCode::from(2);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let result = score_line(&scorer, &line, pass_at).unwrap_or_else(|e| {
            bad += 1;
            eprintln!("error: stdin:{}: {e}", i + 1);
            json!({"error": e, "line": i + 1})
        });
        if writeln!(out, "{result}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    let _ = out.flush();
    if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `vlmtest baseline [MODEL...]`.
fn baseline(models: &[String]) -> ExitCode {
    let env = match crate::config::Env::from_process() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let records = match crate::report::Records::read(&env.out) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = records.report();
    if !report.complete {
        eprintln!(
            "warning: the run in {} did not finish: its baseline holds the cases that did",
            env.out.display()
        );
    }
    let mut wrote = 0;
    for m in &report.models {
        if !models.is_empty() && !models.contains(&m.name) {
            continue;
        }
        let errored = report
            .cases
            .iter()
            .filter(|c| c.model == m.name && c.status() == crate::verdict::Status::Error)
            .count();
        let mut cases: Vec<crate::compare::CaseOutcome> = crate::compare::outcomes_of(
            report
                .cases
                .iter()
                .filter(|c| c.status() != crate::verdict::Status::Error),
            &m.name,
        );
        cases.sort_by(|a, b| (&a.suite, &a.case).cmp(&(&b.suite, &b.case)));
        let b = crate::compare::Baseline {
            model: m.name.clone(),
            fingerprint: m.fingerprint.clone(),
            run_started_at: report.started_at.clone(),
            vlmtest_version: report.vlmtest_version.clone(),
            cases,
        };
        let file = env.baselines.join(format!("{}.json", m.name));
        let text = serde_json::to_string_pretty(&b).unwrap_or_default() + "\n";
        if let Err(e) =
            std::fs::create_dir_all(&env.baselines).and_then(|_| std::fs::write(&file, text))
        {
            eprintln!("error: cannot write {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
        println!("{}: {} cases", env.shown(&file).display(), b.cases.len());
        if errored > 0 {
            eprintln!(
                "warning: {}: {errored} cases could not be answered and are left out of the baseline",
                m.name
            );
        }
        wrote += 1;
    }
    if wrote == 0 {
        eprintln!(
            "error: no model of the run in {} to write a baseline for",
            env.out.display()
        );
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

/// One side of `vlmtest compare`: per model, its fingerprint and cases.
type Side = std::collections::BTreeMap<
    String,
    (
        Option<crate::fingerprint::Fingerprint>,
        Vec<crate::compare::CaseOutcome>,
    ),
>;

/// Reads a report.json, a baseline file or a folder of baseline files.
fn read_side(path: &std::path::Path) -> Result<Side, String> {
    let mut side = Side::new();
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for f in files {
            side.extend(read_side(&f)?);
        }
        if side.is_empty() {
            return Err(format!(
                "{}: no baseline files (*.json) in this folder",
                path.display()
            ));
        }
        return Ok(side);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}:{}: not JSON: {e}", path.display(), e.line()))?;
    if v.get("models").is_some() && v.get("cases").is_some() {
        let r: crate::report::Report = serde_json::from_value(v)
            .map_err(|e| format!("{}: not a vlmtest report.json: {e}", path.display()))?;
        for m in &r.models {
            side.insert(
                m.name.clone(),
                (
                    m.fingerprint.clone(),
                    crate::compare::outcomes_of(&r.cases, &m.name),
                ),
            );
        }
        return Ok(side);
    }
    let b: crate::compare::Baseline = serde_json::from_value(v).map_err(|e| {
        format!(
            "{}: neither a report.json nor a baseline (expected a file written by vlmtest): {e}",
            path.display()
        )
    })?;
    side.insert(b.model.clone(), (b.fingerprint, b.cases));
    Ok(side)
}

/// `vlmtest compare BASE NEW`.
fn compare(
    base: &std::path::Path,
    new: &std::path::Path,
    format: CompareFormat,
    alpha: f64,
    max_drop: Option<f64>,
) -> ExitCode {
    if !(alpha > 0.0 && alpha < 1.0) {
        eprintln!("error: --alpha must be between 0 and 1 (exclusive), got {alpha}");
        return ExitCode::from(2);
    }
    let (b, n) = match (read_side(base), read_side(new)) {
        (Ok(b), Ok(n)) => (b, n),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut comparisons = Vec::new();
    for (model, (bfp, bcases)) in &b {
        let Some((nfp, ncases)) = n.get(model) else {
            continue;
        };
        let suites: std::collections::BTreeSet<&str> = bcases
            .iter()
            .chain(ncases)
            .map(|c| c.suite.as_str())
            .collect();
        for suite in suites {
            let bs: Vec<&crate::compare::CaseOutcome> =
                bcases.iter().filter(|c| c.suite == suite).collect();
            let ns: Vec<&crate::compare::CaseOutcome> =
                ncases.iter().filter(|c| c.suite == suite).collect();
            let mut c = crate::compare::compare(model, suite, &bs, &ns, alpha, max_drop);
            c.fingerprint_note = crate::compare::fingerprint_note(bfp.as_ref(), nfp.as_ref());
            comparisons.push(c);
        }
    }
    if comparisons.is_empty() {
        eprintln!(
            "error: {} and {} have no model in common (base: {}; new: {})",
            base.display(),
            new.display(),
            b.keys().cloned().collect::<Vec<_>>().join(", "),
            n.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        return ExitCode::from(2);
    }
    match format {
        CompareFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "comparisons": comparisons }))
                .unwrap_or_default()
        ),
        CompareFormat::Md => print!("{}", crate::report::markdown::comparisons(&comparisons)),
    }
    if comparisons
        .iter()
        .any(|c| c.verdict == crate::compare::Verdict::Regressed)
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `vlmtest merge OUT IN...`.
fn merge(
    out: &std::path::Path,
    inputs: &[PathBuf],
    baselines: Option<&std::path::Path>,
) -> ExitCode {
    match crate::report::merge::merge(out, inputs, baselines) {
        Ok(m) => {
            print!("{}", crate::report::markdown::render(&m.report));
            if let Some(note) = m.report.missing_note() {
                eprintln!("vlmtest merge: {note}: {}", m.missing.join(", "));
            }
            if m.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `vlmtest report`: rebuilds every output of the last run from its records (cases.jsonl and
/// the rest, which survive a crash) and prints the summary.
fn report(out: PathBuf, format: Format) -> ExitCode {
    match crate::report::rebuild(&out) {
        Ok(r) => {
            match format {
                Format::Markdown => print!("{}", crate::report::markdown::render(&r)),
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default())
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Score { rule, pass_at } => score(&rule, pass_at),
        Command::Report { out, format } => report(out, format),
        Command::Baseline { models } => baseline(&models),
        Command::Compare {
            base,
            new,
            format,
            alpha,
            max_drop,
        } => compare(&base, &new, format, alpha, max_drop),
        Command::Merge {
            out,
            inputs,
            baselines,
        } => merge(&out, &inputs, baselines.as_deref()),
        Command::Fetch { models } => fetch(&models),
        Command::Serve(args) => crate::serve::main(args),
        Command::Run { args } => {
            let argv = std::iter::once("vlmtest run".to_string()).chain(args);
            match <libtest_mimic::Arguments as Parser>::try_parse_from(argv) {
                Ok(a) => crate::harness::run_with_args(a),
                Err(e) => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// `vlmtest fetch [MODEL...]`.
fn fetch(names: &[String]) -> ExitCode {
    use crate::config::{BackendSpec, ModelSource};
    let env = match crate::config::Env::from_process() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let models = match crate::config::models::load_models(&env.models) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut chosen = Vec::new();
    for n in names {
        match models.models.iter().find(|m| &m.name == n) {
            Some(m) => chosen.push(m),
            None => {
                let known: Vec<&str> = models.models.iter().map(|m| m.name.as_str()).collect();
                eprintln!(
                    "error: no model `{n}` in {} (models: {})",
                    env.models.display(),
                    known.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    if names.is_empty() {
        chosen = models.models.iter().filter(|m| m.enabled).collect();
    }
    let mut failed = false;
    for m in chosen {
        match &m.backend {
            BackendSpec::Candle(c) => match &c.source {
                ModelSource::Hub { repo, revision } => {
                    eprintln!("fetching {} ({repo}@{revision})", m.name);
                    #[cfg(feature = "candle")]
                    match crate::backend::candle::hub::fetch(repo, revision) {
                        Ok(dir) => println!("{}: {}", m.name, dir.display()),
                        Err(e) => {
                            eprintln!("error: {}: {e}", m.name);
                            failed = true;
                        }
                    }
                    #[cfg(not(feature = "candle"))]
                    {
                        let _ = (repo, revision);
                        eprintln!("error: {}: {}", m.name, crate::kinds::NO_CANDLE);
                        failed = true;
                    }
                    failed |= !fetch_tokenizer(&m.name, c);
                }
                ModelSource::Path(p) => {
                    println!(
                        "{}: local folder {} (nothing to fetch)",
                        m.name,
                        p.display()
                    );
                    failed |= !fetch_tokenizer(&m.name, c);
                }
            },
            other if !names.is_empty() => {
                println!(
                    "{}: backend `{}` (nothing to fetch: the server loads its own weights)",
                    m.name,
                    other.kind()
                );
            }
            _ => {}
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Fetches the tokenizer repo a candle model names (`tokenizer_repo`); false when that failed.
fn fetch_tokenizer(name: &str, c: &crate::config::CandleSpec) -> bool {
    let Some(crate::config::TokenizerSource::Hub { repo, revision }) = &c.tokenizer else {
        return true;
    };
    eprintln!("fetching the tokenizer of {name} ({repo}@{revision})");
    #[cfg(not(feature = "candle"))]
    {
        let _ = (repo, revision);
        eprintln!("error: {name}: {}", crate::kinds::NO_CANDLE);
        false
    }
    #[cfg(feature = "candle")]
    match crate::backend::candle::hub::fetch_tokenizer(repo, revision) {
        Ok(dir) => {
            println!("{name} tokenizer: {}", dir.display());
            true
        }
        Err(e) => {
            eprintln!("error: {name}: tokenizer: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_lines_with_either_kind_of_rule() {
        let vqa = parse_rule("vqa").unwrap();
        let out = score_line(&vqa, r#"{"id": 7, "answers": ["2","2","2","two","3","2","2","2","2","2"], "prediction": "two"}"#, 0.5).unwrap();
        assert_eq!(out["score"], json!(1.0));
        assert_eq!(out["passed"], json!(true));
        assert_eq!(out["id"], json!(7));
        let contains = parse_rule("{contains: cat}").unwrap();
        let out = score_line(&contains, r#"{"prediction": "A dog"}"#, 0.5).unwrap();
        assert_eq!(out["score"], json!(0.0));
        assert_eq!(out["passed"], json!(false));
        let numeric = parse_rule(r#"{"numeric": 24, "tolerance": 2}"#).unwrap();
        let out = score_line(&numeric, r#"{"prediction": "twenty-three"}"#, 0.5).unwrap();
        assert_eq!(out["score"], json!(1.0));
    }

    #[test]
    fn bad_rules_and_lines_are_explained() {
        let e = parse_rule("{contians: cat}").err().unwrap();
        assert!(e.contains("unknown field `contians`"), "{e}");
        let e = parse_rule("{regex: '('}").err().unwrap();
        assert!(e.contains("invalid regex"), "{e}");
        let vqa = parse_rule("vqa").unwrap();
        assert!(
            score_line(&vqa, r#"{"prediction": "x"}"#, 0.5)
                .unwrap_err()
                .contains("answers")
        );
        assert!(
            score_line(&vqa, "not json", 0.5)
                .unwrap_err()
                .contains("JSON")
        );
    }
}
