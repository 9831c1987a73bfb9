//! The naming rule for scopes and streams, shared by every client and the
//! server so both refuse exactly the same names.

/// Longest scope or stream name, in bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// The rule in words, for error messages.
pub const NAME_RULE: &str = "use 1 to 255 characters from A-Z a-z 0-9 . _ - (not . or ..)";

/// Whether `name` is a valid scope or stream name: `[A-Za-z0-9._-]{1,255}`
/// but not `.` or `..` (the dot is there because Kafka topic names have
/// it; the two names that would read as directories are not).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Kafka's topic rule, which stream names widen: a valid name of at most
/// 249 characters.
pub fn is_valid_kafka_topic(name: &str) -> bool {
    name.len() <= 249 && is_valid_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_rule_and_nothing_else() {
        assert!(is_valid_name("a-Z_09"));
        assert!(is_valid_name("orders.v2"));
        assert!(is_valid_name("..."));
        assert!(!is_valid_name("."));
        assert!(!is_valid_name(".."));
        assert!(is_valid_name(&"x".repeat(255)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"x".repeat(256)));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("é"));
    }
}
