//! report.html after a real run of the bundled suites against three stand-in models (one that
//! knows many answers, one that knows none, one whose server is down), read back with a small
//! HTML tokenizer: the page parses with balanced tags, every case is there with its images,
//! failures come first, the filters list the run's models, suites and categories, each image is
//! embedded once, and nothing is loaded from outside the file.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine;
use common::{Project, Reply, Server};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// A small HTML tokenizer and tree: enough to check report.html's structure.

#[derive(Debug, Default)]
struct Element {
    tag: String,
    attrs: BTreeMap<String, String>,
    children: Vec<Node>,
}

#[derive(Debug)]
enum Node {
    Element(Element),
    Text(String),
}

/// Elements that have no end tag.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];
/// Elements whose content is raw text up to their end tag.
const RAW: &[&str] = &["script", "style"];

fn line_of(html: &str, at: usize) -> usize {
    html[..at].matches('\n').count() + 1
}

/// Decodes the entities report.html may use; any other `&` is an escaping bug.
fn unescape(text: &str, html: &str, at: usize) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let end = after
            .find(';')
            .filter(|e| *e <= 8)
            .ok_or_else(|| format!("line {}: bare `&` in {text:?}", line_of(html, at)))?;
        out.push_str(match &after[..=end] {
            "&amp;" => "&",
            "&lt;" => "<",
            "&gt;" => ">",
            "&quot;" => "\"",
            "&apos;" => "'",
            other => {
                return Err(format!(
                    "line {}: unknown entity {other}",
                    line_of(html, at)
                ));
            }
        });
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `html` into its root element; an unclosed, stray or mismatched tag, a bare `&` or an
/// unknown entity is an error naming the line.
fn parse(html: &str) -> Result<Element, String> {
    let mut stack = vec![Element {
        tag: "#root".into(),
        ..Element::default()
    }];
    let mut i = 0;
    let b = html.as_bytes();
    while i < b.len() {
        if b[i] != b'<' {
            let end = html[i..].find('<').map_or(b.len(), |e| i + e);
            let text = unescape(&html[i..end], html, i)?;
            stack.last_mut().unwrap().children.push(Node::Text(text));
            i = end;
            continue;
        }
        let close = html[i..]
            .find('>')
            .map(|e| i + e)
            .ok_or_else(|| format!("line {}: `<` never closed", line_of(html, i)))?;
        let inner = &html[i + 1..close];
        if let Some(doctype) = inner.strip_prefix('!') {
            if !doctype.eq_ignore_ascii_case("doctype html") {
                return Err(format!("line {}: <!{doctype}>", line_of(html, i)));
            }
        } else if let Some(name) = inner.strip_prefix('/') {
            let open = stack.pop().unwrap();
            if open.tag != name.trim() || stack.is_empty() {
                return Err(format!(
                    "line {}: </{name}> closes <{}>",
                    line_of(html, i),
                    open.tag
                ));
            }
            stack.last_mut().unwrap().children.push(Node::Element(open));
        } else {
            let (tag, attrs) = tag_and_attrs(inner, html, i)?;
            let el = Element {
                tag: tag.clone(),
                attrs,
                children: Vec::new(),
            };
            if VOID.contains(&tag.as_str()) {
                stack.last_mut().unwrap().children.push(Node::Element(el));
            } else if RAW.contains(&tag.as_str()) {
                let end_tag = format!("</{tag}>");
                let end = html[close..]
                    .find(&end_tag)
                    .map(|e| close + e)
                    .ok_or_else(|| format!("line {}: <{tag}> never closed", line_of(html, i)))?;
                let mut el = el;
                el.children
                    .push(Node::Text(html[close + 1..end].to_string()));
                stack.last_mut().unwrap().children.push(Node::Element(el));
                i = end + end_tag.len();
                continue;
            } else {
                stack.push(el);
            }
        }
        i = close + 1;
    }
    if stack.len() != 1 {
        let open: Vec<&str> = stack.iter().skip(1).map(|e| e.tag.as_str()).collect();
        return Err(format!("unclosed at the end: {open:?}"));
    }
    Ok(stack.pop().unwrap())
}

fn tag_and_attrs(
    inner: &str,
    html: &str,
    at: usize,
) -> Result<(String, BTreeMap<String, String>), String> {
    let inner = inner.trim_end_matches('/');
    let name_end = inner.find(char::is_whitespace).unwrap_or(inner.len());
    let tag = inner[..name_end].to_ascii_lowercase();
    if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("line {}: bad tag <{inner}>", line_of(html, at)));
    }
    let mut attrs = BTreeMap::new();
    let mut rest = inner[name_end..].trim_start();
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        rest = &rest[end..];
        let value = if let Some(r) = rest.strip_prefix("=\"") {
            let close = r
                .find('"')
                .ok_or_else(|| format!("line {}: unclosed attribute {name}", line_of(html, at)))?;
            let v = unescape(&r[..close], html, at)?;
            rest = &r[close + 1..];
            v
        } else if rest.starts_with('=') {
            return Err(format!(
                "line {}: unquoted attribute {name}",
                line_of(html, at)
            ));
        } else {
            String::new()
        };
        if attrs.insert(name.clone(), value).is_some() {
            return Err(format!(
                "line {}: attribute {name} twice",
                line_of(html, at)
            ));
        }
        rest = rest.trim_start();
    }
    Ok((tag, attrs))
}

impl Element {
    /// Every element below this one, depth first, in document order.
    fn all(&self) -> Vec<&Element> {
        let mut out = Vec::new();
        for c in &self.children {
            if let Node::Element(e) = c {
                out.push(e);
                out.extend(e.all());
            }
        }
        out
    }

    fn find(&self, pred: impl Fn(&Element) -> bool) -> Vec<&Element> {
        self.all().into_iter().filter(|e| pred(e)).collect()
    }

    fn by_id(&self, id: &str) -> &Element {
        let found = self.find(|e| e.attrs.get("id").is_some_and(|v| v == id));
        assert_eq!(found.len(), 1, "#{id}");
        found[0]
    }

    fn has_class(&self, class: &str) -> bool {
        self.attrs
            .get("class")
            .is_some_and(|c| c.split_whitespace().any(|k| k == class))
    }

    fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.children {
            match c {
                Node::Text(t) => s.push_str(t),
                Node::Element(e) => s.push_str(&e.text()),
            }
        }
        s
    }

    fn attr(&self, name: &str) -> &str {
        self.attrs.get(name).map(String::as_str).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

fn suites_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("suites")
}

/// A model that knows some answers (and gets a few wrong on purpose), answering one of them
/// with markup that the page must escape.
fn knowing() -> Server {
    Server::answering(&[
        ("Is there a cat", "Yes."),
        ("Is there a dog", "Yes, a small one."),
        ("silhouette", "Horse"),
        ("profession", "Astronaut"),
        ("How many coins are in the picture", "12"),
        ("How many legs", "4"),
        ("saucer next to the cup", "B"),
        (
            "Describe this photo",
            "<i>A man & his \"camera\" on a tripod",
        ),
        ("capital of France", "Paris"),
        ("capital of Japan", "Kyoto"),
        ("largest", "Jupiter"),
        ("opposite of hot", "cold"),
        ("What color", "white"),
        ("What animal", "a cat"),
    ])
}

fn run_bundled_suites() -> (Project, String, Value) {
    let good = knowing();
    let weak = Server::start(|_| Reply::answer("I don't know"));
    let p = Project::new();
    p.write(
        "models.toml",
        &format!(
            "[models.good]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"g\"\n\n\
             [models.weak]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"w\"\ntext_only = false\n\n\
             [models.down]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"d\"\ntimeout_s = 2\n",
            good.base_url(),
            weak.base_url()
        ),
    );
    let suites = suites_dir();
    let r = p.run(
        &["--test-threads", "4"],
        &[("VLMTEST_SUITES", suites.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(101), "the weak model fails: {}", r.all());
    let html = std::fs::read_to_string(p.path("target/vlmtest/report.html")).unwrap();
    let report = p.report();
    (p, html, report)
}

/// The images each case of the bundled suites shows, by (suite, case), as written.
fn suite_images() -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for f in std::fs::read_dir(suites_dir()).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let y: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let suite = y["name"].as_str().unwrap().to_string();
        for case in y["cases"].as_sequence().unwrap() {
            let mut imgs = BTreeSet::new();
            let mut add = |v: &serde_yaml::Value| {
                if let Some(i) = v["image"].as_str() {
                    imgs.insert(i.to_string());
                }
                for i in v["images"].as_sequence().into_iter().flatten() {
                    imgs.insert(i.as_str().unwrap().to_string());
                }
            };
            add(case);
            for t in case["turns"].as_sequence().into_iter().flatten() {
                add(t);
            }
            out.insert(
                (suite.clone(), case["id"].as_str().unwrap().to_string()),
                imgs,
            );
        }
    }
    out
}

#[test]
fn report_html_shows_every_case_failures_first_with_filters_and_each_image_once() {
    let (p, html, report) = run_bundled_suites();
    let root = parse(&html).unwrap_or_else(|e| panic!("report.html does not parse: {e}"));
    let cases = report["cases"].as_array().unwrap();
    assert!(cases.len() > 100, "{}", cases.len());

    // Every case once, with its model, suite, category and images.
    let articles = root.find(|e| e.tag == "article" && e.has_class("case"));
    assert_eq!(articles.len(), cases.len());
    let images = suite_images();
    let mut used_images = BTreeSet::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let a = root.by_id(name);
        assert_eq!(a.tag, "article", "{name}");
        assert_eq!(a.attr("data-model"), c["model"], "{name}");
        assert_eq!(a.attr("data-suite"), c["suite"], "{name}");
        assert_eq!(a.attr("data-status"), c["status"], "{name}");
        let category = c["category"]
            .as_str()
            .map_or("none".to_string(), |k| format!("cat:{k}"));
        assert_eq!(a.attr("data-category"), category, "{name}");
        let key = (
            c["suite"].as_str().unwrap().to_string(),
            c["case"].as_str().unwrap().to_string(),
        );
        let want = &images[&key];
        let shown: BTreeSet<String> = a
            .find(|e| e.tag == "img")
            .iter()
            .map(|i| {
                assert!(!i.attr("data-img").is_empty(), "{name}: {:?}", i.attrs);
                used_images.insert((
                    key.0.clone(),
                    i.attr("alt").to_string(),
                    i.attr("data-img").to_string(),
                ));
                i.attr("alt").to_string()
            })
            .collect();
        assert_eq!(&shown, want, "{name}: images");
        // Question, expected, answer, score and latency beside them.
        let text = a.text();
        for t in c["turns"].as_array().unwrap() {
            assert!(
                text.contains(t["question"].as_str().unwrap()),
                "{name}: {text}"
            );
            assert!(
                text.contains(t["answer"].as_str().unwrap()),
                "{name}: {text}"
            );
            if let Some(e) = t["expected"].as_str() {
                assert!(text.contains(e), "{name}: {text}");
            }
        }
        match c["status"].as_str().unwrap() {
            "ignored" => {
                // Not asked (server down, or text-only for a model that needs an image): the
                // suite's question is shown, and why.
                assert!(text.contains("(not asked)"), "{name}: {text}");
                assert!(text.contains(c["ignored"].as_str().unwrap()), "{name}");
            }
            _ => {
                assert!(
                    text.contains(&format!("score {:.3}", c["score"].as_f64().unwrap())),
                    "{name}: {text}"
                );
                assert!(
                    text.contains(&format!(
                        "latency {:.0} ms",
                        c["latency_ms"].as_f64().unwrap()
                    )),
                    "{name}: {text}"
                );
            }
        }
    }

    // Failures first, then passes, then ignored cases; each kind is there.
    let rank = |s: &str| match s {
        "failed" | "error" | "interrupted" => 0,
        "passed" => 1,
        _ => 2,
    };
    let ranks: Vec<u8> = articles
        .iter()
        .map(|a| rank(a.attr("data-status")))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
    for r in 0..3 {
        assert!(ranks.contains(&r), "rank {r} missing: {ranks:?}");
    }
    for a in &articles {
        let failed = rank(a.attr("data-status")) == 0;
        assert_eq!(a.attr("data-failed"), if failed { "1" } else { "0" });
    }

    // The filters list exactly the run's models, suites and categories.
    let options = |id: &str| -> (Vec<String>, Vec<String>) {
        let sel = root.by_id(id);
        assert_eq!(sel.tag, "select");
        let opts = sel.find(|e| e.tag == "option");
        assert_eq!(opts[0].attr("value"), "", "{id}: `all` first");
        (
            opts[1..]
                .iter()
                .map(|o| o.attr("value").to_string())
                .collect(),
            opts[1..].iter().map(|o| o.text()).collect(),
        )
    };
    let set = |key: &str| -> BTreeSet<String> {
        cases
            .iter()
            .map(|c| c[key].as_str().unwrap_or("(no category)").to_string())
            .collect()
    };
    let (values, _) = options("f-model");
    assert_eq!(values.into_iter().collect::<BTreeSet<_>>(), set("model"));
    assert_eq!(set("model").len(), 3);
    let (values, _) = options("f-suite");
    assert_eq!(values.into_iter().collect::<BTreeSet<_>>(), set("suite"));
    assert_eq!(set("suite").len(), 4);
    let (values, texts) = options("f-category");
    assert_eq!(texts.into_iter().collect::<BTreeSet<_>>(), set("category"));
    let article_categories: BTreeSet<String> = articles
        .iter()
        .map(|a| a.attr("data-category").to_string())
        .collect();
    assert_eq!(
        values.into_iter().collect::<BTreeSet<_>>(),
        article_categories
    );
    let failed_only = root.by_id("f-failed");
    assert_eq!(
        (failed_only.tag.as_str(), failed_only.attr("type")),
        ("input", "checkbox")
    );

    // The summary table comes first, a row per model.
    let first_table = html.find("<table").unwrap();
    assert!(first_table < html.find("<article").unwrap());
    let summary = root.by_id("summary").text();
    for m in ["good", "weak", "down"] {
        assert!(summary.contains(m), "{summary}");
    }

    // Each image is embedded once, as the bytes of its file, and every <img> finds it.
    let script = root
        .find(|e| e.tag == "script")
        .into_iter()
        .map(|e| e.text())
        .collect::<String>();
    let table: BTreeMap<String, String> = script
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().trim_end_matches(',').split_once(": ")?;
            Some((
                k.trim_matches('"').to_string(),
                v.trim_matches('"').to_string(),
            ))
        })
        .filter(|(_, v)| v.starts_with("data:"))
        .collect();
    // The bundled suites share one images/ folder: a name is a file.
    let mut by_id: BTreeMap<String, String> = BTreeMap::new();
    for (_, shown, id) in &used_images {
        let prev = by_id.insert(id.clone(), shown.clone());
        assert!(
            prev.is_none_or(|p| &p == shown),
            "id {id} used for two files"
        );
        let url = table
            .get(id)
            .unwrap_or_else(|| panic!("image {id} ({shown}) not embedded"));
        let (head, b64) = url.split_once(',').unwrap();
        let file = suites_dir().join(shown);
        let mime = if shown.ends_with(".png") {
            "image/png"
        } else {
            "image/jpeg"
        };
        assert_eq!(head, format!("data:{mime};base64"), "{shown}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert!(
            bytes == std::fs::read(&file).unwrap(),
            "{shown}: not the file's bytes"
        );
    }
    assert_eq!(
        table.len(),
        by_id.len(),
        "images embedded but never shown, or twice"
    );
    let distinct: BTreeSet<&String> = images.values().flatten().collect();
    assert_eq!(table.len(), distinct.len(), "each image of the suites once");
    assert_eq!(html.matches(";base64,").count(), distinct.len());

    // Self-contained: nothing fetched from elsewhere.
    // (Text may mention URLs — the down model's reason names its server — but no element,
    // style or script refers to one.)
    for e in root.all() {
        for (k, v) in &e.attrs {
            let in_page = k == "href" && v.starts_with('#');
            assert!(
                in_page || !matches!(k.as_str(), "src" | "href" | "srcset" | "action" | "poster"),
                "<{} {k}={v:?}>: the page loads nothing from a URL",
                e.tag
            );
            assert!(!v.contains("://"), "<{} {k}={v:?}>", e.tag);
        }
        assert!(
            !matches!(
                e.tag.as_str(),
                "link" | "iframe" | "object" | "embed" | "base"
            ),
            "<{}>",
            e.tag
        );
        if e.tag == "style" || e.tag == "script" {
            let code = e.text();
            for bad in [
                "://",
                "url(",
                "@import",
                "fetch(",
                "XMLHttpRequest",
                "import(",
            ] {
                assert!(!code.contains(bad), "<{}> holds {bad}", e.tag);
            }
        }
    }
    assert!(
        html.contains("http://127.0.0.1:9/v1"),
        "the reason is shown"
    );

    // The answer with markup is shown as text, not as markup.
    let camera = root.by_id("good::simple::camera-scene-description").text();
    assert!(
        camera.contains("<i>A man & his \"camera\" on a tripod"),
        "{camera}"
    );
    assert!(root.find(|e| e.tag == "i").is_empty());

    // `vlmtest report` rebuilds the same page from the records.
    let before = html.clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vlmtest"))
        .args(["report", "--out"])
        .arg(p.path("target/vlmtest"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::read_to_string(p.path("target/vlmtest/report.html")).unwrap();
    assert!(after == before, "vlmtest report renders another page");
}

#[test]
fn the_tokenizer_refuses_what_a_browser_would_misread() {
    assert!(parse("<!doctype html><html><body><p>a &amp; b</p></body></html>").is_ok());
    for bad in [
        "<div><p>unclosed</div>",
        "<p>stray</p></p>",
        "<p>a & b</p>",
        "<p>a &nbsp; b</p>",
        "<img src=x>",
        "<div class=\"a\" class=\"b\"></div>",
        "<div>",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}
