package runtest

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total"}, []string{"kind"})
	reg.MustRegister(c)
	c.WithLabelValues("a").Add(2)
	c.WithLabelValues("b").Add(5)
	if v := Metric(t, reg, "c_total", map[string]string{"kind": "b"}); v != 5 {
		t.Errorf("c_total{kind=b} = %v, want 5", v)
	}
	if _, err := metric(reg, "c_total", map[string]string{"kind": "z"}); err == nil {
		t.Error("a sample that does not exist was found")
	}
	if _, err := metric(reg, "missing", nil); err == nil {
		t.Error("a metric that is not registered was found")
	}
}

func TestRunStopsWithTheTest(t *testing.T) {
	stopped := make(chan struct{})
	t.Run("inner", func(t *testing.T) {
		Run(t, time.Second, func(ctx context.Context) error {
			<-ctx.Done()
			close(stopped)
			return nil
		})
	})
	select {
	case <-stopped:
	default:
		t.Fatal("the component was not stopped when its test ended")
	}
}
