//! Containing panics of the storage engine.
//!
//! sled panics on some damaged files (while it recovers its log, say)
//! instead of returning an error. A start-up or a `promptreg check` on such
//! a store must report it as damage, with a clear message, not die with a
//! backtrace. One process-wide panic hook, installed on first use, keeps
//! quiet about panics that code here has asked to contain and passes every
//! other panic on to the hook it replaced.

use std::cell::RefCell;
use std::sync::{Mutex, Once};

thread_local! {
    /// Set while this thread runs [`quietly`]: the panic's message.
    static CONTAINED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Set while [`capturing_all`] runs: panics of every thread.
static CAPTURED: Mutex<Option<Vec<String>>> = Mutex::new(None);

fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info
                .location()
                .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                .unwrap_or_default();
            let message = format!("{}{at}", payload_text(info.payload()));
            let contained = CONTAINED.with(|c| match c.borrow_mut().as_mut() {
                Some(found) => {
                    found.push(message.clone());
                    true
                }
                None => false,
            });
            if contained {
                return;
            }
            let mut captured = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
            match captured.as_mut() {
                Some(found) => found.push(message),
                None => {
                    drop(captured);
                    previous(info);
                }
            }
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs `f` on this thread; a panic in it becomes `Err` with the panic's
/// message, and nothing is printed.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install();
    let outer = CONTAINED.with(|c| c.replace(Some(Vec::new())));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let found = CONTAINED.with(|c| c.replace(outer)).unwrap_or_default();
    result.map_err(|payload| {
        found
            .into_iter()
            .next()
            .unwrap_or_else(|| payload_text(payload.as_ref()))
    })
}

/// Runs `f` and returns, besides its result, the message of every panic
/// that any thread had meanwhile (none printed). For a command-line tool
/// whose process does nothing else: the storage engine panics in threads
/// of its own too.
pub fn capturing_all<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    install();
    *CAPTURED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    let result = f();
    let found = CAPTURED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    (result, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_quietly_becomes_its_message() {
        let result: Result<(), String> = quietly(|| panic!("tried to serialize Uninitialized"));
        let message = result.expect_err("the panic is an error");
        assert!(
            message.starts_with("tried to serialize Uninitialized (at "),
            "{message}"
        );
        assert_eq!(quietly(|| 7), Ok(7));
    }

    #[test]
    fn capturing_all_collects_the_panics_of_other_threads() {
        let (joined, panics) = capturing_all(|| {
            std::thread::spawn(|| panic!("in a background thread"))
                .join()
                .is_err()
        });
        assert!(joined);
        assert!(
            panics
                .iter()
                .any(|p| p.starts_with("in a background thread")),
            "{panics:?}"
        );
        // Afterwards nothing is captured any more.
        let (_, panics) = capturing_all(|| ());
        assert!(panics.is_empty(), "{panics:?}");
    }
}
