// Package queued holds what relayq knows of a queued message besides its
// body: its ID, its envelope and each recipient's delivery state. It is
// the vocabulary shared by intake (relay), the queue and delivery, and it
// depends on nothing but the standard library, so that intake does not
// depend on the queue's storage (Pebble). The queue re-exports every name
// (queue.Envelope is queued.Envelope).
//
// Invariants:
//
//   - An ID is IDLen lowercase hex digits: 8 bytes of the enqueue time in
//     nanoseconds and 4 of a counter, so IDs sort by age; Valid checks the
//     form, so operator input never addresses another key.
//   - Every recipient ends in exactly one final state (Delivered, Bounced
//     or Deleted; docs/design.md "Invariants" 3), and a final state never
//     changes back to Pending.
//   - The JSON tags of Recipient and Envelope are the version 1 record
//     format, still read from old queues: they never change. The queue's
//     binary codec (queue/record.go) encodes every field; a field added
//     here needs a place there.
package queued
