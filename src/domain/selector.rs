//! Which changes a watcher wants.

use super::{Change, LabelName, PromptName};
use std::collections::BTreeSet;

/// A watch selector: prompt names and prefixes (both empty: every prompt),
/// labels (empty: every label), and whether version publications are wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub names: BTreeSet<PromptName>,
    pub prefixes: Vec<String>,
    pub labels: BTreeSet<LabelName>,
    pub include_versions: bool,
}

impl Selector {
    pub fn matches_prompt(&self, name: &PromptName) -> bool {
        (self.names.is_empty() && self.prefixes.is_empty())
            || self.names.contains(name)
            || self
                .prefixes
                .iter()
                .any(|p| name.as_str().starts_with(p.as_str()))
    }

    pub fn matches_label(&self, name: &PromptName, label: &LabelName) -> bool {
        (self.labels.is_empty() || self.labels.contains(label)) && self.matches_prompt(name)
    }

    pub fn matches(&self, change: &Change) -> bool {
        match change {
            Change::VersionPublished { name, .. } => {
                self.include_versions && self.matches_prompt(name)
            }
            Change::LabelMoved(mv) => self.matches_label(&mv.name, &mv.label),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PromptName {
        PromptName::parse("name", s, 128).unwrap()
    }

    fn label(s: &str) -> LabelName {
        LabelName::parse("label", s).unwrap()
    }

    #[test]
    fn empty_selector_matches_every_label() {
        let all = Selector::default();
        assert!(all.matches_label(&name("a/b"), &label("latest")));
    }

    #[test]
    fn names_prefixes_and_labels_combine() {
        let selector = Selector {
            names: [name("exact")].into(),
            prefixes: vec!["support/".into()],
            labels: [label("production")].into(),
            include_versions: false,
        };
        assert!(selector.matches_label(&name("exact"), &label("production")));
        assert!(selector.matches_label(&name("support/triage"), &label("production")));
        assert!(!selector.matches_label(&name("support/triage"), &label("staging")));
        assert!(!selector.matches_label(&name("exactly"), &label("production")));
        assert!(!selector.matches_label(&name("sales/x"), &label("production")));
    }
}
