package policy

import (
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// codeNames are the canonical names of the gRPC status codes, as in the
// google.rpc.Code enum and the gRPC status code documentation.
var codeNames = [...]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// retryableCodes are the status codes grpc-go's xDS client retries on
// (RetryPolicy.retry_on); it ignores every other retry_on condition.
var retryableCodes = []codes.Code{
	codes.Canceled,
	codes.DeadlineExceeded,
	codes.ResourceExhausted,
	codes.Internal,
	codes.Unavailable,
}

// ParseCode reads a gRPC status code name in any of the spellings a policy
// accepts: any letter case, words separated by '_' or '-', and the
// US spelling "CANCELED". ParseCode("deadline-exceeded") returns
// codes.DeadlineExceeded. Numbers are not accepted.
func ParseCode(name string) (codes.Code, bool) {
	n := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(name), "-", "_"))
	if n == "CANCELED" {
		return codes.Canceled, true
	}
	for c, cn := range codeNames {
		if cn == n {
			return codes.Code(c), true
		}
	}
	return 0, false
}

// CodeName is the canonical name of a gRPC status code: upper case with '_'
// between words ("DEADLINE_EXCEEDED"), as Normalize writes it. The xDS
// retry_on spelling is strings.ToLower with '-' for '_' ("deadline-exceeded").
func CodeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return c.String()
}

func isRetryable(c codes.Code) bool { return slices.Contains(retryableCodes, c) }

// Normalize returns a copy of p in canonical form; p is not modified.
//
// The canonical form of a status code is its CodeName (upper case, '_'
// between words, "CANCELLED"). Normalize rewrites retry.retry_on (in the
// defaults and in every route) to canonical names without duplicates, in
// status code order, and fault.abort.code to its canonical name. Names it
// cannot read are kept as written, after the canonical ones, for Validate to
// report. Normalize(Normalize(p)) equals Normalize(p), and Validate accepts
// p exactly when it accepts Normalize(p).
//
// Store and translate normalised policies, so that two spellings of one
// policy produce the same resources and the same version.
func Normalize(p *policyv1.ServicePolicy) *policyv1.ServicePolicy {
	if p == nil {
		return nil
	}
	out := proto.CloneOf(p)
	normalizeSettings(out.GetDefaults())
	for _, r := range out.GetRoutes() {
		normalizeSettings(r.GetSettings())
	}
	return out
}

func normalizeSettings(s *policyv1.RouteSettings) {
	if s == nil {
		return
	}
	if r := s.GetRetry(); r != nil && len(r.RetryOn) > 0 {
		var known []codes.Code
		var unknown []string
		for _, name := range r.RetryOn {
			if c, ok := ParseCode(name); ok {
				if !slices.Contains(known, c) {
					known = append(known, c)
				}
			} else {
				unknown = append(unknown, name)
			}
		}
		slices.Sort(known)
		names := make([]string, 0, len(known)+len(unknown))
		for _, c := range known {
			names = append(names, CodeName(c))
		}
		r.RetryOn = append(names, unknown...)
	}
	if a := s.GetFault().GetAbort(); a != nil {
		if c, ok := ParseCode(a.Code); ok {
			a.Code = CodeName(c)
		}
	}
}

// ReferencedServices lists the other services p's destinations name (in
// routes and weighted splits), sorted and without duplicates; p's own
// service is left out. Validate consults Env.PolicyOf for exactly these.
func ReferencedServices(p *policyv1.ServicePolicy) []string {
	var out []string
	add := func(d *policyv1.Destination) {
		if s := d.GetService(); s != "" && s != p.GetService() && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, r := range p.GetRoutes() {
		add(r.GetDestination())
		for _, wd := range r.GetSplit().GetDestinations() {
			add(wd.GetDestination())
		}
	}
	slices.Sort(out)
	return out
}
