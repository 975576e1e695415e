//! The CLIP tokenizer of a Stable Diffusion `tokenizer/` folder, on Hugging Face's `tokenizers`
//! library (what transformers' CLIPTokenizer runs on):
//! - a `tokenizer.json` (transformers 5 layout) is loaded as it is;
//! - `vocab.json` + `merges.txt` (the SD 1.5 layout) become the pipeline transformers'
//!   CLIPTokenizer builds from them: NFC, whitespace runs to one space, lowercase; CLIP's
//!   pre-split regex then byte-level; BPE with the `</w>` end-of-word suffix.
//!
//! [`ClipTokenizer::encode`] is `tokenizer(prompt, padding="max_length", max_length=77,
//! truncation=True).input_ids`: BOS, at most 75 tokens, EOS, then the pad token.
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: i64,
    pub eos_id: i64,
    pub pad_id: i64,
    pub max_length: usize,
}

/// A special token in tokenizer_config.json / special_tokens_map.json: a string or
/// `{"content": ...}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::invalid_file(path, e))
}

/// Whether a special token is matched after normalisation: an `AddedToken` object says so
/// (`"normalized"`, default true); a plain string is registered with `normalized=False`.
fn normalized_flag(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.get("normalized").and_then(Value::as_bool).unwrap_or(true),
        _ => false,
    }
}

/// The tokenizer.json transformers' CLIPTokenizer describes for `vocab` and `merges`, with
/// the special tokens of `config` registered in transformers' order (bos, eos, unk, pad: a
/// later registration of the same text overrides an earlier one's `normalized` flag).
fn clip_pipeline(
    vocab: Value,
    merges: Vec<String>,
    config: &serde_json::Map<String, Value>,
    defaults: &[(&str, &str)],
) -> Value {
    let id = |t: &str| vocab.get(t).and_then(Value::as_i64);
    let mut added: Vec<(String, bool)> = Vec::new();
    for (key, default) in defaults {
        let (text, normalized) = match config.get(*key) {
            Some(v) => (
                token_text(v).unwrap_or_else(|| default.to_string()),
                normalized_flag(v),
            ),
            None => (default.to_string(), false),
        };
        match added.iter_mut().find(|(t, _)| *t == text) {
            Some(entry) => entry.1 = normalized,
            None => added.push((text, normalized)),
        }
    }
    let text = |key: &str| added_text(config, defaults, key);
    let (unk, bos, eos) = (text("unk_token"), text("bos_token"), text("eos_token"));
    let mut added_tokens: Vec<Value> = added
        .iter()
        .filter_map(|(t, normalized)| {
            id(t).map(|i| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": normalized, "special": true})
            })
        })
        .collect();
    added_tokens.sort_by_key(|t| t["id"].as_i64());
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split",
             "pattern": {"Regex": "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "RobertaProcessing",
            "sep": [eos, id(&eos)], "cls": [bos, id(&bos)],
            "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk,
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    })
}

/// The text of special token `key` in `config`, else its default.
fn added_text(
    config: &serde_json::Map<String, Value>,
    defaults: &[(&str, &str)],
    key: &str,
) -> String {
    config.get(key).and_then(token_text).unwrap_or_else(|| {
        defaults
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(String::new(), |(_, d)| d.to_string())
    })
}

/// CLIPTokenizer's special tokens and their defaults, in registration order.
const SPECIAL: [(&str, &str); 4] = [
    ("bos_token", "<|startoftext|>"),
    ("eos_token", "<|endoftext|>"),
    ("unk_token", "<|endoftext|>"),
    ("pad_token", "<|endoftext|>"),
];

impl ClipTokenizer {
    /// Loads a tokenizer folder; neither tokenizer.json nor vocab.json + merges.txt is an error
    /// naming the folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut config = serde_json::Map::new();
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if path.is_file() {
                if let Value::Object(o) = read_json(&path)? {
                    config.extend(o);
                }
            }
        }
        let special = |key: &str| added_text(&config, &SPECIAL, key);
        let (bos, eos, pad) = (
            special("bos_token"),
            special("eos_token"),
            special("pad_token"),
        );
        let max_length = config
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|&m| (1.0..1e9).contains(&m))
            .map_or(77, |m| m as usize);

        let json_path = dir.join("tokenizer.json");
        let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let inner = if json_path.is_file() {
            tokenizers::Tokenizer::from_file(&json_path)
                .map_err(|e| Error::invalid_file(&json_path, e))?
        } else if vocab_path.is_file() && merges_path.is_file() {
            let vocab = read_json(&vocab_path)?;
            if !vocab.is_object() {
                return Err(Error::invalid_file(&vocab_path, "not a JSON object"));
            }
            let text =
                std::fs::read_to_string(&merges_path).map_err(|e| Error::io(&merges_path, e))?;
            // CLIPTokenizer: merges.txt's first line is "#version: ...", blank lines dropped.
            let merges: Vec<String> = text
                .lines()
                .enumerate()
                .filter(|(i, l)| !(l.trim().is_empty() || *i == 0 && l.starts_with("#version")))
                .map(|(_, l)| l.to_string())
                .collect();
            let spec = clip_pipeline(vocab, merges, &config, &SPECIAL);
            let text = serde_json::to_string(&spec).expect("serialises");
            text.parse::<tokenizers::Tokenizer>()
                .map_err(|e| Error::invalid_file(&merges_path, e))?
        } else {
            return Err(Error::invalid_file(
                dir,
                "not a tokenizer folder: neither tokenizer.json nor vocab.json + merges.txt",
            ));
        };
        let id = |t: &str| -> Result<i64> {
            inner.token_to_id(t).map(i64::from).ok_or_else(|| {
                Error::invalid_file(dir, format!("token {t:?} is not in the vocabulary"))
            })
        };
        Ok(ClipTokenizer {
            bos_id: id(&bos)?,
            eos_id: id(&eos)?,
            pad_id: id(&pad)?,
            max_length,
            inner,
        })
    }

    /// The ids of `text` without BOS/EOS, untruncated.
    pub fn tokens(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::InvalidArgument(format!("tokenizing {text:?}: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// `tokenizer(text, padding="max_length", max_length, truncation=True).input_ids`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let body = self.tokens(text)?;
        let keep = body.len().min(self.max_length.saturating_sub(2));
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eos_id);
        ids.resize(self.max_length.max(ids.len()), self.pad_id);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::ClipTokenizer;
    use serde_json::Value;
    use std::path::Path;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// fixtures/golden/tokenizer-ids.json: transformers' CLIPTokenizer (ci/oracle/tokenizer_ids.py)
    /// on the committed corpus, for a full CLIP ViT-L/14 vocabulary (SD 1.5's tokenizer, from
    /// vocab.json + merges.txt), tiny-sd-a (a tokenizer.json) and tiny-sd-b (vocab + merges,
    /// pad "!").
    #[test]
    fn ids_equal_transformers_on_the_whole_corpus() {
        let read = |p: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(root().join(p)).unwrap()).unwrap()
        };
        let golden = read("fixtures/golden/tokenizer-ids.json");
        let corpus: Vec<String> =
            serde_json::from_value(read(golden["corpus"].as_str().unwrap())).unwrap();
        let mut checked = 0;
        for (name, t) in golden["tokenizers"].as_object().unwrap() {
            let tok = ClipTokenizer::load(&root().join(t["folder"].as_str().unwrap())).unwrap();
            let want: Vec<Vec<i64>> = serde_json::from_value(t["ids"].clone()).unwrap();
            let lens: Vec<usize> = serde_json::from_value(t["untruncated_len"].clone()).unwrap();
            assert_eq!(want.len(), corpus.len(), "{name}");
            for ((prompt, ids), len) in corpus.iter().zip(&want).zip(&lens) {
                assert_eq!(&tok.encode(prompt).unwrap(), ids, "{name}: {prompt:?}");
                assert_eq!(
                    tok.tokens(prompt).unwrap().len() + 2,
                    *len,
                    "{name}: {prompt:?}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 3 * 40, "only {checked} prompts checked");
    }

    #[test]
    fn a_folder_without_vocabulary_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vocab.json"), "{}").unwrap();
        let err = ClipTokenizer::load(dir.path())
            .err()
            .expect("no merges.txt");
        let text = err.to_string();
        assert!(
            text.contains("neither tokenizer.json nor vocab.json + merges.txt"),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
    }
}
