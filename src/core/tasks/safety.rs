//! Keeps parameter values out of code.
//!
//! A rendered value is always one argv element, so a program that takes
//! its arguments as data is safe. Shells and interpreters are not: in
//! `["sh", "-c", "echo {msg}"]` the value becomes part of a script, and
//! `msg = "$(reboot)"` runs. So is `["python3", "{script}", "{arg}"]`,
//! where `script = "-c"` turns the next value into code. [`check`] refuses
//! templates that run a known shell or interpreter (directly, or through
//! `env`, `busybox`, `nice` and similar wrappers) with a placeholder
//!
//! - inside its inline code (the script of `sh -c`, the code after
//!   `python3 -c`, `perl -e`, `node -e`, an awk or sed program), or
//! - among its options, or in the script path, where a value could become
//!   an option such as `-c`, or choose the code that runs.
//!
//! Placeholders after the script (positional arguments, `sys.argv`) are
//! fine: the program receives them as data. The check reads argv the way
//! these programs parse their own command lines, leaning to refusal where
//! that is ambiguous. It cannot see inside a script file, nor into a
//! program it does not know that itself evaluates an argument.

/// How one interpreter reads its command line.
struct Interp {
    /// Shells: the first operand after a `-c` option is the script, even
    /// with other options in between; `+o` style options exist.
    shell: bool,
    /// Short options whose argument is code (or the script file): the
    /// next element (or the rest of the option text).
    code_short: &'static str,
    /// Long options whose argument is code.
    code_long: &'static [&'static str],
    /// Short options that take the next element as a plain argument.
    arg_short: &'static str,
    /// Long options that take the next element as a plain argument.
    arg_long: &'static [&'static str],
    /// Short options whose argument may hold a placeholder (awk's
    /// `-v name=value`, which is how values are meant to reach a program).
    data_short: &'static str,
    /// The first operand is the program (awk, sed) unless code came from
    /// an option.
    operand_is_code: bool,
    /// Inline code ends the interpreter's options (`python3 -c`): what
    /// follows are arguments.
    code_ends_options: bool,
}

const SHELL: Interp = Interp {
    shell: true,
    code_short: "c",
    code_long: &["--command", "--init-command"],
    arg_short: "oO",
    arg_long: &["--rcfile", "--init-file"],
    data_short: "",
    operand_is_code: false,
    code_ends_options: false,
};

const SHELLS: &[&str] = &[
    "sh", "bash", "rbash", "dash", "zsh", "ksh", "mksh", "pdksh", "ash", "hush", "yash", "fish",
    "csh", "tcsh", "posh",
];

/// Interpreters by basename (version digits and dots stripped from the
/// end, so `python3.12` is `python`).
fn interp(base: &str) -> Option<Interp> {
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let stem = stem.strip_suffix('-').unwrap_or(stem);
    if SHELLS.contains(&stem) || SHELLS.contains(&base) {
        return Some(SHELL);
    }
    let i = |code_short, code_long, arg_short, arg_long, code_ends_options| Interp {
        shell: false,
        code_short,
        code_long,
        arg_short,
        arg_long,
        data_short: "",
        operand_is_code: false,
        code_ends_options,
    };
    Some(match stem {
        "python" | "pypy" => i("cm", &[], "WXQ", &["--check-hash-based-pycs"], true),
        "perl" => i("eE", &[], "I", &[], false),
        "ruby" | "jruby" => i("e", &[], "IrCEF", &[], false),
        "node" | "nodejs" | "bun" | "deno" => i(
            "ep",
            &["--eval", "--print"],
            "r",
            &[
                "--require",
                "--import",
                "--loader",
                "--experimental-loader",
                "--input-type",
                "--conditions",
                "--title",
            ],
            false,
        ),
        "php" => i("rBREf", &[], "cdzF", &[], false),
        "lua" | "luajit" => i("e", &[], "l", &[], false),
        "Rscript" => i("e", &[], "", &[], false),
        "tclsh" | "wish" | "osascript" => i("e", &[], "", &[], false),
        "awk" | "gawk" | "mawk" | "nawk" => Interp {
            shell: false,
            code_short: "f",
            code_long: &["--file", "--source"],
            arg_short: "vF",
            arg_long: &["--assign", "--field-separator"],
            data_short: "vF",
            operand_is_code: true,
            code_ends_options: false,
        },
        "sed" | "gsed" => Interp {
            shell: false,
            code_short: "ef",
            code_long: &["--expression", "--file"],
            arg_short: "l",
            arg_long: &["--line-length"],
            data_short: "",
            operand_is_code: true,
            code_ends_options: false,
        },
        _ => return None,
    })
}

/// Programs that run another program given on their command line.
const WRAPPERS: &[&str] = &[
    "env",
    "busybox",
    "nice",
    "nohup",
    "setsid",
    "stdbuf",
    "timeout",
    "time",
    "ionice",
    "taskset",
    "chrt",
    "sudo",
    "doas",
    "exec",
    "command",
    "xargs",
    "flock",
    "unbuffer",
    "numactl",
    "prlimit",
    "systemd-run",
    "chroot",
    "runuser",
    "su",
    "strace",
    "ltrace",
    "valgrind",
    "firejail",
    "bwrap",
    "unshare",
    "nsenter",
    "setpriv",
    "caffeinate",
];

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Checks `argv` (with `ph[i]` telling whether element `i` holds a
/// placeholder); on refusal, the offending index and why.
pub(super) fn check(argv: &[String], ph: &[bool]) -> Result<(), (usize, String)> {
    check_at(argv, ph, 0, 0)
}

fn check_at(argv: &[String], ph: &[bool], start: usize, depth: u32) -> Result<(), (usize, String)> {
    let Some(program) = argv.get(start) else {
        return Ok(());
    };
    if depth > 8 {
        return Ok(());
    }
    let base = basename(program);
    if WRAPPERS.contains(&base) {
        return check_wrapper(argv, ph, start, depth);
    }
    match interp(base) {
        Some(int) => check_interp(&int, base, argv, ph, start),
        None => Ok(()),
    }
}

/// A wrapper: find the program it runs. Placeholders may not come before
/// that program is named (they could choose it, or pass the wrapper an
/// option), and `env`'s `NAME=value` assignments may not hold one (a value
/// for `LD_PRELOAD` is code too). When the program is a shell or
/// interpreter, check it in turn.
fn check_wrapper(
    argv: &[String],
    ph: &[bool],
    start: usize,
    depth: u32,
) -> Result<(), (usize, String)> {
    let wrapper = basename(&argv[start]);
    for j in start + 1..argv.len() {
        let e = &argv[j];
        let base = basename(e);
        if ph[j] {
            if wrapper == "env" && e.contains('=') && !e.starts_with('-') {
                return Err((
                    j,
                    "a placeholder in an `env` assignment could set a variable that loads code \
                     (LD_PRELOAD, BASH_ENV, PYTHONSTARTUP); set fixed variables in the template's env \
                     and pass parameters as arguments"
                        .to_owned(),
                ));
            }
            return Err((
                j,
                format!(
                    "a placeholder before the program that `{wrapper}` runs could choose the program \
                     or pass `{wrapper}` an option; name the program in the template and put \
                     parameters after it"
                ),
            ));
        }
        if WRAPPERS.contains(&base) || interp(base).is_some() {
            return check_at(argv, ph, j, depth + 1);
        }
        // A fixed program that is neither: what follows is its business.
        let looks_like_program = !e.starts_with('-')
            && !e.contains('=')
            && !e.starts_with(|c: char| c.is_ascii_digit())
            && !e.is_empty();
        // Keep scanning only while the wrapper's own options could still
        // be going on; a program name ends them.
        if looks_like_program && !is_option_argument(wrapper, &argv[j - 1]) {
            return Ok(());
        }
    }
    Ok(())
}

/// Whether `prev` is a wrapper option that takes the next element as its
/// argument (so the next element is not the program).
fn is_option_argument(wrapper: &str, prev: &str) -> bool {
    if !prev.starts_with('-') || prev.contains('=') {
        return false;
    }
    match wrapper {
        "env" => matches!(
            prev,
            "-u" | "--unset" | "-C" | "--chdir" | "-S" | "--split-string"
        ),
        "nice" => matches!(prev, "-n" | "--adjustment"),
        "stdbuf" => matches!(prev, "-i" | "-o" | "-e"),
        "timeout" => matches!(prev, "-s" | "--signal" | "-k" | "--kill-after"),
        "ionice" => matches!(
            prev,
            "-c" | "-n" | "-p" | "-P" | "-u" | "--class" | "--classdata"
        ),
        "taskset" => matches!(prev, "-c" | "--cpu-list"),
        "flock" => matches!(prev, "-w" | "--timeout" | "-E" | "--conflict-exit-code"),
        "numactl" => prev.len() == 2 || prev.starts_with("--"),
        // Unknown option syntax: assume it takes an argument, and keep
        // looking for a shell or interpreter further on.
        _ => true,
    }
}

fn check_interp(
    int: &Interp,
    program: &str,
    argv: &[String],
    ph: &[bool],
    start: usize,
) -> Result<(), (usize, String)> {
    let script_msg = "a placeholder inside a shell script would let a parameter run as shell code; \
                      pass it as a positional argument instead (argv = [\"sh\", \"-c\", \"echo \\\"$1\\\"\", \"sh\", \"{msg}\"])"
        .to_owned();
    let code_msg = |flag: &str| {
        if int.shell {
            script_msg.clone()
        } else {
            format!(
                "a placeholder inside `{program}`'s code (after `{flag}`) would let a parameter run as code; \
                 pass it as an argument instead (argv = [\"python3\", \"-c\", \"import sys; print(sys.argv[1])\", \"{{msg}}\"])"
            )
        }
    };
    let option_msg = format!(
        "a placeholder among `{program}`'s options could become an option such as -c and run a \
         parameter as code; put parameters after the script"
    );
    let mut code_seen = false;
    let mut i = start + 1;
    while i < argv.len() {
        let e = argv[i].as_str();
        if e == "--" || e == "-" {
            // Options end; the next element (or stdin) is the operand.
            let next = if e == "--" { i + 1 } else { i };
            return operand(int, program, argv, ph, next, code_seen, &script_msg);
        }
        let is_option = e.len() > 1 && (e.starts_with('-') || (int.shell && e.starts_with('+')));
        if !is_option {
            return operand(int, program, argv, ph, i, code_seen, &script_msg);
        }
        if ph[i] {
            return Err((i, option_msg));
        }
        if let Some(long) = e.strip_prefix("--") {
            let name = format!("--{}", long.split('=').next().unwrap_or(""));
            let inline = long.contains('=');
            if int.code_long.contains(&name.as_str()) {
                code_seen = true;
                if !inline {
                    i += 1;
                    if ph.get(i) == Some(&true) {
                        return Err((i, code_msg(&name)));
                    }
                }
                if int.code_ends_options {
                    return Ok(());
                }
            } else if int.arg_long.contains(&name.as_str()) && !inline {
                i += 1;
                if ph.get(i) == Some(&true) {
                    return Err((i, option_msg));
                }
            }
            i += 1;
            continue;
        }
        // A cluster of short options: `-lc`, `-e`, `-ccode`, `-o pipefail`.
        let letters: Vec<char> = e[1..].chars().collect();
        let mut consumed_next = false;
        for (k, ch) in letters.iter().enumerate() {
            let last = k + 1 == letters.len();
            if int.code_short.contains(*ch) {
                code_seen = true;
                if int.shell {
                    // The script is the first operand, found below.
                    continue;
                }
                if last {
                    consumed_next = true;
                    if ph.get(i + 1) == Some(&true) {
                        return Err((i + 1, code_msg(&format!("-{ch}"))));
                    }
                }
                break; // the rest of the cluster is the code itself
            }
            if int.arg_short.contains(*ch) {
                if last {
                    consumed_next = true;
                    if ph.get(i + 1) == Some(&true) && !int.data_short.contains(*ch) {
                        return Err((i + 1, option_msg));
                    }
                }
                break; // the rest of the cluster is the argument
            }
        }
        i += if consumed_next { 2 } else { 1 };
        if code_seen && int.code_ends_options && !int.shell {
            return Ok(());
        }
    }
    Ok(())
}

/// The first operand after the options, at `i`.
fn operand(
    int: &Interp,
    program: &str,
    argv: &[String],
    ph: &[bool],
    i: usize,
    code_seen: bool,
    script_msg: &str,
) -> Result<(), (usize, String)> {
    if i >= argv.len() || !ph[i] {
        return Ok(());
    }
    if int.shell && code_seen {
        return Err((i, script_msg.to_owned()));
    }
    if !int.shell && code_seen {
        // Code came from an option: operands are arguments (or input).
        return Ok(());
    }
    if int.operand_is_code {
        return Err((
            i,
            format!(
                "a placeholder inside a `{program}` program would let a parameter run as code; \
                 pass values as data instead (for awk: argv = [\"awk\", \"-v\", \"n={{n}}\", \"{{{{ print n }}}}\"])"
            ),
        ));
    }
    Err((
        i,
        format!(
            "a placeholder as `{program}`'s script would let a parameter choose the code that runs \
             (or pass an option such as -c); name the script in the template and put parameters after it"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::template::parse_element;
    use super::*;

    fn run(argv: &[&str]) -> Result<(), (usize, String)> {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        let ph: Vec<bool> = argv
            .iter()
            .map(|a| {
                parse_element(a)
                    .unwrap()
                    .iter()
                    .any(|p| matches!(p, super::super::template::Piece::Param(_)))
            })
            .collect();
        check(&argv, &ph)
    }

    fn refused_at(argv: &[&str]) -> usize {
        match run(argv) {
            Err((i, _)) => i,
            Ok(()) => panic!("{argv:?} should be refused"),
        }
    }

    #[test]
    fn shells() {
        // The brief's rule: no placeholder in the script of -c.
        assert_eq!(refused_at(&["sh", "-c", "echo {x}"]), 2);
        assert_eq!(refused_at(&["/bin/bash", "-lc", "echo {x}"]), 2);
        assert_eq!(refused_at(&["bash", "-e", "-c", "run {x}"]), 3);
        assert_eq!(refused_at(&["bash", "-c", "-e", "run {x}"]), 3);
        assert_eq!(
            refused_at(&["bash", "-o", "pipefail", "-c", "a | b {x}"]),
            4
        );
        assert_eq!(refused_at(&["zsh", "-c", "{x}"]), 2);
        assert_eq!(refused_at(&["fish", "--command", "echo {x}"]), 2);
        assert_eq!(refused_at(&["ksh93", "-c", "echo {x}"]), 2);
        assert_eq!(refused_at(&["bash", "--", "{x}"]), 2);
        // A value among the options could be "-c".
        assert_eq!(refused_at(&["bash", "{opt}", "script.sh"]), 1);
        assert_eq!(refused_at(&["bash", "{script}", "{arg}"]), 1);
        assert_eq!(refused_at(&["bash", "-o", "{opt}", "-c", "true"]), 2);
        // Safe: the script is fixed and values are positional parameters.
        run(&["sh", "-c", "echo \"$1\"", "sh", "{x}"]).unwrap();
        run(&["sh", "-c", "echo \"$@\"", "sh", "-c", "{x}"]).unwrap();
        run(&["bash", "script.sh", "{x}", "-c", "{y}"]).unwrap();
        run(&["bash", "-e", "./script.sh", "--n={n}"]).unwrap();
        run(&["sh", "-c", "echo {{literal braces}}"]).unwrap();
        let (_, m) = run(&["sh", "-c", "echo {msg}"]).unwrap_err();
        assert!(m.starts_with("a placeholder inside a shell script"), "{m}");
    }

    #[test]
    fn interpreters() {
        assert_eq!(refused_at(&["python3", "-c", "print({x})"]), 2);
        assert_eq!(refused_at(&["python3.12", "-u", "-c", "print({x})"]), 3);
        assert_eq!(refused_at(&["python", "-m", "{module}"]), 2);
        assert_eq!(refused_at(&["python3", "{script}", "{arg}"]), 1);
        assert_eq!(refused_at(&["python3", "-W", "{w}", "s.py"]), 2);
        assert_eq!(refused_at(&["perl", "-e", "print {x}"]), 2);
        assert_eq!(refused_at(&["perl", "-ne", "print if /{re}/", "f"]), 2);
        assert_eq!(refused_at(&["ruby", "-e", "{x}"]), 2);
        assert_eq!(refused_at(&["node", "-r", "./x.js", "-e", "f({x})"]), 4);
        assert_eq!(refused_at(&["node", "--eval", "f({x})"]), 2);
        assert_eq!(refused_at(&["php", "-r", "echo {x};"]), 2);
        assert_eq!(refused_at(&["Rscript", "-e", "print({x})"]), 2);
        let (_, m) = run(&["python3", "-c", "print({x})"]).unwrap_err();
        assert!(m.contains("`python3`'s code (after `-c`)"), "{m}");
        // Safe: values after the script or the code are arguments.
        run(&["python3", "-c", "import sys; print(sys.argv[1])", "{x}"]).unwrap();
        run(&["python3", "-c", "import sys", "-c", "{x}"]).unwrap();
        run(&["python3", "script.py", "--n", "{n}", "-c", "{cfg}"]).unwrap();
        run(&["python3", "-u", "script.py", "{n}"]).unwrap();
        run(&["perl", "-e", "print $ARGV[0]", "{x}"]).unwrap();
        run(&["node", "app.js", "{x}"]).unwrap();
    }

    #[test]
    fn awk_and_sed() {
        assert_eq!(refused_at(&["awk", "{{ print ${col} }}", "f"]), 1);
        assert_eq!(refused_at(&["sed", "-e", "s/a/{b}/"]), 2);
        assert_eq!(refused_at(&["sed", "s/a/{b}/", "f"]), 1);
        assert_eq!(refused_at(&["awk", "-f", "{prog}"]), 2);
        run(&["awk", "-v", "n={n}", "{{ print n }}"]).unwrap();
        run(&["awk", "{{ print $1 }}", "{file}"]).unwrap();
        run(&["sed", "-e", "s/a/b/", "{file}"]).unwrap();
    }

    #[test]
    fn wrappers() {
        assert_eq!(refused_at(&["env", "sh", "-c", "echo {x}"]), 3);
        assert_eq!(
            refused_at(&["/usr/bin/env", "-i", "PATH=/bin", "bash", "-c", "{x}"]),
            5
        );
        assert_eq!(refused_at(&["busybox", "sh", "-c", "echo {x}"]), 3);
        assert_eq!(refused_at(&["nice", "-n", "10", "python3", "-c", "{x}"]), 5);
        assert_eq!(refused_at(&["timeout", "10", "sh", "-c", "{x}"]), 4);
        assert_eq!(refused_at(&["env", "{prog}"]), 1);
        assert_eq!(refused_at(&["env", "LD_PRELOAD={lib}", "prog"]), 1);
        assert_eq!(refused_at(&["timeout", "{secs}", "prog"]), 1);
        assert_eq!(refused_at(&["sudo", "-u", "nobody", "{prog}"]), 3);
        run(&["sudo", "-u", "nobody", "prog", "{x}"]).unwrap();
        run(&["busybox", "wget", "{url}"]).unwrap();
        assert_eq!(refused_at(&["nice", "env", "sh", "-c", "{x}"]), 4);
        run(&["env", "FOO=1", "prog", "{x}"]).unwrap();
        run(&["nice", "-n", "5", "prog", "{x}", "sh", "-c", "{y}"]).unwrap();
        run(&["timeout", "10", "python3", "s.py", "{x}"]).unwrap();
        run(&["env", "sh", "-c", "echo \"$1\"", "sh", "{x}"]).unwrap();
        // Programs the check does not know are left alone.
        run(&["ffmpeg", "-i", "{input}", "-c", "{codec}"]).unwrap();
    }
}
