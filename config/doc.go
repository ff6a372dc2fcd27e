// Package config loads relayq's TOML configuration (docs/design.md "The
// configuration contract"), documented key by key in relayq.example.toml at the
// repository root.
//
// Contract:
//
//   - Every key is optional. Load and Parse decode the file over Default(),
//     so a key the file does not set keeps its default (including
//     back_pressure.enabled = true). Arrays replace their default as a whole:
//     a file with [[listener]] entries has exactly those listeners, and
//     `allowed_networks = []` means no network may relay without AUTH.
//   - Key names never change meaning; a renamed key keeps its old name
//     working. Unknown keys are an error naming them, so a typo never turns
//     silently into a default.
//   - Sizes are bytes with decimal (MB = 10^6) or binary (MiB = 2^20) units,
//     durations are Go durations, percentages are "75%" or 0.75.
//   - Validate reports every problem, each as "key: problem", joined with
//     errors.Join. A Config that passes it is internally consistent
//     (min_backoff <= max_backoff, medium thresholds before high ones, an
//     smtps listener has a certificate, a submission listener can AUTH, no
//     open admin API off loopback, ...). It does no I/O: certificate,
//     password and token files are read (and token commands run) by the
//     code that uses them, [[dkim]] key files by internal/dkimsign (at
//     start and by `relayq config check`).
//   - A Config is a plain value: nothing here keeps state or watches files.
//     Delivery.RouteFor resolves, for one envelope sender and recipient
//     domain, which [[delivery.route]] applies (first match wins) with
//     [delivery.smarthost] filled in, so
//     that the outbound side needs no knowledge of the file's layout.
package config
