//! The command line of `ssh draupnir`: the clap definitions of every
//! command and its arguments, the argument parsers they share, and the
//! overview `help` prints. Nothing here runs a command.

use crate::core::{ImageId, InstanceId, TokenId};
use std::net::IpAddr;

use clap::{Parser, Subcommand};

pub(super) const OVERVIEW: &str = "\
Draupnir: fresh, anonymised, private PostgreSQL instances.
Usage: ssh draupnir COMMAND [ARGS]     (every command takes --help; listings take --json)

Instances
  instances [--all]              list your instances (--all: everyone's, admins)
  new-instance IMAGE_ID|latest   create an instance of a ready image [--ttl 8h]
  instance ID                    show one instance
  env ID [--dir DIR]             print shell exports to connect: eval \"$(ssh draupnir env ID)\"
  reset-instance ID              return an instance to its image (same port and credentials)
  extend-instance ID DURATION    keep an instance longer (e.g. 4h)
  allow-ip ID ADDRESS            let another address reach an instance
  disallow-ip ID ADDRESS         take an address off an instance's allow-list
  destroy-instance ID            stop and delete an instance

Images
  images                         list images
  image ID                       show one image (with its failure reason)
  new-image [--rules FILE|-]     create an image to upload into (admins)
            [--script SQL|-] [--no-anonymisation]
  suggest-rules ID               print masking rules for an upload's schema to review (admins)
  upload-image ID [--progress]   upload a tar/tar.gz/tar.zst data directory from stdin (admins)
  finalise-image ID [--detach]   anonymise and seal an image (alias: done) (admins)
  reset-upload ID                let a failed upload start again (admins)
  destroy-image ID [--force]     delete an image (--force: and its instances) (admins)

Following production
  sources                        sources followed by a streaming standby: state, lag, last refresh
  refresh-image NAME [--force]   a new image of a source's standby, as it is now (admins)

Users and keys
  whoami                         who you are
  users                          list users (admins)
  add-user NAME [--admin]        add a user (admins)
  remove-user NAME               remove a user and their instances (admins)
  add-key USER                   add the public key on stdin to a user
  remove-key FINGERPRINT         remove a key
  keys [USER]                    list keys
  token                          mint a bearer token for the HTTP API: token=$(ssh draupnir token)
  tokens [--all]                 list your API tokens (--all: everyone's, admins)
  revoke-token ID                revoke an API token

  status                         image freshness (stale when the nightly image is late)
  help [COMMAND]                 this list, or a command's help
  version                        the server's version
";

#[derive(Parser, Debug)]
#[command(
    name = "draupnir",
    bin_name = "ssh draupnir",
    no_binary_name = true,
    disable_version_flag = true,
    disable_help_subcommand = true
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Option<Cmd>,
}

/// A duration with its unit (`30m`, `4h`, `3d`): a bare number is refused
/// rather than taken as seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let shown = super::format::one_line(t, 20);
        return Err(format!("`{shown}` has no unit; add one, like {shown}h"));
    }
    crate::config::parse_duration(s)
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map_err(|_| format!("`{s}` is not an IP address"))
        .and_then(|a| crate::core::allowable(a).map_err(|e| e.to_string()))
}

pub(super) fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    let not_an_id = || format!("`{s}` is not an id (a positive number)");
    match s.parse::<i64>() {
        Ok(n) if n > 0 => s.parse::<T>().map_err(|_| not_an_id()),
        _ => Err(not_an_id()),
    }
}

#[derive(Subcommand, Debug)]
pub(super) enum Cmd {
    /// List images.
    Images {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one image, with its failure reason.
    Image {
        /// The image's id (see `ssh draupnir images`).
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create an image to upload a backup into (admins).
    NewImage {
        /// When the backup was taken (RFC 3339, e.g. 2026-11-21T02:00:00Z).
        #[arg(long)]
        backed_up_at: Option<String>,
        /// The anonymisation SQL script, inline, or `-` to read it from stdin.
        /// It runs after the masking rules, for what rules cannot say.
        #[arg(long)]
        script: Option<String>,
        /// This image's masking rules (TOML): `-` reads them from stdin, a
        /// path names a world-readable file on the Draupnir host. Their
        /// tables replace the same tables of [masking] rules_file.
        #[arg(long, value_name = "FILE|-")]
        rules: Option<String>,
        /// Declare the data not personal: seal it without masking, shown
        /// with anonymisation `none` (never picked as `latest` while a
        /// checked image exists).
        #[arg(long, conflicts_with_all = ["script", "rules"])]
        no_anonymisation: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a complete masking rules file for an uploaded image's schema,
    /// each rule guessed from the column's name, type and sampled values
    /// (admins). Review it, then give it to new-image --rules or
    /// [masking] rules_file.
    SuggestRules {
        /// The uploaded image's id (see `ssh draupnir images`).
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
    },
    /// Upload a tar, tar.gz or tar.zst data directory from stdin (admins).
    UploadImage {
        /// The image's id (see `ssh draupnir images`).
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
        /// Print what has arrived once a second on stderr.
        #[arg(long)]
        progress: bool,
    },
    /// Anonymise and seal an uploaded image, streaming progress (admins).
    #[command(visible_alias = "done")]
    FinaliseImage {
        /// The image's id (see `ssh draupnir images`).
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
        /// Return at once; follow with `image ID`.
        #[arg(long)]
        detach: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Let a failed upload start again with an empty image (admins).
    ResetUpload {
        /// The image's id (see `ssh draupnir images`).
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
    },
    /// Delete an image (admins).
    DestroyImage {
        /// The image's id (see `ssh draupnir images`).
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
        /// Also destroy the image's instances.
        #[arg(long)]
        force: bool,
    },
    /// List your instances.
    Instances {
        /// Everyone's instances (admins).
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create an instance of a ready image (`latest`: the newest).
    NewInstance {
        /// The image's id (see `ssh draupnir images`), or `latest`: the
        /// newest ready image.
        #[arg(value_name = "IMAGE_ID")]
        image: String,
        /// How long it lives (e.g. 8h, 3d); destroyed after that.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one instance.
    Instance {
        /// The instance's id (see `ssh draupnir instances`).
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print shell exports that connect psql: eval "$(ssh draupnir env ID)".
    ///
    /// The script writes the CA, certificate and key into a new `mktemp -d`
    /// directory per call; `--dir DIR` uses DIR instead (created 0700,
    /// reused, its files overwritten), so nothing piles up. Clean up with
    /// `rm -r DIR` (or the directory in $PGSSLKEY) when done.
    Env {
        /// The instance's id (see `ssh draupnir instances`).
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        /// Write the certificate and key files into DIR (on your machine).
        #[arg(long, value_name = "DIR")]
        dir: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Let another address reach an instance (a colleague, a CI runner).
    AllowIp {
        /// The instance's id (see `ssh draupnir instances`).
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        /// The address to let in (IPv4 or IPv6, e.g. 203.0.113.7).
        #[arg(value_parser = parse_ip)]
        address: IpAddr,
    },
    /// Take an address off an instance's allow-list.
    DisallowIp {
        /// The instance's id (see `ssh draupnir instances`).
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        /// The address to take off (as `instance ID` lists it).
        #[arg(value_parser = parse_ip)]
        address: IpAddr,
    },
    /// Keep an instance longer (e.g. `extend-instance 4 4h`).
    ExtendInstance {
        /// The instance's id (see `ssh draupnir instances`).
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        /// How much longer it lives (e.g. 4h, 30m, 2d).
        #[arg(value_name = "DURATION", value_parser = parse_duration)]
        by: std::time::Duration,
    },
    /// Production sources followed by a standby: state, lag, last refresh.
    Sources {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a new image from a source's standby as it is now: snapshot,
    /// then the normal finalise (masking rules, leak scan, seal) (admins).
    RefreshImage {
        /// The source's name (`[sources.NAME]`; see `ssh draupnir sources`).
        name: String,
        /// Refresh even when the standby is further behind than max_lag or
        /// its primary cannot be reached.
        #[arg(long)]
        force: bool,
        /// Print JSON instead of progress.
        #[arg(long)]
        json: bool,
    },
    /// Image freshness: `stale` when no image became ready in time.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Return an instance to its image (same id, port and credentials).
    ResetInstance {
        /// The instance's id (see `ssh draupnir instances`).
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
    },
    /// Stop and delete an instance.
    DestroyInstance {
        /// The instance's id (see `ssh draupnir instances`).
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
    },
    /// Who you are.
    Whoami {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List users (admins).
    Users {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a user (admins).
    AddUser {
        /// The new user's name (letters, digits, `.`, `_`, `@`, `-`).
        name: String,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
        /// The user's e-mail (links an OAuth login to this user).
        #[arg(long)]
        email: Option<String>,
    },
    /// Remove a user and destroy their instances (admins).
    RemoveUser {
        /// The user's name (see `ssh draupnir users`).
        name: String,
    },
    /// Add the OpenSSH public key(s) on stdin to a user.
    AddKey {
        /// Whose key it is: your own name (see `ssh draupnir whoami`), or
        /// anyone's (admins).
        user: String,
    },
    /// Remove a key by its SHA256 fingerprint.
    RemoveKey {
        /// The key's fingerprint, `SHA256:…` (see `ssh draupnir keys`).
        fingerprint: String,
    },
    /// List keys (yours, or a user's; admins: everyone's).
    Keys {
        /// Whose keys: a user's name (yours, or anyone's for admins).
        user: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Mint a bearer token for the HTTP API (shown once; only the token
    /// goes to stdout: `token=$(ssh draupnir token)`).
    Token {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List your API tokens (never their secrets).
    Tokens {
        /// Everyone's tokens (admins).
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token: it is refused at once.
    RevokeToken {
        /// The token's id (see `ssh draupnir tokens`).
        #[arg(value_parser = parse_id::<TokenId>)]
        id: TokenId,
    },
    /// List the commands, or show one command's help.
    Help {
        /// A command's name (e.g. new-instance).
        command: Option<String>,
    },
    /// Print the server's version.
    Version,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn overview_lists_every_command() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            let name = sub.get_name();
            assert!(
                OVERVIEW.lines().any(|l| l.trim_start().starts_with(name)),
                "`{name}` missing from the overview"
            );
        }
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_says_what_it_is() {
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "`{} {}` has no words in --help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
