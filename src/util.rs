//! Small helpers shared across modules.

/// libtorch's error text without the C++ backtrace it appends (dozens of frames that tell a user
/// nothing).
pub fn torch_message(e: &tch::TchError) -> String {
    let text = e.to_string();
    let cut = text
        .find("\nException raised from")
        .or_else(|| text.find("\nframe #0"))
        .unwrap_or(text.len());
    text[..cut].trim().to_string()
}

/// Maps a libtorch error to an `anyhow` error with the short message.
pub fn torch_err(e: tch::TchError) -> anyhow::Error {
    anyhow::anyhow!(torch_message(&e))
}
