// Package diskspace is relayq's one reading of free disk space, and the
// error for a write refused for want of it. The queue's reserve (Put
// refuses what would leave less than it free) and back pressure's
// free_disk reading both use Free, so the two never disagree about a
// volume.
//
// Invariants: Free reports what an unprivileged process may still write
// (statfs f_bavail, not f_bfree), and false where it cannot tell (not a
// Unix system, or statfs failed); callers then keep no reserve and do not
// monitor free space. ErrNoRoom is the one sentinel for "refused to keep
// the reserve": intake answers it with 452 4.3.1, never 5xx.
package diskspace

import "errors"

// ErrNoRoom is returned (wrapped) by a write refused because it would leave
// less than a reserve free on the volume: queue.Store.Put returns it.
var ErrNoRoom = errors.New("queue: not enough free disk space")
