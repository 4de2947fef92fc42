//! Every documented default, held to the code: writing a key at its documented default changes
//! nothing (so the constant in `src/defaults.rs` is what validation uses), the example config sets
//! it to that value with a comment that says so, and the README's configuration table says the
//! same. The code, the example and the README cannot drift apart.

use std::path::Path;
use usher::defaults::DOCUMENTED;
use usher::Config;

const MINIMAL: &str = r#"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001"]
[[routes]]
name = "all"
pool = "web"
"#;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `MINIMAL` with `key = value` written in: into its section, or into the first pool or route.
fn with(key: &str, value: &str) -> String {
    let (section, name) = key.split_once('.').unwrap();
    match section {
        "pools" => MINIMAL.replace(
            "upstreams = [\"127.0.0.1:9001\"]\n",
            &format!("upstreams = [\"127.0.0.1:9001\"]\n{name} = {value}\n"),
        ),
        "routes" => MINIMAL.replace(
            "pool = \"web\"\n",
            &format!("pool = \"web\"\n{name} = {value}\n"),
        ),
        // A section whose presence turns something on is written with what it needs.
        "access_log" => format!("{ACCESS_LOG}{name} = {value}\n{MINIMAL}"),
        _ => format!("[{section}]\n{name} = {value}\n{MINIMAL}"),
    }
}

const ACCESS_LOG: &str = "[access_log]\npath = \"-\"\n";

/// What `with(key, ..)` is compared to: `MINIMAL`, with what the key's section needs.
fn baseline(key: &str) -> String {
    if key.starts_with("access_log.") {
        format!("{ACCESS_LOG}{MINIMAL}")
    } else {
        MINIMAL.to_string()
    }
}

#[test]
fn writing_a_default_changes_nothing() {
    let dir = Path::new(".");
    for (key, value) in DOCUMENTED {
        let plain = format!("{:?}", Config::parse(&baseline(key), dir).unwrap());
        let text = with(key, value);
        let cfg = Config::parse(&text, dir).unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
        assert_eq!(
            format!("{cfg:?}"),
            plain,
            "{key} = {value} is not what an absent {key} means"
        );
    }
}

/// The example's lines as (section, key, value, comment block above the key's group).
fn example_keys() -> Vec<(String, String, String, String)> {
    let text = std::fs::read_to_string(root().join("config/usher.example.toml")).unwrap();
    let mut out = Vec::new();
    let (mut section, mut comment, mut in_group) = (String::new(), String::new(), false);
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            comment.clear();
            in_group = false;
        } else if let Some(c) = t.strip_prefix('#') {
            if in_group {
                comment.clear();
                in_group = false;
            }
            comment.push_str(c);
            comment.push(' ');
        } else if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').to_string();
            comment.clear();
            in_group = false;
        } else if let Some((k, v)) = t.split_once(" = ") {
            in_group = true;
            out.push((
                section.clone(),
                k.to_string(),
                v.to_string(),
                comment.clone(),
            ));
        }
    }
    out
}

#[test]
fn the_example_config_sets_and_names_every_default() {
    let lines = example_keys();
    let mut wrong = Vec::new();
    for (key, value) in DOCUMENTED {
        let (section, name) = key.split_once('.').unwrap();
        let found = lines
            .iter()
            .find(|(s, k, v, _)| s == section && k == name && v == value);
        match found {
            None => wrong.push(format!("no `{name} = {value}` in [{section}]")),
            Some((_, _, _, comment))
                if !(comment.to_lowercase().contains("default") && comment.contains(value)) =>
            {
                wrong.push(format!(
                    "the comment above {key} does not say its default {value}"
                ))
            }
            Some(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "config/usher.example.toml:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_readme_table_says_every_default() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let rows: Vec<Vec<&str>> = readme
        .lines()
        .filter(|l| l.starts_with("| `") || l.starts_with("| `[["))
        .map(|l| l.split(" | ").collect())
        .collect();
    let mut wrong = Vec::new();
    for (key, value) in DOCUMENTED {
        let (section, name) = key.split_once('.').unwrap();
        let names_key = |cell: &str| match section {
            "pools" | "routes" => {
                cell.contains(&format!("[[{section}]]")) && cell.contains(&format!("`{name}"))
                    || cell.contains(&format!(" {name}"))
                        && cell.contains(&format!("[[{section}]]"))
            }
            _ => {
                cell.contains(&format!("`{key}`"))
                    || cell.contains(&format!("`{section}.")) && cell.contains(&format!("`{name}`"))
            }
        };
        match rows.iter().find(|r| r.len() >= 2 && names_key(r[0])) {
            None => wrong.push(format!("no row in the configuration table for {key}")),
            Some(row) if !row[1].contains(value) => wrong.push(format!(
                "the row for {key} does not give its default {value}"
            )),
            Some(_) => {}
        }
    }
    assert!(wrong.is_empty(), "README.md:\n{}", wrong.join("\n"));
}
