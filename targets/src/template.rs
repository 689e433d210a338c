//! The text files a pack installs, as templates with `{{name}}` placeholders.
//!
//! The syntax is the whole of it: `{{name}}`, where the name is lowercase
//! letters, digits and underscores, is replaced by the value given for
//! `name`. There is no escaping, no condition and no loop: a board that needs
//! a line another board does not gets an empty value (systemd reads an empty
//! `SupplementaryGroups=` as "none"). A placeholder without a value, a value
//! without a placeholder, and a `{{` that does not open a placeholder are
//! errors, so a file is never shipped half-filled.

use core::fmt;

/// A template: its file name (for errors) and its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! template {
    ($file:literal) => {
        Template {
            name: $file,
            text: include_str!(concat!("../templates/", $file)),
        }
    };
}

/// The systemd unit that runs `runtime serve`.
pub const UNIT: Template = template!("tailor.service");
/// `/etc/tailor/runtime.toml`, read by `runtime serve --config`.
pub const CONFIG: Template = template!("runtime.toml");
/// The idempotent installer (and uninstaller).
pub const INSTALL: Template = template!("install.sh");
/// The README on the device.
pub const README: Template = template!("README.md");
/// systemd-sysusers' entry for the `tailor` system user.
pub const SYSUSERS: Template = template!("sysusers.conf");
/// The `.deb`'s control file.
pub const DEB_CONTROL: Template = template!("deb-control");
/// The `.deb`'s maintainer scripts: the installer's system steps.
pub const DEB_POSTINST: Template = template!("deb-postinst");
pub const DEB_PRERM: Template = template!("deb-prerm");
/// The `.deb`'s purge: the configuration install.sh put in place.
pub const DEB_POSTRM: Template = template!("deb-postrm");

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// The template names a placeholder no value was given for.
    Unfilled {
        template: &'static str,
        line: usize,
        name: String,
    },
    /// A value was given for a placeholder the template does not have.
    Unknown {
        template: &'static str,
        name: String,
    },
    /// A `{{` not followed by a name and `}}`.
    Malformed { template: &'static str, line: usize },
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unfilled {
                template,
                line,
                name,
            } => write!(f, "{template}, line {line}: no value for {{{{{name}}}}}"),
            Self::Unknown { template, name } => {
                write!(f, "{template} has no placeholder {{{{{name}}}}}")
            }
            Self::Malformed { template, line } => write!(
                f,
                "{template}, line {line}: `{{{{` does not open a placeholder `{{{{name}}}}`"
            ),
        }
    }
}

impl std::error::Error for TemplateError {}

/// Fills every placeholder of `template` with its value in `values`.
pub fn render(template: &Template, values: &[(&str, &str)]) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.text.len());
    let mut used = vec![false; values.len()];
    let mut rest = template.text;
    while let Some(start) = rest.find("{{") {
        let line = 1 + template.text[..template.text.len() - rest.len() + start]
            .matches('\n')
            .count();
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name = after
            .find("}}")
            .map(|end| &after[..end])
            .filter(|name| is_name(name))
            .ok_or(TemplateError::Malformed {
                template: template.name,
                line,
            })?;
        let index = values
            .iter()
            .position(|(key, _)| *key == name)
            .ok_or_else(|| TemplateError::Unfilled {
                template: template.name,
                line,
                name: name.to_owned(),
            })?;
        used[index] = true;
        out.push_str(values[index].1);
        rest = &after[name.len() + 2..];
    }
    out.push_str(rest);
    match values.iter().zip(&used).find(|(_, used)| !**used) {
        Some(((name, _), _)) => Err(TemplateError::Unknown {
            template: template.name,
            name: (*name).to_owned(),
        }),
        None => Ok(out),
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Template = Template {
        name: "t.conf",
        text: "a={{a}}\nb={{b}} and {{a}} again\n",
    };

    #[test]
    fn every_placeholder_is_replaced_each_time_it_occurs() {
        let out = render(&T, &[("a", "1"), ("b", "")]).unwrap();
        assert_eq!(out, "a=1\nb= and 1 again\n");
    }

    #[test]
    fn a_missing_value_names_the_template_line_and_placeholder() {
        let err = render(&T, &[("a", "1")]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::Unfilled {
                template: "t.conf",
                line: 2,
                name: "b".into()
            }
        );
        assert_eq!(err.to_string(), "t.conf, line 2: no value for {{b}}");
    }

    #[test]
    fn a_value_for_no_placeholder_is_an_error() {
        let err = render(&T, &[("a", "1"), ("b", "2"), ("c", "3")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf has no placeholder {{c}}",
            "a misspelt key must not be dropped silently"
        );
    }

    #[test]
    fn braces_that_open_no_placeholder_are_malformed() {
        for text in ["x {{ a }}", "x {{A}}", "x {{a", "x\n{{}}"] {
            let t = Template { name: "m", text };
            assert!(
                matches!(
                    render(&t, &[("a", "1")]),
                    Err(TemplateError::Malformed { .. })
                ),
                "{text:?}"
            );
        }
    }
}
