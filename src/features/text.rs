//! CLIP text encoders: open_clip's tokenizer reproduced in Rust, and the text tower of an
//! extractor (a TorchScript file named by the manifest's `[text_encoder]` table) that turns
//! prompts into embeddings in the image embedding's space. See docs/reduce.md.
//!
//! The tokenizer is open_clip's `SimpleTokenizer` (OpenAI CLIP's BPE with open_clip's special
//! token names): its text cleaning is re-implemented here — the parts of `ftfy.fix_text` that
//! realistic prompts meet, `html.unescape` twice, Python's whitespace and lowercasing — and the
//! byte-level BPE itself is `instant-clip-tokenizer`'s, which bundles OpenAI's merges file.
//! tests/tokenizer.rs checks the ids against open_clip's for every string of
//! tests/fixtures/clip_tokenizer/open_clip_tokens.json.
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};
use regex::{Captures, Regex};
use tch::{CModule, Device, IValue, Kind, Tensor};
use unicode_normalization::UnicodeNormalization;

use super::Manifest;
use crate::util::torch_err;

/// The context length of every CLIP text tower: open_clip's `tokenize` default.
pub const CONTEXT_LENGTH: usize = 77;

/// Vocabulary size that open_clip's `SimpleTokenizer` builds from a merges file: 256 bytes, the
/// same with `</w>`, 49152 − 256 − 2 merges, start and end of text.
const VOCABULARY_SIZE: u16 = 49408;

/// The named character references Python's `html.unescape` knows (`html.entities.html5`: the
/// WHATWG HTML standard's list), written by scripts/reference/make_tokenizer_fixture.py.
const HTML5_ENTITIES_JSON: &str = include_str!("text/html5_entities.json");

/// Turns prompts into the token ids a CLIP text tower was trained on, exactly as open_clip's
/// `tokenize` does, so that a text tower exported from Python sees the same input from Rust.
pub struct ClipTokenizer {
    bpe: instant_clip_tokenizer::Tokenizer,
    cleaner: Arc<Cleaner>,
    sot: u32,
    eot: u32,
}

impl ClipTokenizer {
    /// The tokenizer of OpenAI's CLIP models and of open_clip's models trained with the same
    /// vocabulary, from the merges file that `instant-clip-tokenizer` embeds (OpenAI's
    /// `bpe_simple_vocab_16e6.txt`, MIT licence): needs no file or network at run time.
    pub fn bundled() -> anyhow::Result<Self> {
        Self::with_bpe(instant_clip_tokenizer::Tokenizer::new())
    }

    /// A tokenizer from a merges file in the format of `bpe_simple_vocab_16e6.txt` (plain or
    /// gzipped, as open_clip ships it), for text towers exported with their own vocabulary.
    /// Like open_clip, only the first 49152 − 256 − 2 merges after the header line are used.
    pub fn from_vocab_file(path: &Path) -> anyhow::Result<Self> {
        let raw = std::fs::read(path)
            .with_context(|| format!("{}: cannot read the vocabulary file", path.display()))?;
        let text = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(raw.as_slice())
                .read_to_end(&mut out)
                .with_context(|| format!("{}: not a readable gzip file", path.display()))?;
            out
        } else {
            raw
        };
        let bpe = instant_clip_tokenizer::Tokenizer::with_vocabulary(
            std::io::Cursor::new(text),
            VOCABULARY_SIZE,
        )
        .with_context(|| format!("{}: not a CLIP BPE merges file", path.display()))?;
        Self::with_bpe(bpe)
    }

    fn with_bpe(bpe: instant_clip_tokenizer::Tokenizer) -> anyhow::Result<Self> {
        let sot = u32::from(bpe.start_of_text().to_u16());
        let eot = u32::from(bpe.end_of_text().to_u16());
        Ok(Self {
            bpe,
            cleaner: Cleaner::shared()?,
            sot,
            eot,
        })
    }

    /// The BPE ids of `text` after open_clip's cleaning, without start/end of text and not
    /// truncated: what open_clip's `SimpleTokenizer.encode` returns.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = self.cleaner.clean(text);
        let mut tokens = Vec::new();
        self.bpe.encode(&cleaned, &mut tokens);
        tokens.into_iter().map(|t| u32::from(t.to_u16())).collect()
    }

    /// One row of `context_length` ids per text, as `open_clip.tokenize(texts, context_length)`:
    /// start of text, the BPE ids, end of text, zeros after; a text too long is cut and its last
    /// id replaced by end of text. (open_clip refuses a context length of 0; here it gives empty
    /// rows.)
    pub fn tokenize(&self, texts: &[String], context_length: usize) -> Vec<Vec<i64>> {
        texts
            .iter()
            .map(|text| {
                let mut row = Vec::with_capacity(context_length.max(2));
                row.push(i64::from(self.sot));
                row.extend(self.encode(text).into_iter().map(i64::from));
                row.push(i64::from(self.eot));
                if row.len() > context_length {
                    row.truncate(context_length);
                    if let Some(last) = row.last_mut() {
                        *last = i64::from(self.eot);
                    }
                }
                row.resize(context_length, 0);
                row
            })
            .collect()
    }

    /// The start-of-text id (49406 with OpenAI's vocabulary), first in every row: towers that
    /// pool over the prompt's own tokens need it (and end of text) to leave them out.
    pub fn start_of_text(&self) -> u32 {
        self.sot
    }

    /// The end-of-text id (49407 with OpenAI's vocabulary): the highest id, where CLIP's text
    /// tower reads its embedding.
    pub fn end_of_text(&self) -> u32 {
        self.eot
    }
}

/// open_clip's `_clean_lower`: `ftfy.fix_text`, `html.unescape` twice, Python's `strip`,
/// whitespace collapsed to single spaces, Python's `lower`.
struct Cleaner {
    /// `html.entities.html5`: names as Python keys them (with `;`, and the legacy ones without).
    html5: HashMap<String, String>,
    /// ftfy's `HTML_ENTITIES`: `&name;` for every html5 name ending in `;`, plus all-caps forms of
    /// the lower-case ones that are not entities themselves (`&EACUTE;` → `É`).
    ftfy_entities: HashMap<String, String>,
    /// Python's `html._charref`.
    charref: Regex,
    /// ftfy's `HTML_ENTITY_RE`.
    ftfy_entity: Regex,
    /// ftfy's `ANSI_RE`.
    ansi: Regex,
}

#[derive(serde::Deserialize)]
struct EntitiesFile {
    entities: HashMap<String, String>,
}

static CLEANER: OnceLock<Arc<Cleaner>> = OnceLock::new();

/// Windows-1252 for 0x80..=0x9F, its five undefined bytes kept as the C1 control of the same
/// number: Python's `html._invalid_charrefs` and ftfy's "sloppy-windows-1252" agree on these.
const WINDOWS_1252_C1: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
];

/// ftfy's `LIGATURES`: Latin ligatures and digraphs taken apart (not æ or œ, which are letters).
const LIGATURES: [(char, &str); 22] = [
    ('\u{132}', "IJ"),
    ('\u{133}', "ij"),
    ('\u{149}', "\u{2bc}n"),
    ('\u{1f1}', "DZ"),
    ('\u{1f2}', "Dz"),
    ('\u{1f3}', "dz"),
    ('\u{1c4}', "D\u{17d}"),
    ('\u{1c5}', "D\u{17e}"),
    ('\u{1c6}', "d\u{17e}"),
    ('\u{1c7}', "LJ"),
    ('\u{1c8}', "Lj"),
    ('\u{1c9}', "lj"),
    ('\u{1ca}', "NJ"),
    ('\u{1cb}', "Nj"),
    ('\u{1cc}', "nj"),
    ('\u{fb00}', "ff"),
    ('\u{fb01}', "fi"),
    ('\u{fb02}', "fl"),
    ('\u{fb03}', "ffi"),
    ('\u{fb04}', "ffl"),
    ('\u{fb05}', "\u{17f}t"),
    ('\u{fb06}', "st"),
];

/// ftfy's `max_decode_length`: longer lines are fixed in pieces of this many characters.
const FTFY_MAX_SEGMENT: usize = 1_000_000;

impl Cleaner {
    fn shared() -> anyhow::Result<Arc<Cleaner>> {
        if let Some(c) = CLEANER.get() {
            return Ok(c.clone());
        }
        let built = Arc::new(Cleaner::new()?);
        Ok(CLEANER.get_or_init(|| built).clone())
    }

    fn new() -> anyhow::Result<Self> {
        let file: EntitiesFile = serde_json::from_str(HTML5_ENTITIES_JSON)
            .context("src/features/text/html5_entities.json is not the expected table")?;
        let mut cleaner = Cleaner {
            html5: file.entities,
            ftfy_entities: HashMap::new(),
            charref: Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0c <&#;]{1,32};?)")?,
            ftfy_entity: Regex::new(r"&#?[0-9A-Za-z]{1,24};")?,
            ansi: Regex::new(r"\x1b\[((?:\d|;)*)([a-zA-Z])")?,
        };
        let mut ftfy_entities = HashMap::new();
        for (name, value) in &cleaner.html5 {
            if !name.ends_with(';') {
                continue;
            }
            ftfy_entities.insert(format!("&{name}"), value.clone());
            if *name == name.to_lowercase() {
                let upper = format!("&{}", name.to_uppercase());
                if cleaner.html_unescape(&upper) == upper {
                    ftfy_entities.insert(upper, value.to_uppercase());
                }
            }
        }
        cleaner.ftfy_entities = ftfy_entities;
        Ok(cleaner)
    }

    fn clean(&self, text: &str) -> String {
        let fixed = self.ftfy_fix_text(text);
        let unescaped = self.html_unescape(&self.html_unescape(&fixed));
        let collapsed = unescaped
            .split(is_python_space)
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        collapsed.to_lowercase()
    }

    /// `ftfy.fix_text` with its default configuration, minus `fix_encoding` (mojibake repair)
    /// and `fix_surrogates` (a Rust string cannot hold surrogates). Line by line; once a line
    /// contains `<`, that line and every later one keep their HTML entities (ftfy's "auto").
    fn ftfy_fix_text(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut unescape = true;
        for line in text.split_inclusive('\n') {
            let mut rest = line;
            while !rest.is_empty() {
                let cut = rest
                    .char_indices()
                    .nth(FTFY_MAX_SEGMENT)
                    .map_or(rest.len(), |(i, _)| i);
                let (segment, tail) = rest.split_at(cut);
                rest = tail;
                if segment.contains('<') {
                    unescape = false;
                }
                out.push_str(&self.ftfy_fix_segment(segment, unescape));
            }
        }
        out
    }

    /// ftfy's `fix_and_explain`: the fixers in ftfy's order, then NFC, until nothing changes.
    fn ftfy_fix_segment(&self, segment: &str, unescape: bool) -> String {
        let mut text = segment.to_string();
        loop {
            let before = text.clone();
            if unescape {
                text = self.ftfy_unescape_html(&text);
            }
            text = text
                .chars()
                .map(|c| match c {
                    '\u{80}'..='\u{9f}' => WINDOWS_1252_C1[c as usize - 0x80],
                    c => c,
                })
                .collect();
            text = fix_ligatures_and_width(&text);
            text = text
                .chars()
                .map(|c| match c {
                    '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
                    '\u{201c}'..='\u{201f}' => '"',
                    c => c,
                })
                .collect();
            text = text
                .replace("\r\n", "\n")
                .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
            text = self.ansi.replace_all(&text, "").into_owned();
            text.retain(|c| !is_ftfy_control(c));
            text = text.nfc().collect();
            if text == before {
                return text;
            }
        }
    }

    /// ftfy's `unescape_html`: only references that end in `;`, numeric ones only when Python
    /// decodes them whole.
    fn ftfy_unescape_html(&self, text: &str) -> String {
        self.ftfy_entity
            .replace_all(text, |caps: &Captures| {
                let m = &caps[0];
                if let Some(v) = self.ftfy_entities.get(m) {
                    v.clone()
                } else if m.starts_with("&#") {
                    let decoded = self.html_unescape(m);
                    if decoded.contains(';') {
                        m.to_string()
                    } else {
                        decoded
                    }
                } else {
                    m.to_string()
                }
            })
            .into_owned()
    }

    /// Python's `html.unescape`.
    fn html_unescape(&self, text: &str) -> String {
        if !text.contains('&') {
            return text.to_string();
        }
        self.charref
            .replace_all(text, |caps: &Captures| self.charref_value(&caps[1]))
            .into_owned()
    }

    /// Python's `html._replace_charref` for the text after `&`.
    fn charref_value(&self, s: &str) -> String {
        if let Some(num) = s.strip_prefix('#') {
            let num = num.trim_end_matches(';');
            let value = match num.strip_prefix(['x', 'X']) {
                Some(hex) => parse_saturating(hex, 16),
                None => parse_saturating(num, 10),
            };
            return match value {
                0 => "\u{fffd}".to_string(),
                0x0d => "\r".to_string(),
                0x80..=0x9f => WINDOWS_1252_C1[value as usize - 0x80].to_string(),
                0xd800..=0xdfff => "\u{fffd}".to_string(),
                v if v > 0x10ffff => "\u{fffd}".to_string(),
                v if is_invalid_codepoint(v) => String::new(),
                v => char::from_u32(v as u32).map_or_else(String::new, String::from),
            };
        }
        if let Some(v) = self.html5.get(s) {
            return v.clone();
        }
        // The longest prefix that is an entity (legacy names need no `;`), at least two chars.
        let ends: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
        for x in (2..ends.len()).rev() {
            let (name, rest) = s.split_at(ends[x]);
            if let Some(v) = self.html5.get(name) {
                return format!("{v}{rest}");
            }
        }
        format!("&{s}")
    }
}

/// ftfy's `fix_latin_ligatures` and `fix_character_width` (fullwidth ASCII and halfwidth
/// katakana/hangul to their usual forms, the ideographic space to a space).
fn fix_ligatures_and_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if let Some((_, s)) = LIGATURES.iter().find(|(l, _)| *l == c) {
            out.push_str(s);
        } else if c == '\u{3000}' {
            out.push(' ');
        } else if ('\u{ff01}'..'\u{fff0}').contains(&c) {
            out.extend(std::iter::once(c).nfkc());
        } else {
            out.push(c);
        }
    }
    out
}

/// ftfy's `remove_control_chars`: C0 controls other than tab, newlines and form feed, DEL,
/// deprecated Arabic format characters, the byte order mark, interlinear annotations and the
/// object replacement character.
fn is_ftfy_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}'
        | '\u{b}'
        | '\u{e}'..='\u{1f}'
        | '\u{7f}'
        | '\u{206a}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffc}')
}

/// Python's `str.isspace`, which `str.split` and `str.strip` use: Unicode's White_Space plus the
/// four ASCII separators U+1C..U+1F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The code points `html.unescape` drops (Python's `html._invalid_codepoints`).
fn is_invalid_codepoint(v: u64) -> bool {
    matches!(v, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef)
        || ((v & 0xfffe) == 0xfffe && v <= 0x10ffff)
}

/// Digits in `radix`, `u64::MAX` on overflow (Python's ints do not overflow; all that matters
/// past 0x10FFFF is that the value is too large).
fn parse_saturating(digits: &str, radix: u32) -> u64 {
    digits.chars().fold(0u64, |acc, c| {
        let d = u64::from(c.to_digit(radix).unwrap_or(0));
        acc.checked_mul(u64::from(radix))
            .and_then(|a| a.checked_add(d))
            .unwrap_or(u64::MAX)
    })
}

/// Prompts per forward pass of a text tower: CLIP's ViT-L/14 tower at 77 tokens needs about
/// 1 GB of activations for this many, and prompt lists are rarely longer.
const TEXT_BATCH: usize = 256;

/// An extractor's text tower loaded once on one device: prompts in, embeddings out, in the
/// space the manifest's image features live in, so that a gap between image sets can be read
/// against directions between prompts.
pub struct TextEncoder {
    module: CModule,
    device: Device,
    tokenizer: ClipTokenizer,
    context_length: usize,
    dim: usize,
    path: PathBuf,
}

impl TextEncoder {
    /// Loads the text tower named by `manifest`'s `[text_encoder]` table on `device`: checks its
    /// sha256 (a mismatch names the file and both hashes), builds its tokenizer (the table's
    /// vocabulary or OpenAI's) and runs one prompt to learn the embedding size. An error when
    /// the manifest has no text encoder.
    pub fn load(manifest: &Manifest, device: Device) -> anyhow::Result<Self> {
        let Some(spec) = &manifest.text_encoder else {
            bail!(
                "{}: extractor {:?} has no text encoder (add a `[text_encoder]` table; see docs/reduce.md)",
                manifest.path.display(),
                manifest.id
            );
        };
        let bytes = manifest.verified_text_encoder_bytes()?;
        let path = manifest.text_encoder_path().unwrap_or_default();
        let tokenizer = match manifest.text_vocab_path() {
            Some(vocab) => ClipTokenizer::from_vocab_file(&vocab)?,
            None => ClipTokenizer::bundled()?,
        };
        if device == Device::Cpu {
            // As for image extractors (extractor.rs): profiling re-optimises on every new batch
            // shape and gains nothing on the CPU, where no fuser runs.
            tch::jit::set_profiling_mode(false);
        }
        let mut module = CModule::load_data_on_device(&mut std::io::Cursor::new(bytes), device)
            .map_err(torch_err)
            .with_context(|| format!("{}: not a loadable TorchScript module", path.display()))?;
        module.set_eval();
        let mut encoder = Self {
            module,
            device,
            tokenizer,
            context_length: spec.context_length,
            dim: 0,
            path,
        };
        let probe = encoder.forward(&["a photo".to_string()]).with_context(|| {
            format!(
                "{}: the text encoder failed on one prompt of {} token ids; does \
                     `context_length` in {} match the model?",
                encoder.path.display(),
                encoder.context_length,
                manifest.path.display()
            )
        })?;
        encoder.dim = probe.ncols();
        Ok(encoder)
    }

    /// One embedding per prompt (N × [`Self::dim`]), float64, exactly as the model returns it:
    /// no normalisation here, so a tower that normalises says so itself.
    pub fn embed(&self, prompts: &[String]) -> anyhow::Result<ndarray::Array2<f64>> {
        let mut out = ndarray::Array2::<f64>::zeros((prompts.len(), self.dim));
        for (i, chunk) in prompts.chunks(TEXT_BATCH).enumerate() {
            let rows = self.forward(chunk)?;
            if rows.ncols() != self.dim {
                bail!(
                    "{}: the text encoder returned {} values per prompt, {} at load",
                    self.path.display(),
                    rows.ncols(),
                    self.dim
                );
            }
            let start = i * TEXT_BATCH;
            out.slice_mut(ndarray::s![start..start + chunk.len(), ..])
                .assign(&rows);
        }
        Ok(out)
    }

    /// The embedding size, known from the probe at load.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The tokenizer the prompts go through, for showing what a tower actually read.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    fn forward(&self, prompts: &[String]) -> anyhow::Result<ndarray::Array2<f64>> {
        let n = prompts.len();
        let ids: Vec<i64> = self
            .tokenizer
            .tokenize(prompts, self.context_length)
            .into_iter()
            .flatten()
            .collect();
        let tokens = Tensor::from_slice(&ids)
            .f_view([n as i64, self.context_length as i64])?
            .f_to_device(self.device)?;
        let out = tch::no_grad(|| self.module.forward_is(&[IValue::Tensor(tokens)]))
            .map_err(torch_err)
            .with_context(|| format!("{}: the text encoder failed", self.path.display()))?;
        let t = match out {
            IValue::Tensor(t) => t,
            IValue::Tuple(items) | IValue::GenericList(items) => match items.into_iter().next() {
                Some(IValue::Tensor(t)) => t,
                other => bail!(
                    "{}: the text encoder's first output is not a tensor: {other:?}",
                    self.path.display()
                ),
            },
            IValue::TensorList(ts) => match ts.into_iter().next() {
                Some(t) => t,
                None => bail!(
                    "{}: the text encoder returned no tensor",
                    self.path.display()
                ),
            },
            other => bail!(
                "{}: the text encoder returned neither a tensor nor a tuple: {other:?}",
                self.path.display()
            ),
        };
        let size = t.size();
        if size.len() != 2 || size[0] != n as i64 {
            bail!(
                "{}: the text encoder returned shape {size:?} for {n} prompts; expected {n} × D",
                self.path.display()
            );
        }
        let d = size[1] as usize;
        let flat = t
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Double)?
            .f_contiguous()?
            .f_view([-1])?;
        let data = Vec::<f64>::try_from(&flat)?;
        Ok(ndarray::Array2::from_shape_vec((n, d), data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> ClipTokenizer {
        ClipTokenizer::bundled().unwrap()
    }

    #[test]
    fn encodes_words_as_openai_clip() {
        let t = tok();
        // Ids from open_clip 3.3.0 (tests/fixtures/clip_tokenizer/open_clip_tokens.json).
        assert_eq!(
            t.encode("a photo of a day scene"),
            [320, 1125, 539, 320, 575, 3562]
        );
        assert_eq!(
            t.encode("a photo of a night scene"),
            [320, 1125, 539, 320, 930, 3562]
        );
        assert_eq!(t.encode("Hello world!!!"), t.encode("hello   world !!!"));
        assert_eq!(t.start_of_text(), 49406);
        assert_eq!(t.end_of_text(), 49407);
    }

    #[test]
    fn cleans_like_ftfy_and_html_unescape() {
        let c = Cleaner::shared().unwrap();
        assert_eq!(c.clean("  Rock &amp;amp; Roll\t\n"), "rock & roll");
        assert_eq!(c.clean("\u{201c}It\u{2019}s\u{201d}"), "\"it's\"");
        assert_eq!(c.clean("\u{fb01}ne \u{ff21}\u{ff22}\u{3000}x"), "fine ab x");
        assert_eq!(c.clean("cafe\u{301}"), "caf\u{e9}");
        assert_eq!(c.clean("P&EACUTE;REZ"), "p\u{e9}rez");
        assert_eq!(c.clean("&copy 2024 &notit;"), "\u{a9} 2024 \u{ac}it;");
        assert_eq!(c.clean("\x1b[31mred\x1b[0m\u{feff}"), "red");
        assert_eq!(
            c.clean("&#x1F600; &#0; &#150;"),
            "\u{1f600} \u{fffd} \u{2013}"
        );
        // After a `<`, ftfy leaves entities alone and the quotes html.unescape makes stay curly.
        assert_eq!(
            c.clean("<b>&ldquo;hi&rdquo;</b>"),
            "<b>\u{201c}hi\u{201d}</b>"
        );
    }

    #[test]
    fn truncates_and_pads_like_open_clip() {
        let t = tok();
        let rows = t.tokenize(&["a b".to_string(), "a ".repeat(100)], CONTEXT_LENGTH);
        assert_eq!(rows[0][..4], [49406, 320, 321, 49407]);
        assert!(rows[0][4..].iter().all(|&v| v == 0));
        assert_eq!(rows[0].len(), CONTEXT_LENGTH);
        assert_eq!(rows[1].len(), CONTEXT_LENGTH);
        assert_eq!(rows[1][CONTEXT_LENGTH - 1], 49407);
        assert!(rows[1][1..CONTEXT_LENGTH - 1].iter().all(|&v| v == 320));
        let short = t.tokenize(&["a photo".to_string()], 3);
        assert_eq!(short, [[49406, 320, 49407]]);
        assert_eq!(t.tokenize(&[String::new()], 1), [[49407]]);
    }

    #[test]
    fn reads_a_gzipped_or_plain_merges_file() {
        let dir = tempfile::tempdir().unwrap();
        // The header line, then merges: "h e", "he l", "hel l", "hell o</w>".
        let merges = "#version: test\nh e\nhe l\nhel l\nhell o</w>\n";
        let plain = dir.path().join("v.txt");
        std::fs::write(&plain, merges).unwrap();
        let gz = dir.path().join("v.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, merges.as_bytes()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        for path in [plain, gz] {
            let t = ClipTokenizer::from_vocab_file(&path).unwrap();
            // 512 byte tokens, four merges, then the special tokens.
            assert_eq!(t.encode("hello"), [515]);
            assert_eq!((t.start_of_text(), t.end_of_text()), (516, 517));
        }
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "#version\nnot-a-token x\n").unwrap();
        let err = ClipTokenizer::from_vocab_file(&bad).err().unwrap();
        assert!(format!("{err:#}").contains("bad.txt"), "{err:#}");
    }
}
