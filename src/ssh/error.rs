//! The one mapping of core errors for all of SSH. A [`CoreError`] becomes a
//! [`Refusal`] once, here; commands take their exit status and stderr line
//! from it, SFTP its status code and message, the SCP sink its message.
//! The mapping looks at the variant, never at the text.

use russh_sftp::protocol::StatusCode;
use russh_sftp::server::StatusReply;

use super::format;
use crate::core::{CoreError, ImageState, InvalidState};

/// Longest error line a command prints on stderr.
const COMMAND_LINE_MAX: usize = 2000;

/// What kind of "no" an error is, as far as SSH clients can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The thing named does not exist (SFTP: no such file).
    NotFound,
    /// Only admins may do this, or the image is sealed (SFTP: permission
    /// denied).
    Denied,
    /// Anything else the core refused or failed at.
    Failed,
}

/// A core error (or a command's own failed outcome) as SSH shows it.
#[derive(Debug)]
pub(crate) struct Refusal {
    kind: Kind,
    message: String,
}

impl From<CoreError> for Refusal {
    fn from(e: CoreError) -> Self {
        Refusal::from(&e)
    }
}

impl From<&CoreError> for Refusal {
    fn from(e: &CoreError) -> Self {
        let kind = match e {
            CoreError::NotFound(_) => Kind::NotFound,
            CoreError::AdminOnly(..) => Kind::Denied,
            // A ready (sealed) image, or one finalising: it takes no writes.
            CoreError::InvalidState(InvalidState::NoUploads { .. }) => Kind::Denied,
            _ => Kind::Failed,
        };
        Refusal {
            kind,
            message: with_fix(e),
        }
    }
}

/// The core's message, with the command that gets past it where there is
/// one.
fn with_fix(e: &CoreError) -> String {
    match e {
        CoreError::ImageHasInstances { id, .. } => {
            format!("{e}, or all at once: ssh draupnir destroy-image {id} --force")
        }
        CoreError::NotFound(crate::core::Missing::Source(_)) => {
            format!("{e}; ssh draupnir sources lists the configured ones")
        }
        CoreError::ImageNotReady { id, state } if *state == ImageState::Failed.as_str() => {
            format!("{e}; the reason: ssh draupnir image {id}")
        }
        _ => e.to_string(),
    }
}

impl Refusal {
    /// A command's outcome that is a failure although the core call went
    /// through (a finalise that ended with the image not ready).
    pub(crate) fn failed(message: String) -> Self {
        Refusal {
            kind: Kind::Failed,
            message,
        }
    }

    /// The exit status of a command that ends with this.
    pub(crate) fn exit_status(&self) -> u32 {
        1
    }

    /// The command's stderr: `draupnir: <message>` on one line.
    pub(crate) fn command_line(&self) -> String {
        format!(
            "draupnir: {}\n",
            format::one_line(&self.message, COMMAND_LINE_MAX)
        )
    }

    /// The whole message (SCP and SFTP flatten it their own way).
    pub(crate) fn into_message(self) -> String {
        self.message
    }

    /// The SFTP status for this.
    pub(crate) fn sftp_code(&self) -> StatusCode {
        match self.kind {
            Kind::NotFound => StatusCode::NoSuchFile,
            Kind::Denied => StatusCode::PermissionDenied,
            Kind::Failed => StatusCode::Failure,
        }
    }

    /// The SFTP reply: its status code with the message.
    pub(crate) fn sftp_reply(self) -> StatusReply {
        self.sftp_code().with_message(self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{BadInput, ImageId, Missing};

    #[test]
    fn variants_map_to_sftp_codes_and_one_line() {
        let nf = Refusal::from(CoreError::NotFound(Missing::Image(ImageId::new(7))));
        assert_eq!(nf.sftp_code(), StatusCode::NoSuchFile);
        assert_eq!(nf.command_line(), "draupnir: image 7 not found\n");
        assert_eq!(nf.exit_status(), 1);
        let admin = Refusal::from(CoreError::AdminOnly("creating images"));
        assert_eq!(admin.sftp_code(), StatusCode::PermissionDenied);
        let sealed = Refusal::from(CoreError::InvalidState(InvalidState::NoUploads {
            id: ImageId::new(2),
            state: crate::core::ImageState::Ready,
        }));
        assert_eq!(sealed.sftp_code(), StatusCode::PermissionDenied);
        assert_eq!(sealed.exit_status(), 1);
        let other = Refusal::from(CoreError::BadInput(BadInput::ReadUpload(
            std::io::Error::other("two\nlines"),
        )));
        assert_eq!(other.sftp_code(), StatusCode::Failure);
        assert_eq!(
            other.command_line(),
            "draupnir: reading the upload: two lines\n"
        );
        assert_eq!(other.into_message(), "reading the upload: two\nlines");
    }
}
