//! Which settings a reload (SIGHUP) may change: every field of a config
//! section is declared `live` (in force at once), `fixed` (needs a restart;
//! the running value is kept) or `section` (a nested section, compared
//! field by field) in the one [`config_section!`] declaration that also
//! defines the struct, so the reload classes cannot drift from the fields.

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys whose new values are in force now.
    pub applied: Vec<&'static str>,
    /// Keys that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// A config section that knows each field's reload class.
pub trait Reloadable {
    /// Record in `report` every key that differs between `self` (the
    /// running config) and `new`, in field order.
    fn diff_into(&self, new: &Self, report: &mut ReloadReport);
    /// Put back the running value of every `fixed` key from `old`.
    fn keep_fixed(&mut self, old: &Self);
}

/// Reload class `live`: a change applies at once.
pub mod live {
    use super::ReloadReport;

    pub fn diff<T: PartialEq>(key: &'static str, old: &T, new: &T, r: &mut ReloadReport) {
        if old != new {
            r.applied.push(key);
        }
    }

    pub fn keep<T>(_mine: &mut T, _old: &T) {}
}

/// Reload class `fixed`: a change waits for a restart.
pub mod fixed {
    use super::ReloadReport;

    pub fn diff<T: PartialEq>(key: &'static str, old: &T, new: &T, r: &mut ReloadReport) {
        if old != new {
            r.needs_restart.push(key);
        }
    }

    pub fn keep<T: Clone>(mine: &mut T, old: &T) {
        *mine = old.clone();
    }
}

/// Reload class `section`: a nested section with classes of its own.
pub mod section {
    use super::{ReloadReport, Reloadable};

    pub fn diff<T: Reloadable>(_key: &'static str, old: &T, new: &T, r: &mut ReloadReport) {
        old.diff_into(new, r);
    }

    pub fn keep<T: Reloadable>(mine: &mut T, old: &T) {
        mine.keep_fixed(old);
    }
}

/// Define a config section: the struct (every field `pub`, attributes and
/// docs passed through) and its [`Reloadable`] impl. Each field is
/// preceded by its reload class (`live`, `fixed` or `section`); report
/// keys are the `prefix` followed by the field name.
macro_rules! config_section {
    (
        $(#[$smeta:meta])*
        pub struct $name:ident (prefix $prefix:literal) {
            $(
                $(#[$fmeta:meta])*
                $class:ident $field:ident : $ty:ty,
            )*
        }
    ) => {
        $(#[$smeta])*
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
        }

        impl $crate::config::reload_class::Reloadable for $name {
            fn diff_into(
                &self,
                new: &Self,
                report: &mut $crate::config::reload_class::ReloadReport,
            ) {
                $(
                    $crate::config::reload_class::$class::diff(
                        concat!($prefix, stringify!($field)),
                        &self.$field,
                        &new.$field,
                        report,
                    );
                )*
            }

            fn keep_fixed(&mut self, old: &Self) {
                $(
                    $crate::config::reload_class::$class::keep(&mut self.$field, &old.$field);
                )*
            }
        }
    };
}

pub(crate) use config_section;
