// Package metrics exports a dataplane's ResourceReport as Prometheus
// metrics: one gauge family each for capacity, used and utilisation of
// every resource row, a counter family for every dataplane counter, and the
// active session counts.
//
// The Collector reads a fresh report on every scrape (the report is cheap by
// design), so values are never older than the scrape. A row whose count is
// missing exports no used/utilisation sample rather than a false zero, and
// fwplane_resource_error is 1 for it (a failed part of the backend's read);
// fwplane_resource_count_partial is 1 for a row whose count is a lower
// bound (a walk stopped by its cap). A failed read of the whole report is
// reported to Prometheus as an invalid metric so the scrape shows the
// error.
//
// Label sets are stable: labels name a row (resource, kind, scope, mode) or
// a counter, never a value, so a series lives as long as its row; values
// that describe a row (e.g. the session table's shard skew) are their own
// series, fwplane_resource_figure{figure="max_skew"}.
//
// [NewHistoryCollector] adds the threshold events and the cost of the
// history kept by package history.
//
// Collectors are safe for concurrent use.
package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fwplane/fwplane/dataplane"
)

// Source returns the current report; DataPlane.ResourceStats fits.
type Source func(ctx context.Context) (dataplane.ResourceReport, error)

// Options tune the Collector. Nil means defaults.
type Options struct {
	// Namespace prefixes every metric name; default "fwplane".
	Namespace string
	// Timeout bounds one read of the report; default 5 s.
	Timeout time.Duration
}

// Collector is a prometheus.Collector over a Source.
type Collector struct {
	src     Source
	timeout time.Duration

	capacity, used, util, sessions, readSeconds, generation *prometheus.Desc
	counter, partial, rowError, figure                      *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector reading src on each scrape.
func NewCollector(src Source, opts *Options) *Collector {
	ns, timeout := "fwplane", 5*time.Second
	if opts != nil {
		if opts.Namespace != "" {
			ns = opts.Namespace
		}
		if opts.Timeout > 0 {
			timeout = opts.Timeout
		}
	}
	labels := []string{"resource", "kind", "scope", "mode"}
	return &Collector{
		src: src, timeout: timeout,
		capacity: prometheus.NewDesc(ns+"_resource_capacity", "Fixed capacity of a bounded dataplane resource, in entries or slots.", labels, nil),
		used:     prometheus.NewDesc(ns+"_resource_used", "Entries or slots in use, as counted by the backend (absent when it cannot be counted).", labels, nil),
		util:     prometheus.NewDesc(ns+"_resource_utilization_ratio", "Used divided by capacity, only where both are real.", labels, nil),
		counter:  prometheus.NewDesc(ns+"_dataplane_events_total", "Dataplane counters (forwarded, dropped by reason, ...).", []string{"counter", "scope", "mode"}, nil),
		sessions: prometheus.NewDesc(ns+"_sessions_active", "Active sessions by address family.", []string{"family", "mode"}, nil),
		readSeconds: prometheus.NewDesc(ns+"_resource_report_duration_seconds",
			"How long the last resource report took to read.", []string{"mode"}, nil),
		generation: prometheus.NewDesc(ns+"_config_generation", "Generation of the applied config.", []string{"mode"}, nil),
		partial: prometheus.NewDesc(ns+"_resource_count_partial",
			"1 when the row's used count is a lower bound (a walk stopped by its cap or its deadline), else 0.", labels, nil),
		rowError: prometheus.NewDesc(ns+"_resource_error",
			"1 when the row could not be read (its count, or the part of the backend's read it stands for, failed), else 0.", labels, nil),
		figure: prometheus.NewDesc(ns+"_resource_figure",
			"A measurement describing a row that is not a count of its slots (e.g. figure=max_skew of the session table).",
			append(labels[:len(labels):len(labels)], "figure"), nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.capacity, c.used, c.util, c.counter, c.sessions, c.readSeconds, c.generation, c.partial, c.rowError, c.figure} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	r, err := c.src(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.used, err)
		return
	}
	mode := string(r.Mode)
	for _, res := range r.Resources {
		lv := []string{res.Name, res.Kind, res.Scope, mode}
		if res.Capacity > 0 {
			ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(res.Capacity), lv...)
		}
		if res.Used != nil {
			ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(*res.Used), lv...)
		}
		if u, ok := res.Utilization(); ok {
			ch <- prometheus.MustNewConstMetric(c.util, prometheus.GaugeValue, u/100, lv...)
		}
		if res.Used != nil {
			ch <- prometheus.MustNewConstMetric(c.partial, prometheus.GaugeValue, b2f(res.Partial), lv...)
		}
		ch <- prometheus.MustNewConstMetric(c.rowError, prometheus.GaugeValue, b2f(res.Error != ""), lv...)
		for _, f := range res.Figures {
			ch <- prometheus.MustNewConstMetric(c.figure, prometheus.GaugeValue, f.Value, append(lv, f.Name)...)
		}
	}
	for _, ctr := range r.Counters {
		ch <- prometheus.MustNewConstMetric(c.counter, prometheus.CounterValue, float64(ctr.Value), ctr.Name, ctr.Scope, mode)
	}
	if s := r.Sessions; s != nil {
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(s.IPv4), "ipv4", mode)
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(s.IPv6), "ipv6", mode)
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(s.Total), "total", mode)
	}
	ch <- prometheus.MustNewConstMetric(c.readSeconds, prometheus.GaugeValue, r.Took.Seconds(), mode)
	ch <- prometheus.MustNewConstMetric(c.generation, prometheus.GaugeValue, float64(r.Generation), mode)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
