//! The `reprodiff` executable: the flags and the commands are [`reprodiff::cli`].
fn main() -> std::process::ExitCode {
    reprodiff::cli::main()
}
