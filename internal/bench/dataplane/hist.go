package dataplane

import (
	"fmt"
	"math/bits"
	"sort"
	"time"
)

// subBuckets is the number of buckets per power of two: values are kept
// with a relative error below 1/subBuckets (under 0.8%).
const (
	subBits    = 7
	subBuckets = 1 << subBits
)

// Histogram counts durations in log-linear buckets (the layout of HDR
// histograms): exact below 128 ns, then 128 buckets per power of two. The
// zero value is empty and ready to use; it is not safe for concurrent use.
type Histogram struct {
	counts map[int]uint64
	total  uint64
	max    time.Duration
}

// bucket returns the index of the bucket holding d.
func bucket(d time.Duration) int {
	v := uint64(max(d, 0))
	shift := bits.Len64(v) - subBits - 1
	if shift <= 0 {
		return int(v)
	}
	return (shift+1)*subBuckets + int(v>>uint(shift)) - subBuckets
}

// bucketLow returns the smallest value of bucket i.
func bucketLow(i int) time.Duration {
	if i < 2*subBuckets {
		return time.Duration(i)
	}
	shift := i/subBuckets - 1
	return time.Duration(uint64(i%subBuckets+subBuckets) << uint(shift))
}

// Record adds one observation.
func (h *Histogram) Record(d time.Duration) {
	if h.counts == nil {
		h.counts = map[int]uint64{}
	}
	h.counts[bucket(d)]++
	h.total++
	h.max = max(h.max, d)
}

// Merge adds every observation of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.total == 0 {
		return
	}
	if h.counts == nil {
		h.counts = map[int]uint64{}
	}
	for i, n := range o.counts {
		h.counts[i] += n
	}
	h.total += o.total
	h.max = max(h.max, o.max)
}

// Count returns the number of observations.
func (h *Histogram) Count() uint64 { return h.total }

// Max returns the largest observation.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile returns the smallest bucket value at or below which a fraction
// q (0..1) of the observations lie, within the bucket's precision; 0 when
// the histogram is empty. Quantile(1) is the exact maximum.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	if q >= 1 {
		return h.max
	}
	rank := uint64(q * float64(h.total))
	if rank >= h.total {
		rank = h.total - 1
	}
	idx := h.sortedBuckets()
	var seen uint64
	for _, i := range idx {
		seen += h.counts[i]
		if seen > rank {
			// The middle of the bucket, never above the maximum.
			lo, hi := bucketLow(i), bucketLow(i+1)
			return min(lo+(hi-lo)/2, h.max)
		}
	}
	return h.max
}

func (h *Histogram) sortedBuckets() []int {
	idx := make([]int, 0, len(h.counts))
	for i := range h.counts {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	return idx
}

// EncodedHistogram is the JSON form of a Histogram: its maximum and its
// non-empty buckets as [smallest value in ns, count] pairs, in increasing
// order (pairs keep a run's report small).
type EncodedHistogram struct {
	MaxNanos int64       `json:"max_ns"`
	Buckets  [][2]uint64 `json:"buckets"`
}

// Encode returns the histogram's JSON form, buckets in increasing order.
func (h *Histogram) Encode() EncodedHistogram {
	e := EncodedHistogram{MaxNanos: int64(h.max), Buckets: [][2]uint64{}}
	for _, i := range h.sortedBuckets() {
		e.Buckets = append(e.Buckets, [2]uint64{uint64(bucketLow(i)), h.counts[i]})
	}
	return e
}

// Decode rebuilds a histogram from its JSON form.
func (e EncodedHistogram) Decode() (*Histogram, error) {
	h := &Histogram{counts: map[int]uint64{}, max: time.Duration(e.MaxNanos)}
	for _, b := range e.Buckets {
		low, count := time.Duration(b[0]), b[1]
		i := bucket(low)
		if bucketLow(i) != low {
			return nil, fmt.Errorf("histogram: %d ns is not the start of a bucket", b[0])
		}
		h.counts[i] += count
		h.total += count
	}
	return h, nil
}
