// Package maildrop is relayq's maildrop: the directory where `relayq
// sendmail` leaves a message it could not hand to relayq over SMTP (relayq
// down, or answering 4xx), and the pickup that relayq serve runs to submit
// those files once it can. It is what lets sendmail exit 0, as Postfix's
// does, without losing mail.
//
// # File format (version 1)
//
// A maildrop file is an envelope in lines ending in LF, an empty line, and
// the message:
//
//	relayq-maildrop 1
//	from <sender@example.org>        exactly once; "from <>" is the null sender
//	to <rcpt@example.net>            once per recipient, at least one
//	size 1234                        the message's length in bytes
//
//	<1234 bytes: the RFC 5322 message, CRLF line endings>
//
// Addresses hold no control characters, '<' or '>'. A file whose message
// is not exactly size bytes long, or that breaks any rule above, is
// malformed (ErrMalformed).
//
// # Invariants
//
//   - A file under its final name is complete. Write creates it under a
//     temporary name (".tmp-…"), writes, fsyncs, renames it to its final
//     name (nanosecond time and a random part, so names sort by arrival
//     and cannot be guessed) and fsyncs the directory, or, for a writer
//     that may not open the directory, syncs its file system (syncfs(2)).
//     Write returns nil only after all of that. Pickup never reads a file
//     under a temporary name; one older than a day is a writer's leftover
//     and removed.
//   - A file is removed only after relayq's intake answered 250 for it,
//     which it does only after the queue commit (fsync). A crash between
//     that answer and the removal submits the file again at the next scan:
//     at least once, rarely twice, as for SMTP clients.
//   - Nothing is tried forever, nothing is dropped silently. A malformed or
//     unreadable file, or an entry that is not a regular file (a symbolic
//     link, which could point to a file its writer may not read; a FIFO,
//     which would block the pickup; a file is opened non-blocking, so a
//     FIFO swapped in after the check does not block it either), is moved
//     to corrupt/ and logged at error. Recipients
//     refused for good (5xx, as retry.Classify judges it) get a copy of the
//     message in refused/ with only them as recipients, logged at error
//     with the reply. Recipients refused for now are written to a new file
//     and tried again. A message refused for now as a whole stays and ends
//     the scan (relayq is busy or unreachable; the next scan, a second
//     later, tries again), logged at warn once per episode. A file that
//     could be neither submitted, moved nor removed is logged and left
//     alone until the process restarts.
//   - One goroutine runs Pickup; it scans at start and every Interval
//     (1 s), oldest file first. A submission in flight is not cut short
//     when the pickup is stopped: its reply decides whether the file goes.
//
// # How relayq submits the files
//
// Pickup calls a Submitter. relayq serve gives it one that speaks SMTP to
// its own relay listener on loopback (internal/server, with cmd/relayq's
// SMTP client): a maildrop message then
// goes through exactly the intake every other message goes through —
// relay policy, size and recipient limits, the hop count and the Received
// header, bare line-ending handling, back pressure, and the 250 only after
// the commit. A direct call into the queue would have to repeat those
// checks, and would drift from them.
//
// # Permissions
//
// Prepare gives the directory mode 1730 (DirMode), as Postfix's maildrop:
// the daemon owns it; the members of its group (configured, like Postfix's
// postdrop) may create files in it, but not list it nor remove other
// users' files (sticky bit). Files are mode 0644 (FileMode) so that the
// daemon can read what another user wrote; nobody else can find them.
// Pickup moves files into the subdirectories corrupt/ and refused/, which
// are the daemon's alone (0700).
package maildrop
