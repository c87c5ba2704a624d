package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
	"github.com/trellis-mesh/trellis/xdsserver/policyapi"
)

// Environment variables read by the policy commands.
const (
	envServer   = "TRELLIS_SERVER"
	envAPIToken = "TRELLIS_API_TOKEN"
)

const defaultPolicyServer = "127.0.0.1:18001"

func newPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Manage route, retry and traffic policies of services",
		Long: `Manage the policies that shape calls to each service: routes, subsets,
retries, timeouts, fault injection, load balancing, circuit breaking and
outlier detection. Policies are stored in Consul by the trellis server, which
validates every write; every replica applies the same policies.

The commands talk to the policy API on the server's admin listener
(--server, default ` + defaultPolicyServer + `, or ` + envServer + `) with a
bearer token (--token, --token-file, or ` + envAPIToken + `), except
validate, which works offline.

With --spiffe they call the server's policy listener over mTLS instead
(--server set to the server's --api-tls-listen address), presenting this
workload's X.509 SVID from the SPIFFE Workload API (--workload-api-addr,
default ` + workloadapi.SocketEnv + `; --spiffe-id picks one SVID when the
Workload API offers several). The server is accepted by the SPIFFE ID of its
SVID: --server-spiffe-id, or any ID of --server-trust-domain; one of them is
required. The server lets the call through when the caller's SPIFFE ID is one
of its --api-allowed-spiffe-id; a bearer token is optional then, and sent
when given.`,
	}
	cmd.AddCommand(
		newPolicyApplyCommand(),
		newPolicyGetCommand(),
		newPolicyListCommand(),
		newPolicyDeleteCommand(),
		newPolicyValidateCommand(),
	)
	return cmd
}

// policyClientOptions are the flags shared by the commands that call the
// policy API.
type policyClientOptions struct {
	server    string
	token     string
	tokenFile string
	timeout   time.Duration
	spiffe    policySPIFFEOptions
}

func addPolicyClientFlags(cmd *cobra.Command, o *policyClientOptions) {
	f := cmd.Flags()
	f.StringVar(&o.server, "server", defaultPolicyServer, "admin address of a trellis server, host:port (default: "+envServer+" when set)")
	f.StringVar(&o.token, "token", "", "policy API bearer token (default: "+envAPIToken+")")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the policy API bearer token")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "time limit for the whole command")
	addPolicySPIFFEFlags(f, &o.spiffe)
}

// policyAPI is a connection to the policy API.
type policyAPI struct {
	client    policyv1.PolicyServiceClient
	conn      *grpc.ClientConn
	server    string
	token     string
	hasToken  bool
	tokenFrom string
	// deadline ends the command (--timeout).
	deadline time.Time
	// spiffe is the caller's SVID over mTLS; nil in plaintext.
	spiffe *policySPIFFE
}

// dial resolves the flags (flag, then environment) and connects; with
// --spiffe it first waits for the caller's SVID. The connection is lazy:
// errors reaching the server come with the first call.
func (o *policyClientOptions) dial(cmd *cobra.Command) (*policyAPI, error) {
	server := o.server
	if !cmd.Flags().Changed("server") {
		if env := os.Getenv(envServer); env != "" {
			server = env
		}
	}
	api := &policyAPI{server: server, deadline: time.Now().Add(o.timeout)}
	switch {
	case o.token != "" && o.tokenFile != "":
		return nil, errors.New("--token and --token-file are exclusive: give one")
	case o.token != "":
		api.token, api.tokenFrom = strings.TrimSpace(o.token), "--token"
	case o.tokenFile != "":
		token, err := policyapi.ReadTokenFile(o.tokenFile)
		if err != nil {
			return nil, err
		}
		api.token, api.tokenFrom = token, "--token-file"
	case os.Getenv(envAPIToken) != "":
		api.token, api.tokenFrom = strings.TrimSpace(os.Getenv(envAPIToken)), envAPIToken
	}
	api.hasToken = api.token != ""
	ctx, cancel := context.WithDeadline(cmd.Context(), api.deadline)
	defer cancel()
	spiffe, err := o.spiffe.open(ctx)
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if spiffe != nil {
		api.spiffe, creds = spiffe, spiffe.credentials()
	}
	conn, err := grpc.NewClient(server, grpc.WithTransportCredentials(creds))
	if err != nil {
		if spiffe != nil {
			spiffe.Close()
		}
		return nil, fmt.Errorf("policy API at %s: %w", server, err)
	}
	api.conn = conn
	api.client = policyv1.NewPolicyServiceClient(conn)
	return api, nil
}

func (a *policyAPI) Close() error {
	err := a.conn.Close()
	if a.spiffe != nil {
		a.spiffe.Close()
	}
	return err
}

// context returns the context of one command: its deadline and token.
func (a *policyAPI) context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithDeadline(parent, a.deadline)
	if a.hasToken {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+a.token)
	}
	return ctx, cancel
}

// explain turns an API error into a message for a person.
func (a *policyAPI) explain(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	switch st.Code() {
	case codes.Unauthenticated:
		if !a.hasToken && a.spiffe != nil {
			return fmt.Errorf("%s: the policy API at %s does not accept SPIFFE ID %s as a credential (is it one of the server's --api-allowed-spiffe-id?) and needs a token: pass --token or --token-file, or set %s", what, a.server, a.spiffe.self, envAPIToken)
		}
		if !a.hasToken {
			return fmt.Errorf("%s: the policy API at %s needs a token: pass --token or --token-file, or set %s", what, a.server, envAPIToken)
		}
		return fmt.Errorf("%s: not authenticated: %s", what, st.Message())
	case codes.PermissionDenied:
		if a.hasToken && st.Message() != policyapi.DisabledMessage {
			return fmt.Errorf("%s: refused: %s (token from %s)", what, st.Message(), a.tokenFrom)
		}
		return fmt.Errorf("%s: refused: %s", what, st.Message())
	case codes.Unavailable:
		if a.spiffe != nil {
			return fmt.Errorf("%s: policy API at %s unavailable over mTLS as %s: %s%s", what, a.server, a.spiffe.self, st.Message(), a.spiffe.hint(st.Message()))
		}
		return fmt.Errorf("%s: policy API at %s unavailable: %s", what, a.server, st.Message())
	case codes.FailedPrecondition:
		var lines []string
		for _, d := range st.Details() {
			if pf, ok := d.(*errdetails.PreconditionFailure); ok {
				for _, v := range pf.GetViolations() {
					if v.GetType() == policyapi.PreconditionDependents {
						lines = append(lines, "  "+v.GetDescription())
					}
				}
			}
		}
		if len(lines) == 0 {
			return fmt.Errorf("%s: refused: %s", what, st.Message())
		}
		return fmt.Errorf("%s: refused: other policies route to what it removes:\n%s\nchange those policies first, or pass --force to break their routes (their calls then go to the whole service or the next matching route)", what, strings.Join(lines, "\n"))
	case codes.DataLoss:
		return fmt.Errorf("%s: the stored value is not a policy: %s", what, st.Message())
	case codes.InvalidArgument:
		var lines []string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					lines = append(lines, "  "+fieldDescription(policyField(v.GetField()), v.GetDescription()))
				}
			}
		}
		if len(lines) == 0 {
			return fmt.Errorf("%s: refused: %s", what, st.Message())
		}
		return fmt.Errorf("%s: refused:\n%s", what, strings.Join(lines, "\n"))
	default:
		return fmt.Errorf("%s: %s: %s", what, st.Code(), st.Message())
	}
}

// policyField turns a request field path ("policy.routes[0].name") into a
// path within the policy document ("routes[0].name").
func policyField(field string) string {
	switch {
	case field == "policy":
		return ""
	case strings.HasPrefix(field, "policy."):
		return strings.TrimPrefix(field, "policy.")
	case strings.HasPrefix(field, "policy["):
		return strings.TrimPrefix(field, "policy")
	}
	return field
}

func newPolicyApplyCommand() *cobra.Command {
	var (
		opts  policyClientOptions
		files []string
		force bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace policies from YAML or JSON files",
		Long: `Store the policies of one or more files, YAML documents separated by "---"
lines or JSON; -f - reads standard input. Every file is read first: nothing is
applied when one cannot be parsed. Policies are then applied one by one, a
policy whose subsets another policy of the input routes to first, and
"SERVICE: revision N" is printed for each, with its warnings. The first
refused policy stops the command, its problems printed one per line; the
policies before it stay applied.

A policy that removes a subset another stored policy routes to is refused,
naming those routes; --force stores it anyway and prints the routes it
broke.`,
		Example: `  trellis policy apply -f examples/policies/header-canary.yaml
  trellis policy get echo | sed 's/2s/5s/' | trellis policy apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			docs, err := readApplyInput(cmd.InOrStdin(), files)
			if err != nil {
				return err
			}
			api, err := opts.dial(cmd)
			if err != nil {
				return err
			}
			defer api.Close()
			ctx, cancel := api.context(cmd.Context())
			defer cancel()
			out := cmd.OutOrStdout()
			for i, d := range applyOrder(docs) {
				resp, err := api.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: d.policy, Force: force})
				if err != nil {
					err = api.explain("apply "+d.location(), err)
					if len(docs) > 1 {
						summary := fmt.Sprintf("%d of %d policies applied", i, len(docs))
						if rest := len(docs) - i - 1; rest > 0 {
							summary += fmt.Sprintf("; %d not attempted", rest)
						}
						err = fmt.Errorf("%w\n%s", err, summary)
					}
					return err
				}
				fmt.Fprintf(out, "%s: revision %d\n", d.policy.GetService(), resp.GetRevision())
				for _, w := range resp.GetWarnings() {
					fmt.Fprintf(out, "  warning: %s\n", w)
				}
				// What some gRPC implementations will get instead.
				for _, g := range clients.PolicyGaps(d.policy) {
					fmt.Fprintf(cmd.ErrOrStderr(), "  warning: %s\n", g)
				}
				printBroken(cmd.ErrOrStderr(), d.policy.GetService(), resp.GetBrokenDependents())
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "store policies even when they remove subsets other stored policies route to, breaking those routes")
	cmd.Flags().StringArrayVarP(&files, "file", "f", nil, "policy file, YAML or JSON; - reads standard input; repeat for several files (required)")
	_ = cmd.MarkFlagRequired("file") // the flag exists: no error
	addPolicyClientFlags(cmd, &opts)
	return cmd
}

// readApplyInput parses every input file; it fails, listing every problem,
// when any cannot be parsed or holds no policy.
func readApplyInput(stdin io.Reader, files []string) ([]inputDocument, error) {
	var docs []inputDocument
	var problems []string
	for _, file := range files {
		name, policies, err := readPolicyFile(stdin, file)
		if err != nil {
			var pe *policy.ParseError
			if !errors.As(err, &pe) {
				problems = append(problems, fmt.Sprintf("  %s: %v", name, err))
				continue
			}
			for _, de := range pe.Documents {
				problems = append(problems, fmt.Sprintf("  %s: %s", documentLocation(name, de.Index, de.Service), fieldDescription(de.Field, de.Description)))
			}
			continue
		}
		if len(policies) == 0 {
			problems = append(problems, fmt.Sprintf("  %s: no policy found: expected one or more ServicePolicy documents", name))
		}
		for i, p := range policies {
			docs = append(docs, inputDocument{file: name, index: i + 1, policy: p})
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("policy apply: nothing applied:\n%s", strings.Join(problems, "\n"))
	}
	return docs, nil
}

// applyOrder orders docs so that a policy comes after the policies of the
// input whose subsets it routes to (their subsets must be stored first),
// keeping the input order otherwise. Cycles keep the input order.
func applyOrder(docs []inputDocument) []inputDocument {
	byService := map[string]int{}
	for i, d := range docs {
		if _, dup := byService[d.policy.GetService()]; !dup {
			byService[d.policy.GetService()] = i
		}
	}
	const (
		unvisited = iota
		visiting
		done
	)
	state := make([]int, len(docs))
	out := make([]inputDocument, 0, len(docs))
	var visit func(i int)
	visit = func(i int) {
		if state[i] != unvisited {
			return
		}
		state[i] = visiting
		for _, svc := range policy.ReferencedServices(docs[i].policy) {
			if j, ok := byService[svc]; ok {
				visit(j)
			}
		}
		state[i] = done
		out = append(out, docs[i])
	}
	for i := range docs {
		visit(i)
	}
	return out
}

func newPolicyGetCommand() *cobra.Command {
	var (
		opts   policyClientOptions
		output string
	)
	cmd := &cobra.Command{
		Use:   "get SERVICE",
		Short: "Print a service's stored policy",
		Long: `Print a service's stored policy in the form apply reads. YAML output starts
with a comment giving the revision.`,
		Example: `  trellis policy get echo
  trellis policy get echo -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "yaml" && output != "json" {
				return fmt.Errorf("-o %q: accepted: yaml, json", output)
			}
			api, err := opts.dial(cmd)
			if err != nil {
				return err
			}
			defer api.Close()
			ctx, cancel := api.context(cmd.Context())
			defer cancel()
			resp, err := api.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: args[0]})
			if err != nil {
				return api.explain("get "+args[0], err)
			}
			b, err := policy.Marshal(resp.GetPolicy(), output)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "yaml" {
				fmt.Fprintf(out, "# %s at revision %d\n", resp.GetPolicy().GetService(), resp.GetRevision())
			}
			_, err = out.Write(b)
			return err
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "yaml", "output format: yaml or json")
	addPolicyClientFlags(cmd, &opts)
	return cmd
}

func newPolicyListCommand() *cobra.Command {
	var opts policyClientOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the stored policies",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			api, err := opts.dial(cmd)
			if err != nil {
				return err
			}
			defer api.Close()
			ctx, cancel := api.context(cmd.Context())
			defer cancel()
			resp, err := api.client.ListPolicies(ctx, &policyv1.ListPoliciesRequest{})
			if err != nil {
				return api.explain("list", err)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tREVISION\tROUTES")
			for _, sp := range resp.GetPolicies() {
				fmt.Fprintf(tw, "%s\t%d\t%d\n", sp.GetPolicy().GetService(), sp.GetRevision(), len(sp.GetPolicy().GetRoutes()))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, ke := range resp.GetErrors() {
				fmt.Fprintf(cmd.ErrOrStderr(), "error: key %s (revision %d) is not a policy and is not in effect: %s\n", ke.GetKey(), ke.GetRevision(), ke.GetReason())
			}
			return nil
		},
	}
	addPolicyClientFlags(cmd, &opts)
	return cmd
}

func newPolicyDeleteCommand() *cobra.Command {
	var (
		opts     policyClientOptions
		revision string
		force    bool
	)
	cmd := &cobra.Command{
		Use:   "delete SERVICE",
		Short: "Delete a service's policy",
		Long: `Delete a service's policy: calls to the service go back to the defaults.
With --revision, the policy is only deleted while it is at that revision.
A policy whose subsets other stored policies route to is not deleted, and
those routes are named; --force deletes it anyway and prints the routes it
broke.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &policyv1.DeletePolicyRequest{Service: args[0], Force: force}
			if revision != "" {
				n, err := strconv.ParseUint(revision, 10, 64)
				if err != nil || n == 0 {
					return fmt.Errorf("--revision %q: a revision is a positive integer, as get and list print it", revision)
				}
				req.ExpectedRevision = &n
			}
			api, err := opts.dial(cmd)
			if err != nil {
				return err
			}
			defer api.Close()
			ctx, cancel := api.context(cmd.Context())
			defer cancel()
			resp, err := api.client.DeletePolicy(ctx, req)
			if err != nil {
				return api.explain("delete "+args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: deleted\n", args[0])
			printBroken(cmd.ErrOrStderr(), args[0], resp.GetBrokenDependents())
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete the policy even when other stored policies route to its subsets, breaking those routes")
	cmd.Flags().StringVar(&revision, "revision", "", "delete only if the policy is at this revision")
	addPolicyClientFlags(cmd, &opts)
	return cmd
}

// printBroken reports the routes of other policies a forced change of
// service's policy broke.
func printBroken(w io.Writer, service string, broken []*policyv1.BrokenDependency) {
	if len(broken) == 0 {
		return
	}
	fmt.Fprintf(w, "WARNING: forced: the change of %s's policy broke %d route(s) of other policies; their calls go to the whole service or the next matching route until fixed:\n", service, len(broken))
	for _, b := range broken {
		fmt.Fprintf(w, "  service %q %s: subset %q of service %q no longer exists\n", b.GetService(), b.GetRoute(), b.GetDestinationSubset(), b.GetDestinationService())
	}
}
