//! Random (version 4) UUIDs for task ids and delivery tags, from the
//! `uuid` crate drawing on the operating system's randomness.

/// A new random UUID in the canonical hyphenated lowercase form, e.g.
/// `"22394c6d-8f5e-4a1b-9c3d-0e1f2a3b4c5d"`.
///
/// ```
/// let id = greenpool_celery::uuid4();
/// assert_eq!(id.len(), 36);
/// assert_eq!(&id[14..15], "4");
/// ```
pub fn uuid4() -> String {
    ::uuid::Uuid::new_v4().hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_well_formed_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = uuid4();
            assert_eq!(id.len(), 36);
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts[2].starts_with('4'));
            assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"));
            assert!(seen.insert(id));
        }
    }
}
