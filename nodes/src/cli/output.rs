//! Writing a command's output.

use std::io::Write;

use super::error::{Error, io_context};

/// Writes one line and flushes it.
pub(crate) fn out_line(
    out: &mut (dyn Write + Send),
    text: impl std::fmt::Display,
) -> Result<(), Error> {
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| Error::Io {
            context: "writing output".into(),
            source,
        })
}

pub(crate) fn write_out(
    out: &mut (dyn Write + Send),
    text: std::fmt::Arguments<'_>,
) -> Result<(), Error> {
    out.write_fmt(text).map_err(io_context("writing output"))
}
