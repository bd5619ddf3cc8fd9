//! Reading inputs (a path or `-` for stdin) and writing outputs atomically.

use miette::{miette, IntoDiagnostic, Result, WrapErr};
use std::io::{Read, Write};
use std::path::Path;

/// Reads a whole input as UTF-8 text; `-` is standard input.
pub fn read_input(path: &str) -> Result<String> {
    let mut s = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut s)
            .into_diagnostic()
            .wrap_err("cannot read standard input")?;
    } else {
        s = std::fs::read_to_string(path)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot read `{path}`"))?;
    }
    Ok(s)
}

/// Writes `text` to `out`: standard output for `None` or `-`, else a file written atomically
/// (a temporary file in the same folder, renamed over the target once complete).
pub fn write_output(out: Option<&Path>, text: &str) -> Result<()> {
    match out {
        None => print_stdout(text),
        Some(p) if p.as_os_str() == "-" => print_stdout(text),
        Some(p) => write_bytes(p, text.as_bytes()),
    }
}

/// Writes `bytes` to the file `p` atomically: a temporary file in the same folder, renamed over
/// the target once complete.
pub fn write_bytes(p: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Messages name the user's path, never the temporary file's.
    let cannot = |why: String| miette!("cannot write `{}`: {why}", p.display());
    if !dir.is_dir() {
        return Err(cannot(format!(
            "the folder `{}` does not exist; create it first or write elsewhere",
            dir.display()
        )));
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| cannot(reason(&e)))?;
    tmp.write_all(bytes).map_err(|e| cannot(reason(&e)))?;
    // Temporary files are private (0600); give the output the target's mode, or the usual 0644.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p).map_or(0o644, |m| m.permissions().mode());
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| cannot(reason(&e)))?;
    }
    tmp.as_file().sync_all().map_err(|e| cannot(reason(&e)))?;
    tmp.persist(p).map_err(|e| cannot(reason(&e.error)))?;
    Ok(())
}

/// What went wrong, without the path (tempfile's errors name the temporary file).
fn reason(e: &std::io::Error) -> String {
    std::io::Error::from(e.kind()).to_string()
}

fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.into_diagnostic(),
    }
}
