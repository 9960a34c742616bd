package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fwplane/fwplane/history"
)

// HistoryCollector exports what a history.Recorder counts: threshold
// events per row and level, and the cost of the history itself.
type HistoryCollector struct {
	rec                                         *history.Recorder
	events, rows, memory, recordSec, readErrors *prometheus.Desc
	refused                                     *prometheus.Desc
}

var _ prometheus.Collector = (*HistoryCollector)(nil)

// NewHistoryCollector returns a collector over rec. Only Options.Namespace
// is used.
func NewHistoryCollector(rec *history.Recorder, opts *Options) *HistoryCollector {
	ns := "fwplane"
	if opts != nil && opts.Namespace != "" {
		ns = opts.Namespace
	}
	return &HistoryCollector{
		rec: rec,
		events: prometheus.NewDesc(ns+"_threshold_events_total",
			"Times a row entered a level (warning, critical, or ok when it recovered, with hysteresis).", []string{"resource", "scope", "level"}, nil),
		rows:   prometheus.NewDesc(ns+"_history_rows", "Rows whose history is kept.", nil, nil),
		memory: prometheus.NewDesc(ns+"_history_memory_bytes", "Bytes the kept history's rings use.", nil, nil),
		recordSec: prometheus.NewDesc(ns+"_history_sample_seconds",
			"Cost of the last sample: reading the report and recording it.", []string{"part"}, nil),
		readErrors: prometheus.NewDesc(ns+"_history_read_errors_total", "Samples whose report could not be read.", nil, nil),
		refused:    prometheus.NewDesc(ns+"_history_rows_refused_total", "Row samples not kept because the row limit was reached.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *HistoryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.events, c.rows, c.memory, c.recordSec, c.readErrors, c.refused} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *HistoryCollector) Collect(ch chan<- prometheus.Metric) {
	for _, e := range c.rec.EventCounts() {
		ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(e.Count), e.Name, e.Scope, strings.ToLower(e.Level.String()))
	}
	s := c.rec.Stats()
	ch <- prometheus.MustNewConstMetric(c.rows, prometheus.GaugeValue, float64(s.Rows))
	ch <- prometheus.MustNewConstMetric(c.memory, prometheus.GaugeValue, float64(s.MemoryBytes))
	ch <- prometheus.MustNewConstMetric(c.recordSec, prometheus.GaugeValue, s.LastRead.Seconds(), "read")
	ch <- prometheus.MustNewConstMetric(c.recordSec, prometheus.GaugeValue, s.LastRecord.Seconds(), "record")
	ch <- prometheus.MustNewConstMetric(c.readErrors, prometheus.CounterValue, float64(s.ReadErrors))
	ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(s.RowsRefused))
}
