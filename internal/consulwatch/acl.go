package consulwatch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/prometheus/client_golang/prometheus"
)

// Permissions, as ACL reports them (the permission label of
// trellis_consul_acl_problems). Key permissions name their prefix:
// KeyPermission.
const (
	PermServiceRead   = "service:read"
	PermNodeRead      = "node:read"
	PermIntentionRead = "intention:read"
	// PermToken is reported when Consul does not know the token at all.
	PermToken = "token"
)

// KeyPermission names a key permission on a prefix, as ACL reports it:
// "key:read on trellis/policies/".
func KeyPermission(access, prefix string) string {
	return "key:" + access + " on " + prefix
}

// ACLNotFoundMessage is what ACL says of a token Consul does not know.
const ACLNotFoundMessage = "Consul does not know the ACL token (403 ACL not found)"

// DefaultACLRecheckInterval is the default period of the token check.
const DefaultACLRecheckInterval = time.Minute

// ACLNeed is one permission a component needs, checked against the token
// at start and every RecheckInterval.
type ACLNeed struct {
	// Component needs the permission ("catalog", "policy", ...).
	Component string
	// Permission is its name as reported ("node:read").
	Permission string
	// What the permission is for, completing "without it Trellis cannot
	// ...": "see any instance's node, so every health read is empty".
	What string
	// Resource, Segment and Access are what Consul's authorization check
	// is asked: resource "service", "node", "key", "intention"; segment
	// "" for a prefix-wide rule (service_prefix ""), a key prefix or a
	// name; access "read" or "write".
	Resource, Segment, Access string
}

// ACLConfig configures an ACL.
type ACLConfig struct {
	// Client reads the token (the process's shared Consul client). Required.
	Client *api.Client
	// API is the Consul configuration Client was built from (address,
	// scheme, token, TLS), for the authorization check: it is a POST,
	// which Client cannot send, so a separate non-pooled HTTP client opens
	// one short-lived connection per check. Required.
	API *api.Config
	// Needs are checked against the token. Default: none (only answers
	// and 403s are followed).
	Needs []ACLNeed
	// Logger receives the token's description and every transition.
	// Default: discarded.
	Logger *slog.Logger
	// Registerer receives trellis_consul_acl_problems{component,permission}.
	// Default: nil, not registered.
	Registerer prometheus.Registerer
	// RecheckInterval is the period of the token check. Default:
	// DefaultACLRecheckInterval (1m).
	RecheckInterval time.Duration
}

// ACLProblem is one permission the token lacks, as one source saw it.
type ACLProblem struct {
	// Component lacks the permission.
	Component string
	// Permission is the missing permission ("node:read", "key:read on
	// trellis/policies/"), or PermToken.
	Permission string
	// Hides says what the token hides, or why everything is refused.
	Hides string
	// Source is how it was noticed ("token check", "service list", ...).
	Source string
	// Since is when it was first seen.
	Since time.Time
}

// String renders the problem for /readyz.
func (p ACLProblem) String() string {
	if p.Permission == PermToken {
		return fmt.Sprintf("%s: %s (seen by %s)", p.Component, p.Hides, p.Source)
	}
	return fmt.Sprintf("%s: the token lacks %s: %s (seen by %s)", p.Component, p.Permission, p.Hides, p.Source)
}

// TokenInfo describes the token as the last check saw it.
type TokenInfo struct {
	// Checked is true once a check completed.
	Checked bool
	// Disabled is true when Consul's ACLs are disabled.
	Disabled bool
	// Configured is true when a token is configured (CONSUL_HTTP_TOKEN,
	// CONSUL_HTTP_TOKEN_FILE, --consul-token); false: anonymous.
	Configured bool
	// AccessorID, Description and Policies describe the token.
	AccessorID, Description string
	Policies                []string
	// RulesReadable is true when the token may read its own policies'
	// rules (acl:read).
	RulesReadable bool
	// Error is why the check could not complete, empty when it did.
	Error string
}

// ACL follows the permissions the token lacks. A nil *ACL is valid and
// follows nothing.
//
// Consul ACLs never fail a read: they filter it. A token without node:read
// gets health results with no instances, one without key:read sees an empty
// KV prefix, the anonymous token under default deny sees an empty catalog;
// Consul only says so with the X-Consul-Results-Filtered-By-ACLs header, and
// not even that for anonymous requests. ACL follows what the token hides, so
// that Trellis never takes a filtered answer for the whole and says which
// permission is missing for what: in the log (once per transition), in
// Problems (for /readyz) and in trellis_consul_acl_problems.
//
// It learns from three sources:
//   - at start and every ACLConfig.RecheckInterval, the token itself:
//     GET /v1/acl/token/self (allowed for any token Consul knows) names it
//     and its policies, whose rules are read when the token has acl:read;
//     then Consul's authorization check (/v1/internal/acl/authorize, which
//     evaluates the token's effective rules and reveals nothing more than
//     trying each operation would) answers each ACLNeed;
//   - every answer of a watch or read (Answered): the filtered header, and
//     the empty service list (Consul always lists its own "consul" service,
//     so an empty list is a hidden one);
//   - every 403 (Failed): "ACL not found" for a token Consul does not know,
//     "lacks permission 'X' on \"Y\"" for a missing permission.
type ACL struct {
	cfg    ACLConfig
	logger *slog.Logger
	http   *http.Client
	base   url.URL
	token  string
	gauge  *prometheus.GaugeVec

	mu       sync.Mutex
	problems map[problemKey]ACLProblem
	info     TokenInfo
}

type problemKey struct{ component, source string }

// anonymousAccessorID is the accessor ID of Consul's anonymous token.
const anonymousAccessorID = "00000000-0000-0000-0000-000000000002"

// sourceTokenCheck is the Source of problems found by the token check; each
// need has its own key.
const sourceTokenCheck = "token check"

// NewACL checks cfg and registers the gauge. Run starts the token check.
func NewACL(cfg ACLConfig) (*ACL, error) {
	if cfg.Client == nil {
		return nil, errors.New("consulwatch: ACLConfig.Client is required")
	}
	if cfg.API == nil {
		return nil, errors.New("consulwatch: ACLConfig.API is required")
	}
	if cfg.RecheckInterval < 0 {
		return nil, fmt.Errorf("consulwatch: ACLConfig.RecheckInterval is %s; accepted: a positive duration, or 0 for the default (%s)", cfg.RecheckInterval, DefaultACLRecheckInterval)
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = DefaultACLRecheckInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for i, n := range cfg.Needs {
		if n.Component == "" || n.Permission == "" || n.Resource == "" || n.Access == "" {
			return nil, fmt.Errorf("consulwatch: ACLConfig.Needs[%d]: Component, Permission, Resource and Access are required", i)
		}
	}
	a := &ACL{
		cfg:      cfg,
		logger:   cfg.Logger,
		problems: map[problemKey]ACLProblem{},
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_consul_acl_problems",
			Help: "1 while the Consul ACL token lacks a permission a component needs (permission \"token\": Consul does not know the token), 0 once it is granted.",
		}, []string{"component", "permission"}),
	}
	for _, n := range cfg.Needs {
		a.gauge.WithLabelValues(n.Component, n.Permission)
	}
	if err := a.setupHTTP(cfg.API); err != nil {
		return nil, err
	}
	a.info.Configured = a.token != ""
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(a.gauge); err != nil {
			return nil, fmt.Errorf("consulwatch: register metrics: %w", err)
		}
	}
	return a, nil
}

// setupHTTP builds the client of the authorization check from the Consul
// configuration, as api.NewClient reads it.
func (a *ACL) setupHTTP(cfg *api.Config) error {
	tr := cleanhttp.DefaultTransport() // no keep-alive: one connection per check
	addr, scheme := cfg.Address, cfg.Scheme
	if addr == "" {
		addr = "127.0.0.1:8500"
	}
	if scheme == "" {
		scheme = "http"
	}
	if parts := strings.SplitN(addr, "://", 2); len(parts) == 2 {
		switch parts[0] {
		case "http", "https":
			scheme, addr = parts[0], parts[1]
		case "unix":
			socket := parts[1]
			tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", socket)
			}
			scheme, addr = "http", "localhost"
		default:
			return fmt.Errorf("consulwatch: Consul address %q: accepted schemes: http, https, unix", cfg.Address)
		}
	}
	tlsCfg := cfg.TLSConfig
	if tlsCfg.Address == "" {
		tlsCfg.Address = addr
	}
	hc, err := api.NewHttpClient(tr, tlsCfg)
	if err != nil {
		return fmt.Errorf("consulwatch: Consul TLS configuration: %w", err)
	}
	a.http = hc
	a.base = url.URL{Scheme: scheme, Host: addr, Path: cfg.PathPrefix}
	a.token = cfg.Token
	if a.token == "" && cfg.TokenFile != "" {
		raw, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return fmt.Errorf("consulwatch: Consul token file: %w", err)
		}
		a.token = strings.TrimSpace(string(raw))
	}
	return nil
}

// Run checks the token at once, then every RecheckInterval, until ctx is
// done.
func (a *ACL) Run(ctx context.Context) {
	if a == nil {
		<-ctx.Done()
		return
	}
	ticker := time.NewTicker(a.cfg.RecheckInterval)
	defer ticker.Stop()
	for {
		a.Check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// checkTimeout bounds one token check.
const checkTimeout = 10 * time.Second

// Check reads the token and asks Consul whether it grants each need, then
// records what it lacks. A check that cannot complete keeps the previous
// check's findings and says why in Token().Error.
func (a *ACL) Check(ctx context.Context) {
	if a == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	info := TokenInfo{Configured: a.token != ""}
	token, _, err := a.cfg.Client.ACL().TokenReadSelf((&api.QueryOptions{}).WithContext(ctx))
	switch {
	case err != nil && aclDisabled(err):
		info.Checked, info.Disabled = true, true
		a.finishCheck(info, map[string]bool{})
		return
	case err != nil && Classify(err) == KindACLNotFound && !info.Configured:
		// Consul does not read the anonymous token to anyone: check
		// what it grants.
		token = &api.ACLToken{AccessorID: anonymousAccessorID, Description: "Anonymous Token"}
	case err != nil && Classify(err) == KindACLNotFound:
		info.Checked = true
		a.finishCheck(info, nil)
		a.Report(ACLProblem{Component: "consul", Permission: PermToken, Source: sourceTokenCheck, Hides: ACLNotFoundMessage + ": every request is refused"})
		return
	case err != nil:
		info.Error = fmt.Sprintf("read the token (GET /v1/acl/token/self): %s: %v", Classify(err).Describe(), err)
		a.finishCheck(info, nil)
		return
	}
	a.Clear("consul", sourceTokenCheck)
	info.AccessorID, info.Description = token.AccessorID, token.Description
	for _, p := range token.Policies {
		info.Policies = append(info.Policies, p.Name)
	}
	for _, r := range token.Roles {
		info.Policies = append(info.Policies, "role "+r.Name)
	}
	for _, s := range token.ServiceIdentities {
		info.Policies = append(info.Policies, "service identity "+s.ServiceName)
	}
	for _, n := range token.NodeIdentities {
		info.Policies = append(info.Policies, "node identity "+n.NodeName)
	}
	if len(token.Policies) > 0 {
		p, _, err := a.cfg.Client.ACL().PolicyRead(token.Policies[0].ID, (&api.QueryOptions{}).WithContext(ctx))
		info.RulesReadable = err == nil && p != nil
		if info.RulesReadable {
			a.logger.Debug("Consul ACL policy of the token", "policy", p.Name, "rules", p.Rules)
		}
	}
	denied, err := a.authorize(ctx)
	if err != nil {
		info.Checked = true
		info.Error = fmt.Sprintf("check the token's permissions (POST /v1/internal/acl/authorize): %v; missing permissions are found from Consul's answers only", err)
		a.finishCheck(info, nil)
		return
	}
	info.Checked = true
	a.finishCheck(info, denied)
}

// finishCheck records info and, with denied non-nil, the needs the token
// lacks (by index in Needs), clearing the others.
func (a *ACL) finishCheck(info TokenInfo, denied map[string]bool) {
	a.mu.Lock()
	prev := a.info
	a.info = info
	a.mu.Unlock()
	if info.Error != "" && info.Error != prev.Error {
		a.logger.Warn("cannot check the Consul ACL token", "error", info.Error)
	}
	if info.Disabled && !prev.Disabled {
		a.logger.Info("Consul ACLs are disabled: nothing is hidden from Trellis")
	}
	if info.AccessorID != "" && (info.AccessorID != prev.AccessorID || !slices.Equal(info.Policies, prev.Policies)) {
		rules := "readable"
		if !info.RulesReadable {
			rules = "not readable (the token lacks acl:read); its permissions are checked with Consul's authorization API"
		}
		a.logger.Info("Consul ACL token", "accessor_id", info.AccessorID, "description", info.Description,
			"anonymous", !info.Configured, "policies", strings.Join(info.Policies, ", "), "policy_rules", rules)
	}
	if denied == nil {
		return
	}
	for _, n := range a.cfg.Needs {
		source := sourceTokenCheck + " (" + n.Permission + ")"
		if !denied[n.Permission] {
			a.Clear(n.Component, source)
			continue
		}
		hides := "Trellis cannot " + n.What
		if !info.Configured {
			hides += "; no ACL token is configured (CONSUL_HTTP_TOKEN, --consul-token): requests are anonymous"
		}
		a.Report(ACLProblem{Component: n.Component, Permission: n.Permission, Source: source, Hides: hides})
	}
}

// authorize asks Consul which needs the token lacks, by permission.
func (a *ACL) authorize(ctx context.Context) (map[string]bool, error) {
	type request struct {
		Resource string
		Segment  string `json:",omitempty"`
		Access   string
	}
	type response struct {
		request
		Allow bool
	}
	if len(a.cfg.Needs) == 0 {
		return map[string]bool{}, nil
	}
	reqs := make([]request, len(a.cfg.Needs))
	for i, n := range a.cfg.Needs {
		reqs[i] = request{Resource: n.Resource, Segment: n.Segment, Access: n.Access}
	}
	body, err := json.Marshal(reqs)
	if err != nil {
		return nil, err
	}
	u := a.base
	u.Path += "/v1/internal/acl/authorize"
	if a.cfg.API.Datacenter != "" {
		u.RawQuery = url.Values{"dc": {a.cfg.API.Datacenter}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if a.token != "" {
		req.Header.Set("X-Consul-Token", a.token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, api.StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(raw))}
	}
	var out []response
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("decode the answer: %w", err)
	}
	if len(out) != len(reqs) {
		return nil, fmt.Errorf("%d answers to %d questions", len(out), len(reqs))
	}
	denied := map[string]bool{}
	for i, r := range out {
		if !r.Allow {
			denied[a.cfg.Needs[i].Permission] = true
		}
	}
	return denied, nil
}

// aclDisabled reports Consul's answer to an ACL request with ACLs
// disabled (401 "ACL support disabled").
func aclDisabled(err error) bool {
	return strings.Contains(err.Error(), "ACL support disabled")
}

// Answered records one answer of a component's watch or read: filtered
// (by ACLs) reports that the token lacks permission and hides what it
// hides; an answer that is not filtered clears what source had reported.
func (a *ACL) Answered(component, source string, filtered bool, permission, hides string) {
	if a == nil {
		return
	}
	if !filtered {
		a.Clear(component, source)
		return
	}
	a.Report(ACLProblem{Component: component, Permission: permission, Source: source, Hides: hides})
}

// lacksPermission finds the permission in Consul's 403 message: "Permission
// denied: token with AccessorID '...' lacks permission 'key:read' on
// \"trellis/policies/\"".
var lacksPermission = regexp.MustCompile(`lacks permission '([^']+)'(?: on "([^"]*)")?`)

// Failed records a failed request of a component: a 403 is reported (a
// token Consul does not know, or the permission Consul names); other
// failures say nothing about ACLs and leave the findings as they are.
func (a *ACL) Failed(component, source string, err error) {
	if a == nil || err == nil {
		return
	}
	switch Classify(err) {
	case KindACLNotFound:
		a.Report(ACLProblem{Component: component, Permission: PermToken, Source: source, Hides: ACLNotFoundMessage + ": every request is refused"})
	case KindPermissionDenied:
		perm, hides := "a permission", "Consul refuses the request (403): "+err.Error()
		if m := lacksPermission.FindStringSubmatch(err.Error()); m != nil {
			perm = m[1]
			if m[2] != "" && !strings.HasPrefix(perm, "service:") && !strings.HasPrefix(perm, "node:") && !strings.HasPrefix(perm, "intention:") {
				perm += " on " + m[2]
			}
			hides = fmt.Sprintf("Consul refuses %s (403)", source)
		}
		a.Report(ACLProblem{Component: component, Permission: perm, Source: source, Hides: hides})
	}
}

// Report records a problem; a new one (or one whose permission changed) is
// logged at WARN.
func (a *ACL) Report(p ACLProblem) {
	if a == nil {
		return
	}
	key := problemKey{p.Component, p.Source}
	a.mu.Lock()
	prev, had := a.problems[key]
	if had && prev.Permission == p.Permission {
		p.Since = prev.Since
		a.problems[key] = p
		a.mu.Unlock()
		return
	}
	p.Since = time.Now()
	a.problems[key] = p
	if had {
		a.updateGaugeLocked(prev.Component, prev.Permission)
	}
	a.updateGaugeLocked(p.Component, p.Permission)
	a.mu.Unlock()
	if p.Permission == PermToken {
		a.logger.Warn(ACLNotFoundMessage, "component", p.Component, "source", p.Source)
		return
	}
	a.logger.Warn("the Consul ACL token lacks "+p.Permission, "component", p.Component, "permission", p.Permission, "hides", p.Hides, "source", p.Source)
}

// Clear drops what source had reported for component, logging the
// resolution.
func (a *ACL) Clear(component, source string) {
	if a == nil {
		return
	}
	key := problemKey{component, source}
	a.mu.Lock()
	prev, had := a.problems[key]
	if !had {
		a.mu.Unlock()
		return
	}
	delete(a.problems, key)
	a.updateGaugeLocked(prev.Component, prev.Permission)
	a.mu.Unlock()
	a.logger.Info("the Consul ACL token no longer hides anything from "+source, "component", component, "permission", prev.Permission, "source", source)
}

func (a *ACL) updateGaugeLocked(component, permission string) {
	v := 0.0
	for _, p := range a.problems {
		if p.Component == component && p.Permission == permission {
			v = 1
			break
		}
	}
	a.gauge.WithLabelValues(component, permission).Set(v)
}

// Problems returns the current problems, sorted by component, permission
// and source.
func (a *ACL) Problems() []ACLProblem {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	out := make([]ACLProblem, 0, len(a.problems))
	for _, p := range a.problems {
		out = append(out, p)
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		x, y := out[i], out[j]
		if x.Component != y.Component {
			return x.Component < y.Component
		}
		if x.Permission != y.Permission {
			return x.Permission < y.Permission
		}
		return x.Source < y.Source
	})
	return out
}

// Hidden reports whether the token currently hides anything from
// component.
func (a *ACL) Hidden(component string) bool {
	if a == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for k := range a.problems {
		if k.component == component {
			return true
		}
	}
	return false
}

// Token returns what the last token check found.
func (a *ACL) Token() TokenInfo {
	if a == nil {
		return TokenInfo{}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	info := a.info
	info.Policies = slices.Clone(info.Policies)
	return info
}
