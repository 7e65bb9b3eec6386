//! Reading a config: which file (`locate`), `$VAR` expansion (unless `-no-expand-env`),
//! the schema pass, literal-credential notes and serde; `resolve` in mod.rs validates.
//! Never opens a replica or a database.

use super::*;

/// Whether config files get `$VAR` expansion (`-no-expand-env` turns it off). Set once by
/// the binary before any config is read.
static EXPAND_ENV: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn set_expand_env(on: bool) {
    EXPAND_ENV.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Where the default config files are (`WALSHIP_ETC` moves them, for tests).
fn etc(name: &str) -> PathBuf {
    match std::env::var_os("WALSHIP_ETC") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join(name),
        _ => PathBuf::from("/etc").join(name),
    }
}

/// The config file a command reads: the one given (`-config`, `WALSHIP_CONFIG`), else
/// `LITESTREAM_CONFIG`, else `/etc/walship.yml` if it exists, else `/etc/litestream.yml`
/// if it exists, else `/etc/walship.yml` (whose absence the reader then names).
pub fn locate(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("LITESTREAM_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let own = etc("walship.yml");
    let theirs = etc("litestream.yml");
    if !own.exists() && theirs.exists() {
        return theirs;
    }
    own
}

/// Read, interpolate and validate a config file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound && path == etc("walship.yml") {
            format!(
                " (nor does {}; give -config FILE)",
                etc("litestream.yml").display()
            )
        } else {
            String::new()
        };
        Error::Config(format!(
            "cannot read config file {}: {e}{hint}",
            path.display()
        ))
    })?;
    let expand = EXPAND_ENV.load(std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id().to_string();
    let env = |k: &str| match k {
        // Litestream's one built-in variable.
        "PID" => Some(pid.clone()),
        _ => std::env::var(k).ok(),
    };
    let mut cfg = parse_with(&text, &env, expand).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
        e => e,
    })?;
    cfg.source = Some(path.to_path_buf());
    Ok(cfg)
}

/// Parse config text with the given environment (pure).
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    parse_with(text, env, true)
}

fn parse_with(text: &str, env: &dyn Fn(&str) -> Option<String>, expand: bool) -> Result<Config> {
    let mut tree: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| Error::Config(format!("malformed YAML: {e}")))?;
    if tree.is_null() {
        tree = serde_yaml_ng::Value::Mapping(Default::default());
    }
    // `<<: *defaults` (the anchor-and-merge pattern of real configs), as Go's YAML does.
    tree.apply_merge()
        .map_err(|e| Error::Config(format!("malformed YAML: {e}")))?;
    let literal = if expand {
        literal_credentials(&tree)
    } else {
        Vec::new()
    };
    if expand {
        let missing = interp::interpolate(&mut tree, env);
        if !missing.is_empty() {
            let names: Vec<_> = missing.into_iter().collect();
            return Err(Error::Config(format!(
                "undefined environment variable{}: {}",
                if names.len() > 1 { "s" } else { "" },
                names.join(", ")
            )));
        }
    }
    let mut notes = Vec::new();
    schema::normalize(&mut tree, &mut notes)?;
    let raw: RawConfig =
        serde_yaml_ng::from_value(tree).map_err(|e| Error::Config(e.to_string()))?;
    if let Some((here, key)) = literal.first()
        && raw.strict_secrets == Some(true)
    {
        return Err(Error::Config(format!(
            "{here} holds a literal credential and strict-secrets is set: write `{key}: ${{{}}}` \
             (or leave the key out and set {})",
            env_name(key),
            env_name(key)
        )));
    }
    for (here, key) in &literal {
        notes.push(format!(
            "{here} holds a literal credential; it is used, but a config file is not a secret \
             store: write `{key}: ${{{}}}` and keep the key in a Secret (or leave the key out \
             and set {}); `strict-secrets: true` refuses literal keys",
            env_name(key),
            env_name(key)
        ));
    }
    let mut cfg = resolve(raw)?;
    cfg.notes = notes;
    Ok(cfg)
}

fn env_name(key: &str) -> &'static str {
    if key == "access-key-id" {
        "AWS_ACCESS_KEY_ID"
    } else {
        "AWS_SECRET_ACCESS_KEY"
    }
}

/// Where the config holds a credential as text rather than a `$VAR` reference, with the
/// key's name (never its value).
fn literal_credentials(tree: &serde_yaml_ng::Value) -> Vec<(String, &'static str)> {
    fn visit(v: &serde_yaml_ng::Value, at: &str, out: &mut Vec<(String, &'static str)>) {
        match v {
            serde_yaml_ng::Value::Mapping(m) => {
                for (k, val) in m {
                    let key = k.as_str().unwrap_or("?");
                    let here = if at.is_empty() {
                        key.to_string()
                    } else {
                        format!("{at}.{key}")
                    };
                    let which = match key {
                        "access-key-id" => Some("access-key-id"),
                        "secret-access-key" => Some("secret-access-key"),
                        _ => None,
                    };
                    if let Some(which) = which
                        && let Some(s) = val.as_str()
                        && !s.is_empty()
                        && !interp::is_single_reference(s)
                    {
                        out.push((here.clone(), which));
                    }
                    visit(val, &here, out);
                }
            }
            serde_yaml_ng::Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    visit(item, &format!("{at}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    visit(tree, "", &mut out);
    out
}
