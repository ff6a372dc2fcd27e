package queue

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fullRecord has every field of record, Envelope and Recipient set to a
// value other than its zero (TestFullRecordSetsEveryField checks), so a
// field added without codec support fails the round trip.
func fullRecord() *record {
	// Offsets no zone uses, so that neither comes back as Local.
	east := time.FixedZone("", 5*3600+17*60)
	west := time.FixedZone("", -(7*3600 + 43*60))
	return &record{
		Envelope: Envelope{
			From: "sender@example.org",
			Recipients: []Recipient{
				{Addr: "a@example.net", State: Bounced, Notify: "SUCCESS,FAILURE", ORCPT: "rfc822;a@example.net",
					Attempts: 3, LastReply: "550 5.1.1 no such user", LastHost: "mx1.example.net", Status: "5.1.1",
					Done: time.Unix(1_800_000_100, 5).In(east)},
				{Addr: "ü@exämple.net", State: RcptState(200), Notify: "NEVER", ORCPT: "utf-8;\xff\x00",
					Attempts: -1, LastReply: "451 4.4.1 connection refused", LastHost: "[192.0.2.1]", Status: "4.4.1",
					Done: time.Unix(-1, 0).UTC()},
			},
			Received:        time.Unix(1_800_000_000, 123_456_789).UTC(),
			Size:            1<<40 + 7,
			EnvID:           "QQ314159",
			Ret:             "HDRS",
			Body8Bit:        true,
			SMTPUTF8:        true,
			Client:          "[127.0.0.1] client.example.org",
			NextAttempt:     time.Unix(1_800_000_600, 999_999_999).In(west),
			LastAttempt:     time.Unix(0, 1).UTC(),
			DelayWarned:     true,
			Held:            true,
			BounceRequested: true,
			MessageID:       "<20260301.1@app.example.org>",
			Subject:         "Rechnung für März",
			Released:        -3,
		},
		Chunks: 1<<32 - 1,
	}
}

// zeroFields returns the paths of the fields of v left at their zero
// value, descending into structs (but not time.Time) and slice elements.
func zeroFields(v reflect.Value, path string) []string {
	if v.IsZero() {
		return []string{path}
	}
	var out []string
	switch {
	case v.Type() == reflect.TypeFor[time.Time]():
	case v.Kind() == reflect.Struct:
		for i := range v.NumField() {
			out = append(out, zeroFields(v.Field(i), path+"."+v.Type().Field(i).Name)...)
		}
	case v.Kind() == reflect.Slice:
		for i := range v.Len() {
			out = append(out, zeroFields(v.Index(i), path+"["+string(rune('0'+i))+"]")...)
		}
	}
	return out
}

func TestFullRecordSetsEveryField(t *testing.T) {
	if z := zeroFields(reflect.ValueOf(*fullRecord()), "record"); len(z) > 0 {
		t.Fatalf("fullRecord leaves fields zero: %v; set them (and encode them in record.go)", z)
	}
}

// roundTrip encodes r as every write does and decodes the result.
func roundTrip(t testing.TB, r *record) (v []byte, got *record) {
	t.Helper()
	v, err := appendRecord(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	if got, err = decodeRecord(v); err != nil {
		t.Fatal(err)
	}
	return v, got
}

func TestRecordRoundTripsEveryField(t *testing.T) {
	want := fullRecord()
	v, got := roundTrip(t, want)
	if v[0] != recordVersion {
		t.Fatalf("version byte %d, want %d", v[0], recordVersion)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	size, err := recordSize(v)
	if err != nil || size != want.Size {
		t.Fatalf("recordSize = %d, %v; want %d", size, err, want.Size)
	}
	chunks, err := recordChunks(v)
	if err != nil || chunks != want.Chunks {
		t.Fatalf("recordChunks = %d, %v; want %d", chunks, err, want.Chunks)
	}
}

func TestRecordZeroValuesStayZero(t *testing.T) {
	want := &record{Envelope: Envelope{Recipients: []Recipient{{}}}}
	_, got := roundTrip(t, want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if got.Received != (time.Time{}) || got.Recipients[0].Done != (time.Time{}) {
		t.Fatal("a zero time came back non-zero")
	}
}

// TestRecordTimesComeBackAsFromJSON checks that a time comes back as the
// JSON of version 1 gave it back: the same instant to the nanosecond, no
// monotonic reading, and the same location (UTC, Local or a fixed zone).
func TestRecordTimesComeBackAsFromJSON(t *testing.T) {
	now := time.Now() // has a monotonic reading
	for _, tm := range []time.Time{
		now,
		now.UTC(),
		now.In(time.FixedZone("", -(3*3600 + 30*60))),
		time.Unix(0, 0), // the epoch is not the zero time
		time.Unix(1_800_000_000, 1),
		time.Date(1700, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2262, 1, 1, 0, 0, 0, 0, time.FixedZone("", 14*3600)),
	} {
		r := &record{Envelope: Envelope{Received: tm, NextAttempt: tm, LastAttempt: tm,
			Recipients: []Recipient{{Done: tm}}}}
		_, got := roundTrip(t, r)
		js, err := json.Marshal(tm)
		if err != nil {
			t.Fatal(err)
		}
		var fromJSON time.Time
		if err := json.Unmarshal(js, &fromJSON); err != nil {
			t.Fatal(err)
		}
		for _, g := range []time.Time{got.Received, got.NextAttempt, got.LastAttempt, got.Recipients[0].Done} {
			if !g.Equal(tm) || g.IsZero() {
				t.Errorf("%v came back as %v", tm, g)
			}
			if !reflect.DeepEqual(g, fromJSON) {
				t.Errorf("%v came back as %#v; JSON gives %#v", tm, g, fromJSON)
			}
		}
	}
}

func TestEncodeRecordRefusesTimesOutOfRange(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		r := &record{Envelope: Envelope{NextAttempt: tm}}
		if _, err := appendRecord(nil, r); err == nil {
			t.Errorf("%v encoded", tm)
		}
		// Nor is such a version 1 record read: it could not be written
		// back.
		if _, err := decodeRecord(encodeRecordV1(t, r)); err == nil {
			t.Errorf("version 1 record with %v decoded", tm)
		}
	}
}

func TestDecodeRecordRejectsTruncatedAndTrailingBytes(t *testing.T) {
	v, _ := roundTrip(t, fullRecord())
	for n := range len(v) {
		if _, err := decodeRecord(v[:n]); err == nil {
			t.Fatalf("a record cut to %d of %d bytes decoded", n, len(v))
		}
	}
	if _, err := decodeRecord(append(v, 0)); err == nil {
		t.Fatal("a record with a trailing byte decoded")
	}
	for _, bad := range []string{
		"\x00",
		"\x03",
		"\x02\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02", // uvarint overflow
		"\x02\x80\x80\x80\x80\x10\x00\x00",             // chunks > MaxUint32
		// A recipient count far beyond what the bytes left can hold.
		"\x02\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
		// A string length beyond the end.
		"\x02\x00\x00\x00\xff\xff\xff\xff\x0f",
	} {
		if _, err := decodeRecord([]byte(bad)); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

// encodeRecordV1 is how relayq wrote records before version 2.
func encodeRecordV1(t testing.TB, r *record) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteByte(recordVersionJSON)
	if err := json.NewEncoder(&buf).Encode(r); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// v1Literal is a record as the version 1 code wrote it, byte for byte: the
// JSON field names are part of the format and must not change.
const v1Literal = "\x01" + `{"f":"a@example.org","r":[{"a":"b@example.net","s":1,"n":"SUCCESS","o":"rfc822;b@example.net","t":2,"r":"250 2.0.0 ok","h":"mx.example.net","st":"2.0.0","d":"2026-03-01T12:00:05.000000007Z"},{"a":"c@example.net","t":1,"r":"451 4.7.1 later","h":"mx.example.net","st":"4.7.1"}],"c":"2026-03-01T12:00:00Z","z":1234,"e":"ENV1","ret":"HDRS","8":true,"u":true,"cl":"[127.0.0.1] helo","n":"2026-03-01T12:05:00+01:00","l":"2026-03-01T12:00:05Z","w":true,"hd":true,"br":true,"k":1}` + "\n"

func TestDecodeRecordReadsVersion1JSON(t *testing.T) {
	at := func(sec, nsec int64) time.Time { return time.Unix(sec, nsec).UTC() }
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).Unix()
	want := &record{
		Envelope: Envelope{
			From: "a@example.org",
			Recipients: []Recipient{
				{Addr: "b@example.net", State: Delivered, Notify: "SUCCESS", ORCPT: "rfc822;b@example.net", Attempts: 2,
					LastReply: "250 2.0.0 ok", LastHost: "mx.example.net", Status: "2.0.0", Done: at(t0+5, 7)},
				{Addr: "c@example.net", Attempts: 1, LastReply: "451 4.7.1 later", LastHost: "mx.example.net", Status: "4.7.1"},
			},
			Received: at(t0, 0), Size: 1234, EnvID: "ENV1", Ret: "HDRS", Body8Bit: true, SMTPUTF8: true,
			Client: "[127.0.0.1] helo", LastAttempt: at(t0+5, 0), DelayWarned: true, Held: true, BounceRequested: true,
		},
		Chunks: 1,
	}
	got, err := decodeRecord([]byte(v1Literal))
	if err != nil {
		t.Fatal(err)
	}
	if !got.NextAttempt.Equal(at(t0-55*60, 0)) { // 12:05+01:00
		t.Fatalf("NextAttempt = %v", got.NextAttempt)
	}
	got.NextAttempt = time.Time{} // its location depends on the machine's zone
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if size, err := recordSize([]byte(v1Literal)); err != nil || size != 1234 {
		t.Fatalf("recordSize = %d, %v", size, err)
	}
	// Both encodings of the same record decode to the same value.
	r := fullRecord()
	r.Recipients[1].ORCPT = "utf-8;x" // JSON turns invalid UTF-8 into U+FFFD
	v1, err := decodeRecord(encodeRecordV1(t, r))
	if err != nil {
		t.Fatal(err)
	}
	_, v2 := roundTrip(t, r)
	if !reflect.DeepEqual(v1, v2) {
		t.Fatalf("version 1 gives %+v\nversion 2 gives %+v", v1, v2)
	}
}

// v2Hex is a record as the version 2 code wrote it, byte for byte, before
// Message-ID and Subject were kept.
const v2Hex = "0201a413608080a0bbd29df1fa310080e0c5d18daff1fa31000d61406578616d706c652e6f72670000105b3132372e302e302e315d2068656c6f010000020d62406578616d706c652e6e657400000f34353120342e372e31206c617465720005342e372e31"

func TestDecodeRecordReadsVersion2(t *testing.T) {
	v, err := hex.DecodeString(v2Hex)
	if err != nil {
		t.Fatal(err)
	}
	want := &record{
		Envelope: Envelope{
			From:        "a@example.org",
			Recipients:  []Recipient{{Addr: "b@example.net", Attempts: 1, LastReply: "451 4.7.1 later", Status: "4.7.1"}},
			Received:    time.Unix(1_800_000_000, 0).UTC(),
			NextAttempt: time.Unix(1_800_000_300, 0).UTC(),
			Size:        1234,
			Client:      "[127.0.0.1] helo",
		},
		Chunks: 1,
	}
	got, err := decodeRecord(v)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if size, err := recordSize(v); err != nil || size != 1234 {
		t.Fatalf("recordSize = %d, %v", size, err)
	}
	if chunks, err := recordChunks(v); err != nil || chunks != 1 {
		t.Fatalf("recordChunks = %d, %v", chunks, err)
	}
	// Version 2 ends after the recipients: the two strings and the
	// varint of version 3 are trailing bytes there, and version 3 cut
	// before them is short.
	v3, _ := roundTrip(t, want)
	if !bytes.Equal(v3[1:len(v3)-3], v[1:]) || v3[0] != recordVersion {
		t.Fatalf("version 3 is not version 2 with two strings and a varint appended:\n%x\n%x", v3, v)
	}
	if _, err := decodeRecord(append(bytes.Clone(v), 0, 0, 0)); err == nil {
		t.Fatal("a version 2 record with version 3's fields decoded")
	}
	v3[0] = recordVersion
	if _, err := decodeRecord(v3[:len(v3)-3]); err == nil {
		t.Fatal("a version 3 record without its last fields decoded")
	}
}

// TestVersion1QueueOpensAndDelivers writes a queue as the version 1 code
// did, reopens it and takes its messages through the whole API.
func TestVersion1QueueOpensAndDelivers(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_800_000_000, 0)
	opts := Options{Now: func() time.Time { return now }, ChunkSize: 1000}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(strings.Repeat("0123456789", 250)) // 3 chunks
	var ids []ID
	b := s.newBatch()
	for range 2 {
		id := s.NewID()
		ids = append(ids, id)
		env := *envelope("a@x.invalid", "b@y.invalid", "c@y.invalid")
		env.Received, env.NextAttempt, env.Size = now, now, int64(len(body))
		for c := range 3 {
			if err := b.Set(bodyKey(id, uint32(c)), body[c*1000:min((c+1)*1000, len(body))], nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Set(metaKey(id), encodeRecordV1(t, &record{Envelope: env, Chunks: 3}), nil); err != nil {
			t.Fatal(err)
		}
		if err := b.schedule(env.NextAttempt, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.commit(b, synced); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if s, err = Open(dir, opts); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	select {
	case <-s.Counted():
	case <-time.After(10 * time.Second):
		t.Fatal("the count of the reopened queue did not finish")
	}
	if s.Messages() != 2 || s.Bytes() != int64(2*len(body)) {
		t.Fatalf("counted %d messages, %d bytes; want 2, %d", s.Messages(), s.Bytes(), 2*len(body))
	}
	if list, err := s.List(Filter{}, "", 10); err != nil || len(list) != 2 {
		t.Fatalf("List: %d messages, %v", len(list), err)
	}
	due, _, err := s.Due(now, 10, nil)
	if err != nil || len(due) != 2 {
		t.Fatalf("Due: %v, %v", due, err)
	}
	ctx := context.Background()
	m, err := s.Get(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s, ids[0]); !bytes.Equal(got, body) {
		t.Fatalf("body: %d bytes, want %d", len(got), len(body))
	}
	m.Recipients[0].State = Delivered
	m.NextAttempt = now.Add(time.Minute)
	if err := s.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	v, closer, err := s.db.Get(metaKey(ids[0]))
	if err != nil {
		t.Fatal(err)
	}
	if v[0] != recordVersion {
		t.Fatalf("record rewritten with version %d, want %d", v[0], recordVersion)
	}
	closer.Close()
	m, err = s.Get(ids[0])
	if err != nil || m.Recipients[0].State != Delivered || !m.NextAttempt.Equal(now.Add(time.Minute)) {
		t.Fatalf("after update: %+v, %v", m, err)
	}
	if err := s.Hold(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	m, err = s.Get(ids[1])
	if err != nil || !m.Held {
		t.Fatalf("after hold: %+v, %v", m, err)
	}
	m.Recipients[0].State, m.Recipients[1].State = Delivered, Bounced
	if err := s.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ids[1]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("final message: %v", err)
	}
	if s.Messages() != 1 || s.Bytes() != int64(len(body)) {
		t.Fatalf("after delivery: %d messages, %d bytes", s.Messages(), s.Bytes())
	}
}

// FuzzDecodeRecord checks that decoding never panics, and that whatever
// decodes encodes again and decodes to the same value (for version 1, the
// same up to what JSON cannot tell apart: an empty recipient list from
// none, and a time's location where its offset is the same). The seed
// corpus is in testdata/fuzz/FuzzDecodeRecord.
func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(v1Literal))
	if v2, err := hex.DecodeString(v2Hex); err == nil {
		f.Add(v2)
	}
	if v3, err := appendRecord(nil, fullRecord()); err == nil {
		f.Add(v3)
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		r1, err := decodeRecord(v)
		size, serr := recordSize(v)
		chunks, cerr := recordChunks(v)
		if err != nil {
			return
		}
		if serr != nil || size != r1.Size {
			t.Fatalf("recordSize = %d, %v; the record says %d", size, serr, r1.Size)
		}
		if cerr != nil || chunks != r1.Chunks {
			t.Fatalf("recordChunks = %d, %v; the record says %d", chunks, cerr, r1.Chunks)
		}
		enc, err := appendRecord(nil, r1)
		if err != nil {
			t.Fatalf("a decoded record does not encode: %v", err)
		}
		r2, err := decodeRecord(enc)
		if err != nil {
			t.Fatalf("an encoded record does not decode: %v", err)
		}
		want, got := r1, r2
		if v[0] == recordVersionJSON {
			want, got = sameLocations(r1), sameLocations(r2)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
		}
	})
}

// sameLocations returns a copy of r with every time in a fixed zone of its
// offset, and no recipient list if it is empty.
func sameLocations(r *record) *record {
	c := *r
	norm := func(t *time.Time) {
		if t.IsZero() {
			*t = time.Time{}
			return
		}
		_, off := t.Zone()
		*t = time.Unix(0, t.UnixNano()).In(time.FixedZone("", off))
	}
	norm(&c.Received)
	norm(&c.NextAttempt)
	norm(&c.LastAttempt)
	c.Recipients = nil
	for _, rc := range r.Recipients {
		norm(&rc.Done)
		c.Recipients = append(c.Recipients, rc)
	}
	return &c
}
