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
    Fetch {
        /// Model names from models.toml.
        models: Vec<String>,
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
    let raw: RawRule = serde_yaml::from_str(t).map_err(|e| {
        format!(
            "--rule: {} (expected vqa, vqa_pre2021, any_of, exact, contains_any, or a rule such as '{{contains: cat}}' with one of: {})",
            crate::config::text::yaml_error(&e).0,
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
                }
                ModelSource::Path(p) => {
                    println!(
                        "{}: local folder {} (nothing to fetch)",
                        m.name,
                        p.display()
                    )
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
