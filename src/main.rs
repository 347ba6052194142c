fn main() -> std::process::ExitCode {
    gapmeter::cli::main()
}
