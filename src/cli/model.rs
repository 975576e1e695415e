//! `derive-weights` and the hidden `resolve-model`: where a model's files are, by the one rule
//! both reprodiff and the oracle load them by ([`crate::loading`]).
use crate::error::{exit, Error, Result};
use std::path::Path;

/// `derive-weights`: a diffusers pipeline folder with deterministically derived weights.
pub(crate) fn derive_weights(arch: &str, out: &Path) -> Result<i32> {
    crate::models::derived::write(arch, out)?;
    println!("wrote {} (derived weights for {arch})", out.display());
    Ok(exit::OK)
}

/// `resolve-model SPEC`: the folder `SPEC` names, derived weights made first where they are
/// not in the cache yet, as one JSON line: `{"spec", "folder", "kind"}` (kind: derived, hub or
/// folder), or `{"spec", "unavailable"}` for a model this host does not have (a hub model not in
/// the local cache).
pub(crate) fn resolve_model(spec: &str, models: Option<&Path>) -> Result<i32> {
    let line = match crate::loading::resolve_dir(spec, models) {
        Ok(folder) => {
            crate::loading::from_dir(&folder)?;
            let kind = if spec.starts_with("derived:") {
                "derived"
            } else if folder.starts_with(crate::loading::hub_cache()) {
                "hub"
            } else {
                "folder"
            };
            serde_json::json!({"spec": spec, "folder": folder, "kind": kind})
        }
        Err(Error::Unavailable(why)) => serde_json::json!({"spec": spec, "unavailable": why}),
        Err(e) => return Err(e),
    };
    println!("{line}");
    Ok(exit::OK)
}
