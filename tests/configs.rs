//! Every checked-in example config loads and validates, and broken configs
//! fail with an error that names the file, the key and the problem.

use std::path::{Path, PathBuf};

use lanswarm::config::{Config, ConfigError};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("swarm-config")
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(example_dir())
        .expect("swarm-config/ exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_loads_and_validates() {
    let files = example_files();
    assert!(
        files.len() >= 4,
        "expected the example configs in swarm-config/, found {files:?}"
    );
    for path in files {
        let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            config.origin.as_deref(),
            Some(path.display().to_string().as_str())
        );
    }
}

#[test]
fn default_example_matches_the_built_in_defaults() {
    let path = example_dir().join("default.toml");
    let from_file = Config::load(Some(&path)).unwrap();
    assert_eq!(
        from_file,
        Config {
            origin: from_file.origin.clone(),
            ..Config::default()
        },
        "swarm-config/default.toml must list the real defaults"
    );
}

#[test]
fn simulation_example_declares_its_hardware() {
    let path = example_dir().join("simulation-node.toml");
    let config = Config::load(Some(&path)).unwrap();
    assert!(!config.network.mdns, "simulation nodes never multicast");
    assert!(!config.resources.detect_gpus);
    assert_eq!(config.resources.gpus.len(), 2);
    assert!(config.api.listen.ip().is_loopback());
    // The same capacity on every machine.
    let machine = lanswarm::hw::MachineInfo::default();
    let (capacity, gpus) = lanswarm::hw::lendable(&config, &machine, &[]);
    assert_eq!(capacity.cpu_cores, 8);
    assert_eq!(capacity.memory_mb, 32 * 1024);
    assert_eq!(capacity.gpus.len(), 2);
    assert!(gpus.iter().all(|g| g.synthetic));
}

/// Writes `text` to a file in a temporary directory and loads it.
fn load_broken(name: &str, text: &str) -> (PathBuf, ConfigError, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let err = Config::load(Some(&path)).expect_err("config should be rejected");
    (path, err, dir)
}

fn assert_mentions(name: &str, text: &str, key: &str, problem: &str) {
    let (path, err, _dir) = load_broken(name, text);
    let shown = err.to_string();
    eprintln!("{shown}");
    assert!(
        shown.contains(&path.display().to_string()),
        "error should name the file {}: {shown}",
        path.display()
    );
    assert!(
        shown.contains(key),
        "error should name the key {key}: {shown}"
    );
    assert!(
        shown.contains(problem),
        "error should say {problem:?}: {shown}"
    );
}

#[test]
fn bad_toml_syntax_names_file_line_and_problem() {
    let (path, err, _dir) = load_broken("syntax.toml", "[lend]\nmemory = \"8GiB\n");
    let shown = err.to_string();
    eprintln!("{shown}");
    assert!(matches!(err, ConfigError::Parse { line: 2, .. }), "{err:?}");
    assert!(
        shown.starts_with(&format!("{}:2:", path.display())),
        "{shown}"
    );
    assert!(shown.contains("string"), "{shown}");
}

#[test]
fn unknown_key_is_rejected() {
    assert_mentions(
        "typo.toml",
        "[lend]\nmemroy = \"8GiB\"\n",
        "lend.memroy",
        "unknown field `memroy`",
    );
    assert_mentions(
        "section.toml",
        "[lendd]\nmemory = \"8GiB\"\n",
        "lendd",
        "unknown field `lendd`",
    );
}

#[test]
fn bad_size_is_rejected() {
    assert_mentions(
        "size.toml",
        "[lend]\nmemory = \"lots\"\n",
        "lend.memory",
        "expected \"all\", a percentage like \"75%\" or a size like \"12GiB\", got \"lots\"",
    );
    assert_mentions(
        "gpu-size.toml",
        "[[resources.gpus]]\nname = \"x\"\nmemory = \"40GB of it\"\n",
        "resources.gpus[0].memory",
        "invalid size \"40GB of it\"",
    );
}

#[test]
fn latitude_out_of_range_is_rejected() {
    assert_mentions(
        "lat.toml",
        "[location]\nlatitude = 123.0\nlongitude = 13.4\n",
        "location.latitude",
        "must be between -90 and 90 degrees, got 123",
    );
}

/// The config alone cannot tell: a token may also be in the data
/// directory's token file (`lanswarm token create`). So the file loads,
/// and starting refuses while neither exists, naming the key and what to
/// do; a stored token is enough.
#[test]
fn non_loopback_api_without_token_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open-api.toml");
    std::fs::write(&path, "[api]\nlisten = \"0.0.0.0:7700\"\n").unwrap();
    let cfg = Config::load(Some(&path)).expect("the file itself is valid");
    let data = dir.path().join("data");
    let err = lanswarm::daemon::api_auth(&cfg, &data)
        .err()
        .expect("no token anywhere: refused")
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("api.token: a token is required because api.listen (0.0.0.0:7700) is not a loopback address")
            && err.contains("lanswarm token create"),
        "{err}"
    );
    let file = data.join(lanswarm::api::tokens::TOKEN_FILE);
    lanswarm::api::tokens::create(&file, lanswarm::api::tokens::TokenRole::Admin, None).unwrap();
    let auth = lanswarm::daemon::api_auth(&cfg, &data).expect("a stored token is enough");
    assert!(auth.required());
}

#[test]
fn bad_values_found_by_validation_name_the_key() {
    assert_mentions(
        "leases.toml",
        "[leases]\nmin = \"10m\"\ndefault = \"1m\"\n",
        "leases.default",
        "must be at least leases.min (10m), got 1m",
    );
    assert_mentions(
        "strategy.toml",
        "[strategy]\ndefault = \"fastest\"\n",
        "strategy.default",
        "unknown strategy \"fastest\"",
    );
    assert_mentions(
        "addr.toml",
        "[network]\nbootstrap = [\"/ip4/10.0.0.1/tcp/1\", \"10.0.0.2:4001\"]\n",
        "network.bootstrap[1]",
        "expected a multiaddr",
    );
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = Config::load(Some(&path)).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.toml"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn bad_elastic_forecast_values_name_the_key() {
    assert_mentions(
        "horizon.toml",
        "[elastic]\nenabled = true\npolicy = \"forecast\"\nhorizon = \"0s\"\n",
        "elastic.horizon",
        "more than 0 and at most the period",
    );
    assert_mentions(
        "smoothing.toml",
        "[elastic]\npolicy = \"forecast\"\nseason_smoothing = 1.5\n",
        "elastic.season_smoothing",
        "greater than 0 and at most 1",
    );
    assert_mentions(
        "policy.toml",
        "[elastic]\npolicy = \"clairvoyant\"\n",
        "policy",
        "clairvoyant",
    );
}
