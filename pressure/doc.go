// Package pressure is relayq's graded back pressure, Exchange's three
// levels (docs/design.md "Back pressure"): a Monitor samples what relayq
// needs to keep mail safe and keeps the current Level, which intake (relay)
// obeys at every MAIL. The running instance owns the monitor: it starts it
// (Start samples once before returning, so the first client is judged by
// a reading), changes its thresholds on reload and stops it; relay only
// asks (relay.Pressure).
//
// What is sampled, every few seconds and at once on a storage event (a
// write stall, low disk space, a deleted file: StallWatch, fed by the
// queue through queue.StorageEvents): free space on the data_dir volume
// (diskspace.Free, the reading the queue's reserve uses), queued messages
// (and bytes, informational), process memory against the memory limit
// (the cgroup's, else RAM), and write stalls. Between samples the
// free-space reading is kept current: once what the queue wrote since the
// last statfs (Config.Written) would take it below its next threshold,
// Level asks for a sample at once, and a Put refused for want of room sets
// free_disk to high (Monitor.NoRoom).
//
// Invariants:
//
//   - Each resource has a medium and a high threshold (0: off). A level is
//     entered as soon as its threshold is crossed and left only when the
//     reading is DefaultMargin (10%) on the good side of it (hysteresis),
//     so a reading hovering at a threshold does not flap.
//   - The overall level is the worst resource's; Level is one atomic load,
//     cheap enough for every MAIL, and a nil *Monitor is always Normal.
//   - A reading that fails keeps its resource's level (logged once).
//   - Every change of a resource's level is logged once at warn with the
//     resource, its reading, the threshold and the effect on clients;
//     Status reports the same for `relayq status`, /metrics and /healthz.
//   - Back pressure never stops delivery: it only slows or refuses intake.
//   - This package depends on neither the queue nor Pebble (relay imports
//     it): the queue's size and written bytes come through QueueGauge and
//     Config.Written, its storage events through StallWatch's methods.
package pressure
