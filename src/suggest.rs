//! "Did you mean ...?": the known name closest to a mistyped one.

use datafusion::common::utils::datafusion_strsim::levenshtein;

/// `" (did you mean `x`?)"` for the candidate closest to `name` (case-insensitively), when it is
/// close enough to be a typo: at most a third of the name's letters off, and at least one (two
/// swapped letters count as one).
/// Empty when none is.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match closest(name, candidates) {
        Some(candidate) if candidate != name => format!(" (did you mean `{candidate}`?)"),
        _ => String::new(),
    }
}

/// The candidate closest to `name`, when it is close enough to be a typo (see [`did_you_mean`]).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name_lower = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (distance(&name_lower, &candidate.to_lowercase()), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein's distance, but a swap of two letters is one edit.
fn distance(a: &str, b: &str) -> usize {
    let letters = |s: &str| {
        let mut letters: Vec<char> = s.chars().collect();
        letters.sort_unstable();
        letters
    };
    match levenshtein(a, b) {
        2 if letters(a) == letters(b) => 1,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn a_typo_gets_the_closest_name_and_a_stranger_gets_nothing() {
        let names = ["orders", "customers", "order_totals"];
        assert_eq!(did_you_mean("ordres", names), " (did you mean `orders`?)");
        assert_eq!(did_you_mean("Customer", names), " (did you mean `customers`?)");
        assert_eq!(did_you_mean("zebra", names), "");
        assert_eq!(did_you_mean("odrers", names), " (did you mean `orders`?)");
        assert_eq!(did_you_mean("orders", names), "");
    }
}
