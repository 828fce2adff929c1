//! `portmap`: with `CNI_COMMAND` set it is the CNI plugin (stdin config,
//! stdout result, exit 1 with a CNI error); without, a small CLI for people.

use std::io::{Read, Write};
use std::process::ExitCode;

use portmap::cni::{self, CniError, Code, Command, Env};
use portmap::commands::{self, RealHost};
use portmap::{cli, config};

fn main() -> ExitCode {
    match std::env::var("CNI_COMMAND") {
        Ok(command) => cni_main(&command),
        // No arguments and no CNI_COMMAND: a runtime that lost its env
        // gets the CNI error upstream prints, not a usage text.
        Err(_) if std::env::args_os().len() <= 1 => {
            let e = CniError::new(
                Code::InvalidEnv,
                "required env variables [CNI_COMMAND] missing".to_string(),
            );
            println!("{}", e.to_json(cni::LATEST_VERSION));
            eprintln!("portmap: run `portmap --help` for the commands for people");
            ExitCode::FAILURE
        }
        Err(_) => cli::main(),
    }
}

fn cni_main(command: &str) -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = config::peek_version(&stdin);
    let reply_version = cni::check_version(&version)
        .unwrap_or(cni::LATEST_VERSION)
        .to_string();
    let outcome = match (read, Command::parse(command)) {
        (Err(e), _) => Err(CniError::new(
            Code::DecodeFailure,
            format!("could not read stdin: {e}"),
        )),
        (_, None) => Err(CniError::new(
            Code::InvalidEnv,
            format!("unknown CNI_COMMAND: {command}"),
        )),
        (_, Some(Command::Version)) => Ok(Some(cni::version_info(&reply_version))),
        (_, Some(cmd)) => Env::from_vars(cmd, |k| std::env::var(k).ok())
            .and_then(|env| commands::run(cmd, &env, &stdin, &RealHost)),
    };
    let (json, code) = match outcome {
        Ok(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => (Some(e.to_json(&reply_version)), ExitCode::FAILURE),
    };
    if let Some(v) = json {
        let mut out = std::io::stdout().lock();
        // A runtime that closed our stdout cannot be told anything else.
        let _ = writeln!(out, "{v}");
    }
    code
}
