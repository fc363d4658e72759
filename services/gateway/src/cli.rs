//! The command line: no arguments runs the gateway; `mint-token` prints a dev token, so a
//! local user can call the API without an identity provider.

use std::time::Duration;

use crate::{auth::mint_token, config::JwtConfig};

pub const USAGE: &str = "\
usage:
  roombook-gateway                      run the gateway (configured by environment variables)
  roombook-gateway mint-token --user ID [--email ADDRESS] [--admin] [--ttl-hours N]
                                        print a dev token signed with JWT_SECRET (default ttl 12 h)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve,
    MintToken(MintArgs),
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintArgs {
    pub user: String,
    pub email: Option<String>,
    pub admin: bool,
    pub ttl: Duration,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        None => Ok(Command::Serve),
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        Some("mint-token") => parse_mint(args).map(Command::MintToken),
        Some(other) => Err(format!("unknown command {other:?}")),
    }
}

fn parse_mint(mut args: impl Iterator<Item = String>) -> Result<MintArgs, String> {
    let (mut user, mut email, mut admin, mut ttl_hours) = (None, None, false, 12u64);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--user" => user = Some(value("--user")?),
            "--email" => email = Some(value("--email")?),
            "--admin" => admin = true,
            "--ttl-hours" => {
                ttl_hours = value("--ttl-hours")?
                    .parse()
                    .map_err(|_| "--ttl-hours needs a whole number".to_string())?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let user = user
        .filter(|u| !u.trim().is_empty())
        .ok_or("--user is required")?;
    Ok(MintArgs {
        user,
        email,
        admin,
        ttl: Duration::from_secs(ttl_hours.saturating_mul(3600)),
    })
}

/// The token for `args`, signed as `jwt` says; an error when `JWT_SECRET` is not set.
pub fn mint(jwt: &JwtConfig, args: &MintArgs) -> anyhow::Result<String> {
    let roles: &[&str] = if args.admin {
        &["user", "admin"]
    } else {
        &["user"]
    };
    Ok(mint_token(
        jwt.minting_secret()?,
        &jwt.issuer,
        &jwt.audience,
        &args.user,
        args.email.as_deref(),
        roles,
        args.ttl,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn no_arguments_run_the_gateway() {
        assert_eq!(parse(args("")), Ok(Command::Serve));
    }

    #[test]
    fn mint_token_reads_its_options_with_a_twelve_hour_default() {
        assert_eq!(
            parse(args(
                "mint-token --user alice --email a@example.com --admin"
            )),
            Ok(Command::MintToken(MintArgs {
                user: "alice".into(),
                email: Some("a@example.com".into()),
                admin: true,
                ttl: Duration::from_secs(12 * 3600),
            }))
        );
        let Ok(Command::MintToken(m)) = parse(args("mint-token --ttl-hours 2 --user bob")) else {
            panic!("expected mint-token");
        };
        assert_eq!(
            (m.user.as_str(), m.admin, m.ttl),
            ("bob", false, Duration::from_secs(7200))
        );
    }

    #[test]
    fn mint_token_without_a_user_or_with_unknown_options_is_an_error() {
        assert!(parse(args("mint-token")).is_err());
        assert!(parse(args("mint-token --user a --root")).is_err());
        assert!(parse(args("mint-token --user")).is_err());
        assert!(parse(args("serve-all")).is_err());
    }
}
