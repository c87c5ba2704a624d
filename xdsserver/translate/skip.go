package translate

import (
	"fmt"
	"log/slog"
)

// SkipKind tells what a Skip reports.
type SkipKind int

// SkipKind values. The zero value is SkipLeftOut.
const (
	// SkipLeftOut: something was left out of the resources (a service, an
	// instance, a policy, a route, a split destination, an intention, a
	// server Listener), and clients do not get it.
	SkipLeftOut SkipKind = iota
	// SkipWarning: everything was translated, but something deserves
	// attention: a meta value ignored or overridden, intentions that are
	// not enforced or enforced more strictly than written, a policy
	// waiting for its service.
	SkipWarning
)

// String names the kind for logs and metric labels.
func (k SkipKind) String() string {
	switch k {
	case SkipLeftOut:
		return "left_out"
	case SkipWarning:
		return "warning"
	default:
		return fmt.Sprintf("SkipKind(%d)", int(k))
	}
}

// Subject names what the skip concerns within Service: an instance, the
// part named by Route (a policy route, an intention, a server Listener,
// ...), or the whole service.
func (s Skip) Subject() string {
	switch {
	case s.Instance != "":
		return fmt.Sprintf("instance %q", s.Instance)
	case s.Route != "":
		return s.Route
	default:
		return "service"
	}
}

// LogAttrs returns everything the skip says as log attributes: kind,
// service, subject, instance and profile when set, and reason.
func (s Skip) LogAttrs() []slog.Attr {
	attrs := []slog.Attr{
		slog.String("kind", s.Kind.String()),
		slog.String("service", s.Service),
		slog.String("subject", s.Subject()),
	}
	if s.Instance != "" {
		attrs = append(attrs, slog.String("instance", s.Instance))
	}
	if s.Profile != "" {
		attrs = append(attrs, slog.String("profile", s.Profile))
	}
	return append(attrs, slog.String("reason", s.Reason))
}

// CountKinds counts the skips of each kind.
func CountKinds(skips []Skip) map[SkipKind]int {
	out := map[SkipKind]int{}
	for _, s := range skips {
		out[s.Kind]++
	}
	return out
}
