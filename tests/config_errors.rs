//! Bad input stops the harness (even `--list`) with exit status 2 and one clear message naming
//! the file, the line, and what was expected. Never a panic.

mod common;

use common::Project;

const MODELS: &str =
    "[models.m]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\n";
const SUITE: &str = "cases:\n  - { id: a, question: hi, expect: { contains: x } }\n";

/// Writes `files` over a valid project, runs `--list`, and checks the messages.
fn assert_error(files: &[(&str, &[u8])], needles: &[&str]) {
    let p = Project::new();
    p.write("models.toml", MODELS).suite("ok", SUITE);
    for (path, content) in files {
        let full = p.path(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
    let r = p.run(&["--list"], &[]);
    assert_eq!(r.code, Some(2), "exit status for {files:?}:\n{}", r.all());
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "nothing listed: {}", r.stdout);
    for n in needles {
        assert!(r.stderr.contains(n), "missing {n:?} in:\n{}", r.stderr);
    }
    assert!(r.stderr.contains("no test was run"), "{}", r.stderr);
}

fn suite(yaml: &str) -> [(&'static str, Vec<u8>); 1] {
    [("suites/bad.yaml", yaml.as_bytes().to_vec())]
}

macro_rules! bad_suite {
    ($name:ident, $yaml:expr, $($needle:expr),+) => {
        #[test]
        fn $name() {
            let files = suite($yaml);
            let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_slice())).collect();
            assert_error(&refs, &[$($needle),+]);
        }
    };
}

bad_suite!(
    unknown_case_key,
    "cases:\n  - id: a\n    imag: images/horse.png\n    question: q\n    expect: { contains: x }\n",
    "suites/bad.yaml:3: cases[0]: unknown field `imag`, expected one of `id`, `image`, `images`"
);
bad_suite!(
    unknown_rule,
    "cases:\n  - id: a\n    question: q\n    expect: { containz: x }\n",
    "suites/bad.yaml:4:",
    "unknown field `containz`, expected one of `exact`, `any_of`, `contains`"
);
bad_suite!(
    invalid_regex,
    "cases:\n  - id: a\n    question: q\n    expect: { regex: '(unclosed' }\n",
    "suites/bad.yaml:4: invalid regex `(unclosed`"
);
bad_suite!(
    missing_image,
    "cases:\n  - id: a\n    image: images/nope.png\n    question: q\n    expect: { contains: x }\n",
    "suites/bad.yaml:3: image `images/nope.png` not found"
);
bad_suite!(
    duplicate_id,
    "cases:\n  - { id: a, question: q, expect: { contains: x } }\n  - { id: a, question: r, expect: { contains: x } }\n",
    "suites/bad.yaml:3: duplicate case id `a`"
);
bad_suite!(
    invalid_id,
    "cases:\n  - { id: Not Valid, question: q, expect: { contains: x } }\n",
    "suites/bad.yaml:2: invalid case id `Not Valid` (expected [a-z0-9_-]+)"
);
bad_suite!(
    reserved_gate_id,
    "cases:\n  - { id: gate, question: q, expect: { contains: x } }\n",
    "suites/bad.yaml:2: case id `gate` is reserved"
);
bad_suite!(
    wrong_type,
    "defaults:\n  pass_at: high\ncases:\n  - { id: a, question: q, expect: { contains: x } }\n",
    "suites/bad.yaml:2: defaults.pass_at: invalid type: string \"high\", expected f64"
);
bad_suite!(
    out_of_range,
    "cases:\n  - { id: a, question: q, expect: { contains: x }, pass_at: 1.5 }\n",
    "suites/bad.yaml:2: `pass_at` must be between 0 and 1, got 1.5"
);
bad_suite!(
    yaml_syntax,
    "cases:\n  - id: a\n    question: [unclosed\n",
    "suites/bad.yaml:"
);
bad_suite!(
    empty_file,
    "   \n",
    "suites/bad.yaml: file is empty (expected a YAML suite"
);
bad_suite!(
    two_rules,
    "cases:\n  - { id: a, question: q, expect: { contains: x, exact: y } }\n",
    "suites/bad.yaml:2: one rule per `expect`, found exact and contains"
);
bad_suite!(
    tolerance_alone,
    "cases:\n  - { id: a, question: q, expect: { tolerance: 2 } }\n",
    "`tolerance` goes with `numeric`"
);
bad_suite!(
    no_expectation,
    "cases:\n  - { id: a, question: q }\n",
    "suites/bad.yaml:2: case `a` has no expectation (expected `answers` or `expect`)"
);
bad_suite!(
    no_question,
    "cases:\n  - { id: a, expect: { contains: x } }\n",
    "case `a` has no `question`"
);
bad_suite!(
    turns_and_question,
    "cases:\n  - id: a\n    question: q\n    turns:\n      - { question: r, expect: { contains: x } }\n",
    "suites/bad.yaml:3: case `a` has `turns`, so `question` belongs inside a turn"
);
bad_suite!(
    prompt_without_placeholder,
    "defaults:\n  prompt: Answer briefly.\ncases:\n  - { id: a, question: q, expect: { contains: x } }\n",
    "suites/bad.yaml:2: prompt template \"Answer briefly.\" has no `{question}` placeholder"
);
bad_suite!(
    single_vqa_answer,
    "cases:\n  - id: a\n    question: q\n    answers: [cat]\n",
    "suites/bad.yaml:4: a single human answer always scores 0 under VQA accuracy",
    "use `score: any_of`"
);
bad_suite!(
    too_few_vqa_answers_for_pass_at,
    "cases:\n  - id: a\n    question: q\n    pass_at: 0.9\n    answers: [cat, cat, cat]\n",
    "suites/bad.yaml:5: with 3 human answers the best VQA accuracy is 0.667, below pass_at 0.9",
    "expected at least 4 answers"
);
bad_suite!(
    choice_out_of_range,
    "cases:\n  - { id: a, question: q, expect: { choice: D, options: [x, y] } }\n",
    "`choice: D` but only 2 options are given"
);
bad_suite!(
    gate_override_for_unknown_model,
    "gate:\n  models: { nobody: { min_accuracy: 0.3 } }\ncases:\n  - { id: a, question: q, expect: { contains: x } }\n",
    "suites/bad.yaml:2: gate override for unknown model `nobody` (models in models.toml: m)"
);
bad_suite!(
    invalid_suite_name,
    "name: Bad Name\ncases:\n  - { id: a, question: q, expect: { contains: x } }\n",
    "suites/bad.yaml:1: invalid suite name `Bad Name`"
);

#[test]
fn undecodable_image() {
    assert_error(
        &[
            ("suites/images/broken.png", b"this is not a png"),
            (
                "suites/bad.yaml",
                b"cases:\n  - { id: a, image: images/broken.png, question: q, expect: { contains: x } }\n",
            ),
        ],
        &["suites/bad.yaml:2: image `images/broken.png` cannot be decoded"],
    );
}

#[test]
fn binary_suite_file() {
    assert_error(
        &[("suites/bad.yaml", &[0x89, b'P', b'N', b'G', 0, 0, 1, 2])],
        &["suites/bad.yaml: binary file (expected a YAML suite"],
    );
}

#[test]
fn every_error_of_every_file_is_reported_at_once() {
    assert_error(
        &[
            (
                "suites/one.yaml",
                b"cases:\n  - { id: a, question: q, expect: { regex: '[' } }\n",
            ),
            (
                "suites/two.yaml",
                b"cases:\n  - { id: gate, question: q, expect: { contains: x } }\n",
            ),
        ],
        &[
            "suites/one.yaml:2: invalid regex",
            "suites/two.yaml:2: case id `gate` is reserved",
            "2 configuration errors",
        ],
    );
}

#[test]
fn duplicate_suite_names_across_files() {
    assert_error(
        &[(
            "suites/sub/other.yaml",
            b"name: ok\ncases:\n  - { id: a, question: q, expect: { contains: x } }\n",
        )],
        &["duplicate suite name `ok`"],
    );
}

macro_rules! bad_models {
    ($name:ident, $toml:expr, $($needle:expr),+) => {
        #[test]
        fn $name() {
            assert_error(&[("models.toml", $toml.as_bytes())], &[$($needle),+]);
        }
    };
}

bad_models!(
    unknown_backend,
    "[models.m]\nbackend = \"tensorflow\"\n",
    "models.toml:2: model `m`: unknown variant `tensorflow`, expected one of `candle`, `openai`, `llama-server`"
);
bad_models!(
    toml_syntax,
    "[models.m]\nbackend = \"openai\n",
    "models.toml:2:"
);
bad_models!(
    key_of_another_backend,
    "[models.m]\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"x\"\nrepo = \"a/b\"\n",
    "models.toml:5: key `repo` does not apply to backend `openai` (its keys: base_url, model, api_key_env, timeout_s, concurrency, stream)"
);
bad_models!(
    unknown_key,
    "[models.m]\nbackend = \"openai\"\nbase_urll = \"http://x/v1\"\n",
    "models.toml:",
    "unknown field `base_urll`"
);
bad_models!(
    missing_base_url,
    "[models.m]\nbackend = \"openai\"\nmodel = \"x\"\n",
    "models.toml:1: model `m`: backend `openai` needs `base_url`"
);
bad_models!(
    bad_model_name,
    "[models.\"Big Model\"]\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"x\"\n",
    "invalid model name `Big Model` (expected [a-z0-9_.-]+)"
);
bad_models!(
    out_of_range_temperature,
    "[models.m]\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"x\"\ntemperature = -1.0\n",
    "models.toml:5: `temperature` must be between 0 and 5, got -1"
);
bad_models!(
    key_in_place_of_variable,
    "[models.m]\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"x\"\napi_key_env = \"sk-live-abc\"\n",
    "models.toml:5: `api_key_env` names the environment variable"
);
bad_models!(
    llama_server_without_weights,
    "[models.g]\nbackend = \"llama-server\"\nargs = [\"-c\", \"4096\"]\n",
    "models.toml:1: model `g`: backend `llama-server` needs `hf` (a Hugging Face GGUF repo) or `model`"
);
bad_models!(
    llama_server_with_both_sources,
    "[models.g]\nbackend = \"llama-server\"\nhf = \"a/b\"\nmodel = \"x.gguf\"\n",
    "models.toml:3: give either `hf` (a Hugging Face GGUF repo) or `model` + `mmproj` (local files), not both"
);
bad_models!(
    llama_server_port_in_args,
    "[models.g]\nbackend = \"llama-server\"\nhf = \"a/b\"\nargs = [\"--port\", \"9000\"]\n",
    "models.toml:4: `--port` is set by vlmtest"
);
bad_models!(
    llama_server_openai_key,
    "[models.g]\nbackend = \"llama-server\"\nhf = \"a/b\"\nbase_url = \"http://x/v1\"\n",
    "models.toml:4: key `base_url` does not apply to backend `llama-server`"
);
bad_models!(
    no_models,
    "[defaults]\nmax_new_tokens = 8\n",
    "models.toml: no models declared"
);
bad_models!(empty_models, "", "models.toml: file is empty");
bad_models!(
    candle_unknown_arch,
    "[models.m]\nbackend = \"candle\"\narch = \"smolvml\"\nrepo = \"HuggingFaceTB/SmolVLM-256M-Instruct\"\n",
    "models.toml:3: unknown arch `smolvml`, expected one of `smolvlm`, `moondream2`, `llava-next`, `paligemma`, `phi3-v`"
);
bad_models!(
    candle_needs_a_source,
    "[models.m]\nbackend = \"candle\"\narch = \"smolvlm\"\n",
    "models.toml:1: model `m`: backend `candle` needs `repo`"
);
bad_models!(
    candle_repo_and_path,
    "[models.m]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"a/b\"\npath = \"x\"\n",
    "models.toml:5: give either `repo` (+ `revision`) or `path`, not both"
);
bad_models!(
    candle_bad_repo_dtype_device,
    "[models.m]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"SmolVLM\"\ndtype = \"fp8\"\ndevice = \"tpu\"\n",
    "models.toml:4: `repo` must name a Hugging Face repo",
    "models.toml:5: unknown dtype `fp8`, expected one of `f32`, `f16`, `bf16`, `q8_0`, `q4k`",
    "models.toml:6: unknown device `tpu`, expected one of `cpu`, `cuda`, `metal`, `auto`"
);
bad_models!(
    candle_revision_with_path,
    "[models.m]\nbackend = \"candle\"\narch = \"smolvlm\"\npath = \"x\"\nrevision = \"main\"\n",
    "models.toml:5: `revision` applies to `repo`, not to `path`"
);
bad_models!(
    tokenizer_keys_of_moondream2,
    "[models.m]\nbackend = \"candle\"\narch = \"moondream2\"\nrepo = \"vikhyatk/moondream2\"\ntokenizer = \"tok\"\ntokenizer_repo = \"moondream/starmie-v1\"\n\n[models.n]\nbackend = \"candle\"\narch = \"moondream2\"\nrepo = \"vikhyatk/moondream2\"\ntokenizer_repo = \"starmie-v1\"\n\n[models.s]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"a/b\"\ntokenizer = \"tok\"\n\n[models.o]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\ntokenizer_repo = \"a/b\"\n",
    "models.toml:6: give either `tokenizer` (a local tokenizer.json or its folder) or `tokenizer_repo` (a Hugging Face repo), not both",
    "models.toml:12: `tokenizer_repo` must name a Hugging Face repo such as \"moondream/starmie-v1\", got `starmie-v1`",
    "models.toml:18: `tokenizer` applies to arch `moondream2` only (arch `smolvlm` reads the tokenizer.json of its own repo)",
    "models.toml:24: key `tokenizer_repo` does not apply to backend `openai`"
);
bad_models!(
    candle_key_on_openai,
    "[models.m]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\narch = \"smolvlm\"\n",
    "models.toml:5: key `arch` does not apply to backend `openai`"
);

bad_models!(
    missing_backend,
    "[models.m]\nbase_url = \"http://x/v1\"\n",
    "models.toml:1: model `m` has no `backend` (expected one of: candle, openai, llama-server)"
);
bad_models!(
    backend_not_a_string,
    "[models.m]\nbackend = 3\n",
    "models.toml:2: model `m`: `backend` must be a string, found integer"
);
bad_models!(
    unknown_top_level_key,
    "[model.m]\nbackend = \"openai\"\n",
    "models.toml:1: unknown top-level key `model` (expected `defaults` or `models`)"
);
bad_models!(
    unknown_default_key_has_its_line,
    "[defaults]\nmax_new_tokens = 8\ntemprature = 0.1\n\n[models.m]\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"x\"\n",
    "models.toml:3: [defaults]: unknown field `temprature`, expected one of"
);
bad_models!(
    default_out_of_range_points_at_defaults,
    "[defaults]\ntemperature = 9.0\n\n[models.m]\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"x\"\n",
    "models.toml:2: `temperature` must be between 0 and 5, got 9"
);
bad_models!(
    several_errors_of_several_models_at_once,
    "[models.a]\nbackend = \"openai\"\nmodel = \"x\"\n\n[models.b]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"a/b\"\nconcurrency = 2\n",
    "models.toml:1: model `a`: backend `openai` needs `base_url`",
    "models.toml:9: key `concurrency` does not apply to backend `candle` (its keys: arch, repo, revision, path, dtype, device, tokenizer, tokenizer_repo)"
);

#[test]
fn dotted_model_names_need_no_quotes() {
    let p = Project::new();
    p.suite("ok", SUITE).write(
        "models.toml",
        "[models.phi-3.5-vision]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\n\n[models.\"llava-v1.6\"]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"y\"\ntemprature = 0.5\n",
    );
    let r = p.run(&["--list"], &[]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("models.toml:10: model `llava-v1.6`: unknown field `temprature`"),
        "{}",
        r.stderr
    );
    p.write(
        "models.toml",
        "[models.phi-3.5-vision]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\n",
    );
    let r = p.run(&["--list"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert!(
        r.stdout.contains("phi-3.5-vision::ok::a: test"),
        "{}",
        r.stdout
    );
}

#[test]
fn missing_suites_directory() {
    let p = Project::new();
    p.write("models.toml", MODELS);
    let r = p.run(&["--list"], &[("VLMTEST_SUITES", "does/not/exist")]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("suites not found: does/not/exist"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_max_resident() {
    let p = Project::new();
    p.write("models.toml", MODELS).suite("ok", SUITE);
    let r = p.run(&["--list"], &[("VLMTEST_MAX_RESIDENT", "zero")]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("VLMTEST_MAX_RESIDENT must be a whole number >= 1"),
        "{}",
        r.stderr
    );
}

/// An HTTP-only build (`--no-default-features`) refuses a candle model at load time, naming the
/// feature; the default build takes the same file.
#[test]
fn a_candle_model_needs_the_candle_feature() {
    let p = Project::new();
    p.suite("ok", SUITE).write(
        "models.toml",
        "[models.m]\nbackend = \"candle\"\narch = \"smolvlm\"\npath = \"somewhere\"\n",
    );
    let r = p.run(&["--list"], &[]);
    if cfg!(feature = "candle") {
        assert_eq!(r.code, Some(0), "{}", r.all());
    } else {
        assert_eq!(r.code, Some(2), "{}", r.all());
        assert!(
            r.stderr
                .contains("models.toml:2: model `m`: backend `candle` (in-process models) needs vlmtest built with the `candle` cargo feature"),
            "{}",
            r.stderr
        );
    }
}
