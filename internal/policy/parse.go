package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	yamlv2 "go.yaml.in/yaml/v2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// MaxInputBytes bounds what ParseDocuments reads.
const MaxInputBytes = 16 << 20

// DocumentError is one problem with one document of a ParseDocuments input.
type DocumentError struct {
	// Index is the document's position among the non-empty documents of the
	// input, from 1. It is also its position in ParseDocuments' result.
	Index int
	// Line is the input line where the document's content starts, from 1.
	Line int
	// Service is the document's service field, when it could be read.
	Service string
	// Field is the path of the offending field (.proto names, as in
	// Violation.Field), or empty when the problem is not tied to a field.
	Field string
	// Description says what is wrong and what is accepted.
	Description string
}

func (e *DocumentError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "document %d (line %d", e.Index, e.Line)
	if e.Service != "" {
		fmt.Fprintf(&b, ", service %s", e.Service)
	}
	b.WriteString("): ")
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Description)
	return b.String()
}

// ParseError is returned by ParseDocuments when documents could not be read
// as ServicePolicies. It holds every problem found, in input order.
type ParseError struct {
	Documents []*DocumentError
}

func (e *ParseError) Error() string {
	msgs := make([]string, len(e.Documents))
	for i, d := range e.Documents {
		msgs[i] = d.Error()
	}
	return "policy: " + strings.Join(msgs, "; ")
}

// ParseDocuments reads ServicePolicies from YAML or JSON. A YAML input may
// hold several documents separated by "---" lines; documents holding nothing
// (or only comments) are skipped. Each document is one ServicePolicy in the
// protojson mapping: field names in lowerCamelCase or as in the .proto file
// (snake_case), durations as strings. Durations are also accepted in Go's
// notation ("250ms", "1m30s"), besides protojson's ("0.250s").
//
// Unknown fields, values of the wrong type and duplicate keys are errors:
// the error is then a *ParseError naming each document (by index and line)
// and field concerned, and no policy is returned. ParseDocuments only parses:
// pass each policy to Validate.
func ParseDocuments(r io.Reader) ([]*policyv1.ServicePolicy, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxInputBytes+1))
	if err != nil {
		return nil, fmt.Errorf("policy: read: %w", err)
	}
	if len(data) > MaxInputBytes {
		return nil, fmt.Errorf("policy: input larger than %d bytes", MaxInputBytes)
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("policy: line %d: the input is not valid UTF-8; policies are UTF-8 text", invalidUTF8Line(data))
	}

	var (
		out  []*policyv1.ServicePolicy
		errs []*DocumentError
	)
	n := 0 // non-empty documents so far
	for _, doc := range splitDocuments(data) {
		js, err := yaml.YAMLToJSONStrict(doc.data)
		if err != nil {
			n++
			errs = append(errs, &DocumentError{Index: n, Line: doc.content, Description: "invalid YAML: " + yamlError(err, doc.first)})
			continue
		}
		if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
			continue
		}
		n++
		p, derrs := parseDocument(js)
		for _, e := range derrs {
			e.Index, e.Line = n, doc.content
		}
		errs = append(errs, derrs...)
		out = append(out, p)
	}
	if len(errs) > 0 {
		return nil, &ParseError{Documents: errs}
	}
	return out, nil
}

// invalidUTF8Line returns the line (from 1) of the first byte of data that
// is not part of valid UTF-8.
func invalidUTF8Line(data []byte) int {
	line := 1
	for len(data) > 0 {
		r, size := utf8.DecodeRune(data)
		if r == utf8.RuneError && size <= 1 {
			return line
		}
		if r == '\n' {
			line++
		}
		data = data[size:]
	}
	return line
}

type rawDocument struct {
	first   int // input line of data's first byte, from 1
	content int // input line of the first line that is neither blank nor a comment
	data    []byte
}

// splitDocuments cuts a YAML stream at "---" (document start) and "..."
// (document end) lines. A "---" line may carry content after a space, which
// belongs to the new document. Documents without content are dropped.
func splitDocuments(data []byte) []rawDocument {
	var docs []rawDocument
	cur := rawDocument{first: 1}
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			data = nil
		}
		text := strings.TrimRight(string(line), "\r\n")
		switch {
		case isMarker(text, "---"):
			if cur.content > 0 {
				docs = append(docs, cur)
			}
			cur = rawDocument{first: lineNo + 1}
			if rest := strings.TrimSpace(text[3:]); rest != "" && !strings.HasPrefix(rest, "#") {
				cur = rawDocument{first: lineNo, content: lineNo, data: []byte(rest + "\n")}
			}
			continue
		case isMarker(text, "..."):
			if cur.content > 0 {
				docs = append(docs, cur)
			}
			cur = rawDocument{first: lineNo + 1}
			continue
		}
		if t := strings.TrimSpace(text); cur.content == 0 && t != "" && !strings.HasPrefix(t, "#") {
			cur.content = lineNo
		}
		cur.data = append(cur.data, line...)
	}
	if cur.content > 0 {
		docs = append(docs, cur)
	}
	return docs
}

// isMarker reports whether line is the document marker m ("---" or "..."),
// alone or followed by white space.
func isMarker(line, m string) bool {
	return line == m || strings.HasPrefix(line, m+" ") || strings.HasPrefix(line, m+"\t")
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// yamlError turns a YAML parser error into a message with input line
// numbers: the parser counts lines from the document's first byte, which is
// on input line first.
func yamlError(err error, first int) string {
	msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
	msg = strings.TrimPrefix(msg, "yaml: ")
	return yamlLineRE.ReplaceAllStringFunc(msg, func(s string) string {
		n, _ := strconv.Atoi(strings.TrimPrefix(s, "line "))
		return fmt.Sprintf("line %d", first+n-1)
	})
}

// parseDocument reads one document, already converted to JSON. It checks
// the structure against the ServicePolicy descriptor first, so that problems
// are reported with their field path, then leaves the decoding to protojson.
func parseDocument(js []byte) (*policyv1.ServicePolicy, []*DocumentError) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return nil, []*DocumentError{{Description: fmt.Sprintf("invalid document: %v", err)}}
	}
	obj, ok := tree.(map[string]any)
	if !ok {
		return nil, []*DocumentError{{Description: fmt.Sprintf("a policy document is a mapping (a ServicePolicy, with at least a service), not %s", describe(tree))}}
	}
	w := &walker{}
	if s, ok := obj["service"].(string); ok {
		w.service = s
	}
	p := &policyv1.ServicePolicy{}
	w.message("", p.ProtoReflect().Descriptor(), obj)
	if len(w.errs) > 0 {
		return nil, w.errs
	}
	canonical, err := json.Marshal(obj)
	if err == nil {
		err = protojson.Unmarshal(canonical, p)
	}
	if err != nil {
		return nil, []*DocumentError{{Service: w.service, Description: protojsonError(err)}}
	}
	return p, nil
}

var protojsonPrefixRE = regexp.MustCompile(`^proto:[\s\x{00a0}]*(\(line \d+:\d+\):[\s\x{00a0}]*)?`)

// protojsonError drops protojson's prefix and its position, which refers to
// the intermediate JSON rather than to the input.
func protojsonError(err error) string {
	return protojsonPrefixRE.ReplaceAllString(err.Error(), "")
}

// walker checks a decoded JSON tree against a message descriptor the way
// protojson reads it, recording errors with field paths, and rewrites
// durations into protojson's notation.
type walker struct {
	service string
	errs    []*DocumentError
}

func (w *walker) errorf(path, format string, args ...any) {
	w.errs = append(w.errs, &DocumentError{Service: w.service, Field: path, Description: fmt.Sprintf(format, args...)})
}

func (w *walker) message(path string, md protoreflect.MessageDescriptor, obj map[string]any) {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	setFields := map[protoreflect.FieldNumber]string{}
	setOneofs := map[protoreflect.FullName]string{}
	for _, k := range keys {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		if fd == nil {
			w.errorf(field(path, k), "unknown field; %s has: %s", md.Name(), fieldNames(md.Fields()))
			continue
		}
		fp := field(path, string(fd.Name()))
		if prev, dup := setFields[fd.Number()]; dup {
			w.errorf(fp, "set twice, as %q and %q: set it once", prev, k)
			continue
		}
		setFields[fd.Number()] = k
		val := obj[k]
		if val == nil {
			continue // null: unset
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if prev, dup := setOneofs[od.FullName()]; dup {
				w.errorf(fp, "%s and %s exclude each other: set only one of %s", prev, fd.Name(), fieldNames(od.Fields()))
				continue
			}
			setOneofs[od.FullName()] = string(fd.Name())
		}
		obj[k] = w.value(fp, fd, val)
	}
}

func fieldNames(fields protoreflect.FieldDescriptors) string {
	names := make([]string, fields.Len())
	for i := range names {
		names[i] = string(fields.Get(i).Name())
	}
	return strings.Join(names, ", ")
}

func (w *walker) value(path string, fd protoreflect.FieldDescriptor, val any) any {
	switch {
	case fd.IsList():
		list, ok := val.([]any)
		if !ok {
			w.errorf(path, "expected a list, got %s", describe(val))
			return val
		}
		for i, e := range list {
			if e == nil {
				w.errorf(index(path, i), "null is not a value: remove the entry")
				continue
			}
			list[i] = w.single(index(path, i), fd, e)
		}
		return list
	case fd.IsMap():
		m, ok := val.(map[string]any)
		if !ok {
			w.errorf(path, "expected a mapping, got %s", describe(val))
			return val
		}
		for k, e := range m {
			if e == nil {
				w.errorf(fmt.Sprintf("%s[%q]", path, k), "null is not a value: remove the entry")
				continue
			}
			m[k] = w.single(fmt.Sprintf("%s[%q]", path, k), fd.MapValue(), e)
		}
		return m
	default:
		return w.single(path, fd, val)
	}
}

// single checks one value of fd's kind (a list element, a map value or a
// singular field) and returns it, rewritten when it is a duration.
func (w *walker) single(path string, fd protoreflect.FieldDescriptor, val any) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		md := fd.Message()
		if md.FullName() == "google.protobuf.Duration" {
			return w.duration(path, val)
		}
		if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
			return val // other well-known types: protojson checks them
		}
		obj, ok := val.(map[string]any)
		if !ok {
			w.errorf(path, "expected a mapping (%s), got %s", md.Name(), describe(val))
			return val
		}
		w.message(path, md, obj)
		return obj
	case protoreflect.BoolKind:
		if _, ok := val.(bool); !ok {
			w.errorf(path, "expected true or false, got %s", describe(val))
		}
	case protoreflect.StringKind, protoreflect.BytesKind:
		if _, ok := val.(string); !ok {
			w.errorf(path, "expected a string, got %s; quote the value", describe(val))
		}
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		w.integer(path, val, 0, math.MaxUint32)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		w.integer(path, val, 0, math.MaxUint64)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		w.integer(path, val, math.MinInt32, math.MaxInt32)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		w.integer(path, val, math.MinInt64, math.MaxInt64)
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		switch v := val.(type) {
		case json.Number:
		case string:
			if v != "NaN" && v != "Infinity" && v != "-Infinity" {
				if _, err := strconv.ParseFloat(v, 64); err != nil {
					w.errorf(path, "expected a number, got %s", describe(val))
				}
			}
		default:
			w.errorf(path, "expected a number, got %s", describe(val))
		}
	}
	return val
}

// integer checks that val is an integer in [lo, hi], as protojson reads
// integers: a JSON number or a string holding one.
func (w *walker) integer(path string, val any, lo int64, hi uint64) {
	var s string
	switch v := val.(type) {
	case json.Number:
		s = string(v)
	case string:
		s = v
	}
	if s != "" {
		if u, err := strconv.ParseUint(s, 10, 64); err == nil && u <= hi {
			return
		}
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= lo && (n < 0 || uint64(n) <= hi) {
			return
		}
		if f, err := strconv.ParseFloat(s, 64); err == nil && f == math.Trunc(f) && f >= float64(lo) && f <= float64(hi) {
			return
		}
	}
	w.errorf(path, "expected an integer from %d to %d, got %s", lo, hi, describe(val))
}

func (w *walker) duration(path string, val any) any {
	s, ok := val.(string)
	if !ok {
		w.errorf(path, "expected a duration such as \"250ms\", \"1.5s\" or \"1m\", got %s", describe(val))
		return val
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		w.errorf(path, "%q is not a duration: use a number with a unit, ns, us, ms, s, m or h, such as \"250ms\", \"1.5s\" or \"1m30s\"", s)
		return val
	}
	return protojsonDuration(d)
}

// protojsonDuration writes d the way protojson reads durations: seconds
// with up to nine fractional digits and an "s" suffix.
func protojsonDuration(d time.Duration) string {
	sign := ""
	u := uint64(d)
	if d < 0 {
		sign, u = "-", uint64(-(d+1))+1
	}
	secs, nanos := u/uint64(time.Second), u%uint64(time.Second)
	if nanos == 0 {
		return fmt.Sprintf("%s%ds", sign, secs)
	}
	frac := strings.TrimRight(fmt.Sprintf("%09d", nanos), "0")
	return fmt.Sprintf("%s%d.%ss", sign, secs, frac)
}

// describe names a decoded JSON value for an error message.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return strconv.Quote(v)
	case json.Number:
		return string(v)
	case bool:
		return strconv.FormatBool(v)
	default:
		return fmt.Sprint(v)
	}
}

// Marshal writes p as "yaml" or "json", with the .proto field names, in the
// form ParseDocuments reads back (and protojson accepts). Fields appear in
// .proto order; unset fields are left out.
func Marshal(p *policyv1.ServicePolicy, format string) ([]byte, error) {
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("policy: marshal: %w", err)
	}
	switch format {
	case "json":
		var buf bytes.Buffer
		if err := json.Indent(&buf, js, "", "  "); err != nil {
			return nil, fmt.Errorf("policy: marshal: %w", err)
		}
		buf.WriteByte('\n')
		return buf.Bytes(), nil
	case "yaml":
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.UseNumber()
		v, err := orderedValue(dec)
		if err != nil {
			return nil, fmt.Errorf("policy: marshal: %w", err)
		}
		out, err := yamlv2.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("policy: marshal: %w", err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("policy: unknown output format %q: use yaml or json", format)
	}
}

// orderedValue reads the next JSON value from dec, keeping the order of
// object keys (as yaml MapSlices).
func orderedValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			ms := yamlv2.MapSlice{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				v, err := orderedValue(dec)
				if err != nil {
					return nil, err
				}
				ms = append(ms, yamlv2.MapItem{Key: kt, Value: v})
			}
			_, err := dec.Token() // '}'
			return ms, err
		case '[':
			list := []any{}
			for dec.More() {
				v, err := orderedValue(dec)
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			_, err := dec.Token() // ']'
			return list, err
		}
		return nil, errors.New("unexpected delimiter")
	case json.Number:
		if n, err := t.Int64(); err == nil {
			return n, nil
		}
		if n, err := strconv.ParseUint(string(t), 10, 64); err == nil {
			return n, nil
		}
		return t.Float64()
	default:
		return t, nil // string, bool, nil
	}
}
