package consulwatch

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// step is one scripted answer of the fake query.
type step struct {
	index uint64
	err   error
}

// TestRunIndexHandling scripts a sequence of answers and checks which
// results are handed on, which WaitIndex each query carried, and that
// failures are reported with a backoff.
func TestRunIndexHandling(t *testing.T) {
	script := []step{
		{index: 0},                       // 0 is treated as 1: changed
		{index: 1},                       // unchanged
		{index: 5},                       // changed
		{err: errors.New("consul down")}, // failure: backoff
		{index: 5},                       // unchanged
		{index: 3},                       // backwards: start over, no result handed on
		{index: 3},                       // from 0: changed
		{index: 4},                       // changed
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var (
		waitIndexes []uint64
		changed     []uint64
		failures    int
		successes   int
		call        int
	)
	query := func(opts *api.QueryOptions) (int, *api.QueryMeta, error) {
		waitIndexes = append(waitIndexes, opts.WaitIndex)
		if opts.Context() == nil {
			t.Error("query without a context")
		}
		if _, ok := opts.Context().Deadline(); !ok {
			t.Error("query context has no deadline")
		}
		s := script[call]
		call++
		if call == len(script) {
			cancel()
		}
		if s.err != nil {
			return 0, nil, s.err
		}
		return call, &api.QueryMeta{LastIndex: s.index}, nil
	}
	Run(ctx, Config{
		WaitTime: time.Minute, MinDelay: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, query, Handlers[int]{
		Changed: func(_ int, index uint64) { changed = append(changed, index) },
		Failed: func(err error, retryIn time.Duration) {
			failures++
			if retryIn <= 0 || retryIn > 20*time.Millisecond {
				t.Errorf("retry in %s, want within (0, MaxBackoff]", retryIn)
			}
		},
		Succeeded: func() { successes++ },
	})
	if diff := cmp.Diff([]uint64{1, 5, 3, 4}, changed); diff != "" {
		t.Errorf("indexes handed on (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]uint64{0, 1, 1, 5, 5, 5, 0, 3}, waitIndexes); diff != "" {
		t.Errorf("WaitIndex of each query (-want +got):\n%s", diff)
	}
	if failures != 1 || successes != len(script)-1 {
		t.Errorf("failures %d, successes %d; want 1 and %d", failures, successes, len(script)-1)
	}
}

func TestNextBackoff(t *testing.T) {
	max := 2 * time.Second
	var b time.Duration
	for i := 0; i < 10; i++ {
		prev := b
		b = nextBackoff(b, max)
		if b <= 0 || b > max {
			t.Fatalf("backoff %s after %s, want within (0, %s]", b, prev, max)
		}
	}
	if b < max*3/4 {
		t.Errorf("backoff settled at %s, want near the cap %s", b, max)
	}
}
