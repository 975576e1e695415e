//! Builds the C++ extension (src/torch/ext.cpp) against the libtorch torch-sys found, and makes
//! every binary and test executable find libtorch at run time without LD_LIBRARY_PATH.
//!
//! torch-sys exports its libtorch lib dir as DEP_TCH_LIBTORCH_LIB (its `links` key is "tch" and
//! we depend on it directly). docs/development.md, "How the build finds libtorch", tells the
//! whole story.
use std::path::{Path, PathBuf};

const EXPECTED_TORCH: (u32, u32, u32) = (2, 13, 0);

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/torch/ext.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");

    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect(
        "torch-sys did not report its libtorch directory; run the build through ci/cargo, \
         which installs libtorch and sets LIBTORCH",
    ));
    let root = lib
        .parent()
        .expect("libtorch lib dir has a parent")
        .to_path_buf();
    check_version(&root);
    // The wheel's build tag ("2.13.0+cu130") for the environment fingerprint.
    let build_tag = std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').to_string())
        })
        .unwrap_or_default();
    println!("cargo:rustc-env=REPRODIFF_TORCH_BUILD={build_tag}");

    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++20")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .file("src/torch/ext.cpp")
        .compile("reprodiff_torch_ext");

    // rpath: executables find libtorch_cpu.so & co. where they were built against; libtorch's
    // own rpaths then find libgomp and the nvidia libraries.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // rustc links with --as-needed, which silently drops libtorch_cuda.so (nothing references
    // it directly) and leaves CUDA unavailable from Rust on a GPU host. Keep it.
    if lib.join("libtorch_cuda.so").exists() {
        println!(
            "cargo:rustc-link-arg=-Wl,-L{},--no-as-needed,-ltorch_cuda,--as-needed",
            lib.display()
        );
    }
}

fn check_version(root: &Path) {
    let header = root.join("include/torch/headeronly/version.h");
    let text = std::fs::read_to_string(&header)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", header.display()));
    let field = |name: &str| -> u32 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{} has no {name}", header.display()))
    };
    let found = (
        field("TORCH_VERSION_MAJOR"),
        field("TORCH_VERSION_MINOR"),
        field("TORCH_VERSION_PATCH"),
    );
    assert_eq!(
        found,
        EXPECTED_TORCH,
        "libtorch at {} is {:?}, reprodiff pins {:?} (tch 0.26); run ci/install-libtorch.sh",
        root.display(),
        found,
        EXPECTED_TORCH
    );
}
