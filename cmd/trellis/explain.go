package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
)

func newExplainCommand() *cobra.Command {
	var (
		opts    policyClientOptions
		output  string
		node    string
		profile string
	)
	cmd := &cobra.Command{
		Use:   "explain [CLIENT] TARGET",
		Short: "Explain in plain words why a client gets what it gets for a target",
		Long: `explain says why the xDS client CLIENT (a node id or a stream id, as
trellis status lists them; or --node) gets what it gets for TARGET
(xds:///name[:port]): the resources it is served and whether it accepted
them, the Consul instances in the endpoints and the ones left out with the
reason, the policy revision and the routes that apply, the mTLS settings and
intentions of the service, and what the client's implementation gets instead
of what the policy asks. When the client gets nothing it says why: the
service is not in the Consul catalog (with names close to it), it was left
out of the configuration, the server has not synced yet, or the client
rejected what it was sent (with the client's error).

Without a client (--profile, or neither) it explains what a client of that
profile would get.

It calls the status API on the admin listener, authenticated like the policy
API.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "" && output != "json" && output != "yaml" {
				return fmt.Errorf("-o %q: must be json or yaml (default: text)", output)
			}
			target, client := args[len(args)-1], node
			if len(args) == 2 {
				if node != "" {
					return fmt.Errorf("CLIENT %q and --node %q: give the client once", args[0], node)
				}
				client = args[0]
			}
			api, err := opts.dial(cmd)
			if err != nil {
				return err
			}
			defer api.Close()
			ctx, cancel := api.context(cmd.Context())
			defer cancel()
			resp, err := statusv1.NewStatusServiceClient(api.conn).Explain(ctx, &statusv1.ExplainRequest{Client: client, Target: target, Profile: profile})
			if err != nil {
				return api.explain("explain", err)
			}
			if output != "" {
				return printProto(cmd.OutOrStdout(), resp, output)
			}
			return printExplanation(cmd.OutOrStdout(), resp)
		},
	}
	addPolicyClientFlags(cmd, &opts)
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "", "output format: json or yaml (default: text)")
	f.StringVar(&node, "node", "", "the client's node id (instead of CLIENT)")
	f.StringVar(&profile, "profile", "", "the client profile to explain for when the client has no open stream (default: the fallback profile)")
	return cmd
}

func printExplanation(w io.Writer, e *statusv1.ExplainResponse) error {
	var b strings.Builder
	who := "No client given"
	if e.GetNodeId() != "" {
		who = "Client " + e.GetNodeId()
		if ua := e.GetUserAgent(); ua != "" {
			who += " (" + ua + ")"
		}
	}
	fmt.Fprintf(&b, "%s, served as profile %s (%s), by %s\n", who, e.GetProfile(), profileWhy(e.GetProfileSource()), orDash(e.GetReplica()))
	fmt.Fprintf(&b, "Target %s: Listener %q of service %q\n", e.GetTarget(), e.GetListener(), e.GetService())

	if len(e.GetProblems()) == 0 {
		b.WriteString("\nNo problem found.\n")
	} else {
		b.WriteString("\nProblems:\n")
		for _, p := range e.GetProblems() {
			fmt.Fprintf(&b, "  - %s\n", p)
		}
	}

	if len(e.GetResources()) > 0 {
		b.WriteString("\nResources the target needs:\n")
		for _, r := range e.GetResources() {
			fmt.Fprintf(&b, "  %-22s %-16s ", shortTypeName(r.GetTypeUrl()), r.GetName())
			if !r.GetServed() {
				b.WriteString("not served")
			} else {
				fmt.Fprintf(&b, "content %s", r.GetContentVersion())
			}
			switch r.GetClientState() {
			case statusv1.SyncState_SYNC_STATE_UNSPECIFIED:
				switch {
				case r.GetClientReason() != "":
					b.WriteString("; " + r.GetClientReason())
				case e.GetNodeId() != "":
					b.WriteString("; the client does not ask for it")
				}
			case statusv1.SyncState_SYNC_STATE_SYNCED:
				b.WriteString("; the client ACKed it")
			default:
				fmt.Fprintf(&b, "; client %s: %s", stateWord(r.GetClientState()), r.GetClientReason())
			}
			b.WriteString("\n")
		}
	}

	if pol := e.GetPolicy(); pol != nil && (pol.GetPresent() || len(pol.GetRoutes()) > 0) {
		if pol.GetPresent() {
			fmt.Fprintf(&b, "\nPolicy revision %d applies. Routes, the first match wins:\n", pol.GetRevision())
		} else {
			b.WriteString("\nNo policy is stored for the service: the default route applies.\n")
		}
		for i, r := range pol.GetRoutes() {
			fmt.Fprintf(&b, "  %d. %s -> %s", i+1, r.GetMatch(), r.GetAction())
			if len(r.GetSettings()) > 0 {
				fmt.Fprintf(&b, " (%s)", strings.Join(r.GetSettings(), ", "))
			}
			b.WriteString("\n")
		}
	}

	for _, c := range e.GetClusters() {
		fmt.Fprintf(&b, "\nCluster %s", c.GetName())
		if !c.GetServed() {
			b.WriteString(": not served\n")
			continue
		}
		fmt.Fprintf(&b, ": %s", c.GetLoadBalancing())
		if c.GetMtls() {
			fmt.Fprintf(&b, ", mTLS, servers must be %s", strings.Join(c.GetServerSpiffeIds(), " or "))
		} else {
			b.WriteString(", plaintext")
		}
		if c.GetPanicRouting() {
			b.WriteString(", panic routing")
		}
		b.WriteString("\n")
		if len(c.GetInstances()) == 0 {
			fmt.Fprintf(&b, "  service %q has no instance in the catalog\n", c.GetService())
		}
		for _, in := range c.GetInstances() {
			where := in.GetDatacenter()
			if in.GetZone() != "" {
				where += "/" + in.GetZone()
			}
			if in.GetIncluded() {
				fmt.Fprintf(&b, "  in   %-28s %-22s %-11s weight %d, %s\n", in.GetKey(), in.GetAddress(), in.GetHealth(), in.GetWeight(), orDash(where))
			} else {
				fmt.Fprintf(&b, "  out  %-28s %-22s %-11s %s\n", in.GetKey(), in.GetAddress(), in.GetHealth(), in.GetReason())
			}
		}
	}

	if sec := e.GetSecurity(); sec != nil && (len(e.GetClusters()) > 0 || len(sec.GetIntentions()) > 0) {
		b.WriteString("\nSecurity: ")
		b.WriteString(sec.GetEnforcement())
		if td := sec.GetTrustDomain(); td != "" {
			fmt.Fprintf(&b, " (trust domain %s)", td)
		}
		b.WriteString("\n")
		for _, in := range sec.GetIntentions() {
			fmt.Fprintf(&b, "  intention %s -> %s: %s (precedence %d)", in.GetSource(), in.GetDestination(), in.GetAction(), in.GetPrecedence())
			if len(in.GetConditions()) > 0 {
				fmt.Fprintf(&b, " when %s", strings.Join(in.GetConditions(), ", "))
			}
			b.WriteString("\n")
		}
	}

	if len(e.GetSubstitutions()) > 0 {
		fmt.Fprintf(&b, "\nFor %s clients the server substitutes:\n", e.GetProfile())
		for _, s := range e.GetSubstitutions() {
			fmt.Fprintf(&b, "  - %s\n", s)
		}
	}
	if gaps := e.GetPolicy().GetGaps(); len(gaps) > 0 {
		b.WriteString("\nWhat other implementations get instead:\n")
		for _, g := range gaps {
			fmt.Fprintf(&b, "  - %s\n", g)
		}
	}
	if len(e.GetNotes()) > 0 {
		b.WriteString("\nNotes of the translation:\n")
		for _, n := range e.GetNotes() {
			fmt.Fprintf(&b, "  - %s\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func profileWhy(source string) string {
	switch source {
	case "stream":
		return "from its user agent on its open stream"
	case "requested":
		return "as requested"
	case "fallback":
		return "the fallback for clients no profile claims"
	}
	return source
}

func shortTypeName(typeURL string) string {
	return typeURL[strings.LastIndexByte(typeURL, '.')+1:]
}
