//! Where mail goes when no mail server is configured: a folder with one `.eml` file per mail
//! (the default), or one mbox file every mail is appended to (`MAIL_MBOX`).
//!
//! The folder is the friendliest to read (any mail client opens an `.eml`); the mbox costs the
//! least — one write for many mails into one file, where the folder creates a file, an inode
//! and a folder entry for each — and opens in `mutt -f`, Thunderbird or any mbox reader.

use std::{
    fs::File,
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::domain::Notification;

/// Writes the mail as `{time}-{kind}-{recipient}-{id}.eml`; the name depends only on the
/// record, so a retried write replaces the file instead of adding a second one.
pub fn write_eml(dir: &Path, n: &Notification, bytes: &[u8]) -> anyhow::Result<()> {
    let recipient: String = n
        .recipient
        .as_deref()
        .unwrap_or("unknown")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = format!(
        "{}-{}-{recipient}-{}.eml",
        n.occurred_at.format("%Y%m%dT%H%M%S%.3fZ"),
        n.kind.as_str().to_ascii_lowercase().replace('_', "-"),
        n.id
    );
    // Written in place: a few kilobytes into the page cache take less time than handing them to
    // a blocking thread and back (this is the local default, not the deployed SMTP path).
    // The folder is made at start-up; made again only if it has gone since (not checked for
    // every mail: that is two more system calls each).
    let written = match write_whole(dir, &name, bytes) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            write_whole(dir, &name, bytes)
        }
        other => other,
    };
    written.with_context(|| format!("writing {name} in {}", dir.display()))
}

/// Writes `bytes` as `dir/name` so that the file appears whole or not at all, replacing one of
/// that name. On Linux it is written unnamed (`O_TMPFILE`) and then linked under its name: one
/// entry added to the folder, where a temporary name and a rename add two and remove one (in a
/// folder of many mails each costs a look-up). Through a temporary name when that cannot be
/// done: the name is taken already (a retried mail), or the filesystem has no unnamed files.
fn write_whole(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if write_unnamed_then_link(dir, name, bytes).is_ok() {
        return Ok(());
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(target_os = "linux")]
fn write_unnamed_then_link(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;

    use rustix::fs::{linkat, openat, AtFlags, Mode, OFlags, CWD};

    let fd = openat(
        CWD,
        dir,
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    // Linking a descriptor by its /proc path needs no privilege (`AT_EMPTY_PATH` would).
    linkat(
        CWD,
        format!("/proc/self/fd/{}", file.as_raw_fd()),
        CWD,
        dir.join(name),
        AtFlags::SYMLINK_FOLLOW,
    )?;
    Ok(())
}

/// One mbox file (the `mboxrd` variant) that mails are appended to, each whole or not at all.
///
/// Mails are staged in memory and written together by [`Mbox::flush`], once per round of the
/// sender: one write of many mails where a write per mail costs several times as much in the
/// kernel (each partly fills a new page of the file, which is zeroed first).
///
/// Meant for one writer: one notification service per file. Removing the file while it runs
/// starts a new one with the next flush. A mail whose outcome could not be recorded (the
/// service stopped between the write and the record) is written again when it is retried, as
/// a mail server would receive it twice; its `Message-ID` is the same both times.
pub struct Mbox {
    path: PathBuf,
    state: Mutex<MboxState>,
}

struct MboxState {
    file: File,
    /// Entries staged since the last flush.
    staged: Vec<u8>,
}

impl Mbox {
    /// Opens (or creates) the file, and the folder it is in.
    pub fn open(path: &Path) -> anyhow::Result<Mbox> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the folder of {}", path.display()))?;
        }
        Ok(Mbox {
            path: path.to_path_buf(),
            state: Mutex::new(MboxState {
                file: open_for_append(path)?,
                staged: Vec::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MboxState> {
        // A poisoned lock only means another send panicked; the staged entries are whole (each
        // is added in one call) and the file was cut back if its write failed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stages one mail (`message` as formatted for SMTP) from `sender`, received at `at`; it
    /// is in the file once [`Mbox::flush`] has succeeded.
    pub fn stage(&self, sender: &str, at: DateTime<Utc>, message: &[u8]) {
        let entry = mboxrd_entry(sender, at, message);
        self.state().staged.extend_from_slice(&entry);
    }

    /// Appends every staged mail in one write. On failure none of them is in the file, and
    /// none is staged any more: the caller sends them again.
    pub fn flush(&self) -> anyhow::Result<()> {
        let mut state = self.state();
        let MboxState { file, staged } = &mut *state;
        if staged.is_empty() {
            return Ok(());
        }
        let written = append_whole(file, &self.path, staged);
        // Cleared, not replaced: the buffer keeps its capacity for the next round.
        staged.clear();
        written.with_context(|| format!("appending mail to {}", self.path.display()))
    }
}

/// Appends `bytes` to `file` (opened for appending at `path`) whole or not at all: should the
/// write fail part way (a full disk), the file is cut back to where it ended, so no half mail
/// is left for a reader to merge with the next one. A file removed since it was opened is
/// created again first.
fn append_whole(file: &mut File, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // One `fstat` tells both where these mails start and whether the file was removed.
    let meta = file
        .metadata()
        .with_context(|| format!("reading the state of {}", path.display()))?;
    let mut len = meta.len();
    #[cfg(unix)]
    if std::os::unix::fs::MetadataExt::nlink(&meta) == 0 {
        *file = open_for_append(path)?;
        len = 0;
    }
    let written = file.write_all(bytes);
    if written.is_err() {
        // Best effort: if even this fails, the write's error is the one worth reporting.
        let _ = file.set_len(len);
    }
    Ok(written?)
}

fn open_for_append(path: &Path) -> anyhow::Result<File> {
    File::options()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening the mbox {}", path.display()))
}

/// The mail as an mbox entry: a `From ` separator line naming the envelope sender and the time,
/// the mail with line ends as `\n` and every line that reads `From ` after any number of `>`
/// given one more `>` (so readers can tell separators from text and undo it exactly), and an
/// empty line.
pub fn mboxrd_entry(sender: &str, at: DateTime<Utc>, message: &[u8]) -> Vec<u8> {
    let sender = if sender.is_empty() || sender.contains(char::is_whitespace) {
        "MAILER-DAEMON"
    } else {
        sender
    };
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 64);
    out.extend_from_slice(
        format!("From {sender} {}\n", at.format("%a %b %e %H:%M:%S %Y")).as_bytes(),
    );
    let body = message.strip_suffix(b"\n").unwrap_or(message);
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let quoted = line.iter().position(|&b| b != b'>').unwrap_or(line.len());
        if line[quoted..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// The mails of an mbox written by [`Mbox`], as they were given to it (with `\n` line ends):
/// separators dropped, quoted `From ` lines given back, each entry's closing empty line removed.
pub fn mboxrd_mails(mbox: &[u8]) -> Vec<Vec<u8>> {
    let mut mails: Vec<Vec<u8>> = Vec::new();
    for line in mbox.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            mails.push(Vec::new());
            continue;
        }
        let Some(mail) = mails.last_mut() else {
            continue; // nothing before the first separator belongs to a mail
        };
        let quoted = line.iter().take_while(|&&b| b == b'>').count();
        let line = if quoted > 0 && line[quoted..].starts_with(b"From ") {
            &line[1..]
        } else {
            line
        };
        mail.extend_from_slice(line);
    }
    for mail in &mut mails {
        if mail.ends_with(b"\n\n") {
            mail.pop();
        }
    }
    mails
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_appears_under_its_name_alone_and_a_rewrite_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        write_whole(dir.path(), "a.eml", b"first").unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.eml")).unwrap(), b"first");
        // A retried mail: same name, and nothing else left in the folder.
        write_whole(dir.path(), "a.eml", b"second").unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.eml")).unwrap(), b"second");
        write_whole(dir.path(), "b.eml", b"third").unwrap();
        assert_eq!(names_in(dir.path()), ["a.eml", "b.eml"]);
    }

    #[test]
    fn a_file_for_a_missing_folder_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let e = write_whole(&gone, "a.eml", b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(names_in(dir.path()).is_empty());
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, 4, 5, 6).unwrap()
    }

    #[test]
    fn an_mbox_entry_has_a_separator_unix_line_ends_and_quoted_from_lines() {
        let message = b"Subject: hi\r\n\r\nFrom here on\r\n>From there\r\nFromage\r\n>> From x\r\n";
        let entry = mboxrd_entry("roombook@example.com", at(), message);
        assert_eq!(
            String::from_utf8(entry).unwrap(),
            "From roombook@example.com Sun Dec  6 04:05:06 2026\n\
             Subject: hi\n\
             \n\
             >From here on\n\
             >>From there\n\
             Fromage\n\
             >> From x\n\
             \n"
        );
        // No usable envelope sender: the conventional placeholder keeps the line parseable.
        let entry = mboxrd_entry("", at(), b"a\r\n");
        assert!(entry.starts_with(b"From MAILER-DAEMON Sun Dec  6 04:05:06 2026\na\n"));
    }

    fn read_mbox(path: &Path) -> Vec<String> {
        mboxrd_mails(&std::fs::read(path).unwrap())
            .into_iter()
            .map(|m| String::from_utf8(m).unwrap())
            .collect()
    }

    #[test]
    fn mails_are_appended_and_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool").join("mail.mbox");
        let mbox = Mbox::open(&path).unwrap();
        mbox.stage("a@example.com", at(), b"Subject: one\r\n\r\nFrom me\r\n");
        mbox.stage("a@example.com", at(), b"Subject: two\r\n\r\nbye\r\n");
        assert!(read_mbox(&path).is_empty(), "staged, not written yet");
        mbox.flush().unwrap();
        assert_eq!(
            read_mbox(&path),
            ["Subject: one\n\nFrom me\n", "Subject: two\n\nbye\n"]
        );
        // Opened again (a restart): appended to, not replaced.
        drop(mbox);
        let mbox = Mbox::open(&path).unwrap();
        mbox.stage("a@example.com", at(), b"Subject: three\r\n\r\n.\r\n");
        mbox.flush().unwrap();
        assert_eq!(read_mbox(&path).len(), 3);
        // Nothing staged: nothing written.
        mbox.flush().unwrap();
        assert_eq!(read_mbox(&path).len(), 3);
    }

    #[test]
    fn a_removed_mbox_is_started_again_by_the_next_mail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.mbox");
        let mbox = Mbox::open(&path).unwrap();
        mbox.stage("a@example.com", at(), b"Subject: old\r\n\r\nx\r\n");
        mbox.flush().unwrap();
        std::fs::remove_file(&path).unwrap();
        mbox.stage("a@example.com", at(), b"Subject: new\r\n\r\ny\r\n");
        mbox.flush().unwrap();
        assert_eq!(read_mbox(&path), ["Subject: new\n\ny\n"]);
    }

    #[test]
    fn a_flush_that_cannot_write_says_so_and_leaves_its_mails_to_be_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("spool");
        let path = folder.join("mail.mbox");
        let mbox = Mbox::open(&path).unwrap();
        mbox.stage("a@example.com", at(), b"Subject: lost\r\n\r\nx\r\n");
        // The file and its folder gone: it cannot be made again.
        std::fs::remove_dir_all(&folder).unwrap();
        let e = mbox.flush().unwrap_err();
        assert!(format!("{e:#}").contains("mail.mbox"), "{e:#}");
        std::fs::create_dir(&folder).unwrap();
        mbox.stage("a@example.com", at(), b"Subject: again\r\n\r\ny\r\n");
        mbox.flush().unwrap();
        assert_eq!(read_mbox(&path), ["Subject: again\n\ny\n"]);
    }
}
