//! A wrapper that keeps personal values out of logs.
//!
//! Display names, room names and tokens are personal or secret; wrapping them in [`Redacted`]
//! makes `Display`/`Debug` print only their length, so a stray `info!(?name)` leaks nothing.

use std::fmt;

/// A value that must not appear in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T: AsRef<str>> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.as_ref().len())
    }
}

impl<T: AsRef<str>> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let r = Redacted("Wang Xiaoming".to_string());
        assert_eq!(r.to_string(), "<redacted 13 bytes>");
        assert!(!format!("{r:?}").contains("Wang"));
    }
}
