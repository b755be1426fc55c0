//! `harness`: validate and run benchmark sweeps described by one YAML file. The program is
//! the `harness` library's [`App`](harness::App) with the built-in step kinds.

fn main() -> std::process::ExitCode {
    harness::App::default().main()
}
