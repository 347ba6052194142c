//! What every target shares: a panic that escapes gapmeter is a finding, a panic caught inside it
//! is not.
//!
//! libjpeg reports fatal errors by unwinding out of its error handler, and
//! `src/imaging/jpeg.rs` catches that unwind and returns an error: that is how every corrupt
//! JPEG is refused. libfuzzer-sys's panic hook aborts on any panic, caught or not, so it would
//! report every corrupt JPEG as a crash. [`run`] puts a quiet hook in its place and aborts (a
//! crash for libFuzzer) only when a panic reaches it.
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::Once;

thread_local! {
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

pub fn run(f: impl FnOnce()) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.to_string();
            LAST_PANIC.with(|last| *last.borrow_mut() = message);
        }));
    });
    if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
        LAST_PANIC.with(|last| eprintln!("gapmeter panicked: {}", last.borrow()));
        std::process::abort();
    }
}
