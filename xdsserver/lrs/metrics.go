package lrs

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of trellis_lrs_requests_total.
const (
	resultSuccess = "success"
	resultError   = "error"
	resultDropped = "dropped"
)

// metrics are the trellis_lrs_* metrics. Label values come from reports
// and are bounded by Config.MaxSeries (see the package doc).
type metrics struct {
	requests   *prometheus.CounterVec
	inProgress *prometheus.GaugeVec
	streams    prometheus.Gauge
	reports    prometheus.Counter
	unrecorded prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, seriesCount func() float64) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_lrs_requests_total",
			Help: "Calls gRPC clients reported over LRS as finished, by source service, destination service, locality, endpoint and result (success, error, dropped).",
		}, []string{"source", "destination", "locality", "endpoint", "result"}),
		inProgress: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_lrs_requests_in_progress",
			Help: "Calls in progress as gRPC clients last reported them over LRS, by source service, destination service, locality and endpoint.",
		}, []string{"source", "destination", "locality", "endpoint"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_lrs_streams",
			Help: "Open LRS streams.",
		}),
		reports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_lrs_reports_total",
			Help: "Load reports received over LRS.",
		}),
		unrecorded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_lrs_unrecorded_requests_total",
			Help: "Finished calls reported over LRS for a new series while the cap on series (--load-reporting-max-series) was reached, so counted here only.",
		}),
	}
	series := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "trellis_lrs_series",
		Help: "Series (source, destination, locality, endpoint) of LRS reports kept.",
	}, seriesCount)
	var errs []error
	for _, c := range []prometheus.Collector{m.requests, m.inProgress, m.streams, m.reports, m.unrecorded, series} {
		errs = append(errs, reg.Register(c))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

// add counts a report's finished calls of series k. Label values are valid
// UTF-8 (see label), so the vectors cannot refuse them.
func (m *metrics) add(k seriesKey, c Counts) {
	for _, r := range []struct {
		result string
		n      uint64
	}{{resultSuccess, c.Succeeded}, {resultError, c.Errored}, {resultDropped, c.Dropped}} {
		if r.n == 0 {
			continue
		}
		if ctr, err := m.requests.GetMetricWithLabelValues(k.source, k.destination, k.locality, k.endpoint, r.result); err == nil {
			ctr.Add(float64(r.n))
		}
	}
}

func (m *metrics) setInProgress(k seriesKey, n uint64) {
	if g, err := m.inProgress.GetMetricWithLabelValues(k.source, k.destination, k.locality, k.endpoint); err == nil {
		g.Set(float64(n))
	}
}

// delete removes the time series of series k.
func (m *metrics) delete(k seriesKey) {
	for _, r := range []string{resultSuccess, resultError, resultDropped} {
		m.requests.DeleteLabelValues(k.source, k.destination, k.locality, k.endpoint, r)
	}
	m.inProgress.DeleteLabelValues(k.source, k.destination, k.locality, k.endpoint)
}
