package queue

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Record versions: the first byte of every m/ value.
const (
	// recordVersionJSON is the JSON encoding of record written before
	// version 2. It is still read (a queue written by an older relayq
	// opens and delivers), never written: a record read as version 1 is
	// rewritten as version 3 by its next change.
	recordVersionJSON = 1
	// recordVersion2 is the binary encoding below without its last two
	// strings and varint (MessageID, Subject, Released), as relayq wrote
	// it before they were kept. It is still read, as having neither; never written.
	recordVersion2 = 2
	// recordVersion is what every write uses: the binary encoding below.
	recordVersion = 3
)

// The version 3 record is, after the version byte (uvarint and varint as
// in encoding/binary; a string is a uvarint length and the bytes; a time
// is a varint of Unix nanoseconds and a varint of its zone offset in
// seconds east of UTC, present only if its flag is set):
//
//	uvarint  Chunks
//	varint   Size
//	byte     flags: flag* below
//	time     Received, NextAttempt, LastAttempt (each if flagged)
//	string   From, EnvID, Ret, Client
//	uvarint  number of recipients, then for each:
//	  byte     State
//	  byte     1 if Done is set, else 0
//	  varint   Attempts
//	  time     Done (if set)
//	  string   Addr, Notify, ORCPT, LastReply, LastHost, Status
//	string   MessageID, Subject (not in version 2)
//	varint   Released (not in version 2)
//
// Chunks and Size come first so that recordChunks and recordSize read
// them without decoding the rest. The zone offset is kept so that a time
// comes back in the location the JSON of version 1 gave it: UTC for
// offset 0, Local when the offset is Local's at that instant, else a
// fixed zone. Times compare by instant (Equal, After) throughout, and
// none carries a monotonic reading, as after JSON.
const (
	flagBody8Bit = 1 << iota
	flagSMTPUTF8
	flagDelayWarned
	flagHeld
	flagBounceRequested
	flagReceived
	flagNextAttempt
	flagLastAttempt
)

const (
	// minRecipientLen is the fewest bytes a recipient takes: State, the
	// Done flag, Attempts and six empty strings. It bounds the recipient
	// count a record of a given length can claim, so a forged count
	// cannot make the decoder allocate more than about 16 times the
	// input (a Recipient is 136 bytes).
	minRecipientLen = 1 + 1 + 1 + 6
	// maxZoneOffset bounds a zone offset (real ones are within ±14 h).
	maxZoneOffset = 36 * 60 * 60
)

var errTruncated = errors.New("queue: decode: record truncated or malformed")

// appendRecord appends the version 3 encoding of r to dst. It fails only
// for a time outside the range of int64 Unix nanoseconds (years 1678 to
// 2262) or with an absurd zone offset.
func appendRecord(dst []byte, r *record) ([]byte, error) {
	e := &r.Envelope
	var flags byte
	for _, f := range [...]struct {
		set  bool
		flag byte
	}{
		{e.Body8Bit, flagBody8Bit},
		{e.SMTPUTF8, flagSMTPUTF8},
		{e.DelayWarned, flagDelayWarned},
		{e.Held, flagHeld},
		{e.BounceRequested, flagBounceRequested},
		{!e.Received.IsZero(), flagReceived},
		{!e.NextAttempt.IsZero(), flagNextAttempt},
		{!e.LastAttempt.IsZero(), flagLastAttempt},
	} {
		if f.set {
			flags |= f.flag
		}
	}
	dst = append(dst, recordVersion)
	dst = binary.AppendUvarint(dst, uint64(r.Chunks))
	dst = binary.AppendVarint(dst, e.Size)
	dst = append(dst, flags)
	var err error
	for _, t := range [...]*time.Time{&e.Received, &e.NextAttempt, &e.LastAttempt} {
		if dst, err = appendTime(dst, *t); err != nil {
			return nil, err
		}
	}
	dst = appendString(dst, e.From)
	dst = appendString(dst, e.EnvID)
	dst = appendString(dst, e.Ret)
	dst = appendString(dst, e.Client)
	dst = binary.AppendUvarint(dst, uint64(len(e.Recipients)))
	for i := range e.Recipients {
		rc := &e.Recipients[i]
		done := byte(0)
		if !rc.Done.IsZero() {
			done = 1
		}
		dst = append(dst, byte(rc.State), done)
		dst = binary.AppendVarint(dst, int64(rc.Attempts))
		if dst, err = appendTime(dst, rc.Done); err != nil {
			return nil, err
		}
		dst = appendString(dst, rc.Addr)
		dst = appendString(dst, rc.Notify)
		dst = appendString(dst, rc.ORCPT)
		dst = appendString(dst, rc.LastReply)
		dst = appendString(dst, rc.LastHost)
		dst = appendString(dst, rc.Status)
	}
	dst = appendString(dst, e.MessageID)
	dst = appendString(dst, e.Subject)
	dst = binary.AppendVarint(dst, int64(e.Released))
	return dst, nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// appendTime appends t as Unix nanoseconds and zone offset; nothing for
// the zero time, whose absence the flags record.
func appendTime(dst []byte, t time.Time) ([]byte, error) {
	if t.IsZero() {
		return dst, nil
	}
	ns := t.UnixNano()
	if !time.Unix(0, ns).Equal(t) {
		return nil, fmt.Errorf("queue: encode: time %v outside the range of the record", t)
	}
	_, off := t.Zone()
	if off < -maxZoneOffset || off > maxZoneOffset {
		return nil, fmt.Errorf("queue: encode: time %v has a zone offset of %d s", t, off)
	}
	dst = binary.AppendVarint(dst, ns)
	return binary.AppendVarint(dst, int64(off)), nil
}

// decodeRecord decodes an m/ value of any version.
func decodeRecord(v []byte) (*record, error) {
	r := new(record)
	if err := decodeRecordTo(v, r); err != nil {
		return nil, err
	}
	return r, nil
}

// decodeRecordTo decodes an m/ value of any version into r, which it
// overwrites. It never panics, and rejects truncated input, trailing bytes
// and lengths or counts larger than the input can hold.
func decodeRecordTo(v []byte, r *record) error {
	*r = record{}
	if len(v) == 0 {
		return fmt.Errorf("queue: decode: empty record")
	}
	switch v[0] {
	case recordVersion, recordVersion2:
		return decodeBinary(v[1:], v[0], r)
	case recordVersionJSON:
		// Into a record of its own: json.Unmarshal's argument escapes,
		// and r should stay on its caller's stack.
		jr := new(record)
		if err := json.Unmarshal(v[1:], jr); err != nil {
			return fmt.Errorf("queue: decode: %w", err)
		}
		// A record read must be writable again: refuse times the binary
		// encoding cannot hold (JSON can, up to year 9999).
		if _, err := appendRecord(nil, jr); err != nil {
			return fmt.Errorf("queue: decode version 1: %w", err)
		}
		*r = *jr
		return nil
	}
	return fmt.Errorf("queue: unknown record version %d", v[0])
}

// decoder reads a binary (version 2 or 3) record. Its methods return zero
// values once err is set, so decodeBinary checks err only at the end.
type decoder struct {
	b   []byte
	s   string // b as a string: every string field is a substring of it, one allocation for all
	off int
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errTruncated
	}
	d.off = len(d.b)
}

func (d *decoder) byte() byte {
	if d.off >= len(d.b) {
		d.fail()
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

func (d *decoder) uvarint() uint64 {
	x, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail()
		return 0
	}
	d.off += n
	return x
}

// varint undoes the zigzag encoding of a uvarint, as binary.Varint does.
func (d *decoder) varint() int64 {
	u := d.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

func (d *decoder) string() string {
	n := d.uvarint()
	if n > uint64(len(d.b)-d.off) {
		d.fail()
		return ""
	}
	if n == 0 {
		return ""
	}
	if d.s == "" {
		d.s = string(d.b)
	}
	s := d.s[d.off : d.off+int(n)]
	d.off += int(n)
	return s
}

func (d *decoder) time(set bool) time.Time {
	if !set {
		return time.Time{}
	}
	ns, off := d.varint(), d.varint()
	if d.err != nil {
		return time.Time{}
	}
	if off < -maxZoneOffset || off > maxZoneOffset {
		d.fail()
		return time.Time{}
	}
	t := time.Unix(0, ns) // in Local
	switch {
	case off == 0:
		return t.UTC()
	case localOffset(t) == int(off):
		return t
	}
	return t.In(time.FixedZone("", int(off)))
}

func localOffset(t time.Time) int {
	_, off := t.Zone()
	return off
}

// decodeBinary decodes the binary record b of the given version.
func decodeBinary(b []byte, version byte, r *record) error {
	d := decoder{b: b}
	chunks := d.uvarint()
	if chunks > math.MaxUint32 {
		d.fail()
	}
	r.Chunks = uint32(chunks)
	e := &r.Envelope
	e.Size = d.varint()
	flags := d.byte()
	e.Body8Bit = flags&flagBody8Bit != 0
	e.SMTPUTF8 = flags&flagSMTPUTF8 != 0
	e.DelayWarned = flags&flagDelayWarned != 0
	e.Held = flags&flagHeld != 0
	e.BounceRequested = flags&flagBounceRequested != 0
	e.Received = d.time(flags&flagReceived != 0)
	e.NextAttempt = d.time(flags&flagNextAttempt != 0)
	e.LastAttempt = d.time(flags&flagLastAttempt != 0)
	e.From = d.string()
	e.EnvID = d.string()
	e.Ret = d.string()
	e.Client = d.string()
	n := d.uvarint()
	if n > uint64(len(b)-d.off)/minRecipientLen {
		d.fail()
	}
	if d.err == nil && n > 0 {
		e.Recipients = make([]Recipient, n)
	}
	for i := range e.Recipients {
		rc := &e.Recipients[i]
		rc.State = RcptState(d.byte())
		done := d.byte()
		if done > 1 {
			d.fail()
		}
		attempts := d.varint()
		if int64(int(attempts)) != attempts {
			d.fail()
		}
		rc.Attempts = int(attempts)
		rc.Done = d.time(done == 1)
		rc.Addr = d.string()
		rc.Notify = d.string()
		rc.ORCPT = d.string()
		rc.LastReply = d.string()
		rc.LastHost = d.string()
		rc.Status = d.string()
		if d.err != nil {
			break
		}
	}
	if version >= recordVersion {
		e.MessageID = d.string()
		e.Subject = d.string()
		released := d.varint()
		if int64(int(released)) != released {
			d.fail()
		}
		e.Released = int(released)
	}
	if d.err == nil && d.off != len(b) {
		d.err = fmt.Errorf("queue: decode: %d bytes after the record", len(b)-d.off)
	}
	if d.err != nil {
		*r = record{}
		return d.err
	}
	return nil
}

// binaryRecord reports whether v is a record of a binary version, whose
// Chunks and Size come first.
func binaryRecord(v []byte) bool {
	return len(v) > 0 && (v[0] == recordVersion || v[0] == recordVersion2)
}

// recordSize reads only the body size of a stored record.
func recordSize(v []byte) (int64, error) {
	if binaryRecord(v) {
		d := decoder{b: v[1:]}
		d.uvarint()
		size := d.varint()
		return size, d.err
	}
	if len(v) == 0 || v[0] != recordVersionJSON {
		return 0, fmt.Errorf("queue: unknown record version")
	}
	var r struct {
		Size int64 `json:"z"`
	}
	if err := json.Unmarshal(v[1:], &r); err != nil {
		return 0, fmt.Errorf("queue: decode: %w", err)
	}
	return r.Size, nil
}

// recordChunks reads only the body chunk count of a stored record.
func recordChunks(v []byte) (uint32, error) {
	if binaryRecord(v) {
		d := decoder{b: v[1:]}
		n := d.uvarint()
		if d.err == nil && n > math.MaxUint32 {
			d.fail()
		}
		return uint32(n), d.err
	}
	r, err := decodeRecord(v)
	if err != nil {
		return 0, err
	}
	return r.Chunks, nil
}
