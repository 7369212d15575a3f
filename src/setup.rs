//! Writing a new configuration: `credvend init` (the main file and its drop-in
//! directory) and `credvend mapping new` (one customer's mapping file with a fresh
//! External ID and token), and the token generator `credvend token new` shares.
//!
//! Files are created, never replaced (`O_EXCL`), mode 0600 for files and 0700 for the
//! directories it makes: they hold External IDs, and credvend refuses config files and
//! include directories other users could write. A mapping file is checked against the
//! configuration it joins before the command reports success: if the main file loaded
//! before and does not with the new file, the new file is removed and the problems are
//! returned, so `mapping new` leaves either a configuration that passes `check-config`
//! or the one it found (README.md, "Two customers, step by step").

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::aws_names::RoleArn;
use crate::config::{Config, ConfigError, EnforcementMode, check_mapping_name};
use crate::policy;
use crate::secret::TokenHash;

/// The main file `init` writes, inside its directory.
pub const MAIN_FILE: &str = "credvend.toml";
/// The drop-in directory `init` makes and `mapping new` writes into.
pub const MAPPINGS_DIR: &str = "mappings.d";

/// Why a setup command did nothing (or undid what it did).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Bad input: a mapping name or role ARN that the configuration would refuse.
    #[error("{0}")]
    Usage(String),
    /// The file is there already; setup never overwrites one.
    #[error("{} already exists; not overwriting it (remove it, or choose another {what})", path.display())]
    Exists { path: PathBuf, what: &'static str },
    /// The configuration loaded before the new mapping file and does not with it; the
    /// file was removed again.
    #[error("with {} the configuration is invalid, so it was removed again:\n{problems}", path.display())]
    Rejected {
        path: PathBuf,
        problems: ConfigError,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SetupError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SetupError {
        let path = path.to_path_buf();
        move |source| SetupError::Io { what, path, source }
    }
}

/// A new worker token: 256 bits from the OS CSPRNG, hex-encoded (64 characters, safe
/// in any header and file, no newline).
pub fn new_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The main file `init` writes: loopback listeners, the default STS region and
/// enforcement, and the drop-in directory as the place for mappings.
pub fn main_config_text() -> String {
    format!(
        r#"# credvend configuration, written by `credvend init`. Every key and its default:
# config/credvend.toml in the source; the schema: docs/design.md, Configuration.
# Check it with `credvend check-config --config THIS_FILE`.

# One file per customer in {MAPPINGS_DIR}/, written by `credvend mapping new NAME --role-arn ARN`.
include = ["{MAPPINGS_DIR}/*.toml"]

[server]
# Loopback only: anything else could hand credentials to other hosts.
listen = ["127.0.0.1:8901", "[::1]:8901"]
# /metrics /healthz /readyz /status
admin_listen = "127.0.0.1:8902"

[sts]
region = "us-east-1"

[verify]
# Refuse roles whose trust policy does not require the External ID.
external_id_enforcement = "require"
"#
    )
}

/// What `init` made.
#[derive(Debug)]
pub struct Initialized {
    pub main: PathBuf,
    pub mappings_dir: PathBuf,
}

/// `credvend init --dir DIR`: creates `DIR` (0700) if missing, writes
/// `DIR/credvend.toml` (0600; refuses when it exists) and creates `DIR/mappings.d`
/// (0700; an existing one is kept).
pub fn init(dir: &Path) -> Result<Initialized, SetupError> {
    let main = dir.join(MAIN_FILE);
    if main.exists() {
        return Err(SetupError::Exists {
            path: main,
            what: "directory",
        });
    }
    make_dir(dir)?;
    let mappings_dir = dir.join(MAPPINGS_DIR);
    make_dir(&mappings_dir)?;
    create_private_file(&main, &main_config_text(), "directory")?;
    Ok(Initialized { main, mappings_dir })
}

/// Creates `dir` and its missing parents, mode 0700 (before the umask); an existing
/// directory is left as it is.
fn make_dir(dir: &Path) -> Result<(), SetupError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(SetupError::io("cannot create directory", dir))
}

/// Writes `text` to a new file at `path`, mode 0600; never replaces one.
fn create_private_file(path: &Path, text: &str, what: &'static str) -> Result<(), SetupError> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(SetupError::Exists {
                path: path.to_path_buf(),
                what,
            });
        }
        Err(e) => return Err(SetupError::io("cannot create", path)(e)),
    };
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let _ = fs::remove_file(path);
            SetupError::io("cannot write", path)(e)
        })
}

/// A mapping to write: checked name and role, optional enforcement override.
#[derive(Debug, Clone)]
pub struct MappingRequest {
    pub name: String,
    pub role_arn: RoleArn,
    pub enforcement: Option<EnforcementMode>,
}

impl MappingRequest {
    /// Checks `name` and `role_arn` with the configuration's own rules.
    pub fn new(
        name: &str,
        role_arn: &str,
        enforcement: Option<EnforcementMode>,
    ) -> Result<MappingRequest, SetupError> {
        check_mapping_name(name)
            .map_err(|reason| SetupError::Usage(format!("mapping name `{name}`: {reason}")))?;
        let role_arn = RoleArn::try_from(role_arn.to_owned())
            .map_err(|reason| SetupError::Usage(format!("--role-arn: {reason}")))?;
        Ok(MappingRequest {
            name: name.to_owned(),
            role_arn,
            enforcement,
        })
    }
}

/// The text of one mapping file. The table name is quoted when the mapping name has a
/// dot (a bare dotted key would nest tables).
pub fn mapping_text(request: &MappingRequest, external_id: &str, token_hash: &TokenHash) -> String {
    let name = &request.name;
    let table = if name.contains('.') {
        format!("mappings.\"{name}\"")
    } else {
        format!("mappings.{name}")
    };
    let mut text = format!(
        "# Mapping `{name}`, written by `credvend mapping new`. The worker's token was printed\n\
         # once; only its SHA-256 is kept here. `credvend onboard {name}` prints the customer's\n\
         # trust policy with this External ID.\n\
         [{table}]\n\
         role_arn = \"{role}\"\n\
         external_id = \"{external_id}\"\n\
         token_sha256 = [\"{hash}\"]\n",
        role = request.role_arn,
        hash = token_hash.to_hex(),
    );
    if let Some(mode) = request.enforcement {
        text.push_str(&format!(
            "external_id_enforcement = \"{}\"\n",
            mode.as_str()
        ));
    }
    text
}

/// What `mapping new` made. The token is the only copy: print it once.
pub struct NewMapping {
    pub path: PathBuf,
    pub token: String,
    pub external_id: String,
    /// The configuration with the mapping in it, when the main file exists and loads.
    pub config: Option<Config>,
    /// Why the new mapping is not (yet) in use, when it is not: the main file is
    /// missing, invalid already, or does not include the file.
    pub not_included: Option<String>,
}

/// `credvend mapping new`: writes `DIR/mappings.d/NAME.toml` (0600, never replacing a
/// file) with a fresh External ID and token, then loads `main` (`DIR/credvend.toml`)
/// when it exists. A main file that loaded before and does not now gets the file
/// removed again ([`SetupError::Rejected`]).
pub fn new_mapping(
    main: &Path,
    mappings_dir: &Path,
    request: &MappingRequest,
) -> Result<NewMapping, SetupError> {
    let path = mappings_dir.join(format!("{}.toml", request.name));
    let loaded_before = main.exists() && Config::load(main).is_ok();
    if !mappings_dir.is_dir() {
        return Err(SetupError::Usage(format!(
            "{} is not a directory; run `credvend init --dir {}` first",
            mappings_dir.display(),
            mappings_dir.parent().unwrap_or(Path::new(".")).display()
        )));
    }
    let token = new_token();
    let external_id = policy::new_external_id();
    let text = mapping_text(
        request,
        &external_id,
        &TokenHash::of_token(token.as_bytes()),
    );
    create_private_file(&path, &text, "mapping name")?;

    if !main.exists() {
        return Ok(NewMapping {
            path,
            token,
            external_id,
            config: None,
            not_included: Some(format!("{} does not exist", main.display())),
        });
    }
    match Config::load(main) {
        Ok(config) => {
            let not_included = (!config.mappings.contains_key(&request.name)).then(|| {
                format!(
                    "{} does not include {}; add include = [\"{MAPPINGS_DIR}/*.toml\"] to it",
                    main.display(),
                    path.display()
                )
            });
            Ok(NewMapping {
                path,
                token,
                external_id,
                config: Some(config),
                not_included,
            })
        }
        Err(problems) if loaded_before => {
            let _ = fs::remove_file(&path);
            Err(SetupError::Rejected { path, problems })
        }
        Err(problems) => Ok(NewMapping {
            path,
            token,
            external_id,
            config: None,
            not_included: Some(format!(
                "{} was invalid already:\n{problems}",
                main.display()
            )),
        }),
    }
}
