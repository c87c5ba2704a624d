package dataplane

import (
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 127, 128, 255, 256, 257, 1000, 12345, time.Millisecond, 3 * time.Second, time.Hour} {
		i := bucket(d)
		lo, hi := bucketLow(i), bucketLow(i+1)
		if d < lo || d >= hi {
			t.Errorf("bucket(%d) = %d spans [%d, %d), which does not hold it", d, i, lo, hi)
		}
		if d >= 256 && float64(hi-lo)/float64(lo) > 1.0/subBuckets+1e-9 {
			t.Errorf("bucket of %d is [%d, %d): wider than 1/%d of its value", d, lo, hi, subBuckets)
		}
	}
}

func TestQuantilesMatchSortedValues(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	var values []time.Duration
	for range 100000 {
		// Log-normal-ish latencies between ~10 µs and ~100 ms.
		d := time.Duration(10000 * (1 + r.ExpFloat64()*r.ExpFloat64()*50))
		values = append(values, d)
		h.Record(d)
	}
	slices.Sort(values)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := values[int(q*float64(len(values)))]
		got := h.Quantile(q)
		if rel := float64(got-want) / float64(want); rel > 0.01 || rel < -0.01 {
			t.Errorf("p%g = %s, want %s within 1%%", q*100, got, want)
		}
	}
	if h.Quantile(1) != values[len(values)-1] {
		t.Errorf("max = %s, want %s", h.Quantile(1), values[len(values)-1])
	}
	if h.Count() != uint64(len(values)) {
		t.Errorf("count = %d, want %d", h.Count(), len(values))
	}
}

func TestEncodeDecodeMerge(t *testing.T) {
	var a, b Histogram
	for i := range 1000 {
		a.Record(time.Duration(i) * time.Microsecond)
		b.Record(time.Duration(i) * time.Millisecond)
	}
	raw, err := json.Marshal(a.Encode())
	if err != nil {
		t.Fatal(err)
	}
	var enc EncodedHistogram
	if err := json.Unmarshal(raw, &enc); err != nil {
		t.Fatal(err)
	}
	got, err := enc.Decode()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []float64{0.1, 0.5, 0.99, 1} {
		if got.Quantile(q) != a.Quantile(q) {
			t.Errorf("decoded p%g = %s, want %s", q*100, got.Quantile(q), a.Quantile(q))
		}
	}
	got.Merge(&b)
	if got.Count() != 2000 || got.Max() != 999*time.Millisecond {
		t.Errorf("merged: count %d max %s, want 2000 and 999ms", got.Count(), got.Max())
	}
	if p := got.Quantile(0.25); p > time.Millisecond {
		t.Errorf("merged p25 = %s, want in the microsecond half", p)
	}
	if _, err := (EncodedHistogram{Buckets: [][2]uint64{{1001, 1}}}).Decode(); err == nil {
		t.Error("decoding a bucket that does not start at a bucket boundary succeeded")
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 {
		t.Error("quantile of an empty histogram is not 0")
	}
}
